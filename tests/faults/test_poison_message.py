"""A message whose handling kills the worker (a poison message) is not redelivered forever."""

from __future__ import annotations

import json
import signal

import pytest
import redis

from tests.faults.conftest import StackFactory
from tests.service.conftest import wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

# kombu's Redis transport keeps each delivered, unacknowledged message in UNACKED (tag ->
# message) and UNACKED_INDEX (tag -> delivery time); it re-delivers those older than the
# visibility timeout.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def unacked_ids(client: redis.Redis) -> set[str]:
    ids = set()
    for raw in client.hvals(UNACKED):
        message = json.loads(raw)[0]
        ids.add(message["headers"]["id"])
    return ids


def make_due(client: redis.Redis) -> None:
    """Age every unacknowledged message past the visibility timeout: the next worker to start
    re-delivers it at once, as Redis would do by itself minutes later."""
    for tag in client.zrange(UNACKED_INDEX, 0, -1):
        client.zadd(UNACKED_INDEX, {tag: 0})


def test_a_message_that_kills_its_worker_ends_internal_error(fault_stack: StackFactory):
    stack = fault_stack(EXECUTOR_POOL_SIZE="0")
    client = stack.redis.client()
    poison = stack.post("/executions", {"code": "import time; time.sleep(60)", "timeout": 60})
    execution_id = poison.json()["id"]
    wait_until(
        "the poison running",
        lambda: stack.get(f"/executions/{execution_id}").json()["status"] == "running",
        60,
    )
    # The worker dies while it handles the message (SIGKILL: no goodbye, no ack).
    assert stack.worker is not None
    stack.worker.kill(signal.SIGKILL)
    stack.worker.popen.wait(20)
    assert execution_id in unacked_ids(client), "the message was acked by a dead worker"
    make_due(client)
    stack.start_worker(EXECUTOR_POOL_SIZE="0")
    second = stack.worker
    assert second is not None
    # The one redelivery is answered from the record, never run again, and acknowledged.
    wait_until(
        "the redelivery handled",
        lambda: execution_id not in unacked_ids(client) and not client.llen("executor"),
        60,
        0.3,
    )
    record = stack.final(execution_id, timeout=60)
    assert record["status"] == "internal_error" and record["code"] == "execution_lost", record
    log = second.output()
    assert f"execution {execution_id} delivered again" in log
    assert f"execution {execution_id}: " not in log, "the program ran a second time"
    # The worker keeps serving, and the poison is not delivered again (a third worker's start
    # re-delivers whatever is due: nothing is).
    after = stack.post("/execute", {"code": "print('after')"}, timeout=120)
    assert after.status_code == 200 and after.json()["stdout"] == "after\n", after.text
    make_due(client)
    stack.start_worker(EXECUTOR_POOL_SIZE="0")
    assert execution_id not in unacked_ids(client) and not client.llen("executor")
    assert f"execution {execution_id}" not in stack.worker.output()
