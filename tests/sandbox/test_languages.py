"""Every language, in its own sandbox image: the same behaviour and the same limits as Python.

One container per case, cold (the pool is off here), through the proxy. Each case asserts
what a user sees: output, exit codes, statuses, and the build step of compiled languages.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from executor.errors import InvalidRequest
from executor.languages import REGISTRY
from executor.models import RunRequest
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import APPROVED_IMAGE, UNAPPROVED_IMAGE
from tests.sandbox.language_programs import BUILD_ERRORS, ERRORS, PROGRAMS, THREADS

pytestmark = pytest.mark.languages

NAMES = [lang.name for lang in REGISTRY]
COMPILED = [lang.name for lang in REGISTRY if lang.compiled]


def test_every_language_has_its_programs():
    assert sorted(PROGRAMS) == sorted(NAMES) == sorted(ERRORS)
    assert sorted(BUILD_ERRORS) == sorted(COMPILED)


@pytest.mark.parametrize("language", NAMES)
def test_hello_reads_stdin_and_args(run: Any, language: str):
    result = run(PROGRAMS[language]["hello"], language=language, stdin="world\n", args=("a b", "c"))
    assert (result.status, result.stderr) == ("success", "")
    assert result.stdout == "hello world\na b,c\n"
    assert result.exit_code == 0
    if language in COMPILED:
        assert result.compile is not None and result.compile.exit_code == 0
    else:
        assert result.compile is None


@pytest.mark.parametrize("language", NAMES)
def test_runtime_error_has_its_exit_code(run: Any, language: str):
    exit_code, sig, message = ERRORS[language]
    result = run(PROGRAMS[language]["crash"], language=language)
    assert result.status == "error"
    assert (result.exit_code, result.signal) == (exit_code, sig)
    assert message in result.stderr


@pytest.mark.parametrize("language", NAMES)
def test_timeout_holds(run: Any, language: str):
    result = run(PROGRAMS[language]["spin"], language=language, timeout=1.5)
    assert result.status == "timeout"
    assert result.exit_code is None


@pytest.mark.parametrize("language", NAMES)
def test_memory_limit_holds(run: Any, language: str):
    result = run(PROGRAMS[language]["hog"], language=language, memory_mb=256, timeout=20)
    assert result.status == "memory_limit", (result.stdout[-300:], result.stderr[-1000:])


@pytest.mark.parametrize("language", NAMES)
def test_many_threads_within_the_process_limit(run: Any, language: str):
    result = run(PROGRAMS[language]["threads"], language=language, timeout=20)
    assert (result.status, result.stderr) == ("success", "")
    lines = result.stdout.split()
    assert sorted(lines[:-1]) == sorted(f"t{i}" for i in range(THREADS))
    assert lines[-1] == "done"


@pytest.mark.parametrize("language", COMPILED)
def test_compile_error_never_runs(run: Any, language: str):
    result = run(PROGRAMS[language]["broken"], language=language)
    assert result.status == "compile_error"
    assert result.compile is not None and result.compile.exit_code not in (0, None)
    assert BUILD_ERRORS[language] in result.compile.stdout + result.compile.stderr
    assert (result.exit_code, result.stdout, result.duration_ms) == (None, "", 0)


def test_an_approved_image_runs_with_its_libraries(service: Any, settings: Any):
    svc = ExecutionService(replace(settings, images=(("python", APPROVED_IMAGE),)))
    try:
        code = (
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "import numpy as np, pandas as pd\n"
            "plt.plot(np.arange(3)); plt.savefig('/tmp/plot.png')\n"
            "print(pd.DataFrame({'x': np.arange(4)}).x.sum())\n"
        )
        request = RunRequest(code=code, limits=default_limits(svc.settings), image=APPROVED_IMAGE)
        result = svc.run(request, "55555555-5555-4555-8555-555555555555")
    finally:
        svc.stop()
    assert (result.status, result.stdout, result.stderr) == ("success", "6\n", "")
    assert result.image.startswith(f"{APPROVED_IMAGE}@sha256:")


def test_an_unapproved_image_is_refused_before_any_container(service: Any):
    request = RunRequest(
        code="print(1)", limits=default_limits(service.settings), image=UNAPPROVED_IMAGE
    )
    with pytest.raises(InvalidRequest, match="not approved"):
        service.run(request, "55555555-5555-4555-8555-555555555556")
