"""The HTTP surface end to end: gunicorn -> Redis -> a real worker -> Docker (via the proxy)."""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

import pytest
import requests

from executor.config import Settings
from executor.request_schema import max_body_bytes
from tests.conftest import language_image
from tests.service.conftest import post, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker]

RESULT_FIELDS = {
    "id", "status", "compile", "exit_code", "signal", "stdout", "stderr", "stdout_truncated",
    "stderr_truncated", "duration_ms", "queued_ms", "language", "image", "limits", "worker",
    "created_at", "started_at", "finished_at",
}  # fmt: skip


def when(stamp: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp), stamp
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_execute_answers_with_the_whole_result(api: str):
    response = post(f"{api}/execute", {"code": "print('hello')"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= RESULT_FIELDS
    uuid.UUID(body["id"])
    assert (body["status"], body["exit_code"], body["stdout"], body["stderr"]) == (
        "success", 0, "hello\n", ""
    )  # fmt: skip
    assert body["signal"] is None and body["compile"] is None
    assert body["worker"] == "pytest-worker" and body["language"] == "python"
    assert "@sha256:" in body["image"]
    assert body["limits"] == {"timeout": 10.0, "memory_mb": 512, "cpus": 0.5, "pids": 64,
                              "tmpfs_mb": 100}  # fmt: skip
    assert body["queued_ms"] >= 0 and body["duration_ms"] >= 0
    created, started, finished = (
        when(body[k]) for k in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= finished
    again = requests.get(f"{api}/executions/{body['id']}", timeout=10)
    assert again.status_code == 200 and again.json() == body


def test_the_programs_own_failure_is_a_200_with_its_outcome(api: str):
    code = "import sys, helper\nprint(sys.stdin.read()[::-1], sys.argv[1:], helper.X)\nsys.exit(3)"
    body = post(
        f"{api}/execute",
        {
            "code": code,
            "stdin": "abc",
            "args": ["a b", "--x"],
            "files": [{"path": "helper.py", "content": "X = 42"}],
            "timeout": 5,
            "memory_mb": 128,
        },
    ).json()
    assert body["status"] == "error" and body["exit_code"] == 3
    assert body["stdout"] == "cba ['a b', '--x'] 42\n"
    assert body["limits"]["timeout"] == 5 and body["limits"]["memory_mb"] == 128


def test_a_program_past_its_timeout_is_a_timeout(api: str):
    body = post(f"{api}/execute", {"code": "while True: pass", "timeout": 1}).json()
    assert body["status"] == "timeout" and body["exit_code"] is None
    assert 900 <= body["duration_ms"] <= 3000


def test_post_executions_queues_and_get_follows_it(api: str):
    response = post(f"{api}/executions", {"code": "import time; time.sleep(1); print('later')"})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["Location"] == f"/executions/{body['id']}"
    assert body["status"] == "queued"
    first = requests.get(api + response.headers["Location"], timeout=10)
    assert first.status_code == 202 and first.json()["status"] in ("queued", "running")
    assert first.headers["Location"] == response.headers["Location"]

    def finished() -> requests.Response | None:
        answer = requests.get(api + response.headers["Location"], timeout=10)
        return answer if answer.status_code == 200 else None

    done = wait_until("the queued execution finishing", finished, 30)
    assert done.json()["stdout"] == "later\n" and done.json()["id"] == body["id"]


def test_unknown_ids_are_404(api: str):
    for execution_id in (str(uuid.uuid4()), "00000000-0000-4000-8000-000000000000", "nope"):
        response = requests.get(f"{api}/executions/{execution_id}", timeout=10)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found" and response.json()["status"] == 404


def test_invalid_input_is_a_422_naming_each_field(api: str):
    response = post(
        f"{api}/execute",
        {"code": "", "language": "cobol", "timeout": 0, "memory_mb": 4096, "cpus": True,
         "files": [{"path": "../x", "content": ""}], "colour": "red"},
    )  # fmt: skip
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request" and body["status"] == 422 and body["message"]
    assert set(body["errors"]) == {"code", "language", "timeout", "memory_mb", "cpus", "files",
                                   "colour"}  # fmt: skip
    assert post(f"{api}/executions", {"code": 1}).status_code == 422


def test_an_oversize_body_is_a_413_decided_on_the_headers(api: str):
    limit = max_body_bytes(Settings())
    address = urlsplit(api)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        # Announce a huge body and send none of it: the answer must not wait for it.
        connection.putrequest("POST", "/execute")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(50 * limit))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["code"] == "payload_too_large"
    finally:
        connection.close()


def test_an_oversize_body_sent_whole_is_a_413(api: str):
    limit = max_body_bytes(Settings())
    response = requests.post(
        f"{api}/execute",
        data=b" " * (limit + 1),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and response.json()["status"] == 413


def test_every_language_runs_end_to_end(api: str):
    programs = {
        "javascript": "console.log(6 * 7)",
        "c": '#include <stdio.h>\nint main(void) { printf("%d\\n", 6 * 7); }',
        "java": "class Main { public static void main(String[] a) { System.out.println(6 * 7); } }",
    }
    for language, code in programs.items():
        body = {"code": code, "language": language}
        if language_image(language):  # the branch's own images (EXECUTOR_TEST_IMAGE_TAG)
            body["image"] = language_image(language)
        response = post(f"{api}/execute", body)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["stdout"], body["language"]) == ("success", "42\n", language)
        assert (body["compile"] is not None) == (language != "javascript")


def test_an_approved_image_runs_and_an_unapproved_one_is_422(api: str):
    from tests.conftest import APPROVED_IMAGE, UNAPPROVED_IMAGE

    code = "import numpy\nprint(int(numpy.arange(4).sum()))"
    response = post(f"{api}/execute", {"code": code, "image": APPROVED_IMAGE})
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["stdout"]) == ("success", "6\n")
    assert response.json()["image"].startswith(f"{APPROVED_IMAGE}@sha256:")
    refused = post(f"{api}/execute", {"code": "print(1)", "image": UNAPPROVED_IMAGE})
    assert refused.status_code == 422 and "image" in refused.json()["errors"]
    other_language = post(
        f"{api}/execute", {"code": "print(1)", "language": "ruby", "image": APPROVED_IMAGE}
    )
    assert other_language.status_code == 422 and "image" in other_language.json()["errors"]


def test_an_approved_image_that_is_missing_is_refused_with_a_clear_error(api: str):
    from tests.conftest import MISSING_IMAGE

    # Approved, but on no engine, and no registry answers here (or it has no such image).
    response = post(f"{api}/execute", {"code": "print(1)", "image": MISSING_IMAGE})
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "image_unavailable" and MISSING_IMAGE in body["message"]


def test_languages(api: str):
    response = requests.get(f"{api}/languages", timeout=10)
    assert response.status_code == 200
    names = [lang["name"] for lang in response.json()]
    assert names == [
        "python", "javascript", "typescript", "bash", "c", "cpp", "go", "java", "rust", "ruby",
        "php", "csharp",
    ]  # fmt: skip
    assert all({"name", "version", "image", "compiled"} <= set(lang) for lang in response.json())


def test_health_is_ok_and_cheap(api: str):
    response = requests.get(f"{api}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "docker": "ok", "redis": "ok", "workers": "ok"
    }  # fmt: skip
    assert "pytest-worker@" in " ".join(body["checks"]["workers"]["names"])
    started = time.monotonic()
    for _ in range(20):
        assert requests.get(f"{api}/health", timeout=10).status_code == 200
    assert time.monotonic() - started < 2.0  # polled every second by many: it must be cheap


def test_status_is_flower_style_and_never_shows_code(api: str, main_logs: Callable[[], str]):
    marker = f"secret-{uuid.uuid4().hex}"
    stdin_marker = f"stdin-{uuid.uuid4().hex}"
    # The program echoes its stdin: its output must not reach the logs either.
    code = f"# {marker}\nimport sys\nprint(sys.stdin.read())"
    ran = post(f"{api}/execute", {"code": code, "stdin": stdin_marker}).json()
    assert ran["stdout"] == stdin_marker + "\n"

    def reported() -> requests.Response | None:  # workers report once a second
        answer = requests.get(f"{api}/status", timeout=10)
        workers = answer.json()["workers"]
        return answer if workers and workers[0]["processed"] >= 1 else None

    response = wait_until("the worker reporting its work", reported, 5)
    body = response.json()
    assert {"instance", "version", "uptime_s", "workers", "queue", "pool", "counters",
            "recent"} <= set(body)  # fmt: skip
    assert body["instance"] == "pytest-api" and body["uptime_s"] > 0
    assert body["recent"][0]["id"] == ran["id"]  # newest first
    assert body["recent"][0]["status"] == "success"
    (worker,) = [w for w in body["workers"] if w["instance"] == "pytest-worker"]
    assert worker["name"].startswith("pytest-worker@")
    assert worker["processed"] >= 1 and worker["active"] >= 0
    assert set(worker["pool"]) == {"warm", "starting", "target", "languages"}
    assert worker["pool"]["target"] == 1  # the budget, shared by the languages
    assert sum(lang["target"] for lang in worker["pool"]["languages"].values()) == 1
    assert body["queue"] == {"depth": 0}
    assert body["pool"]["target"] >= 1
    assert "python" in body["pool"]["languages"]  # the pool per language, over all workers
    counters = body["counters"]
    assert counters["executions"]["success"] >= 1 and counters["containers_created"] >= 1
    assert {"containers_removed", "containers_failed", "timeouts", "average_duration_ms"} <= set(
        counters
    )
    for text in (response.text, main_logs()):
        assert marker not in text and stdin_marker not in text


def test_metrics_are_prometheus_text(api: str):
    post(f"{api}/execute", {"code": "print(1)"})
    response = requests.get(f"{api}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    assert "# TYPE executor_executions_total counter" in text
    assert "# TYPE executor_queue_depth gauge" in text
    success = re.search(r'^executor_executions_total\{status="success"\} ([\d.]+)$', text, re.M)
    assert success and float(success.group(1)) >= 1
    workers = re.search(r"^executor_workers ([\d.]+)$", text, re.M)
    assert workers and float(workers.group(1)) >= 1
    assert "# TYPE executor_execution_duration_seconds histogram" in text
    bucket = re.compile(
        r"^executor_execution_duration_seconds_bucket"
        r'\{language="python",le="\+Inf",status="success"\} ([\d.]+)$',
        re.M,
    )
    # Workers add their observations with their next heartbeat (every second).
    wait_until(
        "the run in the duration histogram",
        lambda: bucket.search(requests.get(f"{api}/metrics", timeout=10).text),
        5,
    )
    assert "# TYPE executor_queue_wait_seconds histogram" in text
    assert re.search(r'^executor_pool_idle\{language="python"\} ', text, re.M)


def test_spec_and_docs_are_served(api: str):
    spec = requests.get(f"{api}/openapi.json", timeout=10).json()
    assert {"/execute", "/executions", "/executions/{execution_id}", "/health", "/status",
            "/languages", "/metrics"} <= set(spec["paths"])  # fmt: skip
    yaml_text = requests.get(f"{api}/openapi.yaml", timeout=10)
    assert yaml_text.status_code == 200 and "/execute:" in yaml_text.text
    for page in ("/docs", "/redoc"):
        html = requests.get(api + page, timeout=10)
        assert html.status_code == 200 and "<html" in html.text.lower()
        assert not re.findall(r'(?:src|href)=["\']https?://', html.text)
