"""Queueing with a one-slot worker: 202 past the wait budget, back-pressure, no hoarding."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from executor.config import Settings
from tests.service.conftest import AppFactory, WorkerFactory, flushed, post, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

DB = 14


@pytest.fixture(scope="module")
def single_slot(start_worker: WorkerFactory, docker_host: str) -> Iterator[str]:
    url = flushed(DB)
    start_worker(
        "pytest-single", url, docker_host, EXECUTOR_CONCURRENCY="1", EXECUTOR_POOL_SIZE="0"
    )
    return url


def test_a_busy_slot_holds_no_queue_and_the_wait_budget_ends_in_202(
    single_slot: str, serve_app: AppFactory, base_settings: Settings
):
    api = serve_app(base_settings, redis_url=single_slot, queue_grace_s=0.0, max_queue=1)
    busy = post(f"{api}/executions", {"code": "import time; time.sleep(30)", "timeout": 4}).json()
    wait_until(
        "the slot busy",
        lambda: (
            requests.get(f"{api}/executions/{busy['id']}", timeout=5).json()["status"] == "running"
        ),
        30,
    )

    started = time.monotonic()
    waiting = post(f"{api}/execute", {"code": "print('b')", "timeout": 1})
    elapsed = time.monotonic() - started
    assert waiting.status_code == 202, waiting.text
    assert 0.9 <= elapsed < 3
    body = waiting.json()
    assert body["status"] == "queued"
    assert waiting.headers["Location"] == f"/executions/{body['id']}"

    # The busy worker reserved nothing more: the waiting message is still in the queue.
    status = requests.get(f"{api}/status", timeout=5).json()
    assert status["queue"] == {"depth": 1}

    # Back-pressure: the queue is full (EXECUTOR_MAX_QUEUE=1), so the next one is refused.
    full = post(f"{api}/executions", {"code": "print('c')"})
    assert full.status_code == 429
    assert full.json()["code"] == "queue_full" and int(full.headers["Retry-After"]) > 0

    done = wait_until(
        "the queued execution finishing",
        lambda: (
            (r := requests.get(api + waiting.headers["Location"], timeout=5)).status_code == 200
            and r
        ),
        30,
    )
    assert done.json()["stdout"] == "b\n"
    assert done.json()["queued_ms"] >= 1000  # it waited for the slot
    first = requests.get(f"{api}/executions/{busy['id']}", timeout=5).json()
    assert first["status"] == "timeout"
