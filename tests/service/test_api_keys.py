"""API keys: who may call, who sees which execution, and the per-key rate limit across processes."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from executor.config import Settings
from tests.conftest import free_port
from tests.service.conftest import AppFactory, Process, flushed, spawn, wait_until

pytestmark = [pytest.mark.service]

ALICE, BOB, OPERATOR = "alice-key-0123456789", "bob-key-0123456789", "operator-key-0123456789"
RATE_DB = 4  # see the table in tests/service/conftest.py


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(
    serve_app: AppFactory, base_settings: Settings, main_redis: str, main_worker: Process
) -> str:
    """An API with keys on, over the main worker; the operator key comes from a file."""
    return serve_app(
        base_settings,
        redis_url=main_redis,
        api_keys=(ALICE, BOB),
        operator_keys_file=str(_key_file(OPERATOR)),
    )


def _key_file(key: str) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="executor-keys-"))
    path = folder / "operator-keys"
    path.write_text(f"# operators\n{key}\n")
    return path


def run(api: str, key: str, code: str = "print('secret of alice')") -> dict[str, Any]:
    response = requests.post(f"{api}/execute", json={"code": code}, headers=auth(key), timeout=120)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.docker
def test_a_key_sees_only_its_own_executions(keyed: str):
    mine = run(keyed, ALICE)
    theirs = run(keyed, BOB, "print('bob')")
    url = f"{keyed}/executions/{mine['id']}"
    assert (
        requests.get(url, headers=auth(ALICE), timeout=10).json()["stdout"] == "secret of alice\n"
    )
    other = requests.get(url, headers=auth(BOB), timeout=10)
    assert other.status_code == 404 and other.json()["code"] == "not_found"
    assert "secret" not in other.text
    assert requests.get(url, headers=auth(OPERATOR), timeout=10).status_code == 200

    def listed(key: str) -> set[str]:
        response = requests.get(f"{keyed}/executions?limit=500", headers=auth(key), timeout=10)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert mine["id"] in listed(ALICE) and theirs["id"] not in listed(ALICE)
    assert theirs["id"] in listed(BOB) and mine["id"] not in listed(BOB)
    assert {mine["id"], theirs["id"]} <= listed(OPERATOR)


def test_an_idempotency_key_is_its_api_keys_own(keyed: str):
    body = {"code": "print(1)"}
    first = requests.post(
        f"{keyed}/executions",
        json=body,
        headers={**auth(ALICE), "Idempotency-Key": "k"},
        timeout=30,
    )
    other = requests.post(
        f"{keyed}/executions", json=body, headers={**auth(BOB), "Idempotency-Key": "k"}, timeout=30
    )
    assert first.status_code == other.status_code == 202
    assert first.json()["id"] != other.json()["id"]


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong-key"), {"Authorization": ALICE}, {"Authorization": "Basic YTpi"}],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
@pytest.mark.parametrize("path", ["/executions", "/languages", "/openapi.json", "/status"])
def test_no_valid_key_is_401(keyed: str, headers: dict[str, str], path: str):
    response = requests.get(f"{keyed}{path}", headers=headers, timeout=10)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_stays_open(keyed: str):
    assert requests.get(f"{keyed}/health", timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_operator_endpoints_need_an_operator_key(keyed: str, path: str):
    refused = requests.get(f"{keyed}{path}", headers=auth(ALICE), timeout=10)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert requests.get(f"{keyed}{path}", headers=auth(OPERATOR), timeout=30).status_code == 200


def test_keys_are_off_by_default(serve_app: AppFactory, base_settings: Settings):
    api = serve_app(base_settings, redis_url=flushed(RATE_DB))
    assert requests.get(f"{api}/languages", timeout=10).status_code == 200


# -- the rate limit, across two API processes --------------------------------------------------


@pytest.fixture
def limited_apis(logdir: Path, docker_host: str) -> Iterator[list[str]]:
    """Two gunicorn API processes sharing one Redis, with keys and a limit of 4 a minute."""
    url = flushed(RATE_DB)
    env = {
        "REDIS_URL": url,
        "DOCKER_HOST": docker_host,
        "EXECUTOR_API_KEYS": f"{ALICE},{BOB}",
        "EXECUTOR_RATE_LIMIT": "4/minute",
    }
    processes: list[Process] = []
    urls = []
    try:
        for n in range(2):
            port = free_port()
            argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "api:app"]
            processes.append(spawn(f"api-limited-{n}", argv, env, logdir))
            urls.append(f"http://127.0.0.1:{port}")
        for base, process in zip(urls, processes, strict=True):
            wait_until(f"{base} answering", lambda b=base, p=process: _answers(b, p), 60)
        yield urls
    finally:
        for process in processes:
            process.stop()


def _answers(base: str, process: Process) -> bool:
    """Whether the API answers (a request without a key: 401, and never counted)."""
    if process.popen.poll() is not None:
        raise AssertionError(f"{process.name} exited:\n{process.output()[-3000:]}")
    try:
        return requests.get(f"{base}/languages", timeout=5).status_code == 401
    except requests.RequestException:
        return False


def test_the_rate_limit_holds_across_api_processes(limited_apis: list[str]):
    first, second = limited_apis
    answers = [
        requests.get(f"{base}/languages", headers=auth(ALICE), timeout=30)
        for base in (first, second, first, second)
    ]
    assert [a.status_code for a in answers] == [200] * 4
    refused = requests.get(f"{second}/languages", headers=auth(ALICE), timeout=30)
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The limit is per key, and probes are never limited.
    assert requests.get(f"{first}/languages", headers=auth(BOB), timeout=30).status_code == 200
    for _ in range(3):  # 503: no worker serves this database
        assert requests.get(f"{first}/health", timeout=60).status_code == 503


@pytest.fixture
def stalled_redis() -> Iterator[str]:
    """A Redis address that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_the_limiter_waits_on_redis_without_blocking_its_process(
    stalled_redis: str, logdir: Path, docker_host: str
):
    """One gevent API process: while the limiter waits on a Redis that never answers, the same
    process answers another request (a blocking client would hold it until its timeout: with
    GUNICORN_WORKER_CLASS=gthread and one thread this test fails)."""
    port = free_port()
    env = {
        "REDIS_URL": stalled_redis,
        "DOCKER_HOST": docker_host,
        "EXECUTOR_API_KEYS": ALICE,
        "EXECUTOR_RATE_LIMIT": "100/minute",
        "GUNICORN_WORKERS": "1",
    }
    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "api:app"]
    process = spawn("api-stalled-limiter", argv, env, logdir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("the API answering", lambda: _answers(base, process), 60)
        finished: list[str] = []

        def counted() -> None:  # the limiter's count waits on the stalled Redis
            requests.get(f"{base}/languages", headers=auth(ALICE), timeout=60)
            finished.append("counted")

        waiting = threading.Thread(target=counted)
        waiting.start()
        time.sleep(0.5)  # the counted request is in the limiter now
        assert requests.get(f"{base}/languages", timeout=60).status_code == 401
        finished.append("other")
        waiting.join(60)
        assert finished == ["other", "counted"]
    finally:
        process.stop()


def test_a_browser_opens_the_operators_page_with_basic_auth(keyed: str):
    asked = requests.get(f"{keyed}/dashboard", timeout=10)
    assert asked.status_code == 401
    assert asked.headers["WWW-Authenticate"].startswith("Basic")  # the browser's own prompt
    assert requests.get(f"{keyed}/dashboard", auth=("me", ALICE), timeout=10).status_code == 403
    page = requests.get(f"{keyed}/dashboard", auth=("me", OPERATOR), timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert requests.get(f"{keyed}/status", auth=("", OPERATOR), timeout=30).status_code == 200
