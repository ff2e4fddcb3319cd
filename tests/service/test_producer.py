"""Queue producers that know nothing of this project but the task's name."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery

from tests.service.conftest import post

pytestmark = [pytest.mark.service, pytest.mark.docker]


@pytest.fixture
def producer(main_redis: str, api: str) -> Iterator[Celery]:
    app = Celery(broker=main_redis, backend=main_redis)  # nothing of this project
    yield app
    app.close()


def test_send_task_by_name(producer: Celery, api: str):
    result = producer.send_task("executor.execute", args=[{"code": "print(6*7)"}], queue="executor")
    body = result.get(timeout=60)
    assert body["status"] == "success" and body["stdout"] == "42\n"
    assert body["id"] == result.id and body["worker"] == "pytest-worker"
    assert body["queued_ms"] >= 0 and body["created_at"]
    record = requests.get(f"{api}/executions/{result.id}", timeout=10)
    assert record.status_code == 200 and record.json() == body
    recent = requests.get(f"{api}/status", timeout=10).json()["recent"]
    assert result.id in [entry["id"] for entry in recent]


def test_the_programs_failure_is_a_successful_task(producer: Celery):
    result = producer.send_task(
        "executor.execute", args=[{"code": "raise SystemExit(4)"}], queue="executor"
    )
    body = result.get(timeout=60)
    assert result.state == "SUCCESS"
    assert body["status"] == "error" and body["exit_code"] == 4


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"code": "", "timeout": "soon", "memory_mb": 9999}, ("code", "timeout", "memory_mb")),
        ("print(1)", ("JSON object",)),
    ],
)
def test_a_bad_payload_fails_the_task_once_with_a_clear_message(
    producer: Celery, api: str, logdir: Path, payload: object, named: tuple[str, ...]
):
    result = producer.send_task("executor.execute", args=[payload], queue="executor")
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    assert type(failed.value).__name__ == "InvalidRequest"
    for name in named:
        assert name in str(failed.value)
    assert result.state == "FAILURE"

    record = requests.get(f"{api}/executions/{result.id}", timeout=10).json()
    assert record["status"] == "internal_error" and record["code"] == "invalid_request"
    if isinstance(payload, dict):
        assert set(record["errors"]) == set(named)

    time.sleep(1.5)  # a retry would have been received by now
    log: Callable[[], str] = (logdir / "worker-pytest-worker.log").read_text
    received = re.findall(rf"executor\.execute\[{result.id}\] received", log())
    assert len(received) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"code": "", "timeout": "soon", "memory_mb": 9999, "bogus": 1},
        {
            "code": "x",
            "args": ["a\x00b", 3],
            "files": [
                {"path": "../up", "content": ""},
                {"path": "a", "content": 1},
                {"path": "ok", "content": ""},
                {"path": "ok", "content": ""},
            ],
        },
        ["not", "an", "object"],
    ],
)
def test_the_task_names_the_same_field_errors_as_the_api(
    producer: Celery, api: str, payload: object
):
    http = post(f"{api}/executions", payload)
    assert http.status_code == 422

    result = producer.send_task("executor.execute", args=[payload], queue="executor")
    with pytest.raises(Exception) as failed:
        result.get(timeout=30)
    assert type(failed.value).__name__ == "InvalidRequest"
    record = requests.get(f"{api}/executions/{result.id}", timeout=10).json()
    assert record["errors"] == http.json()["errors"]
    assert record["message"] == http.json()["message"]


@pytest.mark.parametrize("task_id", ["job-42", "batch.7:retry_2", "A" * 128])
def test_a_producers_own_task_id_names_the_execution_everywhere(
    producer: Celery, api: str, task_id: str
):
    task_id = f"{task_id[:-12]}{uuid.uuid4().hex[:12]}"  # fresh for each run of the suite
    result = producer.send_task(
        "executor.execute", args=[{"code": "print('mine')"}], queue="executor", task_id=task_id
    )
    body = result.get(timeout=60)
    assert body["id"] == task_id and body["stdout"] == "mine\n"
    assert requests.get(f"{api}/executions/{task_id}", timeout=10).json() == body
    recent = requests.get(f"{api}/status", timeout=10).json()["recent"]
    assert task_id in [entry["id"] for entry in recent]
    finished = requests.delete(f"{api}/executions/{task_id}", timeout=10)
    assert finished.status_code == 409 and finished.json()["code"] == "already_finished"


@pytest.mark.parametrize("task_id", ["job 42", "x" * 129, "job/42", "caf\u00e9", "a\nb"])
def test_a_task_id_no_execution_can_have_fails_the_task_naming_the_rule(
    producer: Celery, api: str, task_id: str
):
    result = producer.send_task(
        "executor.execute", args=[{"code": "print(1)"}], queue="executor", task_id=task_id
    )
    with pytest.raises(Exception) as failed:
        result.get(timeout=60)
    assert type(failed.value).__name__ == "InvalidRequest"
    assert "1 to 128 characters of A-Z a-z 0-9 . _ : -" in str(failed.value)
    # The worker lives on and runs the next one.
    after = producer.send_task("executor.execute", args=[{"code": "print(2)"}], queue="executor")
    assert after.get(timeout=60)["stdout"] == "2\n"


def test_the_request_may_come_as_keyword_arguments(producer: Celery, api: str):
    result = producer.send_task(
        "executor.execute", kwargs={"code": "print(input())", "stdin": "kw"}, queue="executor"
    )
    body = result.get(timeout=60)
    assert body["status"] == "success" and body["stdout"] == "kw\n"
