"""SIGTERM to a busy worker: it finishes what runs, drains its pool, and leaves no container."""

from __future__ import annotations

import signal

import docker
import pytest

from tests.faults.conftest import StackFactory, stack_containers
from tests.service.conftest import wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]


def test_warm_shutdown_under_load(fault_stack: StackFactory, raw_docker: docker.DockerClient):
    stack = fault_stack(EXECUTOR_POOL_SIZE="2", EXECUTOR_CONCURRENCY="4")
    ids = [
        stack.post("/executions", {"code": f"import time; time.sleep(4); print({i})"}).json()["id"]
        for i in range(4)
    ]

    def all_running() -> bool:
        return all(stack.get(f"/executions/{i}").json()["status"] == "running" for i in ids)

    wait_until("every execution running", all_running, 60, 0.2)
    assert stack.worker is not None
    stack.worker.kill(signal.SIGTERM)  # Celery's warm shutdown
    assert stack.worker.popen.wait(90) == 0, stack.worker.output()[-3000:]
    for n, execution_id in enumerate(ids):
        record = stack.final(execution_id, timeout=30)
        assert record["status"] == "success" and record["stdout"] == f"{n}\n", record
    assert stack_containers(raw_docker, stack.name) == [], "the worker left containers behind"
