"""A worker's claim and finish outlive a Redis restart (executor.outbox), on a real Redis."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

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
