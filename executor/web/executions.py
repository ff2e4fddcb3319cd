"""POST /execute, POST /executions, GET /executions (the history), GET /executions/{id}."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema

from executor.budget import run_seconds
from executor.errors import ExecutionFinished, ExecutionNotFound, error_for
from executor.languages import languages
from executor.models import RunRequest
from executor.policy import ID_RULE, valid_execution_id
from executor.request_schema import RequestSchema
from executor.store import Record
from executor.web import events, history, submissions
from executor.web.arguments import ApiBlueprint
from executor.web.auth import caller
from executor.web.context import context
from executor.web.errors import error_response, reply
from executor.web.schemas import (
    ErrorSchema,
    ExecutionFailedSchema,
    ExecutionPendingSchema,
    ExecutionResultSchema,
    HistoryPageSchema,
    HistoryQuerySchema,
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
_STREAM_DESCRIPTION = """Server-Sent Events, each with an `id`:
`status` (`{"status": "queued"|"running"}`), `stdout` and `stderr` (`{"data": "<text>"}` in
the order written, as the program writes; `"truncated": true` once a stream reached
EXECUTOR_MAX_OUTPUT_BYTES), and last `result` (the result body, or the internal_error body);
then the stream ends. A client reconnecting with `Last-Event-ID` gets what followed that
event. Comment lines keep an idle stream open."""
_STREAM_CONTENT = {
    "content": {
        events.EVENT_STREAM: {
            "schema": {
                "type": "string",
                "description": "Server-Sent Events (see GET /executions/{id}/events).",
            }
        }
    }
}


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
        @blp.doc(
            responses={
                "200": {
                    "description": "The program ran; with `Accept: text/event-stream`, its "
                    "live events instead (see GET /executions/{id}/events).",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ExecutionResult"}
                        },
                        **_STREAM_CONTENT["content"],
                    },
                }
            }
        )
        @_errors(blp, 413, 422, 429, 503)
        def post(self, run: RunRequest) -> Any:
            ctx = context()
            key = request.headers.get(submissions.IDEMPOTENCY_HEADER)
            execution_id = submissions.submit(ctx, run, key, caller().owner)
            if events.wanted():  # Accept: text/event-stream
                return events.response(ctx, execution_id)
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
            return pending(submissions.submit(context(), run, key, caller().owner), "queued")

        @blp.doc(
            summary="History: executions newest first",
            description="Each item is the result without stdout, stderr and files (they stay "
            "at GET /executions/{id}). Filters combine; `next` is the `cursor` of the next "
            "page. With API keys, a key sees only its own executions (an operator key, all). "
            "A page looks at a bounded number of records: a rare combination of filters may "
            "answer fewer items than `limit`, with a `next` to go on from.",
        )
        @blp.arguments(HistoryQuerySchema, location="query")
        @blp.response(200, HistoryPageSchema, description="A page of the history.")
        @_errors(blp, 422)
        def get(self, args: dict[str, Any]) -> Any:
            return history.page(context(), args)

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
            record = known(execution_id)  # 404 for another key's
            if record.payload is not None:
                return finished(record.payload, as_error=False)
            return pending(execution_id, record.status)

        @blp.doc(
            summary="Cancel an execution",
            description="A queued execution never starts; a running one's container is "
            "killed at once. 200 with its `cancelled` result once it has ended, 202 while it "
            "stops. A Celery revoke of the task has the same effect.",
        )
        @blp.response(200, ExecutionResultSchema, description="Cancelled: the result.")
        @blp.alt_response(202, schema=ExecutionPendingSchema, description="Stopping.")
        @blp.alt_response(404, schema=ErrorSchema, description="Never submitted (or expired).")
        @blp.alt_response(409, schema=ErrorSchema, description="It had already finished.")
        def delete(self, execution_id: str) -> Any:
            store = context().store
            known(execution_id)
            was, payload = store.cancel(execution_id)
            if was == "running":  # its worker kills it within a heartbeat
                record = store.wait_finished(execution_id, CANCEL_WAIT_S)
                payload = record.payload if record is not None else None
                if payload is None:
                    return pending(execution_id, "running")
            elif was == "unknown":  # expired between the two looks
                raise ExecutionNotFound(f"no execution has the id {execution_id}")
            assert payload is not None  # queued and finished records have one
            if payload.get("status") != "cancelled":
                raise ExecutionFinished(
                    f"execution {execution_id} had already finished ({payload.get('status')})"
                )
            return payload

    @blp.route("/executions/<execution_id>/events")
    class ExecutionEvents(MethodView):
        @blp.doc(
            summary="An execution's live events (Server-Sent Events)",
            description=_STREAM_DESCRIPTION,
            responses={
                "200": {"description": "The event stream, until the result.", **_STREAM_CONTENT}
            },
            parameters=[
                {
                    "in": "header",
                    "name": events.LAST_EVENT_ID,
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id (EventSource sends it).",
                }
            ],
        )
        @blp.alt_response(
            204,
            description="The execution has finished and Last-Event-ID is its last event: "
            "nothing follows (an EventSource stops reconnecting).",
        )
        @blp.alt_response(404, schema=ErrorSchema, description="Never submitted (or expired).")
        def get(self, execution_id: str) -> Response:
            record = known(execution_id)  # 404 for another key's
            return events.response(context(), execution_id, events.last_event_id(), record)

    return blp


CANCEL_WAIT_S = 2.0  # how long DELETE waits for a running execution to stop before a 202


def known(execution_id: str) -> Record:
    """The record of `execution_id` if the caller may see it; a producer's message still
    queued gets one first. Raises ExecutionNotFound for an id that names nothing (or no id at
    all) and for another API key's execution: the one check of every view of an execution."""
    if not valid_execution_id(execution_id):
        raise ExecutionNotFound(
            f"no execution has the id {execution_id[:140]!r} (ids are {ID_RULE})"
        )
    store = context().store
    record = store.get(execution_id)
    if record is None and store.adopt(on_demand=True):
        record = store.get(execution_id)
    if record is None or not caller().sees(record):
        raise ExecutionNotFound(f"no execution has the id {execution_id}")
    return record
