"""Submitting an execution and waiting for it: admit, record, enqueue, wait.

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
from executor.names import QUEUE, TASK_NAME
from executor.web.context import Context

log = logging.getLogger(__name__)


def submit(ctx: Context, request: RunRequest) -> str:
    """Queue a validated `request`; its new execution id.

    Raises DockerUnavailable/NoWorkers/RedisUnavailable (503) or QueueFull (429) before
    anything is queued.
    """
    ctx.health.require_docker()
    execution_id = str(uuid.uuid4())
    ctx.store.submit(execution_id, request.language, ctx.settings.max_queue)
    try:
        ctx.celery.send_task(
            TASK_NAME,
            args=[ctx.requests.dump(request)],  # the worker loads it with the same schema
            task_id=execution_id,
            queue=QUEUE,
            routing_key=QUEUE,
            ignore_result=True,  # the record holds the result
            # What task events, `celery inspect` and Flower show instead of the code and stdin.
            argsrepr=f"[<{request.language} program, {len(request.code)} characters>]",
            kwargsrepr="{}",
        )
    except (OperationalError, OSError) as e:  # the broker (Redis) is down
        ctx.store.discard(execution_id)
        raise RedisUnavailable(f"could not queue the execution: {type(e).__name__}: {e}") from None
    log.info("execution %s queued (%s)", execution_id, request.language)
    return execution_id


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
