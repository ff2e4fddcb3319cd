"""Warm containers, each handed out once and never reused.

The pool keeps containers of its profiles (one per language, at the default memory and cpus)
created, attached, started and ready, so an execution only has to deliver its code. `size` is a
budget for all languages together, shared by recent demand: each profile's target is its share
of the requests (hits and misses) of the last `demand_window_s`, at least one for every language
in use while the budget lasts (the most recently used first); a language nobody asked for
shrinks to zero and falls back to a cold start. With no demand at all, the whole budget goes
to the first profile (Python).
A container leaves the pool exactly once: to one execution, or to the disposer when it is too
old, its image has changed, its runner died, its language's target shrank, or the pool stops.
Refills run in the background under a concurrency cap and back off while Docker fails. While
a language still has a warm container left, the refill of one handed out waits until its
execution is over (`released()`), for at most REFILL_HOLD_S: creating a container is the
engine's heaviest work, and on a small host it would otherwise compete for the CPU with the
very program it replaces and with the answer's delivery. A take that empties its language's
pool, or finds it empty, is refilled at once: under load nothing waits.
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
REFILL_HOLD_S = 0.25  # the longest a refill waits for the execution that took a container


@dataclass(frozen=True)
class Profile:
    """What a pooled container is made for."""

    language: Language
    memory_mb: int
    cpus: float

    @property
    def name(self) -> str:
        return profile_name(self.language.name, self.memory_mb, self.cpus)


def shares(
    size: int, demand: dict[str, int], default: str, last_used: dict[str, float] | None = None
) -> dict[str, int]:
    """Split `size` warm containers among profiles by `demand` (requests per profile).

    Every profile with demand gets one while the budget lasts, the most recently used first
    (`last_used`, else the most demanded): a language in use stays warm. What is left goes by
    the largest remainders of the proportional shares. Without any demand, all to `default`.
    """
    targets = dict.fromkeys(demand, 0)
    total = sum(demand.values())
    if size <= 0:
        return targets
    if total == 0:
        targets[default] = size
        return targets
    recency = last_used or {}
    ranked = sorted(
        (n for n in demand if demand[n] > 0), key=lambda n: (-recency.get(n, 0.0), -demand[n])
    )
    for name in ranked[:size]:
        targets[name] = 1
    left = size - sum(targets.values())
    if left > 0:
        exact = {n: size * demand[n] / total for n in ranked}
        for name in ranked:
            extra = min(left, max(0, int(exact[name]) - targets[name]))
            targets[name] += extra
            left -= extra
        by_remainder = sorted(ranked, key=lambda n: -(exact[n] - int(exact[n])))
        for name in by_remainder[:left]:
            targets[name] += 1
    return targets


class WarmPool:
    """Keeps up to `size` ready containers, shared among profiles by demand; `take()` hands one
    out or returns None."""

    def __init__(
        self,
        sandbox: Sandbox,
        profiles: list[Profile],
        size: int,
        max_idle_s: float,
        refill_concurrency: int,
        dispose: Callable[[Container], None],
        demand_window_s: float = 300.0,
    ) -> None:
        self.sandbox = sandbox
        self.profiles = {p.name: p for p in profiles}
        self._default = profiles[0].name
        self.size = size
        self.demand_window_s = demand_window_s
        self._demand: dict[str, deque[float]] = {name: deque() for name in self.profiles}
        self.max_idle_s = max_idle_s
        self._dispose = dispose
        self._idle: dict[str, deque[Container]] = {name: deque() for name in self.profiles}
        self._starting: dict[str, int] = dict.fromkeys(self.profiles, 0)
        self._cond = threading.Condition()
        self._stopping = False
        self._backoff = 0.0
        self._backoff_until = 0.0
        # Per profile, the deadlines of the refills that wait for an execution (see above).
        self._held: dict[str, deque[float]] = {name: deque() for name in self.profiles}
        self._builders = ThreadPoolExecutor(max(1, refill_concurrency), "pool-refill")
        self._cap = max(1, refill_concurrency)
        self._thread: threading.Thread | None = None
        self.handed_out = 0
        self.misses = 0

    def restrict(self, names: set[str]) -> None:
        """Keep only the profiles of these languages (before `start()`)."""
        with self._cond:
            kept = [p for p in self.profiles.values() if p.language.name in names]
            if kept:
                self._default = kept[0].name
            for name in list(self.profiles):
                if self.profiles[name].language.name not in names:
                    del self.profiles[name], self._idle[name], self._starting[name]
                    del self._demand[name], self._held[name]

    def start(self) -> None:
        """Begin filling: the first containers are starting when this returns (a worker that
        says it is ready has its pool filling), the rest is the refill thread's."""
        if self.size <= 0 or not self.profiles or self._thread is not None:
            return
        with self._cond:
            wanted = self._claim_wanted_locked(time.monotonic())
        self._submit(wanted)
        self._thread = threading.Thread(target=self._refill_loop, name="pool-refill", daemon=True)
        self._thread.start()

    def take(self, language: Language, memory_mb: int, cpus: float) -> Container | None:
        """A ready container for this profile, or None (then the caller makes a fresh one)."""
        name = profile_name(language.name, memory_mb, cpus)
        with self._cond:
            if name in self._demand:
                self._demand[name].append(time.monotonic())
            queue = self._idle.get(name)
            while queue:
                container = queue.popleft()
                if container.alive():
                    self.handed_out += 1
                    if queue:  # one is left for the next request: this refill may wait
                        self._held[name].append(time.monotonic() + REFILL_HOLD_S)
                    else:
                        self._held[name].clear()
                    self._cond.notify_all()
                    return container
                self._dispose(container)
            self.misses += 1
            if name in self._held:
                self._held[name].clear()  # it ran dry: refill now
            self._cond.notify_all()
        if queue is not None and self.size > 0:
            # A profile the pool keeps warm, found empty: the pool is exhausted (a series).
            self.sandbox.events(metrics.POOL_MISSES, 1)
        return None

    def released(self, container: Container) -> None:
        """The execution on `container` (taken from the pool) is over, its result stored:
        a refill that waited for it may start."""
        with self._cond:
            held = self._held.get(container.profile)
            if held:
                held.popleft()
                self._cond.notify_all()

    def targets(self) -> dict[str, int]:
        """Each profile's share of the budget now."""
        with self._cond:
            return self._targets_locked()

    def _targets_locked(self) -> dict[str, int]:
        since = time.monotonic() - self.demand_window_s
        for stamps in self._demand.values():
            while stamps and stamps[0] < since:
                stamps.popleft()
        demand = {name: len(stamps) for name, stamps in self._demand.items()}
        last = {name: stamps[-1] for name, stamps in self._demand.items() if stamps}
        return shares(self.size, demand, self._default, last)

    def stats(self) -> dict[str, Any]:
        """Totals, and per language: warm, starting, target, recent demand."""
        with self._cond:
            targets = self._targets_locked()
            languages = {
                profile.language.name: {
                    "warm": len(self._idle[name]),
                    "starting": self._starting[name],
                    "target": targets[name],
                    "demand": len(self._demand[name]),
                }
                for name, profile in self.profiles.items()
            }
            return {
                "warm": sum(len(q) for q in self._idle.values()),
                "idle": self._idle_by_language_locked(),
                "starting": sum(self._starting.values()),
                "target": self.size,
                "handed_out": self.handed_out,
                "misses": self.misses,
                "languages": languages,
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
                now = time.monotonic()
                wanted = self._claim_wanted_locked(now)
                if not wanted:
                    holds = [h[0] for h in self._held.values() if h]
                    self._cond.wait(timeout=min([1.0, *(max(0.0, h - now) for h in holds)]))
                    continue
            self._submit(wanted)

    def _claim_wanted_locked(self, now: float) -> list[str]:
        """The profiles to start a container for now, counted as starting."""
        wanted = [] if now < self._backoff_until else self._wanted_locked(now)
        for name in wanted:
            self._starting[name] += 1
        return wanted

    def _submit(self, wanted: list[str]) -> None:
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

    def _wanted_locked(self, now: float) -> list[str]:
        for held in self._held.values():
            while held and held[0] <= now:  # waited long enough
                held.popleft()
        wanted: list[str] = []
        in_flight = sum(self._starting.values())
        targets = self._targets_locked()
        # Never more than the budget in the pool at once, starting ones included.
        room = self.size - sum(len(q) for q in self._idle.values()) - in_flight
        for name in sorted(self.profiles, key=lambda n: -targets[n]):
            short = targets[name] - len(self._idle[name]) - self._starting[name]
            short -= len(self._held[name])  # their executions still run
            missing = min(room - len(wanted), short)
            for _ in range(max(0, missing)):
                if in_flight + len(wanted) >= self._cap:
                    return wanted
                wanted.append(name)
        return wanted

    def _recycle_locked(self) -> None:
        now = time.monotonic()
        targets = self._targets_locked()
        for name, queue in self._idle.items():
            while len(queue) > targets[name]:  # its share shrank: make room for the others
                self._dispose(queue.popleft())
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
        language = profile.language
        container = self.sandbox.prepare_warm(
            language, profile.memory_mb, profile.cpus, READY_TIMEOUT_S
        )
        if container is None:
            raise RuntimeError(f"a container of {language.name} did not become ready")
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
