"""Queued executions whose message the broker lost (executor.rescue), on a real Redis with
messages published by Celery."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from kombu.transport.redis import Channel

from executor import metrics, rescue
from executor.celery_app import create_celery, send_execution
from executor.config import Settings
from executor.names import QUEUE, QUEUE_KEYS
from executor.rescue import Rescuer
from executor.store import Store
from tests.service.conftest import flushed

pytestmark = [pytest.mark.service]

DB = 10  # shared with test_store (see the table in tests/service/conftest.py)


@dataclass
class Broker:
    store: Store
    settings: Settings
    sent: list[str]
    counted: Counter[str] = field(default_factory=Counter)

    def publish(self, execution_id: str, language: str, code_chars: int) -> None:
        self.sent.append(execution_id)
        app = create_celery(self.settings)
        send_execution(app, execution_id, language, code_chars, self.settings.route_by_language)

    def rescuer(self, after_s: float = 0.0) -> Rescuer:
        self.store.redis.delete(rescue.RESCUING)  # each look of a test is a new round
        count = self.counted.update
        return Rescuer(self.store, self.publish, "w:1:a", "w", after_s, lambda k, n: count({k: n}))

    def submit(self, code: str = "print(1)") -> str:
        execution_id = str(uuid.uuid4())
        request = json.dumps({"language": "python", "code": code})
        self.store.submit(execution_id, "python", max_queue=100, request=request)
        return execution_id

    def queued_ids(self, key: str = QUEUE) -> list[str]:
        return [message_id(raw) for raw in self.store.redis.lrange(key, 0, -1)]

    def deliver(self, key: str = QUEUE, at: float | None = None) -> str:
        """What kombu does with a message it hands out: off the list, into unacked."""
        raw = self.store.redis.rpop(key)
        assert raw is not None
        message = json.loads(raw)
        tag = message["properties"]["delivery_tag"]
        entry = json.dumps([message, message["properties"]["delivery_info"]["exchange"], key])
        self.store.redis.zadd(Channel.unacked_index_key, {tag: time.time() if at is None else at})
        self.store.redis.hset(Channel.unacked_key, tag, entry)
        return str(message["headers"]["id"])


def message_id(raw: str) -> str:
    return str(json.loads(raw)["headers"]["id"])


@pytest.fixture
def broker() -> Iterator[Broker]:
    url = flushed(DB)
    settings = Settings.from_env({"REDIS_URL": url, "HOSTNAME": "w"})
    store = Store(url, ttl_s=600, history_size=10)
    store.beat("w:1:a", {"name": "celery@w", "instance": "w"}, {})
    yield Broker(store, settings, [])
    store.close()


def test_a_submission_whose_message_was_lost_is_published_again(broker: Broker):
    waiting = broker.submit()
    broker.publish(waiting, "python", 8)
    lost = broker.submit()  # recorded, never published (or the publish was lost)
    broker.sent.clear()
    assert broker.rescuer()() == 1
    assert broker.sent == [lost]  # the one with a message waiting is left alone
    assert sorted(broker.queued_ids()) == sorted([waiting, lost])
    message = json.loads(broker.store.redis.lindex(QUEUE, 0))
    assert message["headers"]["task"] == "executor.execute" and message["headers"]["id"] == lost
    assert "print(1)" not in json.dumps(message)  # the code stays in the record
    assert broker.rescuer()() == 0  # now its message waits
    assert broker.counted == {metrics.RESCUED["republished"]: 1}


def test_a_young_submission_is_left_to_its_publisher(broker: Broker):
    broker.submit()  # an API process publishes right after it records
    assert broker.rescuer(after_s=30)() == 0 and broker.sent == []


def test_workers_look_one_at_a_time(broker: Broker):
    broker.submit()
    assert broker.rescuer()() == 1
    broker.submit()
    # Within RESCUE_EVERY_MS of the last look, another worker's look finds nothing to do.
    second = Rescuer(broker.store, broker.publish, "w:2:b", "w", 0.0)
    assert second() == 0


def test_a_message_delivered_long_ago_and_never_claimed_goes_back_to_the_head(broker: Broker):
    stale = broker.submit()
    broker.publish(stale, "python", 8)
    fresh = broker.submit()
    broker.publish(fresh, "python", 8)
    later = time.time() + 90  # the look happens then: every record is 90 s old
    assert broker.deliver(at=later - 120) == stale  # a worker died holding it
    assert broker.deliver(at=later - 1) == fresh  # a worker about to claim it
    behind = broker.submit()
    broker.publish(behind, "python", 8)
    broker.sent.clear()
    assert broker.rescuer(after_s=60)(now=later) == 1 and broker.sent == []
    assert broker.queued_ids() == [behind, stale]  # the head is the right end (BRPOP)
    restored = json.loads(broker.store.redis.lindex(QUEUE, -1))
    assert restored["headers"]["redelivered"] is True
    assert restored["properties"]["delivery_info"]["redelivered"] is True
    unacked = broker.store.redis.hvals(Channel.unacked_key)
    assert [json.loads(entry)[0]["headers"]["id"] for entry in unacked] == [fresh]
    assert broker.store.redis.zcard(Channel.unacked_index_key) == 1
    assert broker.counted == {metrics.RESCUED["requeued"]: 1}


def test_a_claimed_or_finished_execution_is_never_rescued(broker: Broker):
    running = broker.submit()
    assert broker.store.claim(running, "python", "w:1:a", "w").claimed
    done = broker.submit()
    assert broker.store.claim(done, "python", "w:1:a", "w").claimed
    assert broker.store.finish(done, "w:1:a", {"id": done, "status": "success"})
    assert broker.rescuer()() == 0 and broker.sent == []


def test_a_producers_lost_message_finishes_its_execution_as_lost(broker: Broker):
    # An adopted producer's message (no stored request): its program went with the message.
    execution_id = str(uuid.uuid4())
    app = create_celery(broker.settings)
    app.send_task("executor.execute", args=[{"code": "print(2)"}], task_id=execution_id)
    assert broker.store.adopt() == 1
    broker.store.redis.delete(QUEUE)  # the broker lost it
    assert broker.rescuer()() == 1 and broker.sent == []
    record = broker.store.get(execution_id)
    assert record is not None and record.status == "internal_error"
    assert record.payload is not None and record.payload["code"] == "execution_lost"
    assert "broker lost" in record.payload["message"]
    assert broker.counted == {metrics.RESCUED["lost"]: 1}


def test_a_deep_backlog_is_not_searched(broker: Broker, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rescue, "SCAN_MESSAGES", 2)
    for _ in range(3):
        execution_id = broker.submit()
        broker.publish(execution_id, "python", 8)
    broker.submit()  # lost, but behind a backlog
    broker.sent.clear()
    assert broker.rescuer()() == 0
    drained = message_id(broker.store.redis.rpop(QUEUE))  # the backlog drains: a worker
    assert broker.store.claim(drained, "python", "w:1:a", "w").claimed  # took one
    assert broker.rescuer()() == 1 and len(broker.sent) == 1


def test_a_prioritised_message_goes_back_to_its_priority_list():
    message = {"properties": {"priority": 7}}
    assert rescue._queue_key(QUEUE, message) == f"{QUEUE}{Channel.sep}6"
    assert rescue._queue_key(QUEUE, {"properties": {}}) == QUEUE
    assert rescue._queue_key("someone.elses", message) is None
    assert all(
        rescue._queue_key(QUEUE, {"properties": {"priority": p}}) in QUEUE_KEYS for p in range(12)
    )


def test_a_message_held_for_its_countdown_stays_with_its_worker(broker: Broker):
    execution_id = str(uuid.uuid4())
    app = create_celery(broker.settings)
    app.send_task("executor.execute", args=[{"code": "print(3)"}], task_id=execution_id,
                  countdown=600)  # fmt: skip
    assert broker.store.adopt() == 1
    assert broker.deliver(at=time.time() - 120) == execution_id  # Celery holds it till due
    assert broker.rescuer(after_s=60)() == 0
    assert broker.store.redis.hlen(Channel.unacked_key) == 1
    assert broker.queued_ids() == []
