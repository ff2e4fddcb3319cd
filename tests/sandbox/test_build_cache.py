"""The worker's build cache (executor.build_cache) in real sandboxes: an identical program is
not built again, runs as its own build would, and nothing else ever gets its products.

One container per run, cold (the pool is off here), through the proxy, in the branch's images.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from executor import metrics
from executor.config import Settings
from executor.languages import REGISTRY
from executor.models import File, RunRequest
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import language_image
from tests.sandbox.language_programs import ERRORS, PROGRAMS

pytestmark = pytest.mark.languages

COMPILED = [lang.name for lang in REGISTRY if lang.compiled]


def c_request(svc: ExecutionService, code: str) -> RunRequest:
    """A C program at the default limits, in the branch's own C image."""
    return RunRequest(
        code=code, language="c", limits=default_limits(svc.settings), image=language_image("c")
    )


def unique(code: str) -> str:
    """`code` made unlike any other program of this session (a comment): its first run builds."""
    return f"{code}\n// {uuid.uuid4()}\n"


@pytest.mark.parametrize("language", COMPILED)
def test_an_identical_program_reuses_its_build_and_runs_as_built(run: Any, language: str):
    code = unique(PROGRAMS[language]["hello"])
    first = run(code, language=language, stdin="world\n", args=("a b", "c"))
    again = run(code, language=language, stdin="again\n", args=("d",))
    assert first.compile is not None and again.compile is not None
    assert (first.status, first.compile.cached) == ("success", False)
    assert (again.status, again.stderr, again.exit_code) == ("success", "", 0)
    assert again.stdout == "hello again\nd\n"  # its own stdin and args, as after its own build
    assert again.compile.cached and again.compile.duration_ms == 0
    assert (again.compile.exit_code, again.compile.stdout, again.compile.stderr) == (
        0,
        first.compile.stdout,
        first.compile.stderr,
    )
    crash = unique(PROGRAMS[language]["crash"])
    run(crash, language=language)
    crashed = run(crash, language=language)  # a failing run's build is as good as any
    assert crashed.compile is not None and crashed.compile.cached
    assert (crashed.status, crashed.exit_code, crashed.signal) == ("error", *ERRORS[language][:2])


@pytest.mark.parametrize(("language", "product"), [("c", "main"), ("java", "*.class")])
def test_the_products_a_hit_gets_are_the_bytes_the_build_made(
    run: Any, language: str, product: str
):
    code = unique(PROGRAMS[language]["hello"])
    built = run(code, language=language, outputs=(product,))
    cached = run(code, language=language, outputs=(product,))
    assert cached.compile is not None and cached.compile.cached
    assert built.files and [f.path for f in cached.files] == [f.path for f in built.files]
    assert [base64.b64decode(f.content_base64) for f in cached.files] == [
        base64.b64decode(f.content_base64) for f in built.files
    ]


def test_a_program_that_overwrites_its_binary_does_not_change_the_cached_build(run: Any):
    code = unique(
        "#include <stdio.h>\n"
        "int main(void) {\n"
        '  puts("ran");\n'
        '  FILE *f = fopen("main", "wb");\n'
        '  if (f) { fputs("#!/bin/sh\\necho forged\\n", f); fclose(f); }\n'
        "  return 0;\n"
        "}\n"
    )
    for n in range(3):  # the products were read before the program ran
        result = run(code, language="c")
        assert (result.status, result.stdout) == ("success", "ran\n"), n
        assert result.compile is not None and result.compile.cached == (n > 0)


@pytest.mark.parametrize("language", ["c", "java"])
def test_a_build_is_reused_only_for_exactly_its_inputs(run: Any, language: str):
    code = unique(PROGRAMS[language]["hello"])
    assert run(code, language=language).compile.cached is False
    assert run(code, language=language).compile.cached is True
    assert run(code, language=language, memory_mb=256).compile.cached is False  # other limits
    other = code.replace("hello", "hullo")
    assert run(other, language=language).compile.cached is False  # other code
    files = (File(path="data.txt", content="x"),)
    assert run(code, language=language, files=files).compile.cached is False  # other files
    changed = (File(path="data.txt", content="y"),)
    assert run(code, language=language, files=changed).compile.cached is False


def test_a_build_never_crosses_languages(run: Any):
    code = unique('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }')
    for language in ("c", "cpp"):  # the same source, another language (and image)
        result = run(code, language=language)
        assert (result.status, result.stdout) == ("success", "hi\n")
        assert result.compile is not None and not result.compile.cached


@pytest.mark.parametrize("language", ["c", "go"])
def test_a_failed_build_is_never_kept(run: Any, language: str):
    broken = unique(PROGRAMS[language]["broken"])
    for _ in range(2):
        result = run(broken, language=language)
        assert result.status == "compile_error"
        assert result.compile is not None and not result.compile.cached
        assert result.compile.exit_code not in (0, None) and result.compile.duration_ms > 0


def test_a_build_over_its_share_of_the_cache_is_not_kept(settings: Any):
    svc = ExecutionService(replace(settings, build_cache_mb=1))  # builds up to 256 KiB kept
    big = "static const char pad[1 << 20] = {1};\nint main(int argc, char **argv) { return pad[argc - 1] - 1; }\n"
    small = PROGRAMS["c"]["hello"]
    try:
        cached = []
        for code in (unique(big), unique(small)):
            for n in range(2):
                request = c_request(svc, code)
                result = svc.run(request, f"66666666-6666-4666-8666-66666666666{n}")
                assert result.status == "success", result.compile
                assert result.compile is not None
                cached.append(result.compile.cached)
        assert cached == [False, False, False, True]  # the 1 MiB binary is built each time
    finally:
        svc.stop()


def test_lookups_are_counted_as_hits_and_misses(settings: Any):
    counted: Counter[str] = Counter()
    svc = ExecutionService(settings, lambda name, n: counted.update({name: n}))
    try:
        code = unique(PROGRAMS["c"]["hello"])
        for n in range(2):
            request = c_request(svc, code)
            assert svc.run(request, f"66666666-6666-4666-8666-66666666668{n}").status == "success"
    finally:
        svc.stop()
    assert (counted[metrics.BUILD_CACHE_MISSES], counted[metrics.BUILD_CACHE_HITS]) == (1, 1)


def test_the_build_cache_can_be_turned_off(settings: Any):
    counted: Counter[str] = Counter()
    svc = ExecutionService(
        replace(settings, build_cache_mb=0), lambda name, n: counted.update({name: n})
    )
    try:
        code = unique(PROGRAMS["c"]["hello"])
        for n in range(2):
            request = c_request(svc, code)
            result = svc.run(request, f"66666666-6666-4666-8666-66666666667{n}")
            assert result.status == "success"
            assert result.compile is not None and not result.compile.cached
    finally:
        svc.stop()
    assert counted[metrics.BUILD_CACHE_HITS] == counted[metrics.BUILD_CACHE_MISSES] == 0


def test_by_default_a_build_is_kept_on_second_sight(settings: Any):
    """EXECUTOR_BUILD_CACHE_ADMIT's default: the first build of a program only has its key
    remembered (no products asked for), the second is kept, the third is a hit."""
    svc = ExecutionService(replace(settings, build_cache_admit=Settings().build_cache_admit))
    try:
        code = unique(PROGRAMS["c"]["hello"])
        cached = []
        for n in range(3):
            result = svc.run(c_request(svc, code), f"66666666-6666-4666-8666-66666666669{n}")
            assert result.status == "success" and result.compile is not None
            cached.append(result.compile.cached)
        assert cached == [False, False, True]
        assert svc.sandbox.builds.stats()["entries"] == 1
    finally:
        svc.stop()
