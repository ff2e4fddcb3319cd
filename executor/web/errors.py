"""One error payload for everything: ``{"code", "status", "message", "errors"?}``.

Our own errors carry their status and code (executor.errors); werkzeug's HTTP errors (404 for
an unknown route, 405, 413...) get the same shape; anything unexpected is a logged 500 that
shows no internals. 429 and 503 carry Retry-After, 401 WWW-Authenticate.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Response, has_request_context, request
from flask_smorest import Api
from marshmallow import Schema
from werkzeug.exceptions import HTTPException

from executor.errors import ExecutorError, PayloadTooLarge
from executor.web.schemas import ErrorSchema

log = logging.getLogger(__name__)


def reply(
    schema: type[Schema], body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`body` dumped through `schema`: an answer whose status is not the view's
    `@blp.response` (an alternative one, or an error)."""
    text = json.dumps(schema().dump(body), ensure_ascii=False)
    return Response(text, status=status, headers=headers, mimetype="application/json")


def is_page(path: str) -> bool:
    """Whether `path` is the operator's page, which browsers open (HTTP Basic for them)."""
    return path == "/" or path.startswith("/dashboard")


def error_response(error: ExecutorError, **extra: Any) -> Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        # The operator's page is opened by browsers: asking for Basic shows their login prompt.
        page = has_request_context() and is_page(request.path)
        headers["WWW-Authenticate"] = (
            'Basic realm="executor", charset="UTF-8"' if page else 'Bearer realm="executor"'
        )
    return reply(ErrorSchema, {**error.to_dict(), **extra}, error.status, headers)


def _code(error: HTTPException) -> str:
    return re.sub(r"[^a-z0-9]+", "_", (error.name or "error").lower()).strip("_")


def http_error_response(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 413:
        return error_response(PayloadTooLarge(error.description or ""))
    body: dict[str, Any] = {
        "code": _code(error),
        "status": status,
        "message": error.description or error.name,
    }
    data = getattr(error, "data", None) or {}
    if isinstance(data, dict) and data.get("messages"):
        body["errors"] = data["messages"]
    headers = {k: v for k, v in error.get_headers() if k.lower() in ("allow", "retry-after")}
    return reply(ErrorSchema, body, status, headers)


def unexpected_error_response(error: Exception) -> Response:
    log.exception("unexpected error: %s", type(error).__name__, exc_info=error)
    return error_response(ExecutorError("an unexpected error occurred; it has been logged"))


class ExecutorApi(Api):  # type: ignore[misc]
    """flask-smorest's Api, answering every error with the service's one payload."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Response:
        return http_error_response(error)


def register_error_handlers(app: Any) -> None:
    app.register_error_handler(ExecutorError, error_response)
    app.register_error_handler(HTTPException, http_error_response)
    app.register_error_handler(Exception, unexpected_error_response)
