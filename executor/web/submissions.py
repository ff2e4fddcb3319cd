"""Submitting an execution and waiting for it: validate, admit, record, enqueue, wait.

The wait is a notification, never a polling sleep: the worker pushes the final payload to
``done:<id>`` and the request blocks on it (BLPOP) for the rest of its budget, in slices of a
couple of seconds between which it checks that the execution's worker is still alive.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from kombu.exceptions import OperationalError

from executor.errors import RedisUnavailable
from executor.models import RunRequest
from executor.store import queue_for
from executor.tasks import TASK_NAME
from executor.validation import parse_request
from executor.web.context import Context

log = logging.getLogger(__name__)


def submit(ctx: Context, body: Any) -> tuple[str, RunRequest]:
    """Validate `body`, then queue it; (its new id, the request).

    Raises InvalidRequest (422), DockerUnavailable/NoWorkers/RedisUnavailable (503) or
    QueueFull (429) before anything is queued.
    """
    request = parse_request(body, ctx.bounds)
    ctx.health.require_docker()
    execution_id = str(uuid.uuid4())
    ctx.store.submit(execution_id, request.language, ctx.settings.max_queue)
    queue = queue_for(request.language, ctx.settings.route_by_language)
    try:
        ctx.celery.send_task(
            TASK_NAME,
            args=[body],
            task_id=execution_id,
            queue=queue,
            routing_key=queue,
            ignore_result=True,  # the record holds the result
            # What task events, `celery inspect` and Flower show instead of the code and stdin.
            argsrepr=f"[<{request.language} program, {len(request.code)} characters>]",
            kwargsrepr="{}",
        )
    except (OperationalError, OSError) as e:  # the broker (Redis) is down
        ctx.store.discard(execution_id)
        raise RedisUnavailable(f"could not queue the execution: {type(e).__name__}: {e}") from None
    log.info("execution %s queued (%s)", execution_id, request.language)
    return execution_id, request


def wait(ctx: Context, execution_id: str, budget_s: float) -> dict[str, Any] | None:
    """The final payload of `execution_id` if it finishes within `budget_s`, else None."""
    deadline = time.monotonic() + budget_s
    while (remaining := deadline - time.monotonic()) > 0:
        payload = ctx.store.wait(execution_id, remaining)
        if payload is not None:
            return payload
        record = ctx.store.get(execution_id)  # finishes it as lost if its worker died
        if record is None or record.payload is not None:
            return record.payload if record else None
    return None
