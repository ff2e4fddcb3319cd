"""Starts a private stack for a benchmark: the proxy, one worker and the API, on free ports."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def wait_proxy(url: str, token: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until the proxy answers an authenticated ping."""
    from executor.proxyauth import probe

    # probe() reads the secret from the environment: lend it this stack's, and give the
    # caller's back (a test process that runs a bench stack keeps its own proxy's secret).
    before = os.environ.get("EXECUTOR_PROXY_TOKEN")
    os.environ["EXECUTOR_PROXY_TOKEN"] = token
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            try:
                probe(url)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the proxy at {url} did not answer within {timeout:.0f}s")
    finally:
        if before is None:
            os.environ.pop("EXECUTOR_PROXY_TOKEN", None)
        else:
            os.environ["EXECUTOR_PROXY_TOKEN"] = before


@dataclass
class Stack:
    api: str
    docker_host: str
    redis_url: str
    logs: Path
    proxy_token: str
    pids: dict[str, int] = field(default_factory=dict)  # proxy, worker, api: the main pids


@contextlib.contextmanager
def running_stack(
    redis_url: str,
    upstream: str,
    pool_size: int,
    concurrency: int,
    root: Path = ROOT,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Proxy + worker + gunicorn API, torn down on exit; logs in a temporary folder.

    `root` is the checkout whose code runs (another one compares a baseline side by side).
    """
    logs = Path(tempfile.mkdtemp(prefix="executor-bench-"))
    token = secrets.token_urlsafe(24)  # the secret this stack's proxy and clients share
    proxy_port, api_port = free_port(), free_port()
    docker_host = f"tcp://127.0.0.1:{proxy_port}"
    env = {
        **os.environ,
        "EXECUTOR_PROXY_TOKEN": token,
        "PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
        "PROXY_UPSTREAM": upstream,
        "PROXY_AUDIT_LOG": str(logs / "audit.jsonl"),
        "DOCKER_HOST": docker_host,
        "REDIS_URL": redis_url,
        "PORT": str(api_port),
        "HOSTNAME": "bench",
        "EXECUTOR_POOL_SIZE": str(pool_size),
        "EXECUTOR_CONCURRENCY": str(concurrency),
        "EXECUTOR_LOG_LEVEL": "WARNING",
        # Beside a `make up` stack: no second metrics port or worker endpoint on the defaults.
        "PROXY_METRICS_LISTEN": "",
        "EXECUTOR_MONITOR_PORT": "0",
        "PYTHONPATH": str(root),
        **(extra_env or {}),
    }
    commands = {
        "proxy": [sys.executable, "-m", "executor.proxy"],
        "worker": [str(VENV_BIN / "celery"), "-A", "worker", "worker", "--loglevel=WARNING"],
        "api": [str(VENV_BIN / "gunicorn"), "-b", f"127.0.0.1:{api_port}", "api:app"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            with open(logs / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=log))
            if name == "proxy":
                wait_proxy(f"http://127.0.0.1:{proxy_port}", token, 30, procs)
        wait_http(f"http://127.0.0.1:{api_port}/health", 120, procs)
        pids = {name: proc.pid for name, proc in zip(commands, procs, strict=True)}
        yield Stack(f"http://127.0.0.1:{api_port}", docker_host, redis_url, logs, token, pids)
    finally:
        # One after the other, the proxy last: the worker's warm shutdown removes its pool
        # through the proxy.
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
