"""Execution records in a real Redis: the life of a record, history, counters, lost workers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from executor.errors import NoWorkers, QueueFull, RedisUnavailable
from executor.store import HEARTBEAT_TTL_S, INLINE_PAYLOAD_MAX, Store
from tests.service.conftest import dead_port, flushed, redis_url

pytestmark = [pytest.mark.service]

DB = 10


@pytest.fixture
def store() -> Iterator[Store]:
    store = Store(flushed(DB), ttl_s=120, history_size=3)
    yield store
    store.close()


def alive(store: Store, incarnation: str = "w:1:a") -> str:
    store.beat(incarnation, {"name": "celery@w", "instance": "w"}, {})
    return incarnation


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_record_goes_queued_running_finished(store: Store):
    inc = alive(store)
    execution_id = new_id()
    assert store.submit(execution_id, "python", max_queue=10, request="{}") == 0
    record = store.get(execution_id)
    assert record and (record.status, record.language, record.payload) == ("queued", "python", None)
    assert 0 < store.redis.ttl(f"executor:execution:{execution_id}") <= 120

    claim = store.claim(execution_id, "python", inc, "w")
    assert claim.claimed and claim.created <= claim.started
    assert store.get(execution_id).status == "running"  # type: ignore[union-attr]

    payload = {"id": execution_id, "status": "success", "duration_ms": 30}
    assert store.finish(execution_id, inc, payload)
    assert store.get(execution_id).payload == payload  # type: ignore[union-attr]
    assert store.wait(execution_id, 1) == payload  # the waiter's notification
    assert not store.finish(execution_id, inc, payload)  # once only
    counters = store.snapshot()["counters"]
    assert counters["executions_success"] == 1 and counters["submitted"] == 1
    assert counters["duration_ms_total"] == 30


@pytest.mark.parametrize("stdout_bytes", [10, INLINE_PAYLOAD_MAX])
def test_a_waiter_wakes_with_the_payload_small_ones_ride_on_the_message(
    store: Store, stdout_bytes: int
):
    inc = alive(store)
    execution_id = new_id()
    store.submit(execution_id, "python", max_queue=10, request="{}")
    store.claim(execution_id, "python", inc, "w")
    payload = {"id": execution_id, "status": "success", "stdout": "x" * stdout_bytes}
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(store.wait(execution_id, 10)))
    waiting.start()
    time.sleep(0.3)  # the waiter watches (its first look found nothing)
    assert store.finish(execution_id, inc, payload)
    waiting.join(10)
    assert got == [payload]
    done = f"executor:done:{execution_id}"
    # A small payload came with the message: its copy for later waiters is still there. A
    # large one was not sent to every API process: the waiter popped it.
    assert store.redis.llen(done) == (1 if stdout_bytes < INLINE_PAYLOAD_MAX else 0)


def test_a_record_is_created_for_a_producer_that_bypassed_http(store: Store):
    inc = alive(store)
    execution_id = new_id()
    claim = store.claim(execution_id, "python", inc, "w")
    assert claim.claimed and claim.created_at
    assert store.snapshot()["recent"][0]["id"] == execution_id


def test_a_second_delivery_is_not_claimed(store: Store):
    inc = alive(store)
    execution_id = new_id()
    store.claim(execution_id, "python", inc, "w")
    again = store.claim(execution_id, "python", "w:2:b", "w")
    assert not again.claimed and again.status == "running" and again.incarnation == inc
    store.finish(execution_id, inc, {"id": execution_id, "status": "error"})
    late = store.claim(execution_id, "python", "w:2:b", "w")
    assert not late.claimed and late.payload == {"id": execution_id, "status": "error"}


def test_only_the_claiming_incarnation_finishes(store: Store):
    inc = alive(store)
    execution_id = new_id()
    store.claim(execution_id, "python", inc, "w")
    assert not store.finish(
        execution_id, "someone:else:x", {"id": execution_id, "status": "success"}
    )
    assert store.get(execution_id).status == "running"  # type: ignore[union-attr]


def test_history_is_capped_newest_first(store: Store):
    alive(store)
    ids = [new_id() for _ in range(5)]
    for execution_id in ids:
        store.submit(execution_id, "python", max_queue=10, request="{}")
    recent = store.snapshot()["recent"]
    assert [entry["id"] for entry in recent] == ids[::-1][:3]
    assert set(recent[0]) == {"id", "status", "language", "duration_ms", "created_at", "worker"}


def test_unknown_ids_are_none(store: Store):
    assert store.get(new_id()) is None


def test_admission(store: Store):
    with pytest.raises(NoWorkers):
        store.submit(new_id(), "python", max_queue=10, request="{}")
    alive(store)
    store.redis.rpush("executor", "m1", "m2")
    store.redis.rpush("executor\x06\x169", "m3")  # kombu's list for priority 9
    assert store.queue_depth() == 3
    with pytest.raises(QueueFull):
        store.submit(new_id(), "python", max_queue=3, request="{}")
    assert store.snapshot()["recent"] == []  # nothing recorded when refused


def test_a_worker_that_stops_beating_loses_its_executions(store: Store):
    store.beat("dead:1:a", {"name": "celery@dead"}, {})
    live = alive(store, "live:1:b")
    lost_id, kept_id = new_id(), new_id()
    store.claim(lost_id, "python", "dead:1:a", "dead")
    store.claim(kept_id, "python", live, "live")
    assert store.sweep_lost() == []
    store.redis.delete("executor:worker:dead:1:a")  # what HEARTBEAT_TTL_S of silence does
    assert store.sweep_lost() == [lost_id]
    record = store.get(lost_id)
    assert record and record.status == "internal_error"
    assert record.payload and record.payload["code"] == "execution_lost"
    assert "dead" in record.payload["message"]
    assert store.wait(lost_id, 1) == record.payload  # a waiting POST /execute wakes up
    assert store.get(kept_id).status == "running"  # type: ignore[union-attr]
    assert store.snapshot()["counters"]["executions_internal_error"] == 1


def test_heartbeats_expire(store: Store):
    alive(store)
    assert [w["instance"] for w in store.live_workers()] == ["w"]
    assert 0 < store.redis.ttl("executor:worker:w:1:a") <= HEARTBEAT_TTL_S
    store.forget_worker("w:1:a")
    assert store.live_workers() == []


def test_redis_down_fails_fast_naming_the_address():
    port = dead_port()
    store = Store(f"redis://user:hunter2@127.0.0.1:{port}/0", ttl_s=60, history_size=3)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as failed:
        store.get(new_id())
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in failed.value.message and "hunter2" not in failed.value.message


def test_a_redis_that_refuses_us_is_unavailable_not_a_fault_of_ours(tmp_path):
    import subprocess

    from tests.conftest import free_port

    # A read-only replica answers, but refuses every write: a dependency down, not our bug.
    port = free_port()
    command = ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)]
    command += ["--replicaof", "127.0.0.1", str(dead_port())]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    store = Store(f"redis://127.0.0.1:{port}/0", ttl_s=60, history_size=3)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                store.ping()
                break
            except RedisUnavailable:
                assert time.monotonic() < deadline, "redis-server never answered"
                time.sleep(0.05)
        with pytest.raises(RedisUnavailable, match="refuses") as caught:
            alive(store)
        assert caught.value.status == 503 and caught.value.retry_after
    finally:
        store.close()
        server.terminate()
        server.wait(10)


def test_the_request_is_kept_until_the_claim_takes_it(store: Store):
    inc = alive(store)
    execution_id = new_id()
    store.submit(execution_id, "python", max_queue=10, request='{"code": "print(1)"}')
    claim = store.claim(execution_id, "", inc, "w")
    assert claim.claimed and claim.request == '{"code": "print(1)"}'
    assert store.redis.hget(f"executor:execution:{execution_id}", "request") is None
    assert store.get(execution_id).language == "python"  # type: ignore[union-attr]


def test_cancel_finishes_a_queued_record_and_flags_a_running_one(store: Store):
    inc = alive(store)
    queued, running = new_id(), new_id()
    for execution_id in (queued, running):
        store.submit(execution_id, "python", max_queue=10, request="{}")
    store.claim(running, "", inc, "w")

    was, payload = store.cancel(queued)
    assert was == "queued" and payload is not None and payload["status"] == "cancelled"
    assert payload["language"] == "python" and payload["worker"] is None
    assert store.wait(queued, 1) == payload  # its waiter wakes
    assert store.cancel(queued) == ("finished", payload)  # idempotent
    assert not store.claim(queued, "", inc, "w").claimed  # its message is never run

    assert store.cancel_requested([running, queued]) == []
    assert store.cancel(running) == ("running", None)
    assert store.cancel_requested([running, queued]) == [running]
    result = {"id": running, "status": "cancelled", "duration_ms": 5}
    assert store.finish(running, inc, result)
    assert store.cancel_requested([running]) == []  # the flag goes with the finish
    assert store.cancel(running) == ("finished", result)
    assert store.cancel(new_id()) == ("unknown", None)
    assert store.snapshot()["counters"]["executions_cancelled"] == 2


def test_adopt_records_producers_messages_once_and_only_with_usable_ids(store: Store):
    producer = Celery(broker=redis_url(DB))
    try:
        sent = {
            name: producer.send_task(
                "executor.execute", args=[{"code": "x" * 5000}], queue="executor", task_id=name
            ).id
            for name in ("job-42", "bad id", "y" * 129, "ok:1.2_3")
        }
        producer.send_task("other.task", args=[], queue="executor", task_id="not-ours")
    finally:
        producer.close()
    api_id = new_id()
    alive(store)
    store.submit(api_id, "python", max_queue=10, request="{}")

    assert store.adopt(on_demand=True) == 2
    assert store.adopt(on_demand=True) == 0  # once
    for name in ("job-42", "ok:1.2_3"):
        record = store.get(sent[name])
        assert record is not None and (record.status, record.language) == ("queued", "")
    for name in ("bad id", "y" * 129, "not-ours"):
        assert store.get(name) is None
    assert store.snapshot()["recent"][0]["language"] is None
