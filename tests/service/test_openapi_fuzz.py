"""Schema fuzzing of our own OpenAPI document (schemathesis, bounded examples of valid and of
invalid requests) against the running API (gunicorn, a real worker, Redis and Docker): no 5xx,
every error in the contract's error body, every response as documented (status, content
type, headers, schema)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

ERROR_FIELDS = {"code", "status", "message"}
EXAMPLES = 8  # per operation and mode
answered: Counter[int] = Counter()


def _error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """5xx never; every 4xx and 503 has the contract's error body."""
    code = response.status_code
    assert code < 500 or code in (502, 503), (
        f"{case.method} {case.path}: {code} {response.text[:500]}"
    )
    answered[code] += 1
    if code >= 400:  # headers: lower-case names, lists of values
        assert "json" in response.headers.get("content-type", [""])[0], response.headers
        body = response.json()
        assert set(body) >= ERROR_FIELDS, f"{code} without the error body: {body}"
        assert body["status"] == code and isinstance(body["message"], str) and body["code"]
    if code in (429, 503):
        assert "retry-after" in response.headers, f"{code} without Retry-After"
    return None


CHECKS = [
    _error_body,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_api_keeps_its_openapi_document(api: str) -> None:
    # schemathesis's own pytest plugin does not load under this pytest: its Python API does
    # the same, one operation after the other, each with a bounded number of examples.
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7  # POST /execute, /executions, GET /executions/{id}...
    session = requests.Session()

    for operation, mode in itertools.product(operations, list(GenerationMode)):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            if isinstance(case.body, dict) and isinstance(case.body.get("timeout"), int | float):
                # Bounded runs: a fuzzed program may loop; keep it from holding the worker.
                case.body["timeout"] = min(max(case.body["timeout"], 0.1), 2)
            case.call_and_validate(base_url=api, session=session, timeout=60, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:
            # An operation without inputs (GET /health) has no invalid request to make.
            assert mode == GenerationMode.NEGATIVE, operation.label
    session.close()
    # The fuzzing reached both sides: runs, and refusals of invalid requests.
    assert answered[200] and answered[422], answered
