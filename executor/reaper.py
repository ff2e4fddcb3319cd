"""Removes sandbox containers that nobody will ever use or remove.

A container is normally removed by its execution (or removes itself: AutoRemove, and its runner
exits when the worker's connection closes). The reaper catches what slips through: containers of
a worker that was killed (same instance, process gone), containers older than any execution or
warm container can legitimately be, and containers that stopped but were never removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from executor import metrics
from executor.budget import MAX_TESTS, run_seconds
from executor.engine import Engine
from executor.policy import LABEL_EXECUTION, LABEL_WORKER, SANDBOX_LABEL_FILTER
from executor.protocol import COMPILE_TIMEOUT_S
from executor.sandbox import DEADLINE_GRACE_S, Events

log = logging.getLogger(__name__)

STOPPED_GRACE_S = 60.0  # a stopped container this old was forgotten by its worker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Reaper:
    """Finds and removes abandoned sandboxes, once on start and then every `interval` seconds."""

    def __init__(
        self,
        engine: Engine,
        owner: str,
        max_timeout: float,
        max_idle_s: float,
        interval: float,
        events: Events | None = None,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.instance = owner.rsplit(":", 2)[0]
        longest = run_seconds(max_timeout, MAX_TESTS, COMPILE_TIMEOUT_S, files=True)
        self.max_age_s = max_idle_s + longest + DEADLINE_GRACE_S + 60
        self.interval = interval
        self.events: Events = events or (lambda name, n: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reap()
            except Exception as e:  # noqa: BLE001 - Docker may be down; try again later
                log.warning("reaper pass failed: %s", e)
            self._stop.wait(self.interval)

    def abandoned(self, container: dict[str, Any], now: float) -> str:
        """Why `container` (an entry of the container list) is abandoned, or "" if it is not."""
        owner = (container.get("Labels") or {}).get(LABEL_WORKER, "")
        age = now - float(container.get("Created") or now)
        state = container.get("State", "")
        if age > self.max_age_s:
            return f"older than {self.max_age_s:.0f}s"
        if state in ("exited", "dead", "created") and age > STOPPED_GRACE_S:
            return f"{state} and never removed"
        if owner != self.owner and owner.rsplit(":", 2)[0] == self.instance:
            try:
                pid = int(owner.rsplit(":", 2)[1])
            except (IndexError, ValueError):
                return ""
            if pid == os.getpid() or not _pid_alive(pid):
                return "its worker process is gone"
        return ""

    def reap(self) -> int:
        """One pass; returns how many containers were removed."""
        now = time.time()
        removed = 0
        for container in self.engine.sandboxes(SANDBOX_LABEL_FILTER):
            reason = self.abandoned(container, now)
            if reason and self.engine.remove(str(container["Id"])):
                labels = container.get("Labels") or {}
                execution = labels.get(LABEL_EXECUTION) or None  # a warm one ran nothing yet
                log.info(
                    "reaped sandbox %s: %s",
                    str(container["Id"])[:12],
                    reason,
                    extra={"execution_id": execution},
                )
                removed += 1
        if removed:
            self.events(metrics.CONTAINERS_REAPED, removed)
        return removed
