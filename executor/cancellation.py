"""Cancelling executions: what one cancelled before it started looks like, and the worker's
means to stop one that runs.

A cancel arrives from DELETE /executions/{id} (a flag in Redis, see executor.store) or from a
Celery revoke (the worker's revoked set, and Celery's `task_revoked` signal). Celery's threads
pool cannot terminate a task, so the worker does it itself: each running execution holds a
`CancelToken`; the worker hears DELETE's cancels at once (pub/sub) and Celery's terminate
(task_revoked), looks for any it missed and for plain revokes every heartbeat, and
`Cancellations.cancel()` sets the token, which kills the execution's container at once
(through the Docker proxy, as a timeout does). The sandbox then reports `cancelled` with the
output the program had written.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from executor.models import iso

log = logging.getLogger(__name__)


def cancelled_before_start(
    execution_id: str, language: str, created: float, created_at: str, now: float
) -> dict[str, Any]:
    """The result of an execution cancelled while queued: it never ran, so what only a run
    gives (image, limits, worker, started_at) is null."""
    return {
        "id": execution_id,
        "status": "cancelled",
        "compile": None,
        "exit_code": None,
        "signal": None,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": 0,
        "usage": {"cpu_ms": 0, "memory_bytes": 0},
        "queued_ms": max(0, round((now - created) * 1000)),
        "language": language or None,
        "image": None,
        "limits": None,
        "worker": None,
        "created_at": created_at,
        "started_at": None,
        "finished_at": iso(now),
        "warm": False,
    }


class CancelToken:
    """One execution's cancel: set once; whoever runs the execution registers how to stop it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._stop: Callable[[], None] | None = None

    def is_set(self) -> bool:
        with self._lock:
            return self._set

    def set(self) -> None:
        """Cancel: run the registered stop (once), now or as soon as one is registered."""
        with self._lock:
            if self._set:
                return
            self._set = True
            stop = self._stop
        if stop is not None:
            _call(stop)

    @contextlib.contextmanager
    def stopping_with(self, stop: Callable[[], None]) -> Iterator[None]:
        """While inside, a cancel calls `stop` (at once if the cancel came already)."""
        with self._lock:
            self._stop = stop
            already = self._set
        if already:
            _call(stop)
        try:
            yield
        finally:
            with self._lock:
                self._stop = None


def _call(stop: Callable[[], None]) -> None:
    try:
        stop()
    except Exception:  # the container's deadline and the reaper still end it
        log.exception("could not stop a cancelled execution")


class Cancellations:
    """The tokens of the executions running in this process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, CancelToken] = {}

    @contextlib.contextmanager
    def running(self, execution_id: str) -> Iterator[CancelToken]:
        token = CancelToken()
        with self._lock:
            self._tokens[execution_id] = token
        try:
            yield token
        finally:
            with self._lock:
                if self._tokens.get(execution_id) is token:
                    del self._tokens[execution_id]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._tokens)

    def cancel(self, execution_id: str) -> bool:
        """Cancel `execution_id` if it runs here; whether it does."""
        with self._lock:
            token = self._tokens.get(execution_id)
        if token is None:
            return False
        if not token.is_set():
            log.info("execution %s: cancelled; stopping it", execution_id)
        token.set()
        return True
