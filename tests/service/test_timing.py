"""Every millisecond between submission and result belongs to a reported field.

On the one-slot worker without a warm pool, every execution runs in a cold container: its
preparation (create, start, the runner's boot) is part of `queued_ms`, which runs until the
runner took the program; `started_at` is that moment.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path

import docker
import pytest

from executor.config import Settings
from executor.policy import LABEL_EXECUTION
from tests.conftest import sandboxes
from tests.service.conftest import AppFactory, finished, post, sleeping, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]


def ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


@pytest.fixture
def api(one_slot: str, serve_app: AppFactory, base_settings: Settings) -> str:
    return serve_app(base_settings, redis_url=one_slot)


def test_a_cold_containers_preparation_is_in_queued_ms(api: str):
    body = post(f"{api}/execute", {"code": "print(1)"}).json()
    assert body["status"] == "success" and body["warm"] is False
    # created_at + queued_ms is when the program started; then it ran duration_ms.
    assert abs(ms(body["created_at"]) + body["queued_ms"] - ms(body["started_at"])) <= 2
    assert ms(body["started_at"]) + body["duration_ms"] <= ms(body["finished_at"]) + 1
    assert body["queued_ms"] > 0  # a cold container never starts a program at once


def test_a_timeout_the_worker_enforces_is_not_credited_a_second_more(
    api: str, raw_docker: docker.DockerClient
):
    code = "print('x', flush=True)\nimport subprocess\nsubprocess.run(['sleep', '41'])"
    execution_id = post(f"{api}/executions", {"code": code, "timeout": 8}).json()["id"]
    wait_until("the program sleeping", lambda: sleeping(raw_docker, execution_id, "sleep 41"), 60)
    # Freeze the runner (the container's first process): it cannot kill the program at its
    # deadline nor report, so the worker's own deadline ends the execution.
    (container,) = sandboxes(raw_docker, **{LABEL_EXECUTION: execution_id})
    runner = raw_docker.api.inspect_container(container)["State"]["Pid"]
    os.kill(runner, signal.SIGSTOP)
    status = Path(f"/proc/{runner}/status")
    wait_until("the runner stopped", lambda: "State:\tT" in status.read_text(), 5, 0.01)

    body = finished(api, execution_id)
    assert body["status"] == "timeout" and body["signal"] == "SIGKILL"
    assert body["stdout"] == "x\n"
    assert 8000 <= body["duration_ms"] < 9000  # the limit, plus the worker's small grace
