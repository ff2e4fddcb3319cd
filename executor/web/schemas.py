"""The OpenAPI schemas, generated from the same `Bounds` the requests are checked against.

These classes document; they do not validate. Validation is executor.validation's, shared with
the Celery task (producers bypass HTTP), so there is one source of truth for every bound.
Marshmallow has no schema context, so the classes are built per app from its Bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from marshmallow import Schema, fields, validate

from executor.models import FINISHED
from executor.validation import MAX_PATH_BYTES, Bounds


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


class FileSchema(Schema):
    path = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_PATH_BYTES),
        metadata=_doc("Relative, normalized path beside the program; no '..', not absolute."),
    )
    content = fields.String(required=True, metadata=_doc("The file's text."))


class LimitsSchema(Schema):
    timeout = fields.Float(metadata=_doc("Seconds."))
    memory_mb = fields.Integer()
    cpus = fields.Float()
    pids = fields.Integer()
    tmpfs_mb = fields.Integer()


class StepSchema(Schema):
    exit_code = fields.Integer(allow_none=True)
    stdout = fields.String()
    stderr = fields.String()
    duration_ms = fields.Integer()


class ExecutionResultSchema(Schema):
    id = fields.UUID(metadata=_doc("The execution id."))
    status = fields.String(validate=validate.OneOf(FINISHED[:-1]))
    compile = fields.Nested(StepSchema, allow_none=True, metadata=_doc("The build step."))
    exit_code = fields.Integer(allow_none=True)
    signal = fields.String(allow_none=True, metadata=_doc('e.g. "SIGKILL".'))
    stdout = fields.String()
    stderr = fields.String()
    stdout_truncated = fields.Boolean()
    stderr_truncated = fields.Boolean()
    duration_ms = fields.Integer(metadata=_doc("Wall time of the program itself."))
    queued_ms = fields.Integer(metadata=_doc("From submission until a worker started it."))
    language = fields.String()
    image = fields.String(metadata=_doc("The image that ran it, with its digest."))
    limits = fields.Nested(LimitsSchema, metadata=_doc("The limits actually applied."))
    worker = fields.String(metadata=_doc("HOSTNAME of the worker that ran it."))
    created_at = fields.String(metadata=_doc("ISO 8601, UTC."))
    started_at = fields.String(metadata=_doc("ISO 8601, UTC."))
    finished_at = fields.String(metadata=_doc("ISO 8601, UTC."))
    warm = fields.Boolean(metadata=_doc("Whether a pre-started container ran it."))


class ExecutionFailedSchema(Schema):
    id = fields.UUID()
    status = fields.String(validate=validate.OneOf(["internal_error"]))
    code = fields.String(metadata=_doc("The error's code, e.g. execution_lost."))
    message = fields.String()


class ExecutionPendingSchema(Schema):
    id = fields.UUID()
    status = fields.String(validate=validate.OneOf(["queued", "running"]))


class ErrorSchema(Schema):
    code = fields.String(metadata=_doc("Machine-readable, e.g. invalid_request."))
    status = fields.Integer(metadata=_doc("The HTTP status."))
    message = fields.String()
    errors = fields.Dict(metadata=_doc("Each bad field with its messages (422)."))


class LanguageSchema(Schema):
    name = fields.String()
    version = fields.String()
    image = fields.String()
    compiled = fields.Boolean(metadata=_doc("Whether a build step runs before the program."))
    images = fields.List(fields.String(), metadata=_doc("Operator-approved extra images."))


class HealthSchema(Schema):
    status = fields.String(validate=validate.OneOf(["ok", "unavailable"]))
    checks = fields.Dict(
        keys=fields.String(validate=validate.OneOf(["docker", "redis", "workers"])),
        values=fields.Dict(),
        metadata=_doc("Each check's status and message (the reason when it fails)."),
    )


class WorkerSchema(Schema):
    name = fields.String()
    instance = fields.String()
    active = fields.Integer(metadata=_doc("Executions running now."))
    processed = fields.Integer(metadata=_doc("Executions finished since it started."))
    concurrency = fields.Integer()
    pool = fields.Dict(metadata=_doc("Warm containers: warm and target."))
    started_at = fields.String()


class RecentSchema(Schema):
    id = fields.UUID()
    status = fields.String()
    language = fields.String()
    duration_ms = fields.Integer(allow_none=True)
    created_at = fields.String()
    worker = fields.String(allow_none=True)


class StatusSchema(Schema):
    instance = fields.String()
    version = fields.String()
    uptime_s = fields.Float()
    workers = fields.List(fields.Nested(WorkerSchema))
    queue = fields.Dict(metadata=_doc("depth: executions waiting for a worker."))
    pool = fields.Dict(metadata=_doc("Warm containers over all workers: warm and target."))
    counters = fields.Dict(metadata=_doc("Executions by status, containers, timeouts..."))
    recent = fields.List(fields.Nested(RecentSchema), metadata=_doc("Newest first; no code."))


@dataclass(frozen=True)
class Schemas:
    """The schema classes of one app (the request's depends on the settings)."""

    request: type[Schema]


def build(bounds: Bounds) -> Schemas:
    """The request schema, with every bound of `bounds`."""
    names = sorted(bounds.languages)

    class ExecutionRequestSchema(Schema):
        code = fields.String(
            required=True,
            validate=validate.Length(min=1, max=bounds.max_code_bytes),
            metadata=_doc(f"The program: 1 to {bounds.max_code_bytes} bytes of UTF-8."),
        )
        language = fields.String(
            load_default="python", validate=validate.OneOf(names), metadata=_doc("See /languages.")
        )
        stdin = fields.String(
            load_default="",
            validate=validate.Length(max=bounds.max_stdin_bytes),
            metadata=_doc(f"Up to {bounds.max_stdin_bytes} bytes of UTF-8."),
        )
        args = fields.List(
            fields.String(validate=validate.Length(max=bounds.max_arg_bytes)),
            load_default=list,
            validate=validate.Length(max=bounds.max_args),
            metadata=_doc("The program's arguments."),
        )
        files = fields.List(
            fields.Nested(FileSchema),
            load_default=list,
            validate=validate.Length(max=bounds.max_files),
            metadata=_doc(
                f"Extra files beside the program, {bounds.max_files_bytes} bytes in all;"
                f" the program's own file name is reserved."
            ),
        )
        timeout = fields.Float(
            load_default=bounds.default_timeout,
            validate=validate.Range(min=0, max=bounds.max_timeout, min_inclusive=False),
            metadata=_doc(f"Seconds: more than 0, at most {bounds.max_timeout:g}."),
        )
        memory_mb = fields.Integer(
            load_default=bounds.default_memory_mb,
            validate=validate.Range(min=bounds.min_memory_mb, max=bounds.max_memory_mb),
        )
        cpus = fields.Float(
            load_default=bounds.default_cpus,
            validate=validate.Range(min=bounds.min_cpus, max=bounds.max_cpus),
        )
        image = fields.String(
            metadata=_doc("An operator-approved image for the language (EXECUTOR_IMAGES).")
        )

    return Schemas(request=ExecutionRequestSchema)
