"""Logging for the API, the worker and the proxy: one line per record, JSON or text.

`EXECUTOR_LOG_FORMAT=json` (the default, and the service image's) writes each record as one
JSON object on one line: `time` (ISO 8601, UTC), `level`, `logger`, `process`, `message`,
`execution_id` (or null), and `exc` (the traceback) when there is one. `text` writes the same
fields as a human-readable line, for development.

The execution id comes from, in order: the record's own `execution_id` (`extra=`), the id
bound to the current context (`bind_execution`: a worker while it runs an execution, an API
request about one), or the task id of Celery's own "Task executor.execute[id] ..." lines.
Only these fields are written: Celery attaches the task's arguments (its code and stdin) to
some records (`record.data`, `record.args`), and a formatter that dumped every attribute of a
record would leak them. Nothing here logs a request body; callers never pass code or stdin.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("json", "text")

_EXECUTION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "executor_execution_id", default=None
)


def bind_execution(execution_id: str | None) -> None:
    """Attach `execution_id` to every record logged from this context from now on (None:
    detach). A request handler binds for the rest of its request; see `execution` for a block."""
    _EXECUTION.set(execution_id)


@contextlib.contextmanager
def execution(execution_id: str) -> Iterator[None]:
    """Attach `execution_id` to every record logged from this context inside the block."""
    token = _EXECUTION.set(execution_id)
    try:
        yield
    finally:
        _EXECUTION.reset(token)


def current_execution() -> str | None:
    return _EXECUTION.get()


def execution_id_of(record: logging.LogRecord) -> str | None:
    """The execution a record is about, or None (see the module docstring for the order)."""
    own = getattr(record, "execution_id", None)
    if isinstance(own, str):
        return own
    bound = _EXECUTION.get()
    if bound is not None:
        return bound
    # Celery's own task lines ("Task executor.execute[<id>] received") pass a dict of
    # arguments with the task's id and name.
    args = record.args
    if isinstance(args, Mapping) and record.name.startswith("celery"):
        from executor.names import TASK_NAME  # kombu, only when Celery is logging anyway

        if args.get("name") == TASK_NAME and isinstance(args.get("id"), str):
            return str(args["id"])
    return None


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (the fields in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
            "execution_id": execution_id_of(record),
        }
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The same fields for a person: time level logger [execution id]: message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(execution)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        execution_id = execution_id_of(record)
        record.execution = f" [{execution_id}]" if execution_id else ""
        return super().format(record)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for EXECUTOR_LOG_FORMAT `kind` ("json" or "text")."""
    return TextFormatter() if kind == "text" else JsonFormatter()


def configure(kind: str, level: str | int) -> None:
    """Send every record of this process to stderr, one line each in format `kind`.

    Replaces the root logger's handlers (idempotent): the entry points call it once.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python warnings (DeprecationWarning...) as records too, so they come out in the format.
    logging.captureWarnings(True)
