"""The API under slow, stalled and many clients: `gunicorn api:app` with its gevent worker.

Each API here is the real thing (gunicorn.conf.py, one process) with short HTTP deadlines, in
front of the session's worker. No timing is asserted: only what a client sees.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from executor.models import FINISHED
from executor.store import Store
from tests.conftest import free_port, wait_http
from tests.service.conftest import Process, spawn, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
IDLE_TIMEOUT_S = 2
STALLED = 300


def start_api(
    name: str, main_redis: str, docker_host: str, logdir: Path, **env: str
) -> tuple[str, Process]:
    port = free_port()
    environ = {
        "REDIS_URL": main_redis,
        "DOCKER_HOST": docker_host,
        "HOSTNAME": name,
        "GUNICORN_WORKERS": "1",
        **env,
    }
    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "api:app"]
    process = spawn(name, argv, environ, logdir)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", 60, process.popen)
    return url, process


@pytest.fixture(scope="module")
def slow_api(
    main_worker: Process, main_redis: str, docker_host: str, logdir: Path
) -> Iterator[str]:
    url, process = start_api(
        "slow-clients-api",
        main_redis,
        docker_host,
        logdir,
        EXECUTOR_HTTP_HEAD_TIMEOUT=str(HEAD_TIMEOUT_S),
        EXECUTOR_HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT_S),
        EXECUTOR_HTTP_IDLE_TIMEOUT=str(IDLE_TIMEOUT_S),
        EXECUTOR_QUEUE_GRACE="120",  # waiting requests wait for their result, not a 202
    )
    try:
        yield url
    finally:
        process.stop()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s at most)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, object]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def stalled_body(url: str) -> socket.socket:
    """A POST /execute that promises 100 bytes of body and sends one."""
    sock = connect(url)
    sock.sendall(
        b"POST /execute HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return sock


def test_a_stalled_head_gets_408_and_its_connection_closes(slow_api: str):
    with connect(slow_api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n")  # the blank line never comes
        answer = read_until_closed(sock)
    assert status_of(answer) == 408
    assert body_of(answer)["code"] == "request_timeout"
    assert b"Connection: close" in answer


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (b"GET /executions?cursor=" + b"x" * 10000 + b" HTTP/1.1\r\nHost: api\r\n\r\n", 414,
         "uri_too_long"),
        (b"GET /health HTTP/1.1\r\n" + b"X-Junk: y\r\n" * 200 + b"\r\n", 431,
         "headers_too_large"),
        (b"NOT A REQUEST\r\n\r\n", 400, "bad_request"),
    ],
    ids=["uri", "headers", "request-line"],
)  # fmt: skip
def test_a_request_the_server_cannot_parse_gets_the_error_shape(
    slow_api: str, head: bytes, status: int, code: str
):
    with connect(slow_api) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock)
    assert status_of(answer) == status, answer[:200]
    assert b"application/json" in answer.split(b"\r\n\r\n")[0]
    assert body_of(answer)["code"] == code


def test_a_connection_that_sends_nothing_gets_408_and_closes(slow_api: str):
    with connect(slow_api) as sock:
        answer = read_until_closed(sock)
    assert status_of(answer) == 408


def test_a_stalled_body_gets_408_and_its_connection_closes(slow_api: str):
    with stalled_body(slow_api) as sock:
        answer = read_until_closed(sock)
    assert status_of(answer) == 408
    body = body_of(answer)
    assert body["code"] == "request_timeout" and body["status"] == 408
    assert b"Connection: close" in answer


def test_an_idle_kept_alive_connection_closes_and_a_busy_one_stays(slow_api: str):
    with connect(slow_api) as sock:
        for _ in range(3):  # requests within the idle time keep the connection
            sock.sendall(b"GET /languages HTTP/1.1\r\nHost: api\r\n\r\n")
            answer = read_response(sock)
            assert status_of(answer) == 200 and b"Connection: keep-alive" in answer
            time.sleep(IDLE_TIMEOUT_S / 4)
        assert sock.recv(65536) == b""  # then, idle, it is closed (without an answer)


def test_health_answers_while_hundreds_of_stalled_clients_are_connected(slow_api: str):
    stalled = [stalled_body(slow_api) for _ in range(STALLED)]
    try:
        for _ in range(5):
            assert requests.get(f"{slow_api}/health", timeout=10).status_code == 200
            assert requests.get(f"{slow_api}/metrics", timeout=10).status_code == 200
        # They were still connected, waiting: each gets its 408 in turn.
        answers = [read_until_closed(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    assert [status_of(a) for a in answers] == [408] * STALLED


def test_hundreds_of_concurrent_waiting_requests_are_all_answered(slow_api: str):
    n = 200

    def run(i: int) -> requests.Response:
        body = {"code": f"print({i})", "timeout": 5}
        return requests.post(f"{slow_api}/execute", json=body, timeout=180)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(run, range(n)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 202, 429, 503}, statuses
    for a in answers:
        if a.status_code in (429, 503):
            assert a.headers.get("Retry-After")
    ran = [(i, a.json()) for i, a in enumerate(answers) if a.status_code == 200]
    assert ran, statuses
    assert all(body["stdout"] == f"{i}\n" for i, body in ran)


def test_a_client_that_disconnects_mid_wait_leaves_the_execution_to_finish(
    slow_api: str, main_redis: str
):
    store = Store(main_redis, ttl_s=60, history_size=100)
    try:
        before = {e["id"] for e in store.snapshot()["recent"]}
        code = "import time\ntime.sleep(2)\nprint('finished alone')"
        body = json.dumps({"code": code}).encode()
        with connect(slow_api) as sock:
            sock.sendall(
                b"POST /execute HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )

            def submitted() -> list[str]:
                return [e["id"] for e in store.snapshot()["recent"] if e["id"] not in before]

            (execution_id,) = wait_until("the execution is recorded", submitted, 30)
        # The client is gone; the execution runs on and its result is stored.
        record = wait_until(
            "the execution finishes",
            lambda: (r := store.get(execution_id)) is not None and r.status in FINISHED and r,
            60,
        )
        assert record.payload["status"] == "success"
        assert record.payload["stdout"] == "finished alone\n"
        answer = requests.get(f"{slow_api}/executions/{execution_id}", timeout=10)
        assert answer.status_code == 200 and answer.json()["stdout"] == "finished alone\n"
    finally:
        store.close()


def test_past_its_connection_cap_a_process_answers_503_with_retry_after(
    main_worker: Process, main_redis: str, docker_host: str, logdir: Path
):
    cap = 20
    url, process = start_api(
        "capped-api", main_redis, docker_host, logdir, EXECUTOR_HTTP_MAX_CONNECTIONS=str(cap)
    )
    held = [connect(url) for _ in range(cap)]
    try:
        time.sleep(0.5)  # the process has accepted them all
        answer = requests.get(f"{url}/health", timeout=10)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["code"] == "too_many_connections"
        for sock in held[: cap // 2]:
            sock.close()
        time.sleep(0.5)
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        process.stop()
