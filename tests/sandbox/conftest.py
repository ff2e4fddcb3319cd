from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import docker
import pytest

from executor.config import Settings
from executor.models import File, Limits, RunRequest, RunResult
from executor.policy import LABEL_WORKER
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import TEST_IMAGE_TAG, language_image, wait_gone


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


OneLanguage = Callable[..., ExecutionService]


def one_language_services(
    settings: Settings, raw_docker: docker.DockerClient, label: str
) -> Iterator[OneLanguage]:
    """For a module fixture: get(language, **settings) is a started service with a warm pool
    of one container of that language only (the branch's own image) and those settings, made
    once; all are stopped, and their sandboxes gone, at the end."""
    made: dict[tuple[object, ...], ExecutionService] = {}

    def get(language: str, **overrides: Any) -> ExecutionService:
        key = (language, *sorted(overrides.items()))
        if key not in made:
            svc = ExecutionService(
                replace(
                    settings,
                    pool_size=1,
                    worker_languages=(language,),
                    image_tag=TEST_IMAGE_TAG,
                    # Its own instance: a worker's reaper takes the sandboxes of its
                    # instance's other identities in its own process for a dead incarnation's.
                    instance=f"pytest-{label}-{language}-{len(made)}",
                    **overrides,
                )
            )
            svc.start()
            made[key] = svc
        return made[key]

    yield get
    for svc in made.values():
        svc.stop()
    for svc in made.values():
        assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []
