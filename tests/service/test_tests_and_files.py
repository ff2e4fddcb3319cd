"""Usage, test cases and files back through the whole stack: POST /execute, POST /executions
and the Celery task alike, and the 422s of their bad input."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from celery import Celery

from executor.budget import MAX_TESTS
from executor.config import Settings
from executor.request_schema import MAX_OUTPUTS
from tests.conftest import language_image
from tests.service.conftest import post

pytestmark = [pytest.mark.service, pytest.mark.docker]

PROGRAM = (
    "import sys\n"
    "x = sys.stdin.read()\n"
    "open(f'out-{x}.bin', 'wb').write(bytes([int(x)]) * 3)\n"
    "print(int(x) * 2)\n"
    "sys.exit(int(x) > 4)\n"
)
REQUEST: dict[str, Any] = {
    "code": PROGRAM,
    "tests": [
        {"stdin": "1", "expected_stdout": "2"},
        {"stdin": "2", "expected_stdout": "5"},
        {"stdin": "7"},
    ],
    "outputs": ["*.bin"],
}


def check(body: dict[str, Any]) -> None:
    """What REQUEST gives, whichever way it came."""
    assert body["status"] == "error" and body["exit_code"] == 1 and body["stdout"] == "14\n"
    assert [t["status"] for t in body["tests"]] == ["success", "success", "error"]
    assert [t["passed"] for t in body["tests"]] == [True, False, None]
    assert (body["passed"], body["failed"]) == (1, 1)
    assert body["usage"]["cpu_ms"] >= 0 and body["usage"]["memory_bytes"] > 0
    assert all(t["usage"]["memory_bytes"] > 0 for t in body["tests"])
    files = {f["path"]: base64.b64decode(f["content_base64"]) for f in body["files"]}
    assert files == {"out-1.bin": b"\x01" * 3, "out-2.bin": b"\x02" * 3, "out-7.bin": b"\x07" * 3}
    assert body["files_truncated"] is False


def test_post_execute_runs_the_cases_and_sends_the_files_back(api: str):
    response = post(f"{api}/execute", REQUEST)
    assert response.status_code == 200, response.text
    check(response.json())
    plain = post(f"{api}/execute", {"code": "print(1)"}).json()
    assert plain["usage"]["memory_bytes"] > 0
    assert not {"tests", "passed", "failed", "files", "files_truncated"} & set(plain)


def test_post_executions_then_get(api: str):
    response = post(f"{api}/executions", REQUEST)
    assert response.status_code == 202, response.text
    location = f"{api}{response.headers['Location']}"
    deadline = time.monotonic() + 120
    while (got := requests.get(location, timeout=10)).status_code == 202:
        assert time.monotonic() < deadline, "the execution did not finish"
        time.sleep(0.2)
    assert got.status_code == 200
    check(got.json())


def test_a_compiled_program_with_cases_through_the_api(api: str):
    code = '#include <stdio.h>\nint main(void) { int n; scanf("%d", &n); printf("%d\\n", n * n); }'
    body: dict[str, Any] = {
        "code": code,
        "language": "c",
        "tests": [{"stdin": str(n), "expected_stdout": str(n * n)} for n in range(5)],
    }
    if language_image("c"):
        body["image"] = language_image("c")
    response = post(f"{api}/execute", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["status"], result["passed"], result["failed"]) == ("success", 5, 0)
    assert result["compile"]["exit_code"] == 0 and result["compile"]["usage"]["cpu_ms"] > 0


@pytest.fixture
def producer(main_redis: str, api: str) -> Iterator[Celery]:
    app = Celery(broker=main_redis, backend=main_redis)  # nothing of this project
    yield app
    app.close()


def test_the_celery_task_takes_the_same_fields(producer: Celery, api: str):
    result = producer.send_task("executor.execute", args=[REQUEST], queue="executor")
    body = result.get(timeout=120)
    check(body)
    assert requests.get(f"{api}/executions/{result.id}", timeout=10).json() == body


def test_bad_cases_fail_the_task_naming_the_field(producer: Celery):
    payload = {"code": "print(1)", "tests": [{"stdin": ""}] * (MAX_TESTS + 1)}
    result = producer.send_task("executor.execute", args=[payload], queue="executor")
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    assert type(failed.value).__name__ == "InvalidRequest" and "tests" in str(failed.value)


STDIN_CAP = Settings().max_stdin_bytes


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tests": [{"stdin": "1"}] * (MAX_TESTS + 1)}, "tests"),
        ({"tests": [{"stdin": "x" * (STDIN_CAP + 1)}]}, "tests"),
        ({"tests": [{"stdin": "x" * STDIN_CAP}] * 9}, "tests"),  # each fits, all do not
        ({"tests": [{"stdin": "", "args": ["a\x00"]}]}, "tests"),
        ({"tests": [{"stdin": "", "args": "a"}]}, "tests"),
        ({"tests": [{"stdin": "", "expected_stdout": 1}]}, "tests"),
        ({"outputs": ["/etc/passwd"]}, "outputs"),
        ({"outputs": ["../secret"]}, "outputs"),
        ({"outputs": ["out/../../x"]}, "outputs"),
        ({"outputs": ["*"] * (MAX_OUTPUTS + 1)}, "outputs"),
    ],
)
def test_bad_cases_and_patterns_are_422_naming_the_field(
    api: str, fields: dict[str, Any], named: str
):
    for path in ("/execute", "/executions"):
        response = post(f"{api}{path}", {"code": "print(1)", **fields})
        assert response.status_code == 422, response.text
        assert named in response.json()["errors"]
