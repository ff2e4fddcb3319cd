"""What the Docker security proxy adds to one execution: the same sequence, direct and proxied.

Each round makes one sandbox the way the worker does (create from `policy.sandbox_config`, hijacked
attach, start), sends a print(1) request to the runner, reads its reply, closes stdin, waits
for the exit and removes the container. Rounds alternate between the engine's own socket and a
`python -m executor.proxy` process started here, so both see the same machine. Through the
proxy every call carries the worker's credential (a random secret shared with that proxy, and
the Engine's identity from `executor.proxyauth.worker_identity`); every sandbox gets a uid of
its own. A container's start and exit vary by milliseconds, more than the proxy adds, so the
steady parts are also timed on their own: create+attach+remove with nothing started, and
GET /_ping (the cost of one plain API call, such as start or wait).

    .venv/bin/python bench/proxy_latency.py [--rounds 30] [--pings 500]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.config import Settings  # noqa: E402
from executor.engine import Engine  # noqa: E402
from executor.languages import languages  # noqa: E402
from executor.models import RunRequest  # noqa: E402
from executor.policy import Rules, profile_name, sandbox_config  # noqa: E402
from executor.protocol import encode_request  # noqa: E402
from executor.sandbox import default_limits  # noqa: E402
from executor.uids import UidAllocator  # noqa: E402

ENGINE = "unix:///var/run/docker.sock"
API = "1.41"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(port: int, audit: Path, token: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "PROXY_UPSTREAM": ENGINE,
        "PROXY_AUDIT_LOG": str(audit),
        "EXECUTOR_PROXY_TOKEN": token,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "executor.proxy"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the proxy did not start")


class Target:
    """One way to reach the engine, as the worker does: the worker's Engine, whose docker-py
    client (for the API calls) and hijacked attach carry its credential when it has a token."""

    def __init__(self, name: str, base_url: str, token: str = "") -> None:
        self.name = name
        self.base_url = base_url
        settings = Settings.from_env({"DOCKER_HOST": base_url, "EXECUTOR_PROXY_TOKEN": token})
        self.engine = Engine(settings)
        self.identity = self.engine.identity  # executor.proxyauth.worker_identity
        self.api: Any = self.engine.api


def runner_request(code: str) -> bytes:
    """One request for the sandbox's runner, encoded as the worker encodes it."""
    settings = Settings()
    request = RunRequest(code=code, limits=default_limits(settings))
    return encode_request(request, languages(settings)["python"], 65536)


def has_result(stream: bytes) -> bool:
    """Whether the multiplexed attach output holds the runner's last frame (R)."""
    stdout = b""
    while len(stream) >= 8:
        size = int.from_bytes(stream[4:8], "big")
        if len(stream) < 8 + size:
            break
        if stream[0] == 1:
            stdout += stream[8 : 8 + size]
        stream = stream[8 + size :]
    while len(stdout) >= 5:
        size = int.from_bytes(stdout[1:5], "big")
        if stdout[:1] == b"R":
            return True
        stdout = stdout[5 + size :]
    return False


def one_round(target: Target, config: dict[str, Any]) -> dict[str, float]:
    """create, attach, start, deliver print(1), read the result, close stdin, wait, remove."""
    marks = {"start": time.perf_counter()}
    container = target.api.create_container_from_config(config)["Id"]
    marks["create"] = time.perf_counter()
    attached = target.engine.attach(container)  # exactly the worker's attach
    sock, output = attached.sock, attached.pending
    try:
        marks["attach"] = time.perf_counter()
        target.api.start(container)
        marks["started"] = time.perf_counter()
        sock.sendall(runner_request("print(1)"))
        while not has_result(output):
            chunk = sock.recv(65536)
            if not chunk:
                break
            output += chunk
        marks["result"] = time.perf_counter()
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    finally:
        sock.close()
    with contextlib.suppress(docker.errors.NotFound):  # exited and already auto-removed
        target.api.wait(container, timeout=30)
    marks["exited"] = time.perf_counter()
    try:
        target.api.remove_container(container, force=True)
    except docker.errors.APIError as e:
        if e.status_code not in (404, 409):  # AutoRemove got there first
            raise
    marks["removed"] = time.perf_counter()
    names = list(marks)
    steps = {b: (marks[b] - marks[a]) * 1000 for a, b in itertools.pairwise(names)}
    steps["total"] = (marks["removed"] - marks["start"]) * 1000
    return steps


def api_round(target: Target, config: dict[str, Any]) -> float:
    """The same calls without running anything: create, attach, remove (milliseconds)."""
    started = time.perf_counter()
    container = target.api.create_container_from_config(config)["Id"]
    target.engine.attach(container).sock.close()
    target.api.remove_container(container, force=True)
    return (time.perf_counter() - started) * 1000


def pings(target: Target, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        target.api.ping()
        times.append((time.perf_counter() - started) * 1000)
    return times


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--api-rounds", type=int, default=100)
    args = parser.parse_args()

    settings = Settings.from_env()
    rules = Rules.from_settings(settings)
    engine = docker.APIClient(base_url=ENGINE, version=API)
    try:
        engine.inspect_image(settings.python_image)
    except docker.errors.ImageNotFound:
        print(f"sandbox image {settings.python_image} is missing: build it first", file=sys.stderr)
        return 1
    uids = UidAllocator(*settings.sandbox_uids)
    language = rules.images[settings.python_image]

    def config(target: Target, uid: int) -> dict[str, Any]:
        return sandbox_config(
            image=settings.python_image,
            memory_mb=settings.default_memory_mb,
            cpus=settings.default_cpus,
            pids=rules.max_pids,
            tmpfs_mb=settings.tmpfs_mb,
            nofile=rules.nofile,
            runtime=settings.runtime,
            uid=uid,
            worker=target.identity,
            execution=str(uuid.uuid4()),
            profile=profile_name(language, settings.default_memory_mb, settings.default_cpus),
        )

    def run(target: Target, step: Any) -> Any:
        """One round of `step` with a uid of its own, held until the round has removed it."""
        uid = uids.acquire()
        try:
            return step(target, config(target, uid))
        finally:
            uids.release(uid)

    port = free_port()
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        proxy = start_proxy(port, Path(tmp) / "audit.jsonl", token)
        try:
            direct = Target("direct", ENGINE)
            proxied = Target("proxy", f"tcp://127.0.0.1:{port}", token)
            for target in (direct, proxied):  # warm up connections, caches, the page cache
                for _ in range(3):
                    run(target, one_round)
                pings(target, 50)
            results: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                for target in (direct, proxied):
                    results[target.name].append(run(target, one_round))
            api_times: dict[str, list[float]] = {"direct": [], "proxy": []}
            for _ in range(args.api_rounds):
                for target in (direct, proxied):
                    api_times[target.name].append(run(target, api_round))
            ping_times = {t.name: pings(t, args.pings) for t in (direct, proxied)}
        finally:
            proxy.terminate()
            proxy.wait(10)

    def column(name: str, step: str) -> list[float]:
        return [r[step] for r in results[name]]

    print(f"{args.rounds} rounds each, alternating; milliseconds")
    print(f"{'step':<10}{'direct p50':>12}{'proxy p50':>12}{'diff':>9}")
    steps: list[str] = list(results["direct"][0])
    for step in steps:
        d, q = statistics.median(column("direct", step)), statistics.median(column("proxy", step))
        print(f"{step:<10}{d:>12.2f}{q:>12.2f}{q - d:>9.2f}")
    d50, q50 = (
        statistics.median(column("direct", "total")),
        statistics.median(column("proxy", "total")),
    )
    d90, q90 = p(column("direct", "total"), 0.9), p(column("proxy", "total"), 0.9)
    print(
        f"execution p50: direct {d50:.2f} ms, proxy {q50:.2f} ms, "
        f"added {q50 - d50:+.2f} ms per execution (p90 {d90:.2f} vs {q90:.2f})"
    )
    da, qa = statistics.median(api_times["direct"]), statistics.median(api_times["proxy"])
    print(
        f"create+attach+remove p50 over {args.api_rounds} (nothing started): "
        f"direct {da:.2f} ms, proxy {qa:.2f} ms, added {qa - da:+.2f}"
    )
    dp, qp = statistics.median(ping_times["direct"]), statistics.median(ping_times["proxy"])
    print(
        f"ping p50 over {args.pings}: direct {dp:.3f} ms, proxy {qp:.3f} ms, added {qp - dp:+.3f}"
    )
    print(
        "added per execution from the steady parts (create+attach+remove, and start and wait "
        f"at a ping's cost each): {qa - da + 2 * (qp - dp):+.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
