"""Every documented reply schema, checked field for field against real answers of the stack."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from celery import Celery

from executor.web import schemas
from tests.conftest import language_image
from tests.service.conftest import post, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker]


def documented(spec: dict[str, Any]) -> set[str]:
    """The component names of every response schema in the spec."""
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                refs.add(ref.rsplit("/", 1)[1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for operations in spec["paths"].values():
        for operation in operations.values():
            if isinstance(operation, dict):  # beside the methods: the path's parameters
                walk(operation.get("responses", {}))
    return refs


def test_every_documented_reply_matches_real_answers(main_redis: str, api: str):
    answers: list[tuple[str, Any]] = []  # (component name, a real body)

    def answer(name: str, response: requests.Response, status: int) -> Any:
        assert response.status_code == status, response.text
        body = response.json()
        answers.append((name, body))
        return body

    result = answer("ExecutionResult", post(f"{api}/execute", {"code": "print(1)"}), 200)
    with_all = {"code": "open('a', 'w')", "tests": [{"stdin": ""}], "outputs": ["a"]}
    answer("ExecutionResult", post(f"{api}/execute", with_all), 200)  # tests, files, usage
    built = {"code": "int main(void) { return 0; }", "language": "c"}
    if language_image("c"):  # the branch's own image (EXECUTOR_TEST_IMAGE_TAG)
        built["image"] = language_image("c")
    for _ in range(3):  # builds, then (on the same worker, kept on second sight) a cached one
        answer("ExecutionResult", post(f"{api}/execute", built), 200)
    answer("ExecutionResult", requests.get(f"{api}/executions/{result['id']}", timeout=10), 200)
    queued = answer("ExecutionPending", post(f"{api}/executions", {"code": "print(2)"}), 202)
    late = requests.get(f"{api}/executions/{queued['id']}", timeout=10)
    answer(
        "ExecutionPending" if late.status_code == 202 else "ExecutionResult", late, late.status_code
    )
    answer("Error", post(f"{api}/execute", {"code": "", "bogus": 1}), 422)
    answer("Error", requests.delete(f"{api}/executions/{result['id']}", timeout=30), 409)
    sleeper = post(f"{api}/executions", {"code": "import time; time.sleep(30)"}).json()
    cancel = requests.delete(f"{api}/executions/{sleeper['id']}", timeout=30)
    if cancel.status_code == 202:  # it was running: its worker stops it within a beat
        answer("ExecutionPending", cancel, 202)
        cancel = wait_until(
            "the cancel",
            lambda: (
                (r := requests.get(f"{api}/executions/{sleeper['id']}", timeout=10)).status_code
                == 200
                and r
            ),
            60,
        )
    assert answer("ExecutionResult", cancel, 200)["status"] == "cancelled"
    answer(
        "Error",
        requests.get(f"{api}/executions/00000000-0000-0000-0000-000000000000", timeout=10),
        404,
    )
    address = urlsplit(api)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:  # a huge body announced, none sent: 413 on the headers alone
        connection.putrequest("POST", "/execute")
        connection.putheader("Content-Length", str(10**10))
        connection.endheaders()
        too_big = connection.getresponse()
        assert too_big.status == 413
        answers.append(("Error", json.loads(too_big.read())))
    finally:
        connection.close()
    producer = Celery(broker=main_redis, backend=main_redis)
    try:
        failed = producer.send_task("executor.execute", args=[{"code": 1}], queue="executor")
        with pytest.raises(Exception):  # noqa: B017 - the task fails with InvalidRequest
            failed.get(timeout=30)
    finally:
        producer.close()
    answer("ExecutionFailed", requests.get(f"{api}/executions/{failed.id}", timeout=10), 200)
    languages = answer("Language", requests.get(f"{api}/languages", timeout=10), 200)
    answers[-1] = ("Language", languages[0])
    page = answer("HistoryPage", requests.get(f"{api}/executions?limit=500", timeout=10), 200)
    assert {"success", "internal_error"} <= {item["status"] for item in page["items"]}
    answer("Health", requests.get(f"{api}/health", timeout=10), 200)
    status = answer("Status", requests.get(f"{api}/status", timeout=10), 200)
    assert status["workers"] and status["recent"]  # the nested schemas are exercised too

    for name, body in answers:
        schema = getattr(schemas, f"{name}Schema")()
        # A load validates field for field: unknown keys, missing required ones, types, nulls.
        assert schema.validate(body) == {}, (name, json.dumps(body)[:2000])

    spec = requests.get(f"{api}/openapi.json", timeout=10).json()
    # ExecutionFailed stands in for a result (a component that no response names alone).
    assert "ExecutionFailed" in spec["components"]["schemas"]
    replies = documented(spec) - {"ExecutionRequest"} | {"ExecutionFailed"}
    assert replies == {name for name, _ in answers}
