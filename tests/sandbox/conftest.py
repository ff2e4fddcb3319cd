from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import docker
import pytest

from executor.config import Settings
from executor.models import File, Limits, RunRequest, RunResult
from executor.policy import LABEL_WORKER
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import language_image, wait_gone


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[ExecutionService]:
    """A cold-only service (no warm pool) of the worker's kind, Docker through the proxy."""
    svc = ExecutionService(replace(settings, max_output_bytes=65536))
    yield svc
    svc.stop()


@pytest.fixture
def run(service: ExecutionService, raw_docker: docker.DockerClient) -> Iterator[Any]:
    """run(code, **fields) -> RunResult; afterwards asserts that no container is left."""

    def _run(code: str, *, files: tuple[File, ...] = (), **fields: Any) -> RunResult:
        limit_fields = {k: fields.pop(k) for k in ("timeout", "memory_mb", "cpus") if k in fields}
        limits: Limits = replace(default_limits(service.settings), **limit_fields)
        if "image" not in fields:  # the branch's own image of the language, if it has one
            fields["image"] = language_image(fields.get("language", "python"))
        request = RunRequest(code=code, limits=limits, files=files, **fields)
        return service.run(request, "00000000-0000-4000-8000-000000000000")

    _run.settings = service.settings  # type: ignore[attr-defined]
    yield _run
    left = wait_gone(raw_docker, **{LABEL_WORKER: service.sandbox.owner})
    assert left == [], f"containers left behind: {left}"
