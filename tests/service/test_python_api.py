"""`python api.py` serves the same API (the contract's second way to start it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, wait_http
from tests.service.conftest import Process, spawn

pytestmark = [pytest.mark.service, pytest.mark.docker]


def test_python_api_py_serves(
    main_worker: Process, main_redis: str, docker_host: str, logdir: Path
):
    port = free_port()
    env = {"REDIS_URL": main_redis, "DOCKER_HOST": docker_host, "HOSTNAME": "pytest-python-api",
           "PORT": str(port), "GUNICORN_WORKERS": "1"}  # fmt: skip
    process = spawn("python-api", [sys.executable, "api.py"], env, logdir)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, process.popen)
        body = requests.post(
            f"http://127.0.0.1:{port}/execute", json={"code": "print(7)"}, timeout=60
        ).json()
        assert body["stdout"] == "7\n"
        status = requests.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
        assert status["instance"] == "pytest-python-api"
    finally:
        process.stop()
