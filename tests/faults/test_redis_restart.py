"""Redis restarts under a running stack: fast 503s while it is gone, recovery without restarts,
and no execution left `queued` or `running` forever."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.faults.conftest import RedisRelay, StackFactory
from tests.service.conftest import wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

FINAL = {"success", "internal_error"}


def assert_redis_503(response: requests.Response, address: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "redis_unavailable" and body["status"] == 503
    assert address in body["message"]
    assert int(response.headers["Retry-After"]) > 0


def test_redis_restart(fault_stack: StackFactory):
    stack = fault_stack()
    address = f"127.0.0.1:{stack.redis.port}"
    # Before: one finished, one running across the restart, one queued behind... submitted.
    assert stack.post("/execute", {"code": "print(1)"}).json()["status"] == "success"
    running = stack.post("/executions", {"code": "import time; time.sleep(4); print(2)"})
    assert running.status_code == 202, running.text
    accepted = [running.json()["id"]]
    accepted += [stack.post("/executions", {"code": f"print({i})"}).json()["id"] for i in range(3)]
    wait_until(
        "the long execution running",
        lambda: stack.get(f"/executions/{accepted[0]}").json()["status"] == "running",
        30,
    )

    stack.redis.stop()
    try:
        for call in (
            lambda: stack.post("/execute", {"code": "print(1)"}, timeout=30),
            lambda: stack.post("/executions", {"code": "print(1)"}, timeout=30),
            lambda: stack.get(f"/executions/{accepted[1]}"),
        ):
            began = time.monotonic()
            assert_redis_503(call(), address)
            assert time.monotonic() - began < 10
        # /health caches its checks for a second: it names Redis within a few.
        health = wait_until(
            "/health failing",
            lambda: (h := stack.get("/health")).status_code == 503 and h.json(),
            10,
        )
        checks = health["checks"]
        assert checks["redis"]["status"] == "unavailable" and address in checks["redis"]["message"]
        time.sleep(3)  # the worker notices: its heartbeat, its broker connection fail
    finally:
        stack.redis.start()  # empty: a Redis without persistence forgets everything

    # The API recovers by itself.
    wait_until("the API healthy again", lambda: stack.get("/health").status_code == 200, 60)
    # The executions accepted before: finished, or gone with Redis's memory (404), never stuck.
    for execution_id in accepted:
        answer = stack.get(f"/executions/{execution_id}")
        assert answer.status_code in (200, 404), answer.text
    # The worker recovers by itself: new executions run.
    after = stack.post("/execute", {"code": "print('after')"}, timeout=120)
    assert after.status_code == 200, after.text + stack.logs()
    assert after.json()["stdout"] == "after\n"
    assert stack.worker is not None and stack.worker.popen.poll() is None


def test_redis_restart_keeps_its_data(fault_stack: StackFactory):
    """A Redis that comes back with its data (a failover, a restart with persistence): every
    execution accepted before ends finished or internal_error, never queued or running, also
    the one whose result was ready while Redis was away."""
    stack = fault_stack()
    accepted = [
        stack.post("/executions", {"code": "import time; time.sleep(3); print(1)"}).json()["id"]
    ]
    accepted += [stack.post("/executions", {"code": f"print({i})"}).json()["id"] for i in range(4)]
    wait_until(
        "the first execution running",
        lambda: stack.get(f"/executions/{accepted[0]}").json()["status"] == "running",
        30,
    )
    stack.redis.restart(down_s=4, keep_data=True)
    results: dict[str, Any] = {i: stack.final(i, timeout=90) for i in accepted}
    for execution_id, record in results.items():
        assert record["status"] in FINAL, (execution_id, record)
    wait_until("the worker beating again", lambda: stack.get("/health").status_code == 200, 60)
    after = stack.post("/execute", {"code": "print('after')"}, timeout=120)
    assert after.status_code == 200 and after.json()["stdout"] == "after\n", after.text


# The worker's claim of a record: its key followed by the history's in one EVALSHA.
CLAIM = rb"executor:execution:[^\r]+\r\n\$\d+\r\nexecutor:recent\r\n"


def test_redis_drops_while_an_execution_is_claimed(fault_stack: StackFactory):
    """Redis goes away exactly when the worker claims a delivered message: the execution runs
    once Redis is back (or ends internal_error); it does not stay queued until it expires."""
    stack = fault_stack(start=False)
    stack.redis.start()
    relay = RedisRelay(
        stack.redis.port, CLAIM, lambda: stack.redis.restart(down_s=3, keep_data=True)
    )
    try:
        stack.start_proxy()
        stack.start_worker(redis_url=relay.url, EXECUTOR_POOL_SIZE="0")
        stack.start_api()
        submitted = stack.post("/executions", {"code": "print('claimed')"})
        assert submitted.status_code == 202, submitted.text
        execution_id = submitted.json()["id"]
        wait_until("the claim cut off", relay.fired.is_set, 60)
        record = stack.final(execution_id, timeout=90)
        assert record["status"] == "success" and record["stdout"] == "claimed\n", record
        try:
            wait_until("healthy again", lambda: stack.get("/health").status_code == 200, 60)
        except AssertionError:
            raise AssertionError(stack.get("/health").text + stack.logs()) from None
        after = stack.post("/execute", {"code": "print('after')"}, timeout=120)
        assert after.status_code == 200 and after.json()["stdout"] == "after\n", after.text
    finally:
        relay.close()


@pytest.mark.parametrize("finish", ["before", "after"])
def test_redis_comes_back_without_the_claim(fault_stack: StackFactory, finish: str):
    """Redis comes back from a snapshot taken just before the worker claimed an execution (a
    restart from an older snapshot, a replica that lagged): the claim is gone, and with it the
    result stored `before` the restart; or the result comes `after` it. Either way the
    execution ends with its result, and its program ran once."""
    stack = fault_stack(start=False)
    stack.redis.start()
    relay = RedisRelay(stack.redis.port, CLAIM, stack.redis.snapshot, forward=True)
    code = "import time; time.sleep(3); print('once')" if finish == "after" else "print('once')"
    try:
        stack.start_proxy()
        stack.start_worker(redis_url=relay.url, EXECUTOR_POOL_SIZE="0")
        stack.start_api()
        submitted = stack.post("/executions", {"code": code})
        assert submitted.status_code == 202, submitted.text
        execution_id = submitted.json()["id"]
        if finish == "before":
            assert stack.final(execution_id, timeout=60)["stdout"] == "once\n"
        else:
            wait_until(
                "the execution running",
                lambda: stack.get(f"/executions/{execution_id}").json()["status"] == "running",
                60,
            )
        assert relay.fired.is_set()
        stack.redis.restore(down_s=2)
        record = stack.final(execution_id, timeout=60)
        assert record["status"] == "success" and record["stdout"] == "once\n", record
        assert stack.worker is not None
        runs = stack.worker.output().count(f"execution {execution_id} finished:")
        assert runs == 1, stack.logs()
    finally:
        relay.close()


def test_a_message_the_broker_lost_is_queued_again(fault_stack: StackFactory):
    """The broker loses a message after the API recorded its execution (a failover that lost
    the write, an API process that died before it published): a worker queues it again."""
    # The worker serves Python only (its language's queue); the API, routing nothing,
    # publishes to the shared queue: that message waits for no one, until it is lost.
    stack = fault_stack(EXECUTOR_LANGUAGES="python", EXECUTOR_RESCUE_AFTER="2")
    submitted = stack.post("/executions", {"code": "print('rescued')"})
    assert submitted.status_code == 202, submitted.text
    execution_id = submitted.json()["id"]
    client = stack.redis.client()
    try:
        assert client.llen("executor") == 1
        client.delete("executor")  # the broker lost it
    finally:
        client.close()
    record = stack.final(execution_id, timeout=60)
    assert record["status"] == "success" and record["stdout"] == "rescued\n", record
    assert stack.worker is not None
    assert "the broker lost its message" in stack.worker.output()
