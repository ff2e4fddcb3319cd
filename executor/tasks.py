"""The worker's Celery app and its task: the request dict in, the result dict out.

`create_worker(settings)` is the API's Celery app (executor.celery_app) with `executor.execute`
registered and the worker's lifecycle wired: one WorkerRuntime per process, started on
worker_ready, stopped on worker_shutdown. Nothing connects at build time.

A Celery revoke works as operators expect (`celery control revoke`, Flower's button): a
revoked message is discarded by Celery and its record finished as `cancelled`
(`task_revoked`, and the runtime's look at the revoked set each beat, which also catches a
queued execution's revoke before any worker gets its message); a running execution's
container is killed. The threads pool cannot terminate a task (its `terminate_job` raises
NotImplementedError): `ThreadsPool` answers a terminate by leaving the stop to the runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, bootsteps, signals
from celery.apps.worker import install_worker_term_handler
from celery.concurrency.thread import TaskPool
from celery.worker import state as worker_state
from kombu.entity import Queue

from executor.celery_app import create_celery
from executor.config import Settings
from executor.errors import ExecutorError
from executor.languages import REGISTRY
from executor.logs import configure as configure_logging
from executor.monitor import MonitorServer, WorkerProbe
from executor.names import QUEUE, TASK_NAME, queue_for
from executor.runtime import WorkerRuntime


def register(app: Celery, runtime: WorkerRuntime) -> Task:
    """Register `executor.execute` on `app`, running its executions on `runtime`.

    Never retried: a bad payload or an infrastructure fault fails the task with an error that
    names the cause; the program's own failure is a successful task with its `status`.
    """

    # `throws`: our own errors are expected outcomes, logged by the runtime without a traceback.
    @app.task(name=TASK_NAME, bind=True, max_retries=0, throws=(ExecutorError,))  # type: ignore[untyped-decorator]
    def execute(self: Task, request: Any = None, **fields: Any) -> dict[str, Any]:
        # The API's messages carry no request (it is stored with the record); a producer's
        # carry it as the one argument, or as keyword arguments.
        if request is None and fields:
            request = fields
        elif fields:
            request = {"request": request, **fields}  # both: the schema names what is wrong
        return runtime.execute(request, str(self.request.id))

    return execute


def revoked_ids() -> list[str]:
    """The task ids this worker's Celery has revoked (read from the heartbeat's thread)."""
    for _ in range(3):
        try:
            return [str(task_id) for task_id in worker_state.revoked]
        except RuntimeError:  # the consumer revoked one while we read: read again
            continue
    return []


class ThreadsPool(TaskPool):  # type: ignore[misc]
    """Celery's threads pool, whose terminate (a revoke with terminate=True) is not an error:
    the runtime kills the revoked execution's container (see the module docstring)."""

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        return None


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker consumes unless `-Q` says otherwise: the queue of each language it
    serves (for APIs with EXECUTOR_ROUTE_BY_LANGUAGE=1), and the shared queue unless it serves
    only some languages (EXECUTOR_LANGUAGES)."""
    served = settings.worker_languages or [lang.name for lang in REGISTRY]
    shared = [] if settings.worker_languages else [QUEUE]
    return [*shared, *(queue_for(name, True) for name in served)]


def create_worker(settings: Settings) -> Celery:
    """The worker's app: the task `executor.execute`, one WorkerRuntime per process, and the
    worker's own monitoring endpoint (executor.monitor)."""
    app = create_celery(settings)
    app.conf.worker_pool = ThreadsPool
    app.conf.task_queues = [
        Queue(name, routing_key=name)  # type: ignore[no-untyped-call]
        for name in worker_queues(settings)
    ]

    runtime = WorkerRuntime(settings, revoked=revoked_ids, celery=app)
    register(app, runtime)
    consumer: list[Any] = []  # the Celery consumer, once the worker is ready

    def alive() -> bool:
        state = (
            getattr(getattr(consumer[0], "blueprint", None), "state", None) if consumer else None
        )
        return runtime.alive() and state == bootsteps.RUN

    probe = WorkerProbe(alive, runtime.store.ping, runtime.ping_docker, runtime.info)
    monitor = MonitorServer(settings.monitor_port, probe)

    # Celery's signals are process-wide: act only for this app's own worker.
    def on_setup_logging(loglevel: Any = None, **_: Any) -> None:
        # A receiver here replaces Celery's own logging setup (and its stdout redirection);
        # the level is the worker's --loglevel, as with Celery's own.
        configure_logging(settings.log_format, loglevel or settings.log_level)

    def on_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
        # Before Celery's first warnings (running as root...), so they are records too.
        if getattr(instance, "app", None) is app:
            configure_logging(settings.log_format, settings.log_level)

    def on_after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
        # The banner is printed, not logged: in JSON it would be the one line that is not.
        if getattr(instance, "app", None) is app and settings.log_format == "json":
            instance.quiet = True

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            # Celery logs each task's return value (up to 1 KiB of the result, so of its
            # stdout) at INFO; the runtime logs each execution without its data instead.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
            runtime.start(getattr(sender, "hostname", None))
            consumer[:] = [sender]
            # Probes answer from now on, before anything that waits on Docker (which may be
            # the very thing /readyz has to report as down).
            monitor.start()
            # A language whose image this engine lacks is left to other workers: stop
            # consuming its queue.
            served = runtime.served_languages() or ()
            for language in REGISTRY:
                queue = queue_for(language.name, True)
                if language.name not in served and queue in worker_queues(settings):
                    sender.cancel_task_queue(queue)
            if settings.log_format == "json":
                # Celery prints "worker: Warm shutdown" on SIGTERM; the same handler, silent.
                install_worker_term_handler(sender.controller, verbose=False)

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            logging.getLogger(__name__).info("worker shutting down")
            monitor.stop()
            runtime.stop()

    def on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and request is not None:
            try:
                runtime.revoked_now(str(request.id))
            except ExecutorError as e:  # the next beat looks at the revoked set again
                logging.getLogger(__name__).warning("revoke of %s: %s", request.id, e)

    signals.task_revoked.connect(on_revoked, weak=False)
    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.celeryd_init.connect(on_init, weak=False)
    signals.celeryd_after_setup.connect(on_after_setup, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    app.executor_runtime = runtime
    return app
