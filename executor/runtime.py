"""A worker process's runtime: the one ExecutionService, the records, the heartbeat.

Each worker process holds one `WorkerRuntime`. `start()` (on worker start, or lazily by the
first task) warms the sandbox pool and begins beating; `execute()` is what the Celery task
does with one message; `stop()` (on worker shutdown) drains the pool and says goodbye.

An execution's life on a worker: claim its record (queued -> running, or create it for a
producer that bypassed HTTP), validate the payload, run it, finish the record with the result
and wake the waiter. A message delivered a second time (Redis re-delivers an unacknowledged
message whose worker died) is never run again: untrusted code must not run twice because a
worker was lost. The execution is finished as `internal_error` / `execution_lost` instead,
by the first process that notices its worker's heartbeat has stopped.

Celery's time limits are not enforced by its threads pool, so the heartbeat thread is the
backstop: an execution still running past the hard limit is finished as a sandbox_error
(its sandbox's own deadline and the pool's reaper still remove the container).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from executor.config import Settings
from executor.errors import ExecutorError, InvalidRequest, SandboxError, error_for
from executor.languages import MAX_COMPILE_TIMEOUT_S, REGISTRY
from executor.models import RunRequest, RunResult
from executor.store import HEARTBEAT_INTERVAL_S, Claim, Store, iso
from executor.validation import Bounds, parse_request

log = logging.getLogger(__name__)

POOL_STATS_WAIT_S = 0.2

Events = Callable[[str, int], None]


class Service(Protocol):
    """The seam to the sandbox (executor.service.ExecutionService)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def run(self, request: RunRequest, execution_id: str) -> RunResult: ...
    def pool_stats(self) -> dict[str, Any]: ...


def default_service(settings: Settings, events: Events) -> Service:
    from executor.service import ExecutionService  # the worker's heavy half

    return ExecutionService(settings, events)


@dataclass(frozen=True)
class TimeLimits:
    """Celery's limits for one execution: beyond the sandbox's own deadline, as a backstop."""

    soft_s: float
    hard_s: float
    visibility_s: float  # Redis re-delivers an unacknowledged message after this long

    @classmethod
    def from_settings(cls, settings: Settings) -> TimeLimits:
        # A run may need a few Docker calls (create, start, attach, remove) beside the program.
        # A compiled language's build has its own time beyond these limits (the backstop starts
        # its clock after it, see WorkerRuntime._running); Redis must not re-deliver meanwhile.
        soft = settings.max_timeout + 2 * settings.docker_timeout
        hard = soft + settings.docker_timeout
        return cls(soft_s=soft, hard_s=hard, visibility_s=hard + MAX_COMPILE_TIMEOUT_S + 60.0)


class WorkerRuntime:
    """Everything one worker process keeps between tasks. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        service_factory: Callable[[Settings, Events], Service] = default_service,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.bounds = Bounds.from_settings(settings)
        self.limits = TimeLimits.from_settings(settings)
        self.incarnation = f"{settings.instance}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = f"celery@{settings.instance}"
        self.store = store or Store(
            settings.redis_url, ttl_s=settings.result_ttl_s, history_size=settings.history_size
        )
        self._service_factory = service_factory
        self._service: Service | None = None
        self._lock = threading.Lock()
        self._events: Counter[str] = Counter()
        self._active: dict[str, float] = {}  # execution id -> monotonic start
        self._warned: set[str] = set()  # past the soft limit
        self._overdue: set[str] = set()  # past the hard limit, record finished
        self._processed = 0
        self._started_at = ""
        self._stopping = threading.Event()
        self._beater: threading.Thread | None = None
        self._stats_reader = ThreadPoolExecutor(1, "pool-stats")
        self._pool_query: Future[dict[str, Any]] | None = None
        self._last_pool: dict[str, Any] = {"warm": 0, "target": 0, "languages": {}}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, name: str | None = None) -> None:
        """Warm the pool, beat once, sweep what dead workers left, then beat every second.

        Idempotent. Redis being down at start is logged, not fatal: Celery itself waits for
        its broker, and the heartbeat thread keeps trying.
        """
        with self._lock:
            if name:
                self.name = name
            if self._service is not None:
                return
            self._service = self._service_factory(self.settings, self._count_event)
            self._started_at = iso(time.time())
        self._service.start()
        try:
            self._beat()
            lost = self.store.sweep_lost()
            if lost:
                log.warning("marked %d executions of dead workers as lost: %s", len(lost), lost)
        except ExecutorError as e:
            log.warning("worker %s started without Redis: %s", self.incarnation, e)
        self._beater = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
        self._beater.start()
        log.info("worker %s started (incarnation %s)", self.name, self.incarnation)

    def served_languages(self) -> tuple[str, ...] | None:
        """The languages this worker serves once started (those whose images it has)."""
        served = getattr(self._service, "served", None)
        return None if served is None else tuple(served)

    def stop(self) -> None:
        """Stop beating, drain the pool, and mark whatever still ran here as lost."""
        self._stopping.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.stop()
        self._stats_reader.shutdown(wait=False, cancel_futures=True)
        try:
            self._flush_events_only()
            lost = self.store.forget_worker(self.incarnation)
            if lost:
                log.warning("executions lost at shutdown: %s", lost)
        except ExecutorError as e:
            log.warning("could not say goodbye to Redis: %s", e)

    @property
    def service(self) -> Service:
        if self._service is None:
            self.start()
        assert self._service is not None  # start() sets it
        return self._service

    # -- one execution -------------------------------------------------------------------

    def execute(self, payload: Any, execution_id: str) -> dict[str, Any]:
        """Run one execution message; return the contract's result dict.

        The program's own failure is a result. An invalid payload or an infrastructure fault
        finishes the record as internal_error and raises the matching ExecutorError.
        """
        service = self.service
        claim = self.store.claim(
            execution_id, _language_of(payload), self.incarnation, self.settings.instance
        )
        if not claim.claimed:
            return self._redelivered(execution_id, claim)
        with self._running(execution_id, _build_allowance(payload)):
            try:
                request = parse_request(payload, self.bounds)
            except InvalidRequest as e:
                log.warning("execution %s rejected: %s", execution_id, e.message)
                self._fail(execution_id, e, counter="rejected")
                raise
            try:
                result = service.run(request, execution_id)
            except ExecutorError as e:
                log.error("execution %s could not run: %s: %s", execution_id, e.code, e.message)
                self._fail(execution_id, e)
                raise
            except Exception as e:
                log.exception("execution %s failed inside the worker", execution_id)
                error = ExecutorError(f"the worker failed to run the execution: {type(e).__name__}")
                self._fail(execution_id, error)
                raise error from e
            body = self._result_body(execution_id, claim, result)
            if not self.store.finish(execution_id, self.incarnation, body):
                raise self._taken_away(execution_id)
        with self._lock:
            self._processed += 1
        log.info(
            "execution %s finished: %s in %d ms", execution_id, body["status"], result.duration_ms
        )
        return body

    def _result_body(self, execution_id: str, claim: Claim, result: RunResult) -> dict[str, Any]:
        data = result.to_dict()
        queued_ms = max(0, round((claim.started - claim.created) * 1000))
        body: dict[str, Any] = {"id": execution_id}
        for key in ("status", "compile", "exit_code", "signal", "stdout", "stderr"):
            body[key] = data.pop(key)
        for key in ("stdout_truncated", "stderr_truncated", "duration_ms"):
            body[key] = data.pop(key)
        body["queued_ms"] = queued_ms
        body["language"] = data.pop("language")
        body["image"] = data.pop("image")
        body["limits"] = data.pop("limits")
        body["worker"] = self.settings.instance
        body["created_at"] = claim.created_at
        body.update(data)  # started_at, finished_at, and whatever the sandbox adds
        return body

    def _fail(self, execution_id: str, error: ExecutorError, counter: str | None = None) -> None:
        body: dict[str, Any] = {
            "id": execution_id,
            "status": "internal_error",
            "code": error.code,
            "message": error.message,
        }
        if error.errors:
            body["errors"] = error.errors
        try:
            self.store.finish(execution_id, self.incarnation, body, counter=counter)
        except ExecutorError as e:  # the task still fails with the first error
            log.error("execution %s: could not record its failure: %s", execution_id, e)

    def _redelivered(self, execution_id: str, claim: Claim) -> dict[str, Any]:
        """A message whose execution was already taken: answer from the record, never rerun."""
        log.warning(
            "execution %s delivered again (record is %s); not running it twice",
            execution_id,
            claim.status,
        )
        if claim.payload is None and claim.status == "running":
            self.store.sweep_lost()  # its worker may be dead: finish the record now
            record = self.store.get(execution_id)
            if record is not None and record.payload is not None:
                claim = Claim(False, record.status, payload=record.payload)
        payload = claim.payload
        if payload is None:
            raise SandboxError(
                f"execution {execution_id} is already running on another worker"
                f" ({claim.incarnation}); a second delivery of its message is not run"
            )
        if payload.get("status") == "internal_error":
            raise error_for(str(payload.get("code")), str(payload.get("message")))
        return payload

    def _taken_away(self, execution_id: str) -> ExecutorError:
        record = self.store.get(execution_id)
        if record is not None and record.payload and record.status == "internal_error":
            return error_for(str(record.payload.get("code")), str(record.payload.get("message")))
        return ExecutorError(f"execution {execution_id}: its record was finished by another")

    @contextlib.contextmanager
    def _running(self, execution_id: str, build_s: float = 0.0) -> Iterator[None]:
        with self._lock:
            # The backstop's clock starts after the build's own time limit.
            self._active[execution_id] = time.monotonic() + build_s
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(execution_id, None)
                self._overdue.discard(execution_id)
                self._warned.discard(execution_id)

    # -- heartbeat, events, the time-limit backstop --------------------------------------

    def _count_event(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._events[name] += n

    def _take_events(self) -> dict[str, int]:
        with self._lock:
            events, self._events = dict(self._events), Counter()
        return events

    def _pool_stats(self) -> dict[str, Any]:
        """The pool's size, never holding up a heartbeat: a slow answer is used next time."""
        service = self._service
        if service is not None and (self._pool_query is None or self._pool_query.done()):
            self._pool_query = self._stats_reader.submit(service.pool_stats)
        if self._pool_query is not None:
            try:
                stats = self._pool_query.result(timeout=POOL_STATS_WAIT_S)
                self._last_pool = {
                    "warm": stats.get("warm", 0),
                    "target": stats.get("target", 0),
                    "languages": stats.get("languages", {}),
                }
            except FutureTimeout:
                pass
            except Exception as e:  # noqa: BLE001 - the pool must not stop the heartbeat
                log.warning("pool stats failed: %s", e)
        return dict(self._last_pool)

    def info(self) -> dict[str, Any]:
        """This worker as /status shows it."""
        pool = self._pool_stats()
        with self._lock:
            active, processed = len(self._active), self._processed
        return {
            "name": self.name,
            "instance": self.settings.instance,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "active": active,
            "processed": processed,
            "concurrency": self.settings.concurrency,
            "pool": pool,
            "started_at": self._started_at,
        }

    def _beat(self) -> None:
        events = self._take_events()
        try:
            self.store.beat(self.incarnation, self.info(), events)
        except ExecutorError:
            with self._lock:  # keep the counts for the next beat
                self._events.update(events)
            raise

    def _flush_events_only(self) -> None:
        events = self._take_events()
        if events:
            self.store.beat(self.incarnation, self.info(), events)

    def _beat_forever(self) -> None:
        while not self._stopping.wait(HEARTBEAT_INTERVAL_S):
            try:
                self._beat()
                self.store.sweep_lost()
                self._enforce_time_limits()
            except ExecutorError as e:
                log.warning("heartbeat failed: %s", e)
            except Exception:
                log.exception("heartbeat failed")

    def _enforce_time_limits(self) -> None:
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


def _build_allowance(payload: Any) -> float:
    """The build time limit of the payload's language, if it compiles (0 otherwise)."""
    language = next((lang for lang in REGISTRY if lang.name == _language_of(payload)), None)
    return language.compile_timeout if language is not None and language.compiled else 0.0


def _language_of(payload: Any) -> str:
    """The language to file a record under before the payload is validated."""
    language = payload.get("language") if isinstance(payload, dict) else None
    return language[:32] if isinstance(language, str) else "python"
