"""How flask-smorest reads request bodies here: every body is JSON, every failure ours.

`@blp.arguments` of an `ApiBlueprint` parses the body as JSON whatever its Content-Type (an
empty or broken body is a 422 naming `_schema`), and a schema's errors become the one
InvalidRequest of executor.request_schema, so the API and the Celery task answer a bad
request with the same field errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

import flask
import marshmallow as ma
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser

from executor.errors import InvalidRequest
from executor.request_schema import invalid


class JsonBodyParser(FlaskParser):
    """webargs' Flask parser, strict about JSON and answering with our error payload."""

    def load_json(self, req: flask.Request, schema: ma.Schema) -> Any:
        try:
            return json.loads(req.get_data(cache=False))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
            raise InvalidRequest(
                f"the body is not valid JSON: {e}", {"_schema": ["Invalid JSON body."]}
            ) from None

    def handle_error(
        self,
        error: ma.ValidationError,
        req: flask.Request,
        schema: ma.Schema,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        # webargs files messages under their location ({"json": {...}}); ours name fields.
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1 and set(messages) <= {"json", "query"}:
            messages = next(iter(messages.values()))
        raise invalid(ma.ValidationError(messages))


class ApiBlueprint(Blueprint):  # type: ignore[misc]
    """A flask-smorest Blueprint whose `@arguments` read bodies with JsonBodyParser."""

    ARGUMENTS_PARSER = JsonBodyParser()
