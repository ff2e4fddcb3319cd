"""A dependency down is a fast 503 with Retry-After, never a hang until the wait budget."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from executor.config import Settings
from tests.service.conftest import AppFactory, dead_port, flushed, post

pytestmark = [pytest.mark.service]


def timed(call: object) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()  # type: ignore[operator]
    return response, time.monotonic() - started


def assert_unavailable(response: requests.Response, code: str, names: str = "") -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == code and body["status"] == 503
    assert int(response.headers["Retry-After"]) > 0
    assert names in body["message"]


def test_redis_down(serve_app: AppFactory, base_settings: Settings):
    port = dead_port()
    api = serve_app(base_settings, redis_url=f"redis://127.0.0.1:{port}/0")
    for call in (
        lambda: post(f"{api}/execute", {"code": "print(1)"}),
        lambda: post(f"{api}/executions", {"code": "print(1)"}),
        lambda: requests.get(f"{api}/executions/{uuid.uuid4()}", timeout=10),
        lambda: requests.get(f"{api}/status", timeout=10),
    ):
        response, elapsed = timed(call)
        assert_unavailable(response, "redis_unavailable", f"127.0.0.1:{port}")
        assert elapsed < 3
    # /metrics still answers, so that an alert can tell Redis down from the API down.
    scrape, elapsed = timed(lambda: requests.get(f"{api}/metrics", timeout=10))
    assert elapsed < 3
    assert scrape.status_code == 200, scrape.text
    assert 'executor_up{dependency="redis"} 0.0' in scrape.text.splitlines()
    assert "executor_queue_depth" not in scrape.text  # nothing read from Redis is made up
    health, elapsed = timed(lambda: requests.get(f"{api}/health", timeout=10))
    assert elapsed < 3
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    checks = health.json()["checks"]
    assert checks["redis"]["status"] == "unavailable"
    assert f"127.0.0.1:{port}" in checks["redis"]["message"]
    assert checks["workers"]["status"] == "unavailable"


@pytest.mark.docker
def test_docker_down(
    serve_app: AppFactory, base_settings: Settings, main_redis: str, main_worker: object
):
    address = f"tcp://127.0.0.1:{dead_port()}"
    api = serve_app(base_settings, redis_url=main_redis, docker_host=address)
    response, elapsed = timed(lambda: post(f"{api}/execute", {"code": "print(1)"}))
    assert_unavailable(response, "docker_unavailable", address)
    assert elapsed < 3
    health = requests.get(f"{api}/health", timeout=10)
    assert health.status_code == 503
    checks = health.json()["checks"]
    assert checks["docker"]["status"] == "unavailable" and address in checks["docker"]["message"]
    assert checks["redis"]["status"] == "ok" and checks["workers"]["status"] == "ok"
    lines = requests.get(f"{api}/metrics", timeout=10).text.splitlines()
    assert 'executor_up{dependency="docker"} 0.0' in lines
    assert 'executor_up{dependency="redis"} 1.0' in lines


@pytest.mark.docker
def test_no_worker(serve_app: AppFactory, base_settings: Settings):
    api = serve_app(base_settings, redis_url=flushed(13))
    response, elapsed = timed(lambda: post(f"{api}/execute", {"code": "print(1)"}))
    assert_unavailable(response, "no_workers")
    assert elapsed < 3
    assert_unavailable(post(f"{api}/executions", {"code": "print(1)"}), "no_workers")
    health, elapsed = timed(lambda: requests.get(f"{api}/health", timeout=10))
    assert elapsed < 3
    assert health.status_code == 503
    workers = health.json()["checks"]["workers"]
    assert workers["status"] == "unavailable" and "no worker" in workers["message"]
    assert requests.get(f"{api}/status", timeout=10).json()["workers"] == []
