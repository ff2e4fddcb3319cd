"""A private stack per fault test: its own redis-server, proxy, worker and API processes.

A fault test stops and starts these processes on purpose, so none of them is shared with the
rest of the suite: `FaultStack` starts a redis-server on a free port, a Docker security proxy,
one worker (`celery -A worker worker`) and the API (`gunicorn api:app`), each restartable on
the same address, and kills them all (and removes the stack's containers) in the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
import requests

from executor.policy import LABEL_WORKER
from executor.proxyauth import probe
from executor.store import Store
from tests.conftest import DOCKER_SOCKET, PROXY_TOKEN, ROOT, free_port, missing, sandboxes
from tests.service.conftest import Process, spawn, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A redis-server of the test's own, on a fixed port, that the test may stop and start."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logdir = logdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not os.path.exists(REDIS_SERVER):
            missing("no redis-server on this host")
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        # No persistence of its own; a snapshot saved by `restart(keep_data=True)` (SAVE) is
        # loaded at start, before the first client is served, as a persistent Redis does.
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.logdir)]
        with open(self.logdir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        wait_until("redis-server answering", self.answers, 20)

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL: it forgets everything, as a crashed Redis without disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def snapshot(self) -> None:
        """Save what Redis holds now: what `restore()` brings it back with."""
        client = redis.Redis.from_url(self.url, socket_timeout=30)
        try:
            client.save()
        finally:
            client.close()

    def restore(self, down_s: float) -> None:
        """Crash Redis and start it again from the last `snapshot()`: without every write
        since, as a Redis restored from an older snapshot or a replica that lagged."""
        self.stop()
        time.sleep(down_s)
        self.start()
        (self.logdir / "dump.rdb").unlink(missing_ok=True)

    def restart(self, down_s: float, keep_data: bool) -> None:
        """Crash Redis, keep it down for `down_s`, start it again: with its data (saved at the
        moment of the crash, loaded before it serves anyone) or empty."""
        dump = self.logdir / "dump.rdb"
        dump.unlink(missing_ok=True)
        if keep_data:
            self.snapshot()
        self.stop()
        time.sleep(down_s)
        self.start()
        dump.unlink(missing_ok=True)


class RedisRelay:
    """A TCP relay in front of a Redis that calls `on_match()` (and drops the connection)
    the first time a client sends a command matching `pattern`: a network fault at exactly
    that command. With `forward`, the command goes on after `on_match()` returns instead."""

    def __init__(
        self,
        target_port: int,
        pattern: bytes,
        on_match: Callable[[], None],
        forward: bool = False,
    ) -> None:
        self.target_port = target_port
        self.pattern = re.compile(pattern)
        self.on_match = on_match
        self.forward = forward
        self.fired = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream and not self.fired.is_set() and self.pattern.search(data):
                    self.fired.set()
                    self.on_match()
                    if not self.forward:
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


class FaultStack:
    """Redis, proxy, worker and API of one fault test; every process restartable in place."""

    def __init__(self, name: str, logdir: Path, upstream: str = DOCKER_SOCKET) -> None:
        self.name = name
        self.logdir = logdir
        self.upstream = upstream
        self.redis = RedisServer(logdir)
        self.proxy_port = free_port()
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.docker_host = f"tcp://127.0.0.1:{self.proxy_port}"
        self.proxy: Process | None = None
        self.worker: Process | None = None
        self.api_process: Process | None = None
        self.processes: list[Process] = []  # every process started, killed by stop()
        self._generation = 0

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis.url,
            "DOCKER_HOST": self.docker_host,
            "EXECUTOR_PROXY_TOKEN": PROXY_TOKEN,
            "HOSTNAME": self.name,
            "EXECUTOR_MONITOR_PORT": "0",
            "PROXY_METRICS_LISTEN": "",
            "PYTHONPATH": str(ROOT),
            **extra,
        }

    def _spawn(self, what: str, argv: list[str], env: dict[str, str]) -> Process:
        self._generation += 1
        process = spawn(f"{what}-{self._generation}", argv, env, self.logdir)
        self.processes.append(process)
        return process

    # -- the processes ---------------------------------------------------------------------

    def start_proxy(self) -> None:
        env = self.env(
            PROXY_LISTEN=f"127.0.0.1:{self.proxy_port}",
            PROXY_UPSTREAM=self.upstream,
            PROXY_AUDIT_LOG=str(self.logdir / "audit.jsonl"),
        )
        argv = [sys.executable, "-m", "executor.proxy"]
        self.proxy = self._spawn("proxy", argv, env)
        proxy = self.proxy

        def answers() -> bool:
            if proxy.popen.poll() is not None:
                raise AssertionError(f"the proxy exited:\n{proxy.output()[-3000:]}")
            try:
                probe(f"http://127.0.0.1:{self.proxy_port}")
            except OSError:
                return False
            return True

        wait_until("the proxy answering", answers, 60)

    def start_worker(self, redis_url: str = "", **env: str) -> None:
        """A worker (on `redis_url` if given, else the stack's Redis), once it beats."""
        environ = {
            **({"REDIS_URL": redis_url} if redis_url else {}),
            "EXECUTOR_POOL_SIZE": "1",
            "EXECUTOR_CONCURRENCY": "4",
            "EXECUTOR_REAP_INTERVAL": "2",
            **env,
        }
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker"]
        argv += ["-n", f"{self.name}@%h", "--loglevel=INFO"]
        self.worker = self._spawn("worker", argv, self.env(**environ))
        worker = self.worker

        def beating() -> bool:
            if worker.popen.poll() is not None:
                raise AssertionError(f"the worker exited:\n{worker.output()[-3000:]}")
            return any(w.get("instance") == self.name for w in self.live_workers())

        wait_until("the worker beating", beating, 120)

    def start_api(self, **env: str) -> None:
        argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.api_port}", "api:app"]
        environ = self.env(GUNICORN_WORKERS="1", **env)
        self.api_process = self._spawn("api", argv, environ)
        api = self.api_process

        def answers() -> bool:
            if api.popen.poll() is not None:
                raise AssertionError(f"the API exited:\n{api.output()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.api}/health", timeout=5).status_code == 200
            return False

        wait_until("the API healthy", answers, 120)

    def start(self, **worker_env: str) -> FaultStack:
        self.redis.start()
        self.start_proxy()
        self.start_worker(**worker_env)
        self.start_api()
        return self

    def live_workers(self) -> list[dict[str, Any]]:
        store = Store(self.redis.url, ttl_s=60, history_size=10)
        try:
            return store.live_workers()
        except Exception:  # Redis may be down on purpose
            return []
        finally:
            store.close()

    def logs(self) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logdir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(20)
        self.redis.stop()

    # -- talking to it ------------------------------------------------------------------------

    def post(self, path: str, body: Any, timeout: float = 120, **kw: Any) -> requests.Response:
        return requests.post(f"{self.api}{path}", json=body, timeout=timeout, **kw)

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.api}{path}", timeout=timeout)

    def final(self, execution_id: str, timeout: float = 120) -> dict[str, Any]:
        """The finished record of `execution_id` (polled until it is no longer 202)."""

        last: list[str] = []

        def finished() -> dict[str, Any] | None:
            with contextlib.suppress(requests.RequestException):
                answer = self.get(f"/executions/{execution_id}")
                last[:] = [f"{answer.status_code} {answer.text[:300]}"]
                if answer.status_code == 200:
                    return dict(answer.json())
            return None

        try:
            return dict(wait_until(f"execution {execution_id} finished", finished, timeout, 0.3))
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer: {last}\n{self.logs()}") from None


def stack_containers(raw_docker: docker.DockerClient, name: str) -> list[str]:
    """The sandboxes of the stack's worker(s), on the shared engine."""
    found = []
    for container in sandboxes(raw_docker):
        with contextlib.suppress(docker.errors.NotFound):
            labels = raw_docker.api.inspect_container(container)["Config"]["Labels"]
            if labels.get(LABEL_WORKER, "").startswith(f"{name}:"):
                found.append(container)
    return found


def remove_containers(client: docker.DockerClient, name: str) -> None:
    for container in stack_containers(client, name):
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(container, force=True)


StackFactory = Callable[..., FaultStack]


@pytest.fixture
def fault_stack(
    tmp_path: Path, raw_docker: docker.DockerClient
) -> Iterator[Callable[..., FaultStack]]:
    """fault_stack(upstream, start, **worker_env) -> a FaultStack (started unless start=False),
    killed and cleaned up after the test."""
    stacks: list[FaultStack] = []

    def make(upstream: str = DOCKER_SOCKET, start: bool = True, **worker_env: str) -> FaultStack:
        name = f"fault-{uuid.uuid4().hex[:8]}"
        logdir = tmp_path / name
        logdir.mkdir()
        stack = FaultStack(name, logdir, upstream)
        stacks.append(stack)
        return stack.start(**worker_env) if start else stack

    yield make
    for stack in stacks:
        stack.stop()
        remove_containers(raw_docker, stack.name)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def settle(seconds: float) -> None:
    time.sleep(seconds)


class PrivateEngine:
    """A Docker engine of the test's own (dockerd with its own data root, exec root and
    containerd, no bridge, no iptables), so that a test may crash and restart it without
    touching the shared engine. The Python sandbox image is copied in from the shared one."""

    DATA_ROOT = "/var/lib/docker-faults"  # kept between runs: the copied image stays
    EXEC_ROOT = "/run/docker-faults"
    SOCKET = "/run/docker-faults.sock"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.url = f"unix://{self.SOCKET}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            missing("a private Docker engine needs dockerd and root")
        if self.answers():
            pytest.fail(f"another engine already answers at {self.url}: stop it first")
        unshare = shutil.which("unshare")
        if unshare is None:
            missing("a private Docker engine needs unshare (util-linux)")
        argv = [
            # In a network namespace of its own: with --bridge none, dockerd deletes the host's
            # docker0 at start (moby's removeDefaultBridgeInterface), which the shared engine's
            # image builds need. `unshare` execs dockerd: the pid stays the engine's.
            str(unshare), "--net", "--",
            str(dockerd),
            "--data-root", self.DATA_ROOT,
            "--exec-root", self.EXEC_ROOT,
            "--pidfile", f"{self.EXEC_ROOT}.pid",
            "-H", self.url,
            "--bridge", "none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        with open(self.logdir / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        wait_until("the private engine answering", self.answers, 60, 0.2)

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.logdir / "dockerd.log").read_text(errors="replace")[-2000:]
            missing(f"the private dockerd exited ({self.process.returncode}): {log}")
        try:
            client = docker.DockerClient(base_url=self.url, timeout=5)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except Exception:  # not up yet
            return False
        finally:
            client.close()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=60)

    def load(self, image: str) -> None:
        """Copy `image` from the shared engine, unless this engine has the same one already
        (the same id: a tag rebuilt since, e.g. with another runner, is copied again)."""
        with contextlib.closing(docker.DockerClient(base_url=DOCKER_SOCKET, timeout=60)) as shared:
            wanted = shared.images.get(image).id
        with (
            contextlib.closing(self.client()) as client,
            contextlib.suppress(docker.errors.ImageNotFound),
        ):
            if client.images.get(image).id == wanted:
                return
        save = subprocess.Popen(
            ["docker", "-H", DOCKER_SOCKET, "save", image], stdout=subprocess.PIPE
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        loaded = subprocess.run(
            ["docker", "-H", self.url, "load"],
            stdin=save.stdout,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        save.wait(60)
        assert loaded.returncode == 0, loaded.stderr.decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop dockerd (SIGKILL: a crash, its containers and containerd left as they are)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@pytest.fixture
def private_engine(tmp_path: Path) -> Iterator[PrivateEngine]:
    engine = PrivateEngine(tmp_path)
    engine.start()
    try:
        engine.load(os.environ.get("EXECUTOR_PYTHON_IMAGE") or "executor-python:3.11")
        yield engine
    finally:
        with contextlib.suppress(Exception), contextlib.closing(engine.client()) as client:
            for container in client.api.containers(all=True):
                client.api.remove_container(container["Id"], force=True)
        engine.stop()
        # Its containerd and shims, if a crash left them behind (their command lines name its
        # exec root, which is this fixture's alone).
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError, ValueError):
                if PrivateEngine.EXEC_ROOT.encode() + b"/" in cmdline.read_bytes():
                    os.kill(int(cmdline.parent.name), signal.SIGTERM)
