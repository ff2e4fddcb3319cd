"""The Celery task: the request dict in, the result dict out (see executor.runtime)."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from executor.errors import ExecutorError
from executor.runtime import WorkerRuntime

TASK_NAME = "executor.execute"


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
