"""What a worker process does every second, beside its executions.

`Heartbeat` says the worker is alive (its /status entry, with the counts of what happened
since the last beat), finishes executions whose worker died, and runs the time-limit
backstop: Celery's time limits are not enforced by its threads pool, so an execution still
running past the hard limit is warned about at the soft one and finished as a sandbox_error
at the hard one (its sandbox's own deadline and the reaper still remove the container).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from executor.celery_app import TimeLimits
from executor.errors import ExecutorError, SandboxError
from executor.outbox import Outbox
from executor.store import HEARTBEAT_INTERVAL_S, Store

log = logging.getLogger(__name__)

POOL_STATS_WAIT_S = 0.2


class Events:
    """Counts of what happened (counter name -> n), added to Redis with the next beat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def __call__(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def add(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            self._counts.update(counts)

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts


class Backstop:
    """The executions running here, and what to do when one outlives Celery's time limits."""

    def __init__(self, limits: TimeLimits, fail: Callable[[str, ExecutorError], None]) -> None:
        self.limits = limits
        self._fail = fail
        self._lock = threading.Lock()
        self._active: dict[str, float] = {}  # execution id -> monotonic start
        self._warned: set[str] = set()  # past the soft limit
        self._overdue: set[str] = set()  # past the hard limit, record finished

    @contextlib.contextmanager
    def running(self, execution_id: str, build_s: float = 0.0) -> Iterator[None]:
        with self._lock:
            # A compiled language's build has its own time limit: the clock starts after it.
            self._active[execution_id] = time.monotonic() + build_s
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(execution_id, None)
                self._overdue.discard(execution_id)
                self._warned.discard(execution_id)

    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def enforce(self) -> None:
        """Warn at the soft limit; finish the record as a sandbox_error at the hard one."""
        now = time.monotonic()
        with self._lock:
            running = [(i, now - start) for i, start in self._active.items()]
        for execution_id, elapsed in running:
            if elapsed > self.limits.soft_s and execution_id not in self._warned:
                self._warned.add(execution_id)
                log.warning("execution %s passed the soft time limit", execution_id)
            if elapsed > self.limits.hard_s and execution_id not in self._overdue:
                self._overdue.add(execution_id)
                log.error("execution %s passed the hard time limit", execution_id)
                limit = f"{self.limits.hard_s:g} s"
                error = SandboxError(f"the execution passed the worker's hard time limit ({limit})")
                self._fail(execution_id, error)


class PoolStats:
    """The pool's size, never holding up a heartbeat: a slow answer is used next time."""

    def __init__(self) -> None:
        self._reader = ThreadPoolExecutor(1, "pool-stats")
        self._query: Future[dict[str, Any]] | None = None
        self._last: dict[str, Any] = {
            "warm": 0,
            "starting": 0,
            "target": 0,
            "idle": {},
            "languages": {},
        }

    def read(self, ask: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
        if ask is not None and (self._query is None or self._query.done()):
            self._query = self._reader.submit(ask)
        if self._query is not None:
            try:
                stats = self._query.result(timeout=POOL_STATS_WAIT_S)
                self._last = {
                    "warm": stats.get("warm", 0),
                    "starting": stats.get("starting", 0),
                    "target": stats.get("target", 0),
                    "idle": dict(stats.get("idle") or {}),
                    "languages": dict(stats.get("languages") or {}),
                }
            except FutureTimeout:
                pass
            except Exception as e:  # noqa: BLE001 - the pool must not stop the heartbeat
                log.warning("pool stats failed: %s", e)
        return dict(self._last)

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)


class Heartbeat:
    """Beats for one worker incarnation every second, in a thread of its own."""

    def __init__(
        self,
        store: Store,
        incarnation: str,
        info: Callable[[], dict[str, Any]],
        events: Events,
        backstop: Backstop,
        outbox: Outbox | None = None,
    ) -> None:
        self.store = store
        self._outbox = outbox
        self.incarnation = incarnation
        self._info = info
        self._events = events
        self._backstop = backstop
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One beat now: the worker's entry and the counts since the last one."""
        counts = self._events.take()
        try:
            self.store.beat(self.incarnation, self._info(), counts)
        except ExecutorError:
            self._events.add(counts)  # kept for the next beat
            raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._forever, name="heartbeat", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop beating (the counts not sent yet stay for `flush()`)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def flush(self) -> None:
        """Send the counts not sent yet (at shutdown)."""
        counts = self._events.take()
        if counts:
            self.store.beat(self.incarnation, self._info(), counts)

    def _forever(self) -> None:
        while not self._stopping.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.beat()
                if self._outbox is not None and len(self._outbox):
                    self._outbox.flush()  # results kept while Redis was away
                self.store.sweep_lost()
                self._backstop.enforce()
            except ExecutorError as e:
                log.warning("heartbeat failed: %s", e)
            except Exception:
                log.exception("heartbeat failed")
