"""A burst of 200 requests from 32 clients against a real stack: each answered 200, 202 or
429/503 with Retry-After, none lost, none 5xx, none left unfinished; half of them carry an
Idempotency-Key and are retried twice each, and each key runs once."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.faults.conftest import FaultStack, StackFactory
from tests.service.conftest import wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

REQUESTS = 200
CLIENTS = 32
RETRIES = 2
ACCEPTED = (200, 202)
REFUSED = (429, 503)


@dataclass
class Outcome:
    n: int
    key: str | None
    answers: list[tuple[int, dict[str, Any], str | None]] = field(default_factory=list)


def send(stack: FaultStack, n: int, key: str | None, session: requests.Session) -> Outcome:
    outcome = Outcome(n, key)
    headers = {"Idempotency-Key": key} if key else {}
    path = "/execute" if n % 4 < 2 else "/executions"  # waiting and queueing clients alike
    for _ in range(1 + (RETRIES if key else 0)):
        answer = session.post(
            f"{stack.api}{path}", json={"code": f"print({n})"}, headers=headers, timeout=180
        )
        outcome.answers.append(
            (answer.status_code, answer.json(), answer.headers.get("Retry-After"))
        )
    return outcome


def test_a_burst_of_200_from_32_clients(fault_stack: StackFactory):
    # A queue bound the burst passes, so that some answers are 429 (admission control at work).
    stack = fault_stack(EXECUTOR_POOL_SIZE="2", EXECUTOR_CONCURRENCY="4")
    stack.api_process.stop()  # type: ignore[union-attr]
    stack.start_api(EXECUTOR_MAX_QUEUE="32")
    before = stack.get("/status").json()["counters"]
    sessions = [requests.Session() for _ in range(CLIENTS)]
    jobs = [(n, str(uuid.uuid4()) if n % 2 else None) for n in range(REQUESTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(
            pool.map(lambda job: send(stack, job[0], job[1], sessions[job[0] % CLIENTS]), jobs)
        )
    codes: Counter[int] = Counter()
    ids: dict[str, int] = {}  # execution id -> the request it ran
    for outcome in outcomes:
        for code, body, retry_after in outcome.answers:
            codes[code] += 1
            assert code in ACCEPTED + REFUSED, (code, body)
            if code in REFUSED:
                assert retry_after is not None and int(retry_after) > 0, body
                assert body["code"] in ("queue_full", "no_workers", "redis_unavailable"), body
                continue
            ids.setdefault(body["id"], outcome.n)
            assert ids[body["id"]] == outcome.n, "two requests share an execution"
            if code == 200:
                assert body["status"] == "success" and body["stdout"] == f"{outcome.n}\n", body
        if outcome.key:  # every accepted answer to one key names one execution
            keyed = {body["id"] for code, body, _ in outcome.answers if code in ACCEPTED}
            assert len(keyed) <= 1, outcome
    # None left unfinished: every accepted execution ends, with its own output.
    for execution_id, n in ids.items():
        record = stack.final(execution_id, timeout=180)
        assert record["status"] == "success" and record["stdout"] == f"{n}\n", record
    # Each accepted execution ran once: as many submissions and finished runs as ids.
    after = stack.get("/status").json()["counters"]

    def runs() -> int:
        counters = stack.get("/status").json()["counters"]
        return sum(counters["executions"].values()) - sum(before["executions"].values())

    wait_until("every run counted", lambda: runs() >= len(ids), 30)
    assert after["submitted"] - before["submitted"] == len(ids)
    assert runs() == len(ids)
    print(f"burst: {REQUESTS} requests + retries answered {dict(codes)}, {len(ids)} executions")
    for session in sessions:
        session.close()
