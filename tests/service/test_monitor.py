"""A worker's own monitoring endpoint: /healthz, /readyz and /metrics without the API."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import free_port
from tests.service.conftest import WorkerFactory, flushed, wait_until


def answers(url: str) -> bool:
    """Whether anything answers at `url` (the monitor listens a moment after the first beat)."""
    try:
        requests.get(url, timeout=5)
    except requests.ConnectionError:
        return False
    return True


pytestmark = pytest.mark.service


def test_a_worker_answers_its_probes_and_shows_its_series(
    start_worker: WorkerFactory, docker_host: str
):
    port = free_port()
    url = flushed(2)  # see the table in tests/service/conftest.py
    process = start_worker("pytest-monitored", url, docker_host, EXECUTOR_MONITOR_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    wait_until("the worker's probes answering", lambda: answers(f"{base}/healthz"), 30)
    health = requests.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{base}/readyz", timeout=10)
    checks = ready.json()["checks"]
    assert checks["redis"] == "ok" and checks["docker"] == "ok", checks
    # The pool (1 container) is filling or warm once the worker is ready.
    assert ready.status_code == 200 and ready.json()["status"] == "ok", checks
    series = requests.get(f"{base}/metrics", timeout=5)
    assert series.status_code == 200 and series.headers["Content-Type"].startswith("text/plain")
    assert 'executor_worker_pool_target{worker="pytest-monitored@' in series.text
    assert "executor_worker_processed_total" in series.text
    assert requests.get(f"{base}/nothing", timeout=5).status_code == 404
    process.stop()


def test_a_worker_that_cannot_reach_docker_is_alive_but_not_ready(start_worker: WorkerFactory):
    port = free_port()
    dead_docker = f"tcp://127.0.0.1:{free_port()}"
    process = start_worker(
        "pytest-no-docker", flushed(1), dead_docker, EXECUTOR_MONITOR_PORT=str(port)
    )
    base = f"http://127.0.0.1:{port}"
    wait_until("the worker's probes answering", lambda: answers(f"{base}/healthz"), 30)
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert dead_docker.removeprefix("tcp://") in ready.json()["checks"]["docker"]
    process.stop()
