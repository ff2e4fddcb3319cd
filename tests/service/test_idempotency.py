"""Idempotency-Key: a retry with the same key and body gets the same execution, run once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.service


def submitted(api: str) -> int:
    return int(requests.get(f"{api}/status", timeout=10).json()["counters"]["submitted"])


def test_retries_get_the_same_execution_and_it_runs_once(api: str):
    key = str(uuid.uuid4())
    body = {"code": "print('once')"}
    before = submitted(api)
    first = requests.post(f"{api}/execute", json=body, headers={"Idempotency-Key": key}, timeout=60)
    assert first.status_code == 200 and first.json()["stdout"] == "once\n"
    again = requests.post(f"{api}/execute", json=body, headers={"Idempotency-Key": key}, timeout=60)
    queued = requests.post(
        f"{api}/executions", json=body, headers={"Idempotency-Key": key}, timeout=60
    )
    assert again.status_code == 200 and again.json() == first.json()
    assert queued.status_code == 202 and queued.json()["id"] == first.json()["id"]
    assert submitted(api) == before + 1


def test_concurrent_retries_submit_once(api: str):
    key = str(uuid.uuid4())
    before = submitted(api)

    def post(_: int) -> str:
        answer = requests.post(
            f"{api}/executions",
            json={"code": "print(2)"},
            headers={"Idempotency-Key": key},
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    with ThreadPoolExecutor(12) as pool:
        ids = set(pool.map(post, range(24)))
    assert len(ids) == 1 and submitted(api) == before + 1


def test_the_same_key_with_another_body_is_422(api: str):
    key = str(uuid.uuid4())
    headers = {"Idempotency-Key": key}
    assert (
        requests.post(
            f"{api}/executions", json={"code": "print(1)"}, headers=headers, timeout=60
        ).status_code
        == 202
    )
    other = requests.post(
        f"{api}/executions", json={"code": "print(3)"}, headers=headers, timeout=60
    )
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["errors"]
    # The same body in another form is the same request.
    same = requests.post(
        f"{api}/executions",
        json={"code": "print(1)", "language": "python"},
        headers=headers,
        timeout=60,
    )
    assert same.status_code == 202


def test_an_unusable_key_is_422(api: str):
    for key in ("x" * 256, "tab\there"):
        answer = requests.post(
            f"{api}/executions",
            json={"code": "print(1)"},
            headers={"Idempotency-Key": key},
            timeout=60,
        )
        assert answer.status_code == 422 and "Idempotency-Key" in answer.json()["errors"]
