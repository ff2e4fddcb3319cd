"""The schemas of every HTTP reply: what each endpoint sends, field for field.

Views answer through `@blp.response` (or `reply()` for an alternative status), so a reply is
dumped through its schema: a field that is not declared here is never sent, and a test compares
every schema with real answers. `required=True` marks the fields every answer carries.
The request's schema is executor.request_schema's (the Celery task shares it).
"""

from __future__ import annotations

import copy
from datetime import UTC
from typing import Any

from marshmallow import Schema, fields, validate

from executor.history import HIDDEN, STEP_OUTPUT
from executor.models import FINISHED


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


def _always(field: type[fields.Field[Any]], *args: Any, **kwargs: Any) -> Any:
    """A field every answer carries."""
    return field(*args, required=True, **kwargs)


class LimitsSchema(Schema):
    timeout = _always(fields.Float, metadata=_doc("Seconds."))
    memory_mb = _always(fields.Integer)
    cpus = _always(fields.Float)
    pids = _always(fields.Integer)
    tmpfs_mb = _always(fields.Integer)


class UsageSchema(Schema):
    cpu_ms = _always(fields.Integer, metadata=_doc("CPU time, user + system, with children."))
    memory_bytes = _always(fields.Integer, metadata=_doc("Peak resident memory."))


_USAGE = _doc("Measured by the kernel.")


class StepSchema(Schema):
    exit_code = _always(fields.Integer, allow_none=True)
    stdout = _always(fields.String)
    stderr = _always(fields.String)
    duration_ms = _always(fields.Integer)
    usage = _always(fields.Nested, UsageSchema, metadata=_USAGE)
    cached = _always(
        fields.Boolean,
        metadata=_doc(
            "No build ran: the products of an identical earlier build on this worker were used"
            " (its build cache); stdout and stderr are that build's, duration_ms and usage 0."
        ),
    )


class TestCaseResultSchema(Schema):
    status = _always(fields.String, validate=validate.OneOf(FINISHED[:-1]))
    exit_code = _always(fields.Integer, allow_none=True)
    signal = _always(fields.String, allow_none=True)
    stdout = _always(fields.String)
    stderr = _always(fields.String)
    stdout_truncated = _always(fields.Boolean)
    stderr_truncated = _always(fields.Boolean)
    duration_ms = _always(fields.Integer)
    usage = _always(fields.Nested, UsageSchema, metadata=_USAGE)
    passed = _always(
        fields.Boolean, allow_none=True, metadata=_doc("Null without an expected_stdout.")
    )


class OutputFileSchema(Schema):
    path = _always(fields.String, metadata=_doc("Relative to the working directory."))
    size = _always(fields.Integer)
    content_base64 = _always(fields.String)


_TIME = _doc("ISO 8601, UTC.")


class ExecutionResultSchema(Schema):
    id = _always(fields.String, metadata=_doc("The execution id."))
    status = _always(fields.String, validate=validate.OneOf(FINISHED[:-1]))
    compile = _always(
        fields.Nested, StepSchema, allow_none=True, metadata=_doc("The build step, or null.")
    )
    exit_code = _always(fields.Integer, allow_none=True)
    signal = _always(fields.String, allow_none=True, metadata=_doc('e.g. "SIGKILL".'))
    stdout = _always(fields.String)
    stderr = _always(fields.String)
    stdout_truncated = _always(fields.Boolean)
    stderr_truncated = _always(fields.Boolean)
    duration_ms = _always(
        fields.Integer, metadata=_doc("Wall time of the program itself (of all its test cases).")
    )
    usage = _always(
        fields.Nested,
        UsageSchema,
        metadata=_doc("Of the program (all test cases: CPU summed, the largest peak)."),
    )
    tests = fields.List(
        fields.Nested(TestCaseResultSchema),
        metadata=_doc("With tests: one result per case, in order."),
    )
    passed = fields.Integer(metadata=_doc("With tests: the cases whose stdout was expected."))
    failed = fields.Integer(metadata=_doc("With tests: the cases whose stdout was not."))
    files = fields.List(
        fields.Nested(OutputFileSchema), metadata=_doc("With outputs: the files matched.")
    )
    files_truncated = fields.Boolean(metadata=_doc("With outputs: a cap left files out."))
    queued_ms = _always(
        fields.Integer,
        metadata=_doc(
            "From submission until the program started: the queue, and a cold container's boot."
        ),
    )
    # Null in an execution cancelled before it started: it never ran (the language too, for a
    # producer's message cancelled before a worker read it).
    language = _always(fields.String, allow_none=True)
    image = _always(
        fields.String, allow_none=True, metadata=_doc("The image that ran it, with its digest.")
    )
    limits = _always(
        fields.Nested,
        LimitsSchema,
        allow_none=True,
        metadata=_doc("The limits actually applied."),
    )
    worker = _always(
        fields.String, allow_none=True, metadata=_doc("HOSTNAME of the worker that ran it.")
    )
    created_at = _always(fields.String, metadata=_TIME)
    started_at = _always(
        fields.String, allow_none=True, metadata=_doc("ISO 8601, UTC: when the program started.")
    )
    finished_at = _always(fields.String, metadata=_TIME)
    warm = _always(fields.Boolean, metadata=_doc("Whether a pre-started container ran it."))


class ExecutionFailedSchema(Schema):
    id = _always(fields.String)
    status = _always(fields.String, validate=validate.OneOf(["internal_error"]))
    code = _always(fields.String, metadata=_doc("The error's code, e.g. execution_lost."))
    message = _always(fields.String)
    errors = fields.Dict(metadata=_doc("Each bad field of a rejected payload."))


class ExecutionPendingSchema(Schema):
    id = _always(fields.String)
    status = _always(fields.String, validate=validate.OneOf(["queued", "running"]))


class ErrorSchema(Schema):
    code = _always(fields.String, metadata=_doc("Machine-readable, e.g. invalid_request."))
    status = _always(fields.Integer, metadata=_doc("The HTTP status."))
    message = _always(fields.String)
    errors = fields.Dict(metadata=_doc("Each bad field with its messages (422)."))
    id = fields.String(metadata=_doc("The execution, when one was made (502, 503)."))


class LanguageSchema(Schema):
    name = _always(fields.String)
    version = _always(fields.String)
    image = _always(fields.String)
    compiled = _always(
        fields.Boolean, metadata=_doc("Whether a build step runs before the program.")
    )
    images = _always(
        fields.List,
        fields.String(),
        attribute="extra_images",
        metadata=_doc("Operator-approved extra images."),
    )


class CheckSchema(Schema):
    status = _always(fields.String, validate=validate.OneOf(["ok", "unavailable"]))
    message = _always(fields.String, metadata=_doc("What is up, or why it is down."))
    latency_ms = _always(fields.Float)
    count = fields.Integer(metadata=_doc("workers: how many answered the ping."))
    names = fields.List(fields.String(), metadata=_doc("workers: those that answered."))


class ChecksSchema(Schema):
    docker = _always(fields.Nested, CheckSchema)
    redis = _always(fields.Nested, CheckSchema)
    workers = _always(fields.Nested, CheckSchema)


class HealthSchema(Schema):
    status = _always(fields.String, validate=validate.OneOf(["ok", "unavailable"]))
    checks = _always(fields.Nested, ChecksSchema)


class PoolSchema(Schema):
    warm = _always(fields.Integer, metadata=_doc("Warm containers waiting."))
    target = _always(fields.Integer, metadata=_doc("Warm containers wanted."))
    starting = fields.Integer(metadata=_doc("A worker's: warm containers being started."))
    languages = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.Integer()),
        metadata=_doc("Per language: warm and target (its share of the budget by demand)."),
    )


class WorkerSchema(Schema):
    name = _always(fields.String)
    instance = _always(fields.String)
    active = _always(fields.Integer, metadata=_doc("Executions running now."))
    processed = _always(fields.Integer, metadata=_doc("Executions finished since it started."))
    concurrency = _always(fields.Integer)
    pool = _always(fields.Nested, PoolSchema)
    pid = _always(fields.Integer)
    started_at = _always(fields.String, metadata=_TIME)


class RecentSchema(Schema):
    id = _always(fields.String)
    status = _always(fields.String)
    language = _always(
        fields.String, allow_none=True, metadata=_doc("Null for a producer's message not yet read.")
    )
    duration_ms = _always(fields.Integer, allow_none=True)
    created_at = _always(fields.String, metadata=_TIME)
    worker = _always(fields.String, allow_none=True)


class QueueSchema(Schema):
    depth = _always(fields.Integer, metadata=_doc("Executions waiting for a worker."))


class CountersSchema(Schema):
    submitted = _always(fields.Integer)
    executions = _always(
        fields.Dict, keys=fields.String(), values=fields.Integer(), metadata=_doc("By status.")
    )
    rejected = _always(fields.Integer, metadata=_doc("Queued payloads that failed validation."))
    timeouts = _always(fields.Integer)
    containers_created = _always(fields.Integer)
    containers_removed = _always(fields.Integer)
    containers_failed = _always(fields.Integer, metadata=_doc("Failed to be created."))
    containers_reaped = _always(fields.Integer, metadata=_doc("Removed by a reaper."))
    average_duration_ms = _always(fields.Float)


class StatusSchema(Schema):
    instance = _always(fields.String)
    version = _always(fields.String)
    uptime_s = _always(fields.Float)
    workers = _always(fields.List, fields.Nested(WorkerSchema))
    queue = _always(fields.Nested, QueueSchema)
    pool = _always(fields.Nested, PoolSchema, metadata=_doc("Over all workers."))
    counters = _always(fields.Nested, CountersSchema)
    recent = _always(
        fields.List, fields.Nested(RecentSchema), metadata=_doc("Newest first; never code.")
    )


# -- GET /executions: the history ------------------------------------------------------------

_HISTORY_STATUSES = ("queued", "running", *FINISHED)


def _without_output(schema: type[Schema], name: str) -> type[Schema]:
    """`schema` without STEP_OUTPUT, as a history item holds a build or a test case."""
    kept = {
        field_name: copy.copy(declared)
        for field_name, declared in schema._declared_fields.items()
        if field_name not in STEP_OUTPUT
    }
    return Schema.from_dict(kept, name=name)


def _history_item_fields() -> dict[str, fields.Field[Any]]:
    """A result's fields but its output (executor.history.HIDDEN), none of them required: an
    item is a result, an ExecutionFailed body, or the state of a pending execution."""
    item: dict[str, fields.Field[Any]] = {}
    for name, declared in ExecutionResultSchema._declared_fields.items():
        if name not in HIDDEN:
            field = copy.copy(declared)
            field.required = False
            item[name] = field
    item["compile"] = fields.Nested(
        _without_output(StepSchema, "HistoryStepSchema"), allow_none=True
    )
    item["tests"] = fields.List(
        fields.Nested(_without_output(TestCaseResultSchema, "HistoryTestCaseSchema"))
    )
    item["status"] = _always(fields.String, validate=validate.OneOf(_HISTORY_STATUSES))
    item["code"] = fields.String(metadata=_doc("internal_error: the error's code."))
    item["message"] = fields.String(metadata=_doc("internal_error: what went wrong."))
    item["errors"] = fields.Dict(metadata=_doc("internal_error: each bad field."))
    return item


HistoryItemSchema = Schema.from_dict(_history_item_fields(), name="HistoryItemSchema")


class HistoryPageSchema(Schema):
    items = _always(
        fields.List,
        fields.Nested(HistoryItemSchema),
        metadata=_doc("Newest first; each a result without stdout, stderr and files."),
    )
    next = _always(
        fields.String,
        allow_none=True,
        metadata=_doc("The `cursor` of the next page; null when nothing older matches."),
    )


class HistoryQuerySchema(Schema):
    status = fields.String(validate=validate.OneOf(_HISTORY_STATUSES))
    language = fields.String(validate=validate.Length(1, 64))
    worker = fields.String(validate=validate.Length(1, 255), metadata=_doc("HOSTNAME of one."))
    since = fields.AwareDateTime(
        default_timezone=UTC, metadata=_doc("ISO 8601: created at or after (UTC if no offset).")
    )
    until = fields.AwareDateTime(
        default_timezone=UTC, metadata=_doc("ISO 8601: created at or before (UTC if no offset).")
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    cursor = fields.String(
        validate=validate.Length(1, 400), metadata=_doc("A previous page's `next`.")
    )
