"""Shared fixtures: the real services the tests run against.

Tests talk to a real Docker engine, real Redis and real processes of ours. `make test` starts
the engine and Redis; a missing service fails the run when CI=true and skips elsewhere.
The Docker security proxy is started here, once per session, and every Docker call of the
service under test goes through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

from executor.config import Settings
from executor.languages import REGISTRY
from executor.policy import SANDBOX_LABEL_FILTER

ROOT = Path(__file__).resolve().parent.parent
DOCKER_SOCKET = os.environ.get("EXECUTOR_TEST_DOCKER_SOCKET", "unix:///var/run/docker.sock")
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The secret the session's proxy and every worker of the tests share (see executor.proxyauth).
# Every process the tests start (workers, APIs) reads it from the environment, as in production.
# (setdefault: this module may be imported twice, as conftest and as tests.conftest.)
PROXY_TOKEN = os.environ.setdefault("EXECUTOR_PROXY_TOKEN", secrets.token_urlsafe(24))
# The operator-approved example image (built by `make images`), for the session's proxy, workers
# and APIs alike, as an operator would set it for all of them (the branch's own, see below).
APPROVED_IMAGE = f"executor-python-data:{os.environ.get('EXECUTOR_TEST_IMAGE_TAG') or '3.11'}"
# An approved image no engine has (a worker with it as a language's image does not serve it).
MISSING_IMAGE = "executor-python:absent"
# A branch's own language images, built beside the shared ones with
# `IMAGE_TAG=<tag> scripts/build-images.sh languages`: with EXECUTOR_TEST_IMAGE_TAG=<tag> the
# tests that run other languages name them (`language_image`), approved as an operator would.
TEST_IMAGE_TAG = os.environ.get("EXECUTOR_TEST_IMAGE_TAG", "")
_TAGGED = "".join(
    f",{lang.name}={lang.image.partition(':')[0]}:{TEST_IMAGE_TAG}"
    for lang in REGISTRY
    if TEST_IMAGE_TAG and lang.name != "python"
)
os.environ.setdefault("EXECUTOR_IMAGES", f"python={APPROVED_IMAGE},python={MISSING_IMAGE}{_TAGGED}")
UNAPPROVED_IMAGE = "executor-python:unapproved"  # never in any allowlist


def language_image(language: str) -> str | None:
    """The image a test names for `language`: the branch's own (EXECUTOR_TEST_IMAGE_TAG), or
    None for the language's default."""
    if not TEST_IMAGE_TAG or language == "python":
        return None
    image = next(lang.image for lang in REGISTRY if lang.name == language)
    return f"{image.partition(':')[0]}:{TEST_IMAGE_TAG}"


def missing(what: str) -> None:
    """A service the tests need is not there: fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service fails the run)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


@pytest.fixture(scope="session")
def raw_docker() -> Iterator[docker.DockerClient]:
    """A client on the engine's own socket, for the tests' inspection only."""
    client = docker.DockerClient(base_url=DOCKER_SOCKET, timeout=60)
    try:
        client.ping()
    except Exception as e:
        missing(f"no Docker engine answers at {DOCKER_SOCKET}: {e}")
    yield client
    client.close()


@contextlib.contextmanager
def proxy_process(upstream: str, audit: Path, **env: str) -> Iterator[str]:
    """A Docker security proxy process in front of `upstream`, as `make up` starts it.

    Yields its http://127.0.0.1:port once it listens (the upstream may be down on purpose).
    """
    port = free_port()
    environ = {
        **os.environ,
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "PROXY_UPSTREAM": upstream,
        "PROXY_AUDIT_LOG": str(audit),
        "EXECUTOR_PROXY_TOKEN": PROXY_TOKEN,
        # No metrics port unless the test asks for one (PROXY_METRICS_LISTEN=127.0.0.1:port):
        # the default port is one for the whole host.
        "PROXY_METRICS_LISTEN": "",
        **env,
    }
    with open(audit.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "executor.proxy"], env=environ, cwd=ROOT, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the proxy exited with {proc.returncode}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the proxy did not listen on {port}") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, raw_docker: docker.DockerClient
) -> Iterator[dict[str, str]]:
    """The Docker security proxy, started as its own process:
    {"url", "docker_host", "audit", "metrics" (the URL of its /metrics)}."""
    audit = tmp_path_factory.mktemp("proxy") / "audit.jsonl"
    scrape = f"127.0.0.1:{free_port()}"
    with proxy_process(DOCKER_SOCKET, audit, PROXY_METRICS_LISTEN=scrape) as url:
        yield {
            "url": url,
            "docker_host": url.replace("http://", "tcp://"),
            "audit": str(audit),
            "metrics": f"http://{scrape}/metrics",
        }


@pytest.fixture(scope="session")
def docker_host(proxy: dict[str, str]) -> str:
    """The DOCKER_HOST the service under test uses: always the proxy."""
    return proxy["docker_host"]


@pytest.fixture(scope="session")
def settings(docker_host: str) -> Settings:
    """Test settings: the defaults, Docker through the proxy, a test instance name."""
    base = Settings.from_env(
        {
            "REDIS_URL": REDIS_URL,
            "DOCKER_HOST": docker_host,
            "HOSTNAME": "pytest",
            "EXECUTOR_PROXY_TOKEN": PROXY_TOKEN,
            # The image under test (the proxy, started with this environment, allows it).
            "EXECUTOR_PYTHON_IMAGE": os.environ.get("EXECUTOR_PYTHON_IMAGE", ""),
            # The approved images, as the session's proxy and workers have them.
            "EXECUTOR_IMAGES": os.environ["EXECUTOR_IMAGES"],
        }
    )
    # EXECUTOR_TEST_RUNTIME=runsc runs the sandbox tests under gVisor (`make test` does, for
    # the hostile suites, when the engine has runsc).
    # A build is kept on first sight here (EXECUTOR_BUILD_CACHE_ADMIT=1): tests of the cache
    # see a hit on the second identical request; the default (2) has tests of its own.
    return replace(
        base,
        pool_size=0,
        runtime=os.environ.get("EXECUTOR_TEST_RUNTIME", ""),
        build_cache_admit=1,
    )


def sandboxes(raw_docker: docker.DockerClient, **labels: str) -> list[str]:
    """Ids of containers (running or not) that carry our sandbox label (and `labels`)."""
    wanted = [SANDBOX_LABEL_FILTER, *(f"{k}={v}" for k, v in labels.items())]
    return [c["Id"] for c in raw_docker.api.containers(all=True, filters={"label": wanted})]


def wait_gone(raw_docker: docker.DockerClient, timeout: float = 60, **labels: str) -> list[str]:
    """Wait until no sandbox with `labels` is left; return what is still there after timeout
    (generous: under gVisor on a loaded host, a fork bomb's sandbox took over 15 s to go)."""
    deadline = time.monotonic() + timeout
    left = sandboxes(raw_docker, **labels)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = sandboxes(raw_docker, **labels)
    return left
