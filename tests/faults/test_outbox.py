"""A worker's claim and finish outlive a Redis restart (executor.outbox), on a real Redis."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from executor import metrics
from executor.errors import RedisUnavailable
from executor.outbox import Outbox, patiently
from executor.store import Store
from tests.faults.conftest import RedisServer

pytestmark = [pytest.mark.service]


def test_a_finish_redis_could_not_take_is_sent_once_it_is_back(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    store = Store(server.url, ttl_s=60, history_size=10)
    try:
        assert store.claim("x1", "python", "inc-1", "w").claimed
        store.redis.save()  # what Redis comes back with
        server.stop()
        outbox = Outbox(store)
        assert outbox.finish("x1", "inc-1", {"id": "x1", "status": "success"}) is True
        assert len(outbox) == 1
        with pytest.raises(RedisUnavailable):
            outbox.flush()
        assert len(outbox) == 1  # still kept
        server.start()
        assert outbox.flush() == 0
        record = store.get("x1")
        assert record is not None and record.status == "success"
        # A record finished meanwhile by another (lost) is left as it is; the finish is dropped.
        assert store.claim("x2", "python", "inc-1", "w").claimed
        server.stop()
        assert outbox.finish("x2", "inc-1", {"id": "x2", "status": "success"})
        (tmp_path / "dump.rdb").unlink()
        server.start()  # empty: the record is gone
        assert outbox.flush() == 0 and store.get("x2") is None
    finally:
        store.close()
        server.stop()


def test_a_claim_waits_for_redis_to_come_back(tmp_path: Path):
    server = RedisServer(tmp_path)
    server.start()
    store = Store(server.url, ttl_s=60, history_size=10)
    try:
        server.stop()
        back = threading.Timer(2.0, server.start)
        back.start()
        began = time.monotonic()
        claim = patiently("x3", lambda: store.claim("x3", "python", "inc-1", "w"), 30)
        assert claim.claimed and time.monotonic() - began >= 1.5
        back.join()
        server.stop()
        with pytest.raises(RedisUnavailable):  # the patience is bounded
            patiently("x4", lambda: store.claim("x4", "python", "inc-1", "w"), 1)
    finally:
        store.close()
        server.stop()


def test_results_redis_lost_after_taking_them_are_stored_again(tmp_path: Path):
    """A Redis that comes back from a snapshot older than its last writes (or a replica
    promoted before it had them) has lost claims and finishes: the worker's outbox stores its
    recent results again, also over a claim that is gone (the record is `queued` again)."""
    server = RedisServer(tmp_path)
    server.start()
    store = Store(server.url, ttl_s=60, history_size=10)
    counted: Counter[str] = Counter()
    outbox = Outbox(store, worker="w", events=lambda name, n: counted.update({name: n}))
    try:
        store.beat("inc-1", {"name": "celery@w", "instance": "w"}, {})
        store.submit("before", "python", max_queue=10, request="{}")
        assert store.claim("before", "python", "inc-1", "w").claimed  # kept by the snapshot
        store.submit("after", "python", max_queue=10, request="{}")
        assert outbox.replay() == 0  # learns the server
        store.redis.save()  # what Redis comes back with
        assert store.claim("after", "python", "inc-1", "w").claimed  # lost with the restart
        for execution_id in ("before", "after"):
            assert outbox.finish(execution_id, "inc-1", {"id": execution_id, "status": "success"})
        assert outbox.replay() == 0  # the same server: nothing to send again
        server.stop()
        server.start()
        assert [store.get(i).status for i in ("before", "after")] == ["running", "queued"]  # type: ignore[union-attr]
        assert outbox.flush() == 0
        for execution_id in ("before", "after"):
            record = store.get(execution_id)
            assert record is not None and record.status == "success", execution_id
            assert record.worker == "w" and record.payload == {
                "id": execution_id,
                "status": "success",
            }
        assert store.stored_request("after") is None  # the claim's work, done by the finish
        assert counted == {metrics.RESULTS_RESTORED: 2}
        assert outbox.replay() == 0  # sent once
    finally:
        store.close()
        server.stop()
