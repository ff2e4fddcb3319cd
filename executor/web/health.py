"""What the API knows of its dependencies: Docker, Redis, live workers, cached for a second.

`/health` is meant to be polled every second, and every submission asks whether Docker is up,
so each answer is kept for CACHE_S per process; one thread refreshes it while the others wait
for that answer (each probe has a short timeout of its own). A submission never is refused on
a cached failure: Docker is asked again first, so the first execution after Docker (or its
proxy) is back runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from executor.config import Settings
from executor.errors import DockerUnavailable, ExecutorError
from executor.store import Store

CACHE_S = 1.0
DOCKER_TIMEOUT_S = 2.0
PING_TIMEOUT_S = 0.5


class Pinger(Protocol):
    def ping(self) -> None: ...


class WorkerPinger(Protocol):
    def __call__(self, timeout: float, limit: int | None) -> list[str]: ...


@dataclass(frozen=True)
class Check:
    """One dependency's state: `message` says why it is down, or what is up."""

    ok: bool
    message: str
    latency_ms: float
    extra: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok" if self.ok else "unavailable",
            "message": self.message,
            "latency_ms": round(self.latency_ms, 1),
        }
        body.update(self.extra or {})
        return body


def default_docker(settings: Settings) -> Pinger:
    from executor.engine import Engine  # the API needs Docker only for this ping

    return Engine(replace(settings, docker_timeout=DOCKER_TIMEOUT_S))


def celery_pinger(celery: Any) -> WorkerPinger:
    """Ping the workers over the broker; the names of those that answered."""

    def ping(timeout: float, limit: int | None) -> list[str]:
        replies = celery.control.ping(timeout=timeout, limit=limit) or []
        return sorted(name for reply in replies for name in reply)

    return ping


class _Cached:
    def __init__(self, compute: Callable[[], Check]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._value: Check | None = None
        self._at = 0.0

    def get(self, recheck_failure: bool = False) -> Check:
        """The cached answer while it is fresh; with `recheck_failure`, a failure is checked
        again at once (the caller would refuse work on it: a dependency that came back must
        not be refused for the rest of the cache's life). Concurrent callers share one probe."""
        asked = time.monotonic()
        value = self._value
        fresh = value is not None and asked - self._at < CACHE_S
        if value is not None and fresh and (value.ok or not recheck_failure):
            return value
        with self._lock:
            stale = self._value is None or time.monotonic() - self._at >= CACHE_S
            failed = self._value is not None and not self._value.ok and self._at < asked
            if stale or (recheck_failure and failed):
                self._value = self._compute()
                self._at = time.monotonic()
            assert self._value is not None
            return self._value


class Health:
    """Cached checks of Docker (at DOCKER_HOST), Redis and the workers."""

    def __init__(self, docker: Pinger, store: Store, ping_workers: WorkerPinger) -> None:
        self._docker = docker
        self._store = store
        self._ping_workers = ping_workers
        self._docker_check = _Cached(self._check_docker)
        self._report = _Cached(self._check_all)
        self._report_lock = threading.Lock()
        self._last: dict[str, Check] = {}

    def require_docker(self) -> None:
        """Raise DockerUnavailable when Docker does not answer (from the cache when it did)."""
        check = self._docker_check.get(recheck_failure=True)
        if not check.ok:
            raise DockerUnavailable(check.message)

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(all ok, the /health body)."""
        self._report.get()
        with self._report_lock:
            checks = dict(self._last)
        ok = all(c.ok for c in checks.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {name: check.to_dict() for name, check in checks.items()},
        }
        return ok, body

    def _check_docker(self) -> Check:
        return _timed(self._docker.ping, "Docker answers")

    def _check_all(self) -> Check:
        docker = self._docker_check.get()
        redis = _timed(self._store.ping, f"Redis answers at {self._store.address}")
        workers = self._check_workers() if redis.ok else Check(False, "Redis is down", 0.0)
        with self._report_lock:
            self._last = {"docker": docker, "redis": redis, "workers": workers}
        return Check(docker.ok and redis.ok and workers.ok, "", 0.0)

    def _check_workers(self) -> Check:
        start = time.perf_counter()
        try:
            beating = self._store.live_workers()
            # Ask as many answers as workers beat, so the ping returns as soon as all answered.
            names = self._ping_workers(PING_TIMEOUT_S, len(beating) or None)
        except ExecutorError as e:
            return Check(False, e.message, _ms(start))
        except Exception as e:  # noqa: BLE001 - a probe reports whatever the broker raises
            return Check(False, f"the worker ping failed: {type(e).__name__}: {e}", _ms(start))
        extra = {"count": len(names), "names": names}
        if not names:
            message = f"no worker answered a ping within {PING_TIMEOUT_S:g} s"
            return Check(False, message, _ms(start), extra)
        return Check(True, f"{len(names)} worker(s) answered", _ms(start), extra)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def _timed(probe: Callable[[], None], ok_message: str) -> Check:
    start = time.perf_counter()
    try:
        probe()
    except ExecutorError as e:
        return Check(False, e.message, _ms(start))
    except Exception as e:  # noqa: BLE001 - a probe must report, never raise
        return Check(False, f"{type(e).__name__}: {e}", _ms(start))
    return Check(True, ok_message, _ms(start))
