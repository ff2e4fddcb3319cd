"""JSON logs: every line of a worker and of the API parses, carries the execution id when it is
about an execution, and never holds the submitted code or stdin."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port, wait_http
from tests.service.conftest import WorkerFactory, flushed, spawn

pytestmark = pytest.mark.service

DB = 3  # see the table in tests/service/conftest.py


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"a log line is not JSON: {line!r}") from None
    return lines


@pytest.fixture
def logged_stack(
    start_worker: WorkerFactory, docker_host: str, logdir: Path
) -> Iterator[tuple[str, Any, Any]]:
    """A worker and a gunicorn API on their own database, logging JSON (the default)."""
    url = flushed(DB)
    env = {"EXECUTOR_LOG_FORMAT": "json"}
    worker = start_worker("pytest-logs", url, docker_host, **env)
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "api:app"]
    api_env = {"REDIS_URL": url, "DOCKER_HOST": docker_host, "HOSTNAME": "pytest-logs-api", **env}
    api = spawn("api-logs", argv, api_env, logdir)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, api.popen)
        yield f"http://127.0.0.1:{port}", worker, api
    finally:
        api.stop()
        worker.stop()


def test_worker_and_api_log_json_lines_with_the_id_and_never_the_code_or_stdin(
    logged_stack, proxy: dict[str, str]
):
    base, worker, api = logged_stack
    code_marker, stdin_marker = f"code-{secrets.token_hex(8)}", f"stdin-{secrets.token_hex(8)}"
    code = f"import sys\nprint({code_marker!r}, sys.stdin.read())\nraise SystemExit(3)"
    reply = requests.post(
        f"{base}/execute",
        json={"language": "python", "code": code, "stdin": stdin_marker},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert code_marker in result["stdout"] and stdin_marker in result["stdout"]
    execution_id = result["id"]
    assert requests.get(f"{base}/executions/{execution_id}", timeout=30).status_code == 200
    api.stop()  # everything flushed
    worker.stop()

    for process in (worker, api):
        text = process.output()
        assert code_marker not in text and stdin_marker not in text, process.name
        lines = json_lines(text)
        assert lines, f"{process.name} logged nothing"
        for line in lines:
            assert {"time", "level", "logger", "message", "execution_id"} <= line.keys(), line
            if execution_id in line["message"]:
                assert line["execution_id"] == execution_id, line
        about = [line for line in lines if line["execution_id"] == execution_id]
        assert about, f"{process.name}: no line carries {execution_id}"

    # The session's proxy (in front of the engine for every test) logs JSON lines too.
    proxy_text = Path(proxy["audit"]).with_suffix(".log").read_text()
    assert json_lines(proxy_text) and code_marker not in proxy_text

    worker_lines = json_lines(worker.output())
    messages = [line["message"] for line in worker_lines if line["execution_id"] == execution_id]
    assert any("received" in m for m in messages), messages  # Celery's own task line
    assert any("finished: failed" in m or "finished" in m for m in messages), messages
    api_lines = json_lines(api.output())
    access = [line for line in api_lines if line["logger"] == "gunicorn.access"]
    # The access lines of POST /execute and GET /executions/{id} carry its id.
    assert [line["execution_id"] for line in access if "/execut" in line["message"]] == [
        execution_id,
        execution_id,
    ], access
