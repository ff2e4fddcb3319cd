"""POST /execute, POST /executions, GET /executions/{id}."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema

from executor.errors import ExecutionNotFound, InvalidRequest, error_for
from executor.languages import languages
from executor.web import submissions
from executor.web.context import context
from executor.web.errors import error_response, json_response
from executor.web.schemas import (
    ErrorSchema,
    ExecutionFailedSchema,
    ExecutionPendingSchema,
    ExecutionResultSchema,
    Schemas,
)


def read_json() -> Any:
    """The request body as JSON (the size was checked before it was read)."""
    try:
        return json.loads(request.get_data(cache=False))
    except ValueError as e:
        raise InvalidRequest(
            f"the body is not valid JSON: {e}", {"_schema": ["Invalid JSON body."]}
        ) from None


def location(execution_id: str) -> str:
    return f"/executions/{execution_id}"


def pending(execution_id: str, status: str) -> Response:
    headers = {"Location": location(execution_id), "Retry-After": "1"}
    return json_response({"id": execution_id, "status": status}, 202, headers)


def finished(payload: dict[str, Any], *, as_error: bool) -> Response:
    """A finished execution: 200, or for POST /execute an internal_error as its 502/503."""
    if payload.get("status") != "internal_error" or not as_error:
        return json_response(payload)
    error = error_for(str(payload.get("code")), str(payload.get("message")), payload.get("errors"))
    return error_response(error, id=payload.get("id"))


_ERRORS = {
    413: "The body is larger than any valid request.",
    422: "Invalid input; `errors` names each bad field.",
    429: "The queue is full; retry after Retry-After seconds.",
    503: "Docker, Redis or the workers are down; retry after Retry-After seconds.",
}


def _ref(schema: type[Schema]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema_name(schema)}"}


def schema_name(schema: type[Schema]) -> str:
    """The component name of a schema class, as apispec names it."""
    return schema.__name__.removesuffix("Schema")


def _errors(blp: Blueprint, *statuses: int) -> Any:
    def decorate(view: Any) -> Any:
        for status in statuses:
            view = blp.alt_response(status, schema=ErrorSchema, description=_ERRORS[status])(view)
        return view

    return decorate


def blueprint(schemas: Schemas) -> Blueprint:
    blp = Blueprint(
        "executions", __name__, description="Run code in single-use sandboxes.", url_prefix="/"
    )
    request_body = {"required": True, "content": {"application/json": {"schema": schemas.request}}}

    @blp.route("/execute")
    class Execute(MethodView):
        @blp.doc(
            summary="Run code and wait for the result",
            requestBody=request_body,
            description="Waits up to the request's timeout plus the queueing grace; answers "
            "202 with Location when the result is not ready by then (it keeps running).",
        )
        @blp.alt_response(200, schema=ExecutionResultSchema, description="The program ran.")
        @blp.alt_response(
            202,
            schema=ExecutionPendingSchema,
            description="Not finished within the wait budget; see Location.",
            headers={"Location": {"schema": {"type": "string"}}},
        )
        @blp.alt_response(
            502, schema=ErrorSchema, description="The execution could not run (e.g. lost)."
        )
        @_errors(blp, 413, 422, 429, 503)
        def post(self) -> Response:
            ctx = context()
            execution_id, run = submissions.submit(ctx, read_json())
            language = languages(ctx.settings).get(run.language)
            build = language.compile_timeout if language is not None and language.compiled else 0
            budget = run.limits.timeout + build + ctx.settings.queue_grace_s
            payload = submissions.wait(ctx, execution_id, budget)
            if payload is not None:
                return finished(payload, as_error=True)
            record = ctx.store.get(execution_id)
            if record is not None and record.payload is not None:
                return finished(record.payload, as_error=True)
            return pending(execution_id, record.status if record else "queued")

    @blp.route("/executions")
    class Executions(MethodView):
        @blp.doc(summary="Queue code to run", requestBody=request_body)
        @blp.alt_response(
            202,
            schema=ExecutionPendingSchema,
            description="Queued; poll Location.",
            headers={"Location": {"schema": {"type": "string"}}},
        )
        @_errors(blp, 413, 422, 429, 503)
        def post(self) -> Response:
            execution_id, _ = submissions.submit(context(), read_json())
            return pending(execution_id, "queued")

    @blp.route("/executions/<execution_id>")
    class Execution(MethodView):
        @blp.doc(summary="An execution's state or result")
        @blp.alt_response(
            200,
            schema={"oneOf": [_ref(ExecutionResultSchema), _ref(ExecutionFailedSchema)]},
            description="Finished: the result, or ExecutionFailed when it could not run "
            "(Docker unreachable, worker lost).",
        )
        @blp.alt_response(202, schema=ExecutionPendingSchema, description="Queued or running.")
        @blp.alt_response(404, schema=ErrorSchema, description="Never submitted (or expired).")
        def get(self, execution_id: str) -> Response:
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
