"""The Celery app factory: Redis as broker and result backend, configured for this workload.

`create_celery(settings)` is the app the API sends with; `create_worker(settings)` is the same
app with the task registered and the worker's lifecycle wired (one WorkerRuntime per process,
started on worker_ready, stopped on worker_shutdown). Nothing connects at import or build time.

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
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from executor.config import Settings
from executor.languages import REGISTRY
from executor.runtime import TimeLimits, WorkerRuntime
from executor.store import QUEUE, queue_for
from executor.tasks import TASK_NAME, register


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of this service (see the module docstring for the why)."""
    limits = TimeLimits.from_settings(settings)
    transport = {"visibility_timeout": int(limits.visibility_s)}
    return {
        "broker_url": settings.redis_url,
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


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker consumes unless `-Q` says otherwise: the queue of each language it
    serves (for APIs with EXECUTOR_ROUTE_BY_LANGUAGE=1), and the shared queue unless it serves
    only some languages (EXECUTOR_LANGUAGES)."""
    served = settings.worker_languages or [lang.name for lang in REGISTRY]
    shared = [] if settings.worker_languages else [QUEUE]
    return [*shared, *(queue_for(name, True) for name in served)]


def create_worker(settings: Settings) -> Celery:
    """The worker's app: the task `executor.execute` and one WorkerRuntime per process."""
    app = create_celery(settings)
    app.conf.task_queues = [
        Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
        for name in worker_queues(settings)
    ]
    runtime = WorkerRuntime(settings)
    register(app, runtime)

    # Celery's signals are process-wide: act only for this app's own worker.
    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            # Celery logs each task's return value (up to 1 KiB of the result, so of its
            # stdout) at INFO; the runtime logs each execution without its data instead.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
            runtime.start(getattr(sender, "hostname", None))
            # A language whose image this engine lacks is left to other workers: stop
            # consuming its queue.
            served = runtime.served_languages() or ()
            for language in REGISTRY:
                queue = queue_for(language.name, True)
                if language.name not in served and queue in worker_queues(settings):
                    sender.cancel_task_queue(queue)

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            runtime.stop()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    app.executor_runtime = runtime
    return app
