"""Warm containers, each handed out once and never reused.

The pool keeps `size` containers of each pooled profile (language, memory, cpus) created,
attached, started and ready, so an execution only has to deliver its code. A container leaves
the pool exactly once: to one execution, or to the disposer when it is too old, its image has
changed, its runner died, or the pool stops. Refills run in the background under a
concurrency cap and back off while Docker fails.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from executor import metrics
from executor.models import Language
from executor.policy import profile_name
from executor.sandbox import Container, Sandbox

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 20.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Profile:
    """What a pooled container is made for."""

    language: Language
    memory_mb: int
    cpus: float

    @property
    def name(self) -> str:
        return profile_name(self.language.name, self.memory_mb, self.cpus)


class WarmPool:
    """Keeps `size` ready containers per profile; `take()` hands one out or returns None."""

    def __init__(
        self,
        sandbox: Sandbox,
        profiles: list[Profile],
        size: int,
        max_idle_s: float,
        refill_concurrency: int,
        dispose: Callable[[Container], None],
    ) -> None:
        self.sandbox = sandbox
        self.profiles = {p.name: p for p in profiles}
        self.size = size
        self.max_idle_s = max_idle_s
        self._dispose = dispose
        self._idle: dict[str, deque[Container]] = {name: deque() for name in self.profiles}
        self._starting: dict[str, int] = dict.fromkeys(self.profiles, 0)
        self._cond = threading.Condition()
        self._stopping = False
        self._backoff = 0.0
        self._backoff_until = 0.0
        self._builders = ThreadPoolExecutor(max(1, refill_concurrency), "pool-refill")
        self._cap = max(1, refill_concurrency)
        self._thread: threading.Thread | None = None
        self.handed_out = 0
        self.misses = 0

    def start(self) -> None:
        if self.size <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._refill_loop, name="pool-refill", daemon=True)
        self._thread.start()

    def take(self, language: Language, memory_mb: int, cpus: float) -> Container | None:
        """A ready container for this profile, or None (then the caller makes a fresh one)."""
        name = profile_name(language.name, memory_mb, cpus)
        with self._cond:
            queue = self._idle.get(name)
            while queue:
                container = queue.popleft()
                if container.alive():
                    self.handed_out += 1
                    self._cond.notify_all()
                    return container
                self._dispose(container)
            self.misses += 1
            self._cond.notify_all()
        if queue is not None and self.size > 0:
            # A profile the pool keeps warm, found empty: the pool is exhausted (a series).
            self.sandbox.events(metrics.POOL_MISSES, 1)
        return None

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "warm": sum(len(q) for q in self._idle.values()),
                "idle": self._idle_by_language_locked(),
                "starting": sum(self._starting.values()),
                "target": self.size * len(self.profiles),
                "handed_out": self.handed_out,
                "misses": self.misses,
            }

    def _idle_by_language_locked(self) -> dict[str, int]:
        idle: dict[str, int] = {}
        for name, queue in self._idle.items():
            language = self.profiles[name].language.name
            idle[language] = idle.get(language, 0) + len(queue)
        return idle

    def stop(self) -> None:
        """Stop refilling and dispose of every idle container."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._builders.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            for queue in self._idle.values():
                while queue:
                    self._dispose(queue.popleft())

    def _refill_loop(self) -> None:
        while True:
            self._refresh_images()
            with self._cond:
                if self._stopping:
                    return
                self._recycle_locked()
                wanted = [] if time.monotonic() < self._backoff_until else self._wanted_locked()
                for name in wanted:
                    self._starting[name] += 1
                if not wanted:
                    self._cond.wait(timeout=1.0)
                    continue
            for name in wanted:
                future = self._builders.submit(self._build, self.profiles[name])
                future.add_done_callback(functools.partial(self._built, name))

    def _refresh_images(self) -> None:
        # image_id() re-inspects at most every few seconds; a changed id recycles the pool.
        for profile in self.profiles.values():
            try:
                self.sandbox.engine.image_id(profile.language.image)
            except Exception as e:  # noqa: BLE001 - refills report it through backoff
                log.debug("image check failed: %s", e)

    def _wanted_locked(self) -> list[str]:
        wanted: list[str] = []
        in_flight = sum(self._starting.values())
        for name in self.profiles:
            missing = self.size - len(self._idle[name]) - self._starting[name]
            for _ in range(max(0, missing)):
                if in_flight + len(wanted) >= self._cap:
                    return wanted
                wanted.append(name)
        return wanted

    def _recycle_locked(self) -> None:
        now = time.monotonic()
        for name, queue in self._idle.items():
            profile = self.profiles[name]
            current = self.sandbox.engine.cached_image_id(profile.language.image)
            keep: deque[Container] = deque()
            while queue:
                container = queue.popleft()
                too_old = now - container.created > self.max_idle_s
                stale = current is not None and current != container.image_id
                if too_old or stale or not container.alive():
                    self._dispose(container)
                else:
                    keep.append(container)
            self._idle[name] = keep

    def _build(self, profile: Profile) -> Container:
        container = self.sandbox.prepare(profile.language, profile.memory_mb, profile.cpus)
        if not self.sandbox.wait_ready(container, READY_TIMEOUT_S):
            self._dispose(container)
            raise RuntimeError(f"container {container.id[:12]} did not become ready")
        return container

    def _built(self, name: str, future: Future[Container]) -> None:
        error = future.exception() if not future.cancelled() else None
        with self._cond:
            self._starting[name] -= 1
            if future.cancelled():
                return
            if error is not None:
                self._backoff = min(MAX_BACKOFF_S, max(1.0, self._backoff * 2))
                self._backoff_until = time.monotonic() + self._backoff
                log.warning("warm pool refill failed (retrying in %.0fs): %s", self._backoff, error)
            elif self._stopping:
                self._dispose(future.result())
            else:
                self._backoff = self._backoff_until = 0.0
                self._idle[name].append(future.result())
            self._cond.notify_all()
