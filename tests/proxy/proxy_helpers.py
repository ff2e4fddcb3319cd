"""Helpers for the proxy's tests: raw HTTP on sockets, credentials, sandbox bodies, daemon
snapshots."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from executor.config import Settings
from executor.languages import languages
from executor.models import RunRequest
from executor.policy import LABEL_SANDBOX, LABEL_WORKER, Rules, profile_name, sandbox_config
from executor.protocol import encode_request
from executor.proxyauth import credential, worker_identity
from executor.sandbox import default_limits

ROOT = Path(__file__).resolve().parents[2]
API = "/v1.41"
# This test process's worker identity, and a second one (another worker of the same secret).
WORKER = worker_identity("proxy-test")
OTHER = worker_identity("proxy-test-other")
# The secret of the session's proxy: set by the autouse fixture in conftest.py (it is the
# PROXY_TOKEN of the conftest module pytest loaded, which `import tests.conftest` is not).
SECRET = b""
_random = random.SystemRandom()


class _Valid:
    """The default of `auth=`: a valid credential of WORKER for the session's secret."""


VALID = _Valid()
Auth = str | None | _Valid


def auth_value(identity: str = WORKER, secret: bytes | None = None) -> str:
    """An Authorization value proving `secret` (default: the session's) for `identity`."""
    return credential(SECRET if secret is None else secret, identity)


def auth_headers(auth: Auth = VALID) -> dict[str, str]:
    """The Authorization header for `auth`: VALID, None (none at all) or a raw value."""
    if isinstance(auth, _Valid):
        return {"Authorization": auth_value()}
    return {} if auth is None else {"Authorization": auth}


def client(base_url: str, identity: str = WORKER, secret: bytes | None = None) -> docker.APIClient:
    """docker-py's low-level client as the worker sets it up: every request carries a
    credential (for `identity` and `secret`, by default this test worker's)."""
    api = docker.APIClient(base_url=base_url, version="1.41", timeout=30)
    api.headers["Authorization"] = auth_value(identity, secret)
    return api


def random_uid(rules: Rules) -> int:
    """A sandbox uid no other test is likely to hold."""
    return _random.randint(rules.uids[0], rules.uids[1])


def sandbox_body(
    rules: Rules, image: str, *, uid: int | None = None, **labels: str
) -> dict[str, Any]:
    """A create body exactly as the sandbox builds it (so the proxy must accept it from WORKER,
    or from the identity given as worker=)."""
    return sandbox_config(
        image=image,
        memory_mb=64,
        cpus=0.25,
        pids=rules.max_pids,
        tmpfs_mb=16,
        nofile=rules.nofile,
        runtime="",
        uid=random_uid(rules) if uid is None else uid,
        worker=labels.get("worker", WORKER),
        execution=labels.get("execution", str(uuid.uuid4())),
        profile=labels.get("profile", profile_name(rules.images[image], 64, 0.25)),
    )


@contextlib.contextmanager
def own_proxy(upstream: str, audit: Path, **env: str) -> Iterator[str]:
    """A proxy process of the test's own (tests.conftest.proxy_process) with the session's
    secret, so the helpers' credentials hold for it too."""
    from tests.conftest import proxy_process

    with proxy_process(upstream, audit, EXECUTOR_PROXY_TOKEN=SECRET.decode(), **env) as url:
        yield url


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def message(self) -> str:
        return str(json.loads(self.body)["message"])


class Wire:
    """A raw client connection to the proxy, reading answers framed by Content-Length."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before an answer head: {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            return Answer(status, headers, self._chunks())
        body = self._take(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed inside an answer body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _chunks(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError("closed inside a chunked body")
            line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self._take(2)  # no trailers from the engine
                return body
            body += self._take(size + 2)[:-2]

    def closed(self) -> bool:
        """Whether the proxy closed the connection (after any answer already read)."""
        try:
            return not self.buf and not self._fill()
        except ConnectionResetError:
            return True


def request(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    auth: Auth = VALID,
) -> bytes:
    """Bytes of one well-formed request, like docker-py would send it: with this test worker's
    credential, or none (auth=None), or any Authorization value (auth="...")."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: proxy-test"]
    for name, value in {**auth_headers(auth), **(headers or {})}.items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
        if not headers or "Content-Type" not in headers:
            lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def exchange(url: str, data: bytes) -> Answer:
    with Wire(url) as wire:
        wire.send(data)
        return wire.answer()


def daemon_state(raw_docker: docker.DockerClient) -> dict[str, Any]:
    """What a refused request must not change: the containers, networks and volumes.

    Other parts of this project may run against the same engine meanwhile (test suites, the
    benchmark), so containers carrying an io.executor.* label of anyone but this module's
    workers (WORKER, OTHER) are left out; so are images (builds may run beside us): tests that
    could touch an image check it themselves.
    """
    containers = set()
    for c in raw_docker.api.containers(all=True):
        labels = c.get("Labels") or {}
        foreign = any(key.startswith("io.executor.") for key in labels)
        if foreign and labels.get(LABEL_WORKER) not in (WORKER, OTHER):
            continue
        containers.add(c["Id"])
    return {
        "containers": containers,
        "networks": {n["Id"] for n in raw_docker.api.networks()},
        "volumes": {v["Name"] for v in raw_docker.api.volumes().get("Volumes") or []},
    }


# -- answers, streams and the audit log ------------------------------------------------------


def refused(answer: Answer, rule: str, why: str = "") -> None:
    assert answer.status == 403, answer
    assert answer.message.startswith("executor-proxy refused "), answer.message
    assert f": {rule}: " in answer.message, answer.message
    assert why in answer.message, answer.message


def gone(raw_docker: docker.DockerClient, container: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw_docker.api.inspect_container(container)
        except docker.errors.NotFound:
            return True
        time.sleep(0.1)
    return False


def force_remove(raw_docker: docker.DockerClient, container: str) -> None:
    with contextlib.suppress(docker.errors.APIError):  # gone already (AutoRemove)
        raw_docker.api.remove_container(container, force=True)


def remove_via(api: docker.APIClient, container: str) -> int:
    """Remove through the proxy; the engine's status (allowed: never 403)."""
    try:
        api.remove_container(container, force=True)
    except docker.errors.APIError as e:
        return int(e.status_code)
    return 204


def demux(data: bytes) -> dict[int, bytes]:
    """The streams of Docker's multiplexed attach output (complete frames only)."""
    streams: dict[int, bytes] = {1: b"", 2: b""}
    while len(data) >= 8:
        size = int.from_bytes(data[4:8], "big")
        if len(data) < 8 + size:
            break
        streams[data[0]] = streams.get(data[0], b"") + data[8 : 8 + size]
        data = data[8 + size :]
    return streams


def runner_request(code: str) -> bytes:
    """One request for the sandbox's runner, encoded as the worker encodes it."""
    settings = Settings()
    request = RunRequest(code=code, limits=default_limits(settings))
    return encode_request(request, languages(settings)["python"], 65536)


def attach_request(container: str, auth: Auth = VALID) -> bytes:
    """The hijacked attach exactly as executor/engine.py sends it (with `auth` as for
    proxy_helpers.request: this test worker's credential by default)."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(auth).items())
    return (
        f"POST {API}/containers/{container}/attach?stdin=1&stdout=1&stderr=1&stream=1 HTTP/1.1\r\n"
        "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"{fields}Content-Length: 0\r\n\r\n"
    ).encode()


def read_until(sock: socket.socket, done: Callable[[bytes], bool], timeout: float) -> bytes:
    """Read until done(all bytes so far) or end of stream; fails past the timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def audit_size(proxy: dict[str, str]) -> int:
    """Where the audit log ends now: pass it as audit_lines(since=) to read only what follows
    (client addresses are ports, which later connections of the session may reuse)."""
    return Path(proxy["audit"]).stat().st_size


def audit_lines(
    proxy: dict[str, str],
    until: Callable[[list[dict[str, Any]]], bool] = lambda lines: True,
    since: int = 0,
) -> list[dict[str, Any]]:
    """The audit log's lines (from byte `since`), once `until` holds for them (a small answer
    goes out before its line is written, so a line may trail its answer by a moment)."""
    deadline = time.monotonic() + 5
    while True:
        with open(proxy["audit"], "rb") as f:
            f.seek(since)
            lines = [json.loads(line) for line in f.read().decode().splitlines()]
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


# -- a fake engine -----------------------------------------------------------------------------

CID = "c" * 64
UPGRADED = (
    b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


class FakeEngine:
    """A stand-in for the engine on a TCP port, one connection per request (Connection: close).

    A create answers 201 with the id CID (once `release` is set: clear it to hold creates in
    flight); the list of our containers is empty; an inspect says CID is ours; an attach is
    hijacked: `echo` everything back and say when our EOF arrived, or `close-first`: end its
    own side at once, then record what comes (`received`). Every request head is kept in
    `heads`, as received.
    """

    def __init__(self, mode: str = "echo", port: int = 0) -> None:
        self.mode = mode
        self.received = b""
        self.heads: list[bytes] = []
        self.release = threading.Event()
        self.release.set()
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket, status: str, value: Any) -> None:
        body = json.dumps(value).encode()
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            self.heads.append(head)
            line = head.split(b"\r\n", 1)[0]
            if b"/containers/create" in line:
                length = 0
                for field in head.split(b"\r\n")[1:]:
                    name, _, value = field.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.release.wait(30)
                self._answer(conn, "201 Created", {"Id": CID, "Warnings": []})
                return
            if b"/containers/json?" in line:
                self._answer(conn, "200 OK", [])
                return
            if b"/attach" not in line:
                labels = {LABEL_SANDBOX: "1"}
                self._answer(conn, "200 OK", {"Id": CID, "Config": {"Labels": labels}})
                return
            conn.sendall(UPGRADED)
            if self.mode == "echo":
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.sendall(b"<EOF SEEN>")
                conn.shutdown(socket.SHUT_WR)
            else:
                conn.sendall(b"hello")
                conn.shutdown(socket.SHUT_WR)
                while data := conn.recv(1 << 16):
                    self.received += data

    def close(self) -> None:
        self.listener.close()
