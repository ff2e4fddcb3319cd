"""The stack as containers: docker-compose.yml brought up on this machine's engine, proven, and
brought down leaving nothing of its project behind.

The service image is built as an operator builds it (scripts/build-images.sh wheelhouse
service, what `make service-image` runs); where the engine cannot pull redis:7-alpine, Redis is
built from Debian's package through deploy/compose/redis-debian.yml. The project has a unique
name and free host ports, so it never meets another stack on the shared engine; its sandboxes
are made through its own proxy and carry its worker's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from executor.policy import LABEL_WORKER, SANDBOX_LABEL_FILTER
from tests.conftest import ROOT, free_port, missing

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.docker]

SERVICE_IMAGE = os.environ.get("EXECUTOR_TEST_SERVICE_IMAGE", "executor-service:compose-test")
PROJECT_LABEL = "com.docker.compose.project"
SOCKET = "/var/run/docker.sock"


def compose_tool() -> list[str]:
    """The compose command, installed through scripts/host-setup.sh when it is missing."""
    for argv in (["docker-compose"], ["docker", "compose"]):
        if (
            shutil.which(argv[0])
            and subprocess.run([*argv, "version"], capture_output=True, check=False).returncode == 0
        ):
            return argv
    setup = subprocess.run(
        ["bash", "scripts/host-setup.sh", "packages"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing(f"no compose tool, and scripts/host-setup.sh could not install it:\n{setup.stderr}")
    raise AssertionError  # unreachable: missing() fails or skips


def run(argv: list[str], env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )
    return done.stdout


def redis_pullable(client: docker.DockerClient) -> bool:
    try:
        client.images.get("redis:7-alpine")
        return True
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull("redis", tag="7-alpine")
        return True
    except docker.errors.APIError:
        return False


def project_leftovers(client: docker.DockerClient, project: str) -> dict[str, list[str]]:
    label = {"label": f"{PROJECT_LABEL}={project}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=label)],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
    }


def sandboxes_of(client: docker.DockerClient, worker: str) -> list[str]:
    """Ids of the sandboxes made by the stack's worker (its proxy identity starts with its
    hostname). One listing, no inspection: other engineers' sandboxes come and go meanwhile."""
    found = client.api.containers(all=True, filters={"label": SANDBOX_LABEL_FILTER})
    return [
        c["Id"] for c in found if (c.get("Labels") or {}).get(LABEL_WORKER, "").startswith(worker)
    ]


@pytest.fixture
def stack(raw_docker: docker.DockerClient, tmp_path: Path) -> Iterator[dict[str, Any]]:
    tool = compose_tool()
    project = f"executor-test-{secrets.token_hex(4)}"
    worker_host = f"{project}-worker"
    env = {
        "SERVICE_IMAGE": SERVICE_IMAGE,
        "PORT": str(free_port()),
        "REDIS_PORT": str(free_port()),
        "DOCKER_HOST": "unix://" + SOCKET,
        "COMPOSE_PROJECT_NAME": project,
    }
    run(["bash", "scripts/build-images.sh", "wheelhouse", "service"], env)
    files = ["-f", "docker-compose.yml"]
    debian_redis = not redis_pullable(raw_docker)
    if debian_redis:
        files += ["-f", "deploy/compose/redis-debian.yml"]
    # The test's own settings: a small pool, and a worker name to find its sandboxes by.
    override = tmp_path / "test-override.yml"
    override.write_text(
        json.dumps(
            {
                "services": {
                    "worker": {
                        "hostname": worker_host,
                        "environment": {"EXECUTOR_POOL_SIZE": "1", "EXECUTOR_CONCURRENCY": "2"},
                    }
                }
            }
        )
    )
    compose = [*tool, "-p", project, *files, "-f", str(override)]
    try:
        if debian_redis:
            run([*compose, "build", "redis"], env)
        run([*compose, "up", "-d", "--no-build"], env, timeout=600)
        yield {
            "project": project,
            "compose": compose,
            "env": env,
            "api": f"http://127.0.0.1:{env['PORT']}",
            "worker_host": worker_host,
            "log": tmp_path / "compose.log",
        }
    finally:
        subprocess.run([*compose, "down", "--volumes", "--remove-orphans", "--timeout", "30"],
                       cwd=ROOT, env={**os.environ, **env}, capture_output=True, check=False,
                       timeout=300)  # fmt: skip
        for container_id in sandboxes_of(raw_docker, worker_host):  # ours, should the test fail
            with contextlib.suppress(docker.errors.NotFound):
                raw_docker.api.remove_container(container_id, force=True)


def wait_healthy(url: str, timeout: float) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            reply = requests.get(f"{url}/health", timeout=5)
            if reply.status_code == 200:
                return dict(reply.json())
            last = reply.text
        except requests.RequestException as e:
            last = str(e)
        time.sleep(1)
    raise AssertionError(f"the stack's API did not become healthy in {timeout}s: {last}")


def test_the_compose_stack_runs_an_execution_with_docker_only_behind_its_proxy(
    stack: dict[str, Any], raw_docker: docker.DockerClient
):
    project, api = stack["project"], stack["api"]
    wait_healthy(api, 300)
    reply = requests.post(
        f"{api}/execute", json={"language": "python", "code": "print(6 * 7)"}, timeout=180
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "success" and reply.json()["stdout"] == "42\n"

    containers = {
        c.labels["com.docker.compose.service"]: c
        for c in raw_docker.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"})
    }
    assert set(containers) == {"redis", "docker-proxy", "worker", "api"}
    # Only the proxy mounts the engine's socket.
    mounting = {
        name
        for name, c in containers.items()
        if any(
            m.get("Source") == SOCKET or m.get("Destination") == SOCKET for m in c.attrs["Mounts"]
        )
    }
    assert mounting == {"docker-proxy"}
    # The worker reaches Docker only through the proxy: no socket inside, DOCKER_HOST the proxy,
    # on the internal network only, and the proxy's audit log holds its creates.
    worker = containers["worker"]
    assert worker.exec_run(["test", "-e", SOCKET]).exit_code != 0
    assert "DOCKER_HOST=tcp://docker-proxy:2375" in worker.attrs["Config"]["Env"]
    assert list(worker.attrs["NetworkSettings"]["Networks"]) == [f"{project}_internal"]
    audit = [
        json.loads(line)
        for line in containers["docker-proxy"].logs(stdout=False, stderr=True).decode().splitlines()
        if line.startswith("{") and '"decision"' in line
    ]
    creates = [a for a in audit if a["path"].endswith("/containers/create")]
    assert creates and all(a["decision"] == "allowed" for a in creates)
    assert all(a["identity"].startswith(stack["worker_host"]) for a in creates), creates
    # The sandboxes it made carry the worker's name (how the cleanup below finds them).
    assert sandboxes_of(raw_docker, stack["worker_host"])

    # The service image logs JSON lines (EXECUTOR_LOG_FORMAT=json), the execution's id on its own.
    logs = run(
        [*stack["compose"], "logs", "--no-color", "api", "worker", "docker-proxy"], stack["env"]
    )
    stack["log"].write_text(logs)
    lines = [line.partition("| ")[2] for line in logs.splitlines() if "| " in line]
    parsed = [json.loads(line) for line in lines if line.strip()]
    execution_id = reply.json()["id"]
    assert any(p.get("execution_id") == execution_id for p in parsed), logs[-3000:]

    run([*stack["compose"], "down", "--volumes", "--remove-orphans"], stack["env"], timeout=300)
    assert project_leftovers(raw_docker, project) == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }
    deadline = time.monotonic() + 60
    while sandboxes_of(raw_docker, stack["worker_host"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert sandboxes_of(raw_docker, stack["worker_host"]) == []
