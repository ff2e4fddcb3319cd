"""A worker's writes to Redis that must outlive a Redis outage: claims and finishes.

Redis may restart at any moment. An execution whose claim or finish is lost with it would stay
`queued` or `running` until its record expires, although its worker is alive and beating (so
no sweep finishes it as lost). So the worker:
- retries a claim while Redis is unreachable, up to CLAIM_PATIENCE_S (the message is already
  in the worker's hands; Redis coming back takes seconds), and
- keeps a finish that Redis could not take in its outbox, and sends it again with every
  heartbeat until Redis takes it or refuses it (a record finished meanwhile as lost, or gone
  with a Redis that lost its memory). A stopping worker sends its outbox a last time.

Redis may also come back having lost its last writes although it took them: restored from a
snapshot, or a replica promoted before it had them. So the outbox remembers the finishes it
stored in the last REPLAY_S (up to REPLAY_COUNT and REPLAY_BYTES of them), and when the Redis
it talks to is another server (its run id changed) it sends them all again. A finish that
Redis still has is refused as a repeat and changes nothing; one that Redis lost is stored
again, also over a claim Redis lost (the record is `queued` again: see Store.finish). Without
this, such an execution would stay `running` (its worker alive) or be queued again and run a
second time (executor.rescue).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from executor import metrics
from executor.errors import RedisUnavailable
from executor.store import Store

log = logging.getLogger(__name__)

CLAIM_PATIENCE_S = 60.0  # how long a delivered message waits for Redis to come back
RETRY_STEP_S = 0.5
REPLAY_S = 600.0  # finishes sent again to a Redis that came back (see the module docstring)
REPLAY_COUNT = 1000
REPLAY_BYTES = 32 << 20
LOGGED_IDS = 20  # ids named in the log line of a replay

T = TypeVar("T")


def patiently(what: str, call: Callable[[], T], patience_s: float = CLAIM_PATIENCE_S) -> T:
    """`call()`, retried while Redis is unreachable, for up to `patience_s` seconds."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except RedisUnavailable as e:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s: waiting for Redis: %s", what, e.message)
            time.sleep(RETRY_STEP_S)


@dataclass(frozen=True)
class _Finish:
    incarnation: str
    payload: dict[str, Any]
    encoded: str  # the payload as JSON: made once, for every send and for the replay's bound
    counter: str | None
    output: Sequence[tuple[str, str]]


class Outbox:
    """Finishes waiting for Redis, sent again by `flush()`. Thread-safe."""

    def __init__(
        self,
        store: Store,
        worker: str = "",
        events: Callable[[str, int], None] = lambda name, n: None,
    ) -> None:
        """`worker`: the instance whose runs these are (a record whose claim Redis lost is
        finished as run there). `events`: counts the results stored again."""
        self.store = store
        self.worker = worker
        self.events = events
        self._lock = threading.Lock()
        self._pending: dict[str, _Finish] = {}
        # (when, id, finish, its size) of the finishes stored lately, oldest first.
        self._stored: deque[tuple[float, str, _Finish, int]] = deque()
        self._stored_bytes = 0
        self._server = ""  # the run id of the Redis that took them

    def finish(
        self,
        execution_id: str,
        incarnation: str,
        payload: dict[str, Any],
        counter: str | None = None,
        output: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Store.finish, or keep it for later while Redis is unreachable (then True: the
        record is ours until Redis says otherwise)."""
        kept = _Finish(incarnation, payload, json.dumps(payload), counter, output)
        try:
            taken = self._send(execution_id, kept)
        except RedisUnavailable as e:
            log.warning("execution %s: result kept until Redis is back: %s", execution_id, e)
            with self._lock:
                self._pending[execution_id] = kept
            return True
        if taken:
            self._remember(execution_id, kept)
        return taken

    def _send(self, execution_id: str, kept: _Finish) -> bool:
        return self.store.finish(
            execution_id,
            kept.incarnation,
            kept.payload,
            counter=kept.counter,
            output=kept.output,
            worker=self.worker,
            encoded=kept.encoded,
        )

    def _remember(self, execution_id: str, kept: _Finish) -> None:
        size = len(kept.encoded) + sum(len(a) + len(b) for a, b in kept.output)
        now = time.monotonic()
        with self._lock:
            self._stored.append((now, execution_id, kept, size))
            self._stored_bytes += size
            while self._stored and (
                len(self._stored) > REPLAY_COUNT
                or self._stored_bytes > REPLAY_BYTES
                or self._stored[0][0] < now - REPLAY_S
            ):
                self._stored_bytes -= self._stored.popleft()[3]

    def replay(self) -> int:
        """If Redis is another server than the one that took the recent finishes (a restart,
        a failover), send them again; how many it had lost. Raises RedisUnavailable."""
        server = self.store.server_id()
        with self._lock:
            known, self._server = self._server, server
            recent = [(i, kept) for _, i, kept, _ in self._stored] if known != server else []
        if not known or not recent:
            return 0
        restored = [i for i, kept in recent if self._send(i, kept)]
        if restored:
            self.events(metrics.RESULTS_RESTORED, len(restored))
            log.warning(
                "Redis came back without %d results it had taken (%s%s); stored again",
                len(restored),
                ", ".join(restored[:LOGGED_IDS]),
                ", ..." if len(restored) > LOGGED_IDS else "",
            )
        return len(restored)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Send every kept finish; return how many are still waiting. Raises RedisUnavailable
        when Redis is still down (what was not sent stays)."""
        self.replay()
        with self._lock:
            pending = list(self._pending.items())
        for execution_id, kept in pending:
            taken = self._send(execution_id, kept)
            with self._lock:
                self._pending.pop(execution_id, None)
            if taken:
                self._remember(execution_id, kept)
                log.info("execution %s: result stored after Redis came back", execution_id)
            else:
                log.warning(
                    "execution %s: its record was finished meanwhile or is gone; result dropped",
                    execution_id,
                )
        return len(self)
