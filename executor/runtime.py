"""A worker process's runtime: the one ExecutionService, the records, the heartbeat.

Each worker process holds one `WorkerRuntime`. `start()` (on worker start, or lazily by the
first task) warms the sandbox pool and begins beating (executor.heartbeat); `execute()` is
what the Celery task does with one message; `stop()` (on worker shutdown) drains the pool and
says goodbye.

An execution's life on a worker: claim its record (queued -> running, or create it for a
producer's message nobody adopted yet), take its request (an API submission's is stored with
the record, its message carries none; a producer's is the message's argument), validate it
(with the API's request schema), run it, finish the record with the result and wake the
waiter. A cancel (DELETE, or a Celery revoke) stops it (see executor.cancellation). A message
delivered a second time (Redis re-delivers an unacknowledged message whose worker died) is
never run again: untrusted code must not run twice because a worker was lost. The execution is
finished as `internal_error` / `execution_lost` instead, by the first process that notices its
worker's heartbeat has stopped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from celery import Celery

from executor import logs, metrics
from executor.budget import MAX_TESTS, RUN_OVERHEAD_S, extra_seconds
from executor.cancellation import Cancellations, CancelToken
from executor.celery_app import TimeLimits, create_celery, send_execution
from executor.config import Settings
from executor.errors import ExecutorError, InvalidRequest, SandboxError, error_for
from executor.heartbeat import Backstop, Events, Heartbeat, PoolStats
from executor.languages import REGISTRY
from executor.models import RunRequest, RunResult, iso
from executor.outbox import Outbox, patiently
from executor.output import OutputPublisher
from executor.policy import ID_RULE, valid_execution_id
from executor.protocol import OutputSink
from executor.request_schema import parse_request, request_schema
from executor.rescue import Rescuer
from executor.store import Claim, Store
from executor.streams import EventStreams

# How long the removal of an execution's containers and the pool's refill wait once its
# result is stored: the waiting POST /execute is answered first. On a small host, Docker's
# teardown and a container's start (the engine, its shim, the proxy) take the CPU the API
# needs for that answer: measured on 2 cores, starting them at once made the answer about
# 1 ms later (warm p50 16.9 against 15.7 ms with the grace).
ANSWER_GRACE_S = 0.005

log = logging.getLogger(__name__)

EventSink = Callable[[str, int], None]


class Service(Protocol):
    """The seam to the sandbox (executor.service.ExecutionService)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def run(
        self,
        request: RunRequest,
        execution_id: str,
        cancel: CancelToken | None = None,
        output: OutputSink | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> RunResult: ...
    def pool_stats(self) -> dict[str, Any]: ...
    def ping(self) -> None: ...


def default_service(settings: Settings, events: EventSink) -> Service:
    from executor.service import ExecutionService  # the worker's heavy half

    return ExecutionService(settings, events)


class WorkerRuntime:
    """Everything one worker process keeps between tasks. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        service_factory: Callable[[Settings, EventSink], Service] = default_service,
        store: Store | None = None,
        revoked: Callable[[], Iterable[str]] = lambda: (),
        celery: Celery | None = None,
    ) -> None:
        """`revoked`: the ids Celery revoked (the worker's revoked set). `celery`: the app
        that sends a lost message again (executor.rescue); by default one of its own."""
        self.settings = settings
        self.requests = request_schema(settings)()
        self.incarnation = f"{settings.instance}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.name = f"celery@{settings.instance}"
        self.store = store or Store(
            settings.redis_url,
            ttl_s=settings.result_ttl_s,
            history_size=settings.history_size,
            events_max_len=settings.events_max_len,
        )
        self.output = OutputPublisher(EventStreams(self.store), settings.max_output_bytes)
        self._service_factory = service_factory
        self._service: Service | None = None
        self._lock = threading.Lock()
        self._processed = 0
        self._started_at = ""
        self.events = Events()
        self.backstop = Backstop(TimeLimits.from_settings(settings), self._fail)
        self.cancellations = Cancellations()
        self._revoked = revoked
        self._revoked_seen: set[str] = set()
        self._stop_listening: Callable[[], None] | None = None
        self.outbox = Outbox(self.store, settings.instance, self.events)
        self.rescuer = Rescuer(
            self.store,
            self._publish,
            self.incarnation,
            settings.instance,
            settings.rescue_after_s,
            self.events,
        )
        self._celery = celery
        self.heartbeat = Heartbeat(
            self.store,
            self.incarnation,
            self.info,
            self.events,
            self.backstop,
            each_beat=(self.outbox.flush, self.watch_cancels, self.store.adopt, self.rescuer),
        )
        self._pool_stats = PoolStats()

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
            self._service = self._service_factory(self.settings, self.events)
            self._started_at = iso()
        self._service.start()
        self._stop_listening = self.store.listen_cancels(self.cancellations.cancel)
        try:
            self.heartbeat.beat()
            self.outbox.replay()  # learns which Redis server takes this worker's results
            lost = self.store.sweep_lost()
            if lost:
                log.warning("marked %d executions of dead workers as lost: %s", len(lost), lost)
        except ExecutorError as e:
            log.warning("worker %s started without Redis: %s", self.incarnation, e)
        self.heartbeat.start()
        log.info("worker %s started (incarnation %s)", self.name, self.incarnation)

    def _publish(self, execution_id: str, language: str, code_chars: int) -> None:
        """Send the message of a recorded execution again. Its first went to its language's
        queue if the API routes by language, which a worker for some languages implies."""
        with self._lock:
            if self._celery is None:
                self._celery = create_celery(self.settings)
            app = self._celery
        by_language = self.settings.route_by_language or bool(self.settings.worker_languages)
        send_execution(app, execution_id, language, code_chars, by_language)

    def served_languages(self) -> tuple[str, ...] | None:
        """The languages this worker serves once started (those whose images it has)."""
        served = getattr(self._service, "served", None)
        return None if served is None else tuple(served)

    def stop(self) -> None:
        """Stop beating, drain the pool, and mark whatever still ran here as lost."""
        self.heartbeat.stop()
        if self._stop_listening is not None:
            self._stop_listening()
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.stop()
        self._pool_stats.close()
        self.output.stop()
        try:
            self.outbox.flush()
            self.heartbeat.flush()
            lost = self.store.forget_worker(self.incarnation)
            if lost:
                log.warning("executions lost at shutdown: %s", lost)
        except ExecutorError as e:
            log.warning("could not say goodbye to Redis: %s", e)

    def alive(self) -> bool:
        """Started, not stopped, and beating."""
        return self._service is not None and self.heartbeat.alive()

    def ping_docker(self) -> None:
        """Raise DockerUnavailable (or another ExecutorError) unless Docker answers."""
        self.service.ping()

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
        if not valid_execution_id(execution_id):
            # No record: its id could not name it anywhere (URL, label). The producer's
            # result (Celery's backend, under its task id) says why.
            log.warning("a message with the unusable id %.40r was refused", execution_id)
            raise InvalidRequest(
                f"the task id {execution_id[:140]!r} cannot name an execution: use {ID_RULE}",
                errors={"task_id": [f"Must be {ID_RULE}."]},
            )
        with logs.execution(execution_id):
            return self._execute(payload, execution_id)

    def _execute(self, payload: Any, execution_id: str) -> dict[str, Any]:
        service = self.service
        # A Redis restart while the message is in hand delays the claim; it does not lose it.
        claim = patiently(
            f"execution {execution_id}",
            lambda: self.store.claim(
                execution_id, _language_of(payload), self.incarnation, self.settings.instance
            ),
        )
        if not claim.claimed:
            return self._redelivered(execution_id, claim)
        if payload is None and claim.request:
            payload = json.loads(claim.request)  # an API submission: its stored request
        # What the sandbox leaves to do once the result is stored: removing its containers
        # and refilling the pool (Docker's busiest work) come after the answer, not during it
        # (ANSWER_GRACE_S).
        later: list[Callable[[], None]] = []
        try:
            return self._run(payload, execution_id, claim, service, later)
        finally:
            if later:
                time.sleep(ANSWER_GRACE_S)
            for release in later:
                release()

    def _run(
        self,
        payload: Any,
        execution_id: str,
        claim: Claim,
        service: Service,
        later: list[Callable[[], None]],
    ) -> dict[str, Any]:
        with (
            self.backstop.running(execution_id, _allowance(payload, self.settings)),
            self.cancellations.running(execution_id) as cancel,
        ):
            try:
                if payload is None:
                    raise InvalidRequest(
                        "the message carries no request and none is stored for it",
                        errors={"request": ["Missing data for required field."]},
                    )
                request = parse_request(self.requests, payload)
            except InvalidRequest as e:
                log.warning("execution %s rejected: %s", execution_id, e.message)
                self._fail(execution_id, e, counter=metrics.REJECTED)
                raise
            live = self.output.open(execution_id)
            try:
                result = service.run(request, execution_id, cancel, live.write, later)
                live.truncated(result.stdout_truncated, result.stderr_truncated)
            except ExecutorError as e:
                live.close()  # the output it wrote, before the failure
                log.error("execution %s could not run: %s: %s", execution_id, e.code, e.message)
                self._fail(execution_id, e)
                raise
            except Exception as e:
                live.close()
                log.exception("execution %s failed inside the worker", execution_id)
                error = ExecutorError(f"the worker failed to run the execution: {type(e).__name__}")
                self._fail(execution_id, error)
                raise error from e
            body = self._result_body(execution_id, claim, result)
            # The live output not published yet goes in with the result (ahead of its entry).
            if not self.outbox.finish(execution_id, self.incarnation, body, output=live.end()):
                raise self._taken_away(execution_id)
        with self._lock:
            self._processed += 1
        self._observe(body)
        log.info(
            "execution %s finished: %s in %d ms", execution_id, body["status"], result.duration_ms
        )
        return body

    def _result_body(self, execution_id: str, claim: Claim, result: RunResult) -> dict[str, Any]:
        data = result.to_dict()
        # Until the program started: the queue, the claim, and a cold container's boot.
        started = _epoch(result.started_at) if result.started_at else claim.started
        queued_ms = max(0, round((started - claim.created) * 1000))
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

    def _observe(self, body: dict[str, Any]) -> None:
        """Add one run to the duration and queue-wait histograms."""
        language, status = str(body["language"]), str(body["status"])
        for histogram, ms in (
            (metrics.DURATION, body["duration_ms"]),
            (metrics.QUEUE_WAIT, body["queued_ms"]),
        ):
            self.events.add(metrics.observe(histogram, ms / 1000, language, status))

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
            self.outbox.finish(execution_id, self.incarnation, body, counter=counter)
        except ExecutorError as e:  # the task still fails with the first error
            log.error("execution %s: could not record its failure: %s", execution_id, e)

    def _redelivered(self, execution_id: str, claim: Claim) -> dict[str, Any]:
        """A message whose execution was already taken: answer from the record, never rerun."""
        if claim.status == "cancelled" and claim.payload is not None:
            log.info("execution %s was cancelled before it started: not run", execution_id)
            return claim.payload
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

    # -- cancels --------------------------------------------------------------------------

    def watch_cancels(self) -> None:
        """Each beat: stop what runs here and was cancelled (DELETE's flag, or a Celery revoke),
        and cancel the queued executions Celery revoked since the last beat."""
        running = self.cancellations.ids()
        revoked = set(self._revoked())
        for execution_id in {*self.store.cancel_requested(running), *(revoked & set(running))}:
            self.cancellations.cancel(execution_id)
        for execution_id in revoked - self._revoked_seen - set(running):
            if valid_execution_id(execution_id):
                self.store.cancel(execution_id)
        self._revoked_seen = revoked

    def revoked_now(self, execution_id: str) -> None:
        """Celery revoked `execution_id` here (its message, or its running task): cancel it."""
        if valid_execution_id(execution_id) and not self.cancellations.cancel(execution_id):
            self.store.cancel(execution_id)

    # -- what the heartbeat sends ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """This worker as /status shows it."""
        service = self._service
        stats = self._pool_stats.read(service.pool_stats if service is not None else None)
        with self._lock:
            processed = self._processed
        return {
            "name": self.name,
            "instance": self.settings.instance,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "active": self.backstop.active(),
            "processed": processed,
            "concurrency": self.settings.concurrency,
            "pool": {
                "warm": stats["warm"],
                "starting": stats["starting"],
                "target": stats["target"],
                "languages": stats["languages"],
            },
            "idle": stats["idle"],
            "started_at": self._started_at,
        }


def _epoch(moment: str) -> float:
    """Seconds since the epoch of one of our ISO 8601 timestamps."""
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def _allowance(payload: Any, settings: Settings) -> float:
    """Time the payload may take beyond one timeout: the build of its language, if it compiles,
    and its test cases after the first (read before validation: bounded by the largest)."""
    language = next((lang for lang in REGISTRY if lang.name == _language_of(payload)), None)
    build = language.compile_timeout if language is not None and language.compiled else 0.0
    tests = payload.get("tests") if isinstance(payload, dict) else None
    runs = min(len(tests), MAX_TESTS) if isinstance(tests, list) else 1
    return build + extra_seconds(settings.max_timeout, runs) + RUN_OVERHEAD_S


def _language_of(payload: Any) -> str:
    """The language to file a record under before the payload is validated."""
    if payload is None:
        return ""  # an API submission: its record has the language
    language = payload.get("language") if isinstance(payload, dict) else None
    return language[:32] if isinstance(language, str) else "python"
