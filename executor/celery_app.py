"""The Celery app factory: Redis as broker and result backend, configured for this workload.

`create_celery(settings)` is the app the API sends with; the worker's app is the same with the
task registered (executor.tasks.create_worker). Nothing connects at import or build time.

Why these settings:
- threads pool, concurrency = EXECUTOR_CONCURRENCY: the work is waiting on Docker, and the warm
  sandbox pool lives in the worker process, shared by its threads.
- prefetch multiplier 1 with late acks: a worker holds at most one unacknowledged message per
  slot, so a busy slot never sits on queued work that an idle worker could take.
- reject on worker lost, and a Redis visibility timeout above the hard time limit: a message
  is re-delivered only when its worker died; the re-delivery finishes the record as lost and
  never runs the untrusted program a second time (see executor.runtime).
- soft/hard time limits beyond the longest execution, for `celery inspect` and Flower; the
  threads pool does not enforce them, the runtime's heartbeat does.
- task events on, sent events on, started state tracked: `celery events`, `celery inspect` and
  Flower see every execution.
- JSON only, results expire with the records (EXECUTOR_RESULT_TTL).
- kombu's Redis transport without its restore-on-close (executor.broker), which crashed the
  worker when Redis dropped under running executions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from executor.broker import TRANSPORT
from executor.budget import MAX_TESTS, RUN_OVERHEAD_S, extra_seconds
from executor.config import Settings
from executor.languages import MAX_COMPILE_TIMEOUT_S
from executor.names import QUEUE, TASK_NAME, queue_for


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
        # its clock after it); Redis must not re-deliver meanwhile.
        # Test cases run one after another, each with the whole timeout: the backstop's clock
        # starts after them as after a build; the broker waits for the most a request may ask.
        soft = settings.max_timeout + 2 * settings.docker_timeout
        hard = soft + settings.docker_timeout
        cases = extra_seconds(settings.max_timeout, MAX_TESTS) + RUN_OVERHEAD_S
        visibility = hard + MAX_COMPILE_TIMEOUT_S + cases + 60.0
        return cls(soft_s=soft, hard_s=hard, visibility_s=visibility)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of this service (see the module docstring for the why)."""
    limits = TimeLimits.from_settings(settings)
    transport = {"visibility_timeout": int(limits.visibility_s)}
    return {
        "broker_url": settings.redis_url,
        "broker_transport": TRANSPORT,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2.0,
        "broker_pool_limit": 64,  # the API's gunicorn threads publish concurrently
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "task_default_queue": QUEUE,
        "task_routes": {TASK_NAME: {"queue": QUEUE, "routing_key": QUEUE}},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": limits.soft_s,
        "task_time_limit": limits.hard_s,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "result_expires": settings.result_ttl_s,
        "worker_pool": "threads",
        "worker_concurrency": settings.concurrency,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_disable_rate_limits": True,
        "worker_hijack_root_logger": True,
        "worker_log_format": "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s",
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_celery(settings: Settings) -> Celery:
    """The app that sends executions and asks workers questions (the API's)."""
    app = Celery("executor", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send_execution(
    app: Celery, execution_id: str, language: str, code_chars: int, by_language: bool
) -> None:
    """Publish the message of a recorded execution: its id only (the task's id).

    The request is stored with the record, so the broker, `celery inspect` and Flower never
    hold the code or stdin. Raises kombu's OperationalError (or OSError) when Redis is down.
    """
    queue = queue_for(language, by_language)
    app.send_task(
        TASK_NAME,
        args=[],
        task_id=execution_id,
        queue=queue,
        routing_key=queue,
        ignore_result=True,  # the record holds the result
        # What task events, `celery inspect` and Flower show instead of the code and stdin.
        argsrepr=f"[<stored {language} program, {code_chars} characters>]",
        kwargsrepr="{}",
    )
