"""The worker's Celery app and its task: the request dict in, the result dict out.

`create_worker(settings)` is the API's Celery app (executor.celery_app) with `executor.execute`
registered and the worker's lifecycle wired: one WorkerRuntime per process, started on
worker_ready, stopped on worker_shutdown. Nothing connects at build time.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, signals

from executor.celery_app import create_celery
from executor.config import Settings
from executor.errors import ExecutorError
from executor.names import TASK_NAME
from executor.runtime import WorkerRuntime


def register(app: Celery, runtime: WorkerRuntime) -> Task:
    """Register `executor.execute` on `app`, running its executions on `runtime`.

    Never retried: a bad payload or an infrastructure fault fails the task with an error that
    names the cause; the program's own failure is a successful task with its `status`.
    """

    # `throws`: our own errors are expected outcomes, logged by the runtime without a traceback.
    @app.task(name=TASK_NAME, bind=True, max_retries=0, throws=(ExecutorError,))  # type: ignore[untyped-decorator]
    def execute(self: Task, request: Any) -> dict[str, Any]:
        return runtime.execute(request, str(self.request.id))

    return execute


def create_worker(settings: Settings) -> Celery:
    """The worker's app: the task `executor.execute` and one WorkerRuntime per process."""
    app = create_celery(settings)
    runtime = WorkerRuntime(settings)
    register(app, runtime)

    # Celery's signals are process-wide: act only for this app's own worker.
    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            # Celery logs each task's return value (up to 1 KiB of the result, so of its
            # stdout) at INFO; the runtime logs each execution without its data instead.
            logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
            runtime.start(getattr(sender, "hostname", None))

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            runtime.stop()

    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    app.executor_runtime = runtime
    return app
