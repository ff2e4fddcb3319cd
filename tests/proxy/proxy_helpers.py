"""Helpers for the proxy's tests: raw HTTP on sockets, sandbox bodies, daemon snapshots."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from executor.policy import LABEL_WORKER, Rules, sandbox_config

ROOT = Path(__file__).resolve().parents[2]
WORKER = "proxy-test"
API = "/v1.41"


def sandbox_body(rules: Rules, image: str, **labels: str) -> dict[str, Any]:
    """A create body exactly as the sandbox builds it (so the proxy must accept it)."""
    return sandbox_config(
        image=image,
        memory_mb=64,
        cpus=0.25,
        pids=rules.max_pids,
        tmpfs_mb=16,
        nofile=rules.nofile,
        runtime="",
        worker=labels.get("worker", WORKER),
        execution=labels.get("execution", str(uuid.uuid4())),
        profile="proxy-test",
    )


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
) -> bytes:
    """Bytes of one well-formed request, like docker-py would send it."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: proxy-test"]
    for name, value in (headers or {}).items():
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
    worker are left out; so are images (builds may run beside us): tests that could touch an
    image check it themselves.
    """
    containers = set()
    for c in raw_docker.api.containers(all=True):
        labels = c.get("Labels") or {}
        foreign = any(key.startswith("io.executor.") for key in labels)
        if foreign and labels.get(LABEL_WORKER) != WORKER:
            continue
        containers.add(c["Id"])
    return {
        "containers": containers,
        "networks": {n["Id"] for n in raw_docker.api.networks()},
        "volumes": {v["Name"] for v in raw_docker.api.volumes().get("Volumes") or []},
    }
