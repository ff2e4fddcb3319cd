"""The Docker proxy restarts under a running stack: executions fail fast and clearly while it is
gone, the first one after it is back succeeds, and the warm pool heals itself."""

from __future__ import annotations

import signal
import time
from typing import Any

import docker
import pytest

from tests.faults.conftest import FaultStack, PrivateEngine, StackFactory, stack_containers
from tests.service.conftest import wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

POOL = 2


def pool_warm(stack: FaultStack) -> int:
    status = stack.get("/status").json()
    return sum(int(w["pool"]["warm"]) for w in status["workers"])


def assert_fails_fast_and_clearly(stack: FaultStack) -> None:
    """While Docker is gone: an answer within seconds that names Docker, never a hang."""
    began = time.monotonic()
    answer = stack.post("/execute", {"code": "print(1)"}, timeout=60)
    assert time.monotonic() - began < 20, "POST /execute hung while Docker was gone"
    assert answer.status_code in (502, 503), answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] in ("docker_unavailable", "sandbox_error"), body
    assert "Retry-After" in answer.headers or answer.status_code == 502
    if "id" in body:  # it was accepted: its record ends internal_error, never queued
        assert stack.final(body["id"])["status"] == "internal_error"


def assert_recovered(stack: FaultStack, raw: docker.DockerClient) -> None:
    """The first execution after Docker is back succeeds; the pool refills by itself with
    live containers (every one handed out runs), and nothing of the stack is left over."""
    # At once, with no wait for /health: the API must not refuse it on what it cached.
    first = stack.post("/execute", {"code": "print('back')"}, timeout=120)
    assert first.status_code == 200, first.text + stack.logs()
    assert first.json()["status"] == "success" and first.json()["stdout"] == "back\n"
    wait_until("the pool warm again", lambda: pool_warm(stack) >= POOL, 90, 0.5)
    warm = stack.post("/execute", {"code": "print('warm')"}, timeout=120).json()
    # From the refilled pool: a live container, not one whose attach died with Docker.
    assert warm["status"] == "success" and warm["warm"] is True, warm
    for i in range(POOL):
        answer = stack.post("/execute", {"code": f"print({i})"}, timeout=120)
        assert answer.status_code == 200 and answer.json()["stdout"] == f"{i}\n", answer.text
    assert stack.worker is not None and stack.worker.popen.poll() is None
    # Only the pool's containers remain: what the restart left behind was removed.
    wait_until(
        "only the warm pool left",
        lambda: len(stack_containers(raw, stack.name)) <= POOL,
        90,
        0.5,
    )


def test_the_proxy_restarts(fault_stack: StackFactory, raw_docker: docker.DockerClient):
    stack = fault_stack(EXECUTOR_POOL_SIZE=str(POOL))
    wait_until("the pool warm", lambda: pool_warm(stack) >= POOL, 90, 0.5)
    assert stack.post("/execute", {"code": "print(1)"}).json()["status"] == "success"
    wait_until("the pool warm", lambda: pool_warm(stack) >= POOL, 90, 0.5)
    assert stack.proxy is not None
    stack.proxy.kill(signal.SIGKILL)  # every attach of the warm containers dies with it
    stack.proxy.popen.wait(10)
    time.sleep(2)  # the API's health cache notices
    assert_fails_fast_and_clearly(stack)
    stack.start_proxy()
    assert_recovered(stack, raw_docker)


def test_the_engine_restarts(
    fault_stack: StackFactory, private_engine: PrivateEngine, raw_docker: docker.DockerClient
):
    """A crash and restart of the engine itself (a private dockerd: never the shared one)."""
    stack = fault_stack(private_engine.url, EXECUTOR_POOL_SIZE=str(POOL))
    engine = private_engine.client()
    try:
        wait_until("the pool warm", lambda: pool_warm(stack) >= POOL, 90, 0.5)
        assert stack.post("/execute", {"code": "print(1)"}).json()["status"] == "success"
        wait_until("the pool warm", lambda: pool_warm(stack) >= POOL, 90, 0.5)
        private_engine.stop(signal.SIGKILL)  # a crash: containers and containerd left behind
        time.sleep(2)
        assert_fails_fast_and_clearly(stack)
        private_engine.start()
        assert_recovered(stack, engine)
    finally:
        engine.close()
