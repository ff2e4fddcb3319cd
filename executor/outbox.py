"""A worker's writes to Redis that must outlive a Redis outage: claims and finishes.

Redis may restart at any moment. An execution whose claim or finish is lost with it would stay
`queued` or `running` until its record expires, although its worker is alive and beating (so
no sweep finishes it as lost). So the worker:
- retries a claim while Redis is unreachable, up to CLAIM_PATIENCE_S (the message is already
  in the worker's hands; Redis coming back takes seconds), and
- keeps a finish that Redis could not take in its outbox, and sends it again with every
  heartbeat until Redis takes it or refuses it (a record finished meanwhile as lost, or gone
  with a Redis that lost its memory). A stopping worker sends its outbox a last time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from executor.errors import RedisUnavailable
from executor.store import Store

log = logging.getLogger(__name__)

CLAIM_PATIENCE_S = 60.0  # how long a delivered message waits for Redis to come back
RETRY_STEP_S = 0.5

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
    counter: str | None
    output: Sequence[tuple[str, str]]


class Outbox:
    """Finishes waiting for Redis, sent again by `flush()`. Thread-safe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: dict[str, _Finish] = {}

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
        try:
            return self.store.finish(
                execution_id, incarnation, payload, counter=counter, output=output
            )
        except RedisUnavailable as e:
            log.warning("execution %s: result kept until Redis is back: %s", execution_id, e)
            with self._lock:
                self._pending[execution_id] = _Finish(incarnation, payload, counter, output)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Send every kept finish; return how many are still waiting. Raises RedisUnavailable
        when Redis is still down (what was not sent stays)."""
        with self._lock:
            pending = list(self._pending.items())
        for execution_id, kept in pending:
            taken = self.store.finish(
                execution_id,
                kept.incarnation,
                kept.payload,
                counter=kept.counter,
                output=kept.output,
            )
            with self._lock:
                self._pending.pop(execution_id, None)
            if taken:
                log.info("execution %s: result stored after Redis came back", execution_id)
            else:
                log.warning(
                    "execution %s: its record was finished meanwhile or is gone; result dropped",
                    execution_id,
                )
        return len(self)
