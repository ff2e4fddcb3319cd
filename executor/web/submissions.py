"""Submitting an execution and waiting for it: admit, record, enqueue, wait.

The wait is a notification, never a polling sleep: the worker pushes the final payload to
``done:<id>`` and the request blocks on it (BLPOP) for the rest of its budget, in slices of a
couple of seconds between which it checks that the execution's worker is still alive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

from kombu.exceptions import OperationalError

from executor import logs
from executor.celery_app import send_execution
from executor.errors import InvalidRequest, RedisUnavailable
from executor.models import RunRequest
from executor.web.context import Context

log = logging.getLogger(__name__)


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def submit(
    ctx: Context, request: RunRequest, idempotency_key: str | None = None, owner: str = ""
) -> str:
    """Queue a validated `request` of the API key whose id is `owner` (if any); its new
    execution id.

    With an Idempotency-Key, a retry of the same body gets the execution the key first
    queued (never a second run), and the same key with another body is an InvalidRequest.
    An Idempotency-Key is the owner's own: another API key's same key is another execution.
    Raises DockerUnavailable/NoWorkers/RedisUnavailable (503) or QueueFull (429) before
    anything is queued.
    """
    ctx.health.require_docker()
    execution_id = str(uuid.uuid4())
    logs.bind_execution(execution_id)
    if idempotency_key is not None:
        known = _known_execution(ctx, request, idempotency_key, execution_id, owner)
        if known is not None:
            return known
    try:
        _queue(ctx, request, execution_id, owner)
    except BaseException:
        if idempotency_key is not None:  # nothing was queued: a retry may submit
            ctx.store.forget_key(_scoped(idempotency_key, owner))
        raise
    return execution_id


def _scoped(key: str, owner: str) -> str:
    """An Idempotency-Key as stored: within its owner's keys (unchanged without API keys)."""
    return f"{owner} {key}" if owner else key


def _known_execution(
    ctx: Context, request: RunRequest, key: str, execution_id: str, owner: str
) -> str | None:
    """The execution `key` already stands for, or None once `key` is tied to `execution_id`."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(
            f"the {IDEMPOTENCY_HEADER} header must be 1 to {MAX_KEY_CHARS} printable characters",
            errors={IDEMPOTENCY_HEADER: ["Not a usable key."]},
        )
    body = json.dumps(ctx.requests.dump(request), sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(body.encode()).hexdigest()
    known_id, known_fingerprint = ctx.store.remember_key(
        _scoped(key, owner), fingerprint, execution_id
    )
    if known_fingerprint != fingerprint:
        raise InvalidRequest(
            f"this {IDEMPOTENCY_HEADER} was used with another request body",
            errors={IDEMPOTENCY_HEADER: ["Already used with another request body."]},
        )
    if known_id != execution_id:
        logs.bind_execution(known_id)
        log.info("execution %s: a retry with its Idempotency-Key", known_id)
        return known_id
    return None


def _queue(ctx: Context, request: RunRequest, execution_id: str, owner: str) -> None:
    # The request is stored with the record; the message carries only the id (its task id),
    # so the broker, `celery inspect` and Flower never hold the code or stdin.
    stored = json.dumps(ctx.requests.dump(request))  # the worker loads it with the same schema
    ctx.store.submit(
        execution_id, request.language, ctx.settings.max_queue, owner=owner, request=stored
    )
    try:
        send_execution(
            ctx.celery,
            execution_id,
            request.language,
            len(request.code),
            ctx.settings.route_by_language,
        )
    except (OperationalError, OSError) as e:  # the broker (Redis) is down
        ctx.store.discard(execution_id)
        raise RedisUnavailable(f"could not queue the execution: {type(e).__name__}: {e}") from None
    log.info("execution %s queued (%s)", execution_id, request.language)


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
