"""Flower, connected to the same Redis as the workers, sees them and their executions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from executor.config import Settings
from tests.conftest import free_port, wait_http
from tests.service.conftest import AppFactory, WorkerFactory, flushed, post, spawn, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow]

DB = 6  # see the table in tests/service/conftest.py


def test_flower_sees_the_worker_and_its_executor_execute_tasks(
    start_worker: WorkerFactory,
    serve_app: AppFactory,
    base_settings: Settings,
    docker_host: str,
    logdir: Path,
):
    url = flushed(DB)
    start_worker("pytest-flower", url, docker_host)
    port = free_port()
    # Flower's API answers without credentials only when told to; it listens on loopback.
    argv = [sys.executable, "-m", "celery", "--broker", url, "flower"]
    argv += ["--address=127.0.0.1", f"--port={port}", "--persistent=False"]
    env = {"FLOWER_UNAUTHENTICATED_API": "true", "HOME": os.environ.get("HOME", "/tmp")}
    flower = spawn("flower", argv, env, logdir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthcheck", 60, flower.popen)

        def workers() -> dict[str, Any]:
            reply = requests.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=30)
            assert reply.status_code == 200, reply.text
            return {name: info for name, info in reply.json().items() if "pytest-flower" in name}

        seen = wait_until("Flower listing the worker", workers, 60, step=1)
        (info,) = seen.values()
        assert "executor" in {queue["name"] for queue in info["active_queues"]}

        api = serve_app(base_settings, redis_url=url)
        result = post(f"{api}/execute", {"code": "print('hi')"}).json()
        assert result["status"] == "success", result

        def task() -> dict[str, Any] | None:
            reply = requests.get(f"{base}/api/tasks", timeout=30)
            assert reply.status_code == 200, reply.text
            found = reply.json().get(result["id"])
            return found if found and found.get("state") == "SUCCESS" else None

        found = wait_until("Flower showing the task", task, 60, step=0.5)
        assert found["name"] == "executor.execute"
        assert found["worker"].startswith("pytest-flower@")
        # Flower shows the API's summary of the arguments, never the code.
        assert "print('hi')" not in str(found)
    finally:
        flower.stop()
