"""Infrastructure faults: the execution is finished as internal_error and the task fails."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import docker
import pytest
import requests
from celery import Celery

from executor.config import Settings
from executor.policy import LABEL_WORKER
from executor.store import HEARTBEAT_TTL_S, WAIT_SLICE_S
from tests.conftest import sandboxes
from tests.service.conftest import AppFactory, WorkerFactory, dead_port, flushed, post, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker]


def test_docker_unreachable_from_the_worker(
    start_worker: WorkerFactory, serve_app: AppFactory, base_settings: Settings
):
    url = flushed(11)
    address = f"tcp://127.0.0.1:{dead_port()}"
    start_worker("pytest-nodocker", url, address, EXECUTOR_POOL_SIZE="0")
    api = serve_app(base_settings, redis_url=url)  # the API itself reaches Docker

    response = post(f"{api}/execute", {"code": "print(1)"}, timeout=60)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "docker_unavailable" and address in body["message"]
    assert "Retry-After" in response.headers
    record = requests.get(f"{api}/executions/{body['id']}", timeout=10)
    assert record.status_code == 200
    assert record.json() == {
        "id": body["id"],
        "status": "internal_error",
        "code": "docker_unavailable",
        "message": body["message"],
    }

    producer = Celery(broker=url, backend=url)
    try:
        result = producer.send_task(
            "executor.execute", args=[{"code": "print(1)"}], queue="executor"
        )
        with pytest.raises(Exception) as failed:
            result.get(timeout=60)
        assert address in str(failed.value)
        assert type(failed.value).__name__ == "DockerUnavailable"
        assert result.state == "FAILURE"
    finally:
        producer.close()


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_an_internal_error(
    start_worker: WorkerFactory,
    serve_app: AppFactory,
    base_settings: Settings,
    docker_host: str,
    raw_docker: docker.DockerClient,
):
    url = flushed(12)
    victim = start_worker("pytest-victim", url, docker_host, EXECUTOR_POOL_SIZE="0")
    api = serve_app(base_settings, redis_url=url)
    answer: dict[str, Any] = {}

    def wait_for_it() -> None:
        body = {"code": "import time; time.sleep(30)", "timeout": 40}
        answer["response"] = post(f"{api}/execute", body, timeout=120)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    try:

        def running() -> str | None:
            recent = requests.get(f"{api}/status", timeout=10).json()["recent"]
            return recent[0]["id"] if recent and recent[0]["status"] == "running" else None

        execution_id = wait_until("the execution running", running, 30)
        time.sleep(0.5)  # well inside time.sleep(30)
        victim.kill()  # SIGKILL to the whole worker: no goodbye, no cleanup
        killed = time.monotonic()
        waiter.join(HEARTBEAT_TTL_S + WAIT_SLICE_S + 10)
        assert not waiter.is_alive(), "POST /execute still waits for a lost execution"
        bound = time.monotonic() - killed
        assert bound < HEARTBEAT_TTL_S + WAIT_SLICE_S + 3

        response = answer["response"]
        assert response.status_code == 502, response.text
        body = response.json()
        assert body["code"] == "execution_lost" and body["id"] == execution_id
        assert "pytest-victim" in body["message"]

        record = requests.get(f"{api}/executions/{execution_id}", timeout=10).json()
        assert record["status"] == "internal_error" and record["code"] == "execution_lost"
        status = requests.get(f"{api}/status", timeout=10).json()
        assert status["workers"] == []
        assert status["counters"]["executions"]["internal_error"] == 1
    finally:
        waiter.join(60)
        for container in sandboxes(raw_docker):
            # Other tests' sandboxes come and go on the shared engine meanwhile.
            with contextlib.suppress(docker.errors.NotFound):
                labels = raw_docker.api.inspect_container(container)["Config"]["Labels"]
                if labels.get(LABEL_WORKER, "").startswith("pytest-victim:"):
                    raw_docker.api.remove_container(container, force=True)
