"""Live output as Server-Sent Events: GET /executions/{id}/events, and POST /execute with
`Accept: text/event-stream`.

A stream relays the execution's event stream in Redis (executor.streams), each entry as one
SSE event with the entry's id:

    event: status   data: {"status": "queued"} / {"status": "running"}
    event: stdout   data: {"data": "<text>"}      (and "truncated": true once, at the cap)
    event: stderr   data: {"data": "<text>"}
    event: result   data: <the result body, or the internal_error body>

then it ends. `Last-Event-ID` resumes after that id, so a reconnecting client misses nothing
and sees nothing twice. An open stream is a generator in a greenlet of the gevent server: it
holds no thread and no Redis connection while it waits (the process's one Waker wakes it), it
writes a comment every EXECUTOR_EVENTS_HEARTBEAT seconds (proxies keep it open, and a client
that left is noticed at the next write), and it ends with the execution, or when its record
expires. A client that disconnects only closes its generator: the execution goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request

from executor.errors import ExecutionNotFound, ExecutorError
from executor.policy import valid_execution_id
from executor.store import Record, Store
from executor.streams import Event, EventStreams, newer, valid_id
from executor.web.context import Context
from executor.web.schemas import ExecutionFailedSchema, ExecutionResultSchema

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
RETRY_MS = 1000  # what an EventSource waits before reconnecting
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}


def wanted() -> bool:
    """Whether the request asks for an event stream rather than JSON (its Accept header)."""
    best = request.accept_mimetypes.best_match(["application/json", EVENT_STREAM])
    return best == EVENT_STREAM


def last_event_id() -> str:
    """Where the client's stream resumes: after its Last-Event-ID, else from the start."""
    given = request.headers.get(LAST_EVENT_ID, "").strip()
    return given if valid_id(given) else "0"


def response(
    ctx: Context, execution_id: str, after: str = "0", record: Record | None = None
) -> Response:
    """200 with the stream of `execution_id` from after `after`; 404 for an unknown id; 204
    when the client already has the end of a finished execution's stream. `record` is the
    execution's record when the caller has looked it up (and checked its owner) already."""
    if record is None and valid_execution_id(execution_id):
        record = ctx.store.get(execution_id)
    if record is None:
        raise ExecutionNotFound(f"no execution has the id {execution_id!r}")
    headers = {**HEADERS, "Location": f"/executions/{execution_id}"}
    if after != "0":
        last = ctx.streams.last_id(execution_id)
        if newer(after, last):
            after = last  # an id from the future (none we gave): resume from now on
        if record.payload is not None and after == last:
            # Nothing follows its result: 204 tells an EventSource to stop reconnecting.
            return Response(status=204, headers=headers)
    body = relay(ctx.streams, ctx.store, execution_id, after, ctx.settings.events_heartbeat_s)
    return Response(body, 200, mimetype=EVENT_STREAM, headers=headers)


def relay(
    streams: EventStreams, store: Store, execution_id: str, after: str, heartbeat_s: float
) -> Iterator[bytes]:
    """The SSE bytes of one execution's events after `after`, until its result."""
    yield f"retry: {RETRY_MS}\n\n".encode()  # sends the headers at once
    watch = streams.watch(execution_id, after)
    try:
        # What came before the watch's start, this reader reads itself; then the watch's.
        batch: list[Event] | None = _backlog(streams, execution_id, after, watch.start)
        while True:
            out: list[bytes] = []  # one write per batch
            for event in batch or ():
                if not newer(event.id, after):
                    continue  # the backlog and the watch may overlap
                after = event.id
                if event.name == "result":
                    yield b"".join([*out, _result(store, execution_id, event.id)])
                    return
                out.append(_event(event.id, event.name, event.data))
            if out:
                yield b"".join(out)
            batch = watch.get(heartbeat_s)
            if batch is not None:
                continue
            yield b": keep-alive\n\n"
            record = store.get(execution_id)  # a lost worker's execution is finished here
            if record is None:
                return  # expired
            batch = streams.read(execution_id, after)  # in case the waker missed something
            if record.payload is not None and not batch:
                # Finished, yet no result entry follows (a stream older than the record).
                yield _result(store, execution_id, _next_id(after))
                return
    except ExecutorError as e:
        # Redis failed: end the stream; the client resumes with its Last-Event-ID.
        log.warning("execution %s: live event stream ended: %s", execution_id, e)
    finally:
        streams.unwatch(execution_id, watch)


def _backlog(streams: EventStreams, execution_id: str, after: str, start: str) -> list[Event]:
    """The entries after `after` up to `start` at least (the watch hands what follows)."""
    backlog: list[Event] = []
    position = after
    while newer(start, position):
        batch = streams.read(execution_id, position)
        if not batch:
            break
        backlog += batch
        position = batch[-1].id
    return backlog


def _event(event_id: str, name: str, data: str) -> bytes:
    # The data is one line of JSON (newlines in strings are escaped): one `data:` line.
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


def _result(store: Store, execution_id: str, event_id: str) -> bytes:
    record = store.get(execution_id)
    payload: dict[str, Any] = record.payload if record and record.payload else {}
    if payload.get("status") == "internal_error" or not payload:
        body = ExecutionFailedSchema().dump(
            payload
            or {
                "id": execution_id,
                "status": "internal_error",
                "code": "execution_expired",
                "message": "the execution's record expired",
            }
        )
    else:
        body = ExecutionResultSchema().dump(payload)
    return _event(event_id, "result", json.dumps(body, ensure_ascii=False))


def _next_id(after: str) -> str:
    ms, _, seq = after.partition("-")
    return f"{int(ms or 0)}-{int(seq or 0) + 1}"
