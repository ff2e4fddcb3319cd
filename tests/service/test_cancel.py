"""Cancelling (DELETE /executions/{id} and a plain Celery revoke), producers' queued
executions, and what broker messages carry, on the one-slot worker (see `one_slot`): a long
sleeper holds the slot, so the next execution stays queued.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
import redis
import requests
from celery import Celery

from executor.config import Settings
from executor.names import QUEUE
from executor.policy import LABEL_EXECUTION
from executor.web import schemas
from tests.conftest import sandboxes, wait_gone
from tests.service.conftest import (
    ONE_SLOT_WORKER,
    AppFactory,
    delete,
    finished,
    get,
    post,
    sleeping,
    wait_until,
)

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

WORKER = ONE_SLOT_WORKER
SLEEPER = "print('started', flush=True)\nimport subprocess\nsubprocess.run(['sleep', '50'])"


@pytest.fixture
def api(one_slot: str, serve_app: AppFactory, base_settings: Settings) -> str:
    return serve_app(base_settings, redis_url=one_slot, queue_grace_s=30.0)


@pytest.fixture
def producer(one_slot: str) -> Iterator[Celery]:
    app = Celery(broker=one_slot, backend=one_slot)  # nothing of this project
    yield app
    app.close()


def start_sleeper(api: str, raw_docker: docker.DockerClient) -> str:
    """An execution that holds the slot, seen sleeping."""
    execution_id = str(post(f"{api}/executions", {"code": SLEEPER, "timeout": 55}).json()["id"])
    wait_until("the sleeper sleeping", lambda: sleeping(raw_docker, execution_id, "sleep 50"), 60)
    return execution_id


def counters(api: str) -> dict[str, int]:
    return dict(requests.get(f"{api}/status", timeout=10).json()["counters"]["executions"])


def assert_killed_with_its_output(body: dict[str, Any]) -> None:
    assert body["status"] == "cancelled"
    assert body["stdout"] == "started\n"
    assert body["exit_code"] is None and body["signal"] == "SIGKILL"
    assert body["worker"] == WORKER and body["started_at"]


def test_delete_kills_a_running_execution_and_keeps_its_output(
    api: str, raw_docker: docker.DockerClient
):
    before = counters(api)["cancelled"]
    execution_id = start_sleeper(api, raw_docker)
    response = delete(api, execution_id)
    assert response.status_code in (200, 202), response.text
    body = response.json() if response.status_code == 200 else finished(api, execution_id)
    assert_killed_with_its_output(body)
    assert get(api, execution_id).json() == body
    assert not wait_gone(raw_docker, **{LABEL_EXECUTION: execution_id})

    again = delete(api, execution_id)  # cancelling a cancelled execution: its result again
    assert again.status_code == 200 and again.json() == body
    assert counters(api)["cancelled"] == before + 1
    metrics = requests.get(f"{api}/metrics", timeout=10).text
    assert f'executor_executions_total{{status="cancelled"}} {before + 1}.0' in metrics


def test_delete_of_a_queued_execution_answers_its_waiter_and_it_never_runs(
    api: str, raw_docker: docker.DockerClient, logdir: Any
):
    busy = start_sleeper(api, raw_docker)
    waiter: dict[str, requests.Response] = {}
    thread = threading.Thread(
        target=lambda: waiter.update(r=post(f"{api}/execute", {"code": "print('never')"}))
    )
    thread.start()
    queued = wait_until(
        "the waiting execution queued",
        lambda: next(
            (e["id"] for e in requests.get(f"{api}/status", timeout=10).json()["recent"]
             if e["status"] == "queued"),
            None,
        ),
        30,
    )  # fmt: skip
    response = delete(api, queued)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled" and body["stdout"] == ""
    assert body["started_at"] is None and body["worker"] is None and body["image"] is None
    assert body["language"] == "python" and body["queued_ms"] >= 0

    thread.join(60)
    assert waiter["r"].status_code == 200 and waiter["r"].json() == body
    assert get(api, busy).json()["status"] == "running"  # the waiter did not wait for the slot

    assert delete(api, busy).status_code in (200, 202)  # frees the slot: the message comes up
    log = logdir / f"worker-{WORKER}.log"
    wait_until(
        "the cancelled message discarded",
        lambda: f"execution {queued} was cancelled before it started" in log.read_text(),
        60,
    )
    assert get(api, queued).json() == body
    assert not sandboxes(raw_docker, **{LABEL_EXECUTION: queued})


def test_delete_after_the_end_is_409_and_of_nothing_404(api: str):
    done = post(f"{api}/execute", {"code": "print(1)"}).json()
    conflict = delete(api, done["id"])
    assert conflict.status_code == 409 and conflict.json()["code"] == "already_finished"
    assert get(api, done["id"]).json() == done
    missing = delete(api, str(uuid.uuid4()))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_a_celery_revoke_of_a_queued_execution_cancels_it_before_any_worker_takes_it(
    api: str, producer: Celery, raw_docker: docker.DockerClient
):
    busy = start_sleeper(api, raw_docker)
    queued = post(f"{api}/executions", {"code": "print('never')"}).json()["id"]
    producer.control.revoke(queued)  # what `celery control revoke` and Flower's button send
    body = finished(api, queued)
    assert body["status"] == "cancelled" and body["started_at"] is None
    assert get(api, busy).json()["status"] == "running"  # no worker took the message
    delete(api, busy)


@pytest.mark.parametrize("terminate", [False, True])
def test_a_celery_revoke_of_a_running_execution_kills_it(
    api: str, producer: Celery, raw_docker: docker.DockerClient, terminate: bool
):
    execution_id = start_sleeper(api, raw_docker)
    replies = producer.control.revoke(execution_id, terminate=terminate, reply=True, timeout=5)
    answers = [answer for reply in replies for answer in reply.values()]
    assert answers and all("ok" in answer for answer in answers), answers  # no error reply
    assert_killed_with_its_output(finished(api, execution_id))
    assert not wait_gone(raw_docker, **{LABEL_EXECUTION: execution_id})


def test_a_producers_execution_is_visible_and_timed_while_queued(
    api: str, producer: Celery, raw_docker: docker.DockerClient
):
    busy = start_sleeper(api, raw_docker)
    result = producer.send_task("executor.execute", args=[{"code": "print(6*7)"}], queue=QUEUE)
    pending = get(api, result.id)
    assert pending.status_code == 202 and pending.json() == {"id": result.id, "status": "queued"}
    status = requests.get(f"{api}/status", timeout=10).json()
    assert {"id": result.id, "status": "queued"}.items() <= status["recent"][0].items()
    assert schemas.StatusSchema().validate(status) == {}  # its language is not known yet

    ended = delete(api, busy)
    busy_body = ended.json() if ended.status_code == 200 else finished(api, busy)
    body = result.get(timeout=60)
    assert body["status"] == "success" and body["stdout"] == "42\n"
    # Timed from the moment it was queued: it was created before the busy one ended.
    assert body["created_at"] < busy_body["finished_at"] < body["started_at"]
    assert body["queued_ms"] > 0
    assert get(api, result.id).json() == body


def test_a_producers_queued_execution_can_be_deleted(
    api: str, producer: Celery, raw_docker: docker.DockerClient
):
    busy = start_sleeper(api, raw_docker)
    result = producer.send_task("executor.execute", args=[{"code": "print(1)"}], queue=QUEUE)
    response = delete(api, result.id)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    delete(api, busy)
    assert result.get(timeout=60) == response.json()  # its message came up and was not run


def test_api_messages_carry_no_code_or_stdin(
    api: str, one_slot: str, producer: Celery, raw_docker: docker.DockerClient
):
    secret_code, secret_stdin = f"print('{uuid.uuid4()}')", f"stdin-{uuid.uuid4()}"
    busy = start_sleeper(api, raw_docker)
    queued = post(f"{api}/executions", {"code": secret_code, "stdin": secret_stdin}).json()["id"]

    client = redis.Redis.from_url(one_slot)
    try:
        messages = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
    finally:
        client.close()
    ours = [m for m in messages if m["headers"]["id"] == queued]
    assert len(ours) == 1
    seen = json.dumps(ours[0]) + base64.b64decode(ours[0]["body"]).decode()
    assert secret_code not in seen and secret_stdin not in seen

    active = producer.control.inspect(timeout=5).active() or {}
    shown = json.dumps(active)
    assert busy in shown and SLEEPER not in shown and "sleep" not in shown
    delete(api, busy)
    body = finished(api, queued)
    assert body["status"] == "success" and body["stdout"].strip() in secret_code


def test_a_producers_running_execution_with_its_own_id_is_labelled_and_deleted(
    api: str, producer: Celery, raw_docker: docker.DockerClient
):
    task_id = f"job:{uuid.uuid4().hex[:8]}.retry_1"
    result = producer.send_task(
        "executor.execute", args=[{"code": SLEEPER, "timeout": 55}], queue=QUEUE, task_id=task_id
    )
    # Its container carries its id as a label (`sleeping` finds the container by it).
    wait_until("it sleeping", lambda: sleeping(raw_docker, task_id, "sleep 50"), 60)
    response = delete(api, task_id)
    body = response.json() if response.status_code == 200 else finished(api, task_id)
    assert body["id"] == task_id
    assert_killed_with_its_output(body)
    assert result.get(timeout=60) == body  # the producer's result says so too
