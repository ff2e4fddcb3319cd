"""The service's own processes, for end-to-end tests: real workers, a real API, real Redis.

Every worker is `celery -A worker worker` as the contract starts it, with Docker through the
session's security proxy; the main API is `gunicorn api:app` from the repository root (so it
reads gunicorn.conf.py). Variants of the API (another Redis, a dead Docker, no grace) run
in-process on a real socket. Each scenario gets a Redis database of its own, flushed first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
import redis
import requests
from flask import Flask
from werkzeug.serving import make_server

from executor.config import Settings
from executor.policy import LABEL_EXECUTION
from executor.store import Store
from executor.web import create_app
from tests.conftest import (
    PROXY_TOKEN,
    REDIS_URL,
    ROOT,
    free_port,
    missing,
    sandboxes,
    wait_http,
)

# Redis databases of the tests (each test module that starts processes flushes its own; two
# modules on one database break each other's workers and records):
#   15 the main stack (MAIN_DB)      14 test_queueing         13 test_dependencies_down
#   12, 11 test_worker_faults         10 test_store, test_rescue  2, 1 test_monitor
#    9 test_runtime                   8 the one-slot stack (ONE_SLOT_DB)
#    7 test_live_output               6 test_flower            5 test_history
#    4 test_api_keys                  3 test_logs
MAIN_DB = 15


def redis_url(db: int) -> str:
    parts = urlsplit(REDIS_URL)
    return parts._replace(path=f"/{db}").geturl()


def dead_port() -> int:
    """A local port nothing listens on."""
    return free_port()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (gunicorn's and celery's children too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 20) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(10)


def spawn(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Process:
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    return Process(name, popen, log)


def flushed(db: int) -> str:
    url = redis_url(db)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.ConnectionError as e:
        missing(f"no Redis answers at {url}: {e}")
    finally:
        client.close()
    return url


def wait_until(what: str, probe: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what} did not happen within {timeout}s")


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


WorkerFactory = Callable[..., Process]


@pytest.fixture(scope="session")
def start_worker(logdir: Path) -> Iterator[WorkerFactory]:
    """start_worker(name, redis_url, docker_host, **env): a worker that is beating."""
    started: list[Process] = []

    def start(name: str, url: str, docker_host: str, **env: str) -> Process:
        environ = {
            "REDIS_URL": url,
            "DOCKER_HOST": docker_host,
            "HOSTNAME": name,
            "EXECUTOR_POOL_SIZE": "1",
            "EXECUTOR_CONCURRENCY": "4",
            "EXECUTOR_MONITOR_PORT": "0",  # several workers on one host: a test asks for one
            **env,
        }
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", f"{name}@%h"]
        process = spawn(f"worker-{name}", [*argv, "--loglevel=INFO"], environ, logdir)
        started.append(process)
        store = Store(url, ttl_s=60, history_size=10)
        try:

            def beating() -> bool:
                if process.popen.poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{process.output()[-3000:]}")
                return any(w.get("instance") == name for w in store.live_workers())

            wait_until(f"worker {name} beating", beating, 60)
        finally:
            store.close()
        return process

    yield start
    for process in started:
        process.stop()


ONE_SLOT_DB = 8
ONE_SLOT_WORKER = "pytest-one-slot"


@pytest.fixture(scope="session")
def one_slot(start_worker: WorkerFactory, docker_host: str) -> str:
    """The Redis URL of a worker with one slot and no warm pool: a long program holds the slot
    (the next execution stays queued), and every container carries its execution's label."""
    url = flushed(ONE_SLOT_DB)
    start_worker(
        ONE_SLOT_WORKER, url, docker_host, EXECUTOR_CONCURRENCY="1", EXECUTOR_POOL_SIZE="0"
    )
    return url


@pytest.fixture(scope="session")
def main_redis() -> str:
    return flushed(MAIN_DB)


@pytest.fixture(scope="session")
def main_worker(start_worker: WorkerFactory, main_redis: str, docker_host: str) -> Process:
    return start_worker("pytest-worker", main_redis, docker_host)


@pytest.fixture(scope="session")
def api(main_worker: Process, main_redis: str, docker_host: str, logdir: Path) -> Iterator[str]:
    """The main API, started as the contract says: gunicorn api:app (gunicorn.conf.py)."""
    port = free_port()
    env = {"REDIS_URL": main_redis, "DOCKER_HOST": docker_host, "HOSTNAME": "pytest-api"}
    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "api:app"]
    process = spawn("api", argv, {**env, "GUNICORN_THREADS": "32"}, logdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 60, process.popen)
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def main_logs(logdir: Path) -> Callable[[], str]:
    """Everything the main worker and API have logged so far."""
    return lambda: "".join(p.read_text(errors="replace") for p in logdir.glob("*.log"))


@pytest.fixture(scope="session")
def base_settings(docker_host: str) -> Settings:
    return Settings.from_env(
        {
            "DOCKER_HOST": docker_host,
            "HOSTNAME": "pytest-inproc",
            "EXECUTOR_PROXY_TOKEN": PROXY_TOKEN,
        }
    )


AppFactory = Callable[..., str]


@pytest.fixture
def serve_app() -> Iterator[AppFactory]:
    """serve_app(settings) -> base URL of create_app(settings), on a real socket in-process."""
    servers: list[tuple[Any, threading.Thread, Flask]] = []

    def serve(settings: Settings, **overrides: Any) -> str:
        app = create_app(replace(settings, **overrides))
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread, app))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread, app in servers:
        server.shutdown()
        thread.join(5)
        app.extensions["executor"].streams.close()
        app.extensions["executor"].store.close()


def post(url: str, body: Any, timeout: float = 120) -> requests.Response:
    return requests.post(url, json=body, timeout=timeout)


def get(api: str, execution_id: str) -> requests.Response:
    return requests.get(f"{api}/executions/{execution_id}", timeout=10)


def delete(api: str, execution_id: str) -> requests.Response:
    return requests.delete(f"{api}/executions/{execution_id}", timeout=30)


def finished(api: str, execution_id: str, timeout: float = 90) -> dict[str, Any]:
    """The result of `execution_id`, once it has one."""
    response = wait_until(
        f"{execution_id} finishing",
        lambda: (r := get(api, execution_id)).status_code == 200 and r,
        timeout,
    )
    return dict(response.json())


def sleeping(raw_docker: docker.DockerClient, execution_id: str, command: str) -> bool:
    """Whether the execution's program runs `command` now (in its labelled container): what it
    did before, it has done. Needs a worker without a warm pool (see `one_slot`)."""
    for container in sandboxes(raw_docker, **{LABEL_EXECUTION: execution_id}):
        try:
            processes = raw_docker.api.top(container)["Processes"] or []
        except docker.errors.APIError:
            continue
        if any(command in " ".join(row) for row in processes):
            return True
    return False
