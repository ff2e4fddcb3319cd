"""POST /execute, POST /executions, GET /executions/{id}."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema

from executor.budget import run_seconds
from executor.errors import ExecutionNotFound, error_for
from executor.languages import languages
from executor.models import RunRequest
from executor.request_schema import RequestSchema
from executor.web import submissions
from executor.web.arguments import ApiBlueprint
from executor.web.context import context
from executor.web.errors import error_response, reply
from executor.web.schemas import (
    ErrorSchema,
    ExecutionFailedSchema,
    ExecutionPendingSchema,
    ExecutionResultSchema,
)


def location(execution_id: str) -> str:
    return f"/executions/{execution_id}"


def pending(execution_id: str, status: str) -> Response:
    headers = {"Location": location(execution_id), "Retry-After": "1"}
    return reply(ExecutionPendingSchema, {"id": execution_id, "status": status}, 202, headers)


def finished(payload: dict[str, Any], *, as_error: bool) -> Any:
    """A finished execution: the result (200), or an internal_error as its failure body (200)
    or, for POST /execute, as its 502/503."""
    if payload.get("status") != "internal_error":
        return payload
    if not as_error:
        return reply(ExecutionFailedSchema, payload, 200)
    error = error_for(str(payload.get("code")), str(payload.get("message")), payload.get("errors"))
    return error_response(error, id=payload.get("id"))


_ERRORS = {
    413: "The body is larger than any valid request.",
    422: "Invalid input; `errors` names each bad field.",
    429: "The queue is full; retry after Retry-After seconds.",
    503: "Docker, Redis or the workers are down; retry after Retry-After seconds.",
}
_LOCATION = {"Location": {"schema": {"type": "string"}}}


def schema_name(schema: type[Schema]) -> str:
    """The component name of a schema class, as apispec names it."""
    return schema.__name__.removesuffix("Schema")


def _errors(blp: Blueprint, *statuses: int) -> Any:
    def decorate(view: Any) -> Any:
        for status in statuses:
            view = blp.alt_response(status, schema=ErrorSchema, description=_ERRORS[status])(view)
        return view

    return decorate


def blueprint(request_schema: type[RequestSchema]) -> Blueprint:
    blp = ApiBlueprint(
        "executions", __name__, description="Run code in single-use sandboxes.", url_prefix="/"
    )

    @blp.route("/execute")
    class Execute(MethodView):
        @blp.doc(
            summary="Run code and wait for the result",
            description="Waits up to the request's timeout plus the queueing grace; answers "
            "202 with Location when the result is not ready by then (it keeps running).",
        )
        @blp.arguments(request_schema)
        @blp.response(200, ExecutionResultSchema, description="The program ran.")
        @blp.alt_response(
            202,
            schema=ExecutionPendingSchema,
            description="Not finished within the wait budget; see Location.",
            headers=_LOCATION,
        )
        @blp.alt_response(
            502, schema=ErrorSchema, description="The execution could not run (e.g. lost)."
        )
        @_errors(blp, 413, 422, 429, 503)
        def post(self, run: RunRequest) -> Any:
            ctx = context()
            key = request.headers.get(submissions.IDEMPOTENCY_HEADER)
            execution_id = submissions.submit(ctx, run, key)
            language = languages(ctx.settings).get(run.language)
            build = language.compile_timeout if language is not None and language.compiled else 0
            runs = max(1, len(run.tests))
            budget = run_seconds(run.limits.timeout, runs, build) + ctx.settings.queue_grace_s
            payload = submissions.wait(ctx, execution_id, budget)
            if payload is not None:
                return finished(payload, as_error=True)
            record = ctx.store.get(execution_id)
            if record is not None and record.payload is not None:
                return finished(record.payload, as_error=True)
            return pending(execution_id, record.status if record else "queued")

    @blp.route("/executions")
    class Executions(MethodView):
        @blp.doc(summary="Queue code to run")
        @blp.arguments(request_schema)
        @blp.response(
            202, ExecutionPendingSchema, description="Queued; poll Location.", headers=_LOCATION
        )
        @_errors(blp, 413, 422, 429, 503)
        def post(self, run: RunRequest) -> Response:
            key = request.headers.get(submissions.IDEMPOTENCY_HEADER)
            return pending(submissions.submit(context(), run, key), "queued")

    @blp.route("/executions/<execution_id>")
    class Execution(MethodView):
        @blp.doc(summary="An execution's state or result")
        @blp.response(
            200,
            ExecutionResultSchema,
            description="Finished: the result, or an ExecutionFailed body when it could not "
            "run (Docker unreachable, worker lost).",
        )
        @blp.alt_response(202, schema=ExecutionPendingSchema, description="Queued or running.")
        @blp.alt_response(404, schema=ErrorSchema, description="Never submitted (or expired).")
        def get(self, execution_id: str) -> Any:
            try:
                uuid.UUID(execution_id)
            except ValueError:
                raise ExecutionNotFound(f"no execution has the id {execution_id!r}") from None
            record = context().store.get(execution_id)
            if record is None:
                raise ExecutionNotFound(f"no execution has the id {execution_id}")
            if record.payload is not None:
                return finished(record.payload, as_error=False)
            return pending(execution_id, record.status)

    return blp
