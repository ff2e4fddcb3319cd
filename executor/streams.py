"""Executions' live events in Redis Streams: what the worker publishes, what the API reads.

Each execution has one stream, ``events:<id>`` (executor.names), whose entries are
``{"e": <event>, "d": <JSON data>}``:

    status   {"status": "queued"} from the submission, {"status": "running"} from the claim
    stdout   {"data": <text>} (and "truncated": true once, when the cap cut the stream)
    stderr   the same, for stderr
    result   no data: the execution has finished and its record holds the result

The status and result entries are added by the store's scripts that move the record
(executor.store), atomically with it; the output entries by the worker as the program writes
(executor.output). Every XADD trims the stream (MAXLEN ~ EXECUTOR_EVENTS_MAX_LEN) and the
stream expires with the record (EXECUTOR_RESULT_TTL after its last change). An entry's id is
its Redis id, which is also the SSE event's id: `read(after=...)` gives exactly what followed.
This module uses the Store's client and its translation of Redis errors.

Waiting for new entries costs no Redis connection and no round trip per reader: each process
has one `Waker`, a thread (a greenlet under gevent) blocked in one XREAD on every watched
stream at once, that hands what it reads to the readers of each stream (a `Watch`). A new
watch interrupts that XREAD by adding to the waker's own wake stream, so it is included at
once (no lost wake-up, no polling).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from executor.errors import ExecutorError
from executor.names import EVENTS, EVENTS_WAKE
from executor.store import Store, connect

log = logging.getLogger(__name__)

READ_COUNT = 256  # entries per read
WAKER_BLOCK_MS = 30_000  # the waker's XREAD; a new watch interrupts it
WAKER_RETRY_S = 0.5  # after a Redis fault
WAKE_TTL_S = 600  # the wake stream of a waker that stopped goes away


@dataclass(frozen=True)
class Event:
    """One entry of an execution's stream: its id, event name and JSON data ("" for result)."""

    id: str
    name: str
    data: str


def key(execution_id: str) -> str:
    return EVENTS + execution_id


def valid_id(entry_id: str) -> bool:
    """Whether `entry_id` is a Redis stream id ("<ms>-<seq>"), as a Last-Event-ID must be."""
    ms, sep, seq = entry_id.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit() and len(entry_id) <= 41


class EventStreams:
    """Publishes and reads executions' event streams through a Store's Redis. Thread-safe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waker: Waker | None = None
        self._lock = threading.Lock()

    def publish(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Append (execution id, event, JSON data) entries, in order, in one round trip."""
        if not entries:
            return
        with self.store.translated("publish live output"):
            pipe = self.store.redis.pipeline(transaction=False)
            for execution_id, name, data in entries:
                stream = key(execution_id)
                pipe.xadd(
                    stream,
                    {"e": name, "d": data},
                    maxlen=self.store.events_max_len,
                    approximate=True,
                )
                pipe.expire(stream, self.store.ttl_s)
            pipe.execute()

    def read(self, execution_id: str, after: str, count: int = READ_COUNT) -> list[Event]:
        """The entries after `after` ("0" for all), oldest first, without waiting."""
        with self.store.translated("read live events"):
            reply = cast(list[Any], self.store.redis.xread({key(execution_id): after}, count=count))
        return [_event(entry) for _, entries in reply or () for entry in entries]

    def last_id(self, execution_id: str) -> str:
        """The id of the stream's last entry ("0" when it has none)."""
        with self.store.translated("read live events"):
            last = cast(list[Any], self.store.redis.xrevrange(key(execution_id), count=1))
        return str(last[0][0]) if last else "0"

    def watch(self, execution_id: str, after: str) -> Watch:
        """Entries of the stream of `execution_id` as they are added from now on.

        The watch receives every entry after its `start` (at least `after`); what lies between
        `after` and `start` the caller reads itself. `after` must not lie beyond the stream's
        last entry (see `last_id`): the first watch of a stream sets where the waker reads from.
        Unwatch it after.
        """
        with self._lock:
            if self._waker is None:
                self._waker = Waker(self.store)
            waker = self._waker
        return waker.watch(key(execution_id), after)

    def unwatch(self, execution_id: str, watch: Watch) -> None:
        if self._waker is not None:
            self._waker.unwatch(key(execution_id), watch)

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close()


def _event(entry: Any) -> Event:
    entry_id, fields = entry
    return Event(str(entry_id), str(fields.get("e", "")), str(fields.get("d", "")))


class Watch:
    """What the Waker hands one reader: batches of entries after `start`, in order.

    (A deque and an event rather than a queue: threading's primitives are what gevent patches
    in every version, so a waiting reader is a parked greenlet.)
    """

    def __init__(self, start: str) -> None:
        self.start = start
        self._batches: deque[list[Event]] = deque()
        self._ready = threading.Event()

    def put(self, batch: list[Event]) -> None:
        self._batches.append(batch)
        self._ready.set()

    def get(self, timeout: float) -> list[Event] | None:
        """The entries handed since the last call, or None when none came within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self._batches:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._ready.wait(remaining)
            self._ready.clear()
        events: list[Event] = []
        while self._batches:
            events += self._batches.popleft()
        return events


class Waker:
    """One blocked XREAD over every watched stream; hands what it reads to each stream's
    watches, so that a reader costs no Redis round trip per event.

    The thread starts with the first watch and parks (on a local event) when none is left.
    Its Redis connection is its own, outside the store's pool: it is blocked most of the time.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._wake_key = EVENTS_WAKE + uuid.uuid4().hex
        self._lock = threading.Lock()
        self._watchers: dict[str, set[Watch]] = {}
        self._positions: dict[str, str] = {}  # stream -> last id seen by the waker
        self._wake_position = "0"
        self._changed = threading.Event()  # a watch came or went
        self._stopping = False
        self._thread: threading.Thread | None = None

    def watch(self, stream: str, after: str) -> Watch:
        with self._lock:
            fresh = stream not in self._watchers
            if fresh:
                self._positions[stream] = after
            # From here on, every entry after the waker's position reaches this watch.
            watch = Watch(self._positions[stream])
            self._watchers.setdefault(stream, set()).add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="executor-events", daemon=True
                )
                self._thread.start()
        self._changed.set()
        if fresh:
            self._interrupt()
        return watch

    def unwatch(self, stream: str, watch: Watch) -> None:
        with self._lock:
            watches = self._watchers.get(stream)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watchers[stream]
                    self._positions.pop(stream, None)

    def close(self) -> None:
        self._stopping = True
        self._changed.set()
        self._interrupt()

    def _interrupt(self) -> None:
        """Make the blocked XREAD return, so that it is issued again with every stream."""
        try:
            with self._store.translated("wake the live-event reader"):
                pipe = self._store.redis.pipeline(transaction=False)
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, WAKE_TTL_S)
                pipe.execute()
        except ExecutorError as e:
            log.warning("could not wake the live-event reader: %s", e)

    def _run(self) -> None:
        client: redis.Redis | None = None
        while not self._stopping:
            with self._lock:
                streams = dict(self._positions)
            if not streams:
                self._changed.wait(WAKER_BLOCK_MS / 1000)
                self._changed.clear()
                continue
            self._changed.clear()
            try:
                if client is None:
                    client = connect(self._store.url, blocking_s=WAKER_BLOCK_MS / 1000)
                positions: dict[Any, Any] = {self._wake_key: self._wake_position, **streams}
                reply = client.xread(
                    positions,
                    count=READ_COUNT,
                    block=WAKER_BLOCK_MS,
                )
            except redis.RedisError as e:
                log.warning("live-event reader: Redis failed (%s); retrying", type(e).__name__)
                if client is not None:
                    client.close()
                    client = None
                self._changed.wait(WAKER_RETRY_S)
                continue
            self._dispatch(cast(list[Any], reply or []))
        if client is not None:
            client.close()

    def _dispatch(self, reply: list[Any]) -> None:
        handed: list[tuple[Watch, list[Event]]] = []
        with self._lock:
            for stream, entries in reply:
                if stream == self._wake_key:
                    self._wake_position = str(entries[-1][0])
                    continue
                if stream in self._positions:
                    batch = [_event(entry) for entry in entries]
                    self._positions[stream] = batch[-1].id
                    handed += [(watch, batch) for watch in self._watchers.get(stream, ())]
        for watch, batch in handed:
            watch.put(batch)


def newer(a: str, b: str) -> bool:
    """Whether stream id `a` comes after `b` ("0" before any)."""

    def parts(entry_id: str) -> tuple[int, int]:
        ms, _, seq = entry_id.partition("-")
        return int(ms or 0), int(seq or 0)

    return parts(a) > parts(b)
