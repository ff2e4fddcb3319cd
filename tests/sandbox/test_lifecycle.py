"""Hardening of every container, removal on every path, and the typed infrastructure errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest

from executor.config import Settings
from executor.engine import Engine
from executor.errors import DockerUnavailable, ImageUnavailable
from executor.models import RunRequest
from executor.policy import LABEL_EXECUTION, LABEL_SANDBOX, LABEL_WORKER, sandbox_config
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import DOCKER_SOCKET, ROOT, sandboxes, wait_gone

pytestmark = pytest.mark.docker
MIB = 1024 * 1024


def test_every_container_is_hardened(service, raw_docker, settings):
    language = service.languages["python"]
    container = service.sandbox.prepare(language, 128, 0.25, "11111111-1111-4111-8111-111111111111")
    try:
        attrs = raw_docker.api.inspect_container(container.id)
    finally:
        service.sandbox.destroy(container)
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["NetworkMode"] == "none" and config["NetworkDisabled"] is True
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=100m,mode=1777"}
    assert host["Memory"] == 128 * MIB and host["MemorySwap"] == 128 * MIB
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 64
    expected = sandbox_config(
        image=language.image,
        memory_mb=128,
        cpus=0.25,
        pids=64,
        tmpfs_mb=100,
        nofile=256,
        runtime="",
        uid=container.uid,
        worker=service.sandbox.owner,
        execution="",
        profile="",
    )
    assert host["SecurityOpt"] == expected["HostConfig"]["SecurityOpt"]
    assert host["SecurityOpt"][0] == "no-new-privileges"
    assert host["CapDrop"] == ["ALL"]
    assert host["Privileged"] is False
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]} == {
        "nofile": (256, 256),
        "core": (0, 0),
    }
    assert not host["Init"]  # the runner is PID 1
    assert host["LogConfig"]["Type"] == "none"
    assert not host["Binds"] and not attrs["Mounts"] and not host.get("VolumesFrom")
    assert not host.get("Devices") and host["PidMode"] == "" and host["IpcMode"] == "private"
    # The runner starts as root with three capabilities; the program runs as the sandbox's uid.
    first, last = settings.sandbox_uids
    assert config["User"] == "0:0" and host["CapAdd"] == ["CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    assert config["Cmd"] == [str(container.uid)] and first <= container.uid <= last
    labels = config["Labels"]
    assert labels[LABEL_SANDBOX] == "1"
    assert labels[LABEL_EXECUTION] == "11111111-1111-4111-8111-111111111111"
    assert labels[LABEL_WORKER] == service.sandbox.owner
    assert config["Entrypoint"] == ["python3", "/opt/executor/runner.pyc"]


def test_exception_in_our_own_code_still_removes_the_container(settings, raw_docker, monkeypatch):
    svc = ExecutionService(settings)
    try:

        def broken(container, request, cancel=None, output=None):
            raise RuntimeError("a bug of ours")

        monkeypatch.setattr(svc.sandbox, "execute", broken)
        request = RunRequest(code="print(1)", limits=default_limits(settings))
        with pytest.raises(RuntimeError, match="a bug of ours"):
            svc.run(request, "22222222-2222-4222-8222-222222222222")
        assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []
    finally:
        svc.stop()


def test_killed_worker_leaves_no_container(settings, raw_docker):
    script = textwrap.dedent(
        f"""
        from executor.config import Settings
        from executor.models import RunRequest
        from executor.sandbox import default_limits
        from executor.service import ExecutionService
        s = Settings.from_env({{"DOCKER_HOST": {settings.docker_host!r}, "HOSTNAME": "killed-worker",
                               "EXECUTOR_PROXY_TOKEN": {settings.proxy_token!r},
                               "EXECUTOR_PYTHON_IMAGE": {settings.python_image!r}}})
        svc = ExecutionService(s)
        svc.run(RunRequest(code="import time\\ntime.sleep(60)", limits=default_limits(s)), "x")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        mine: list[str] = []
        while not mine and time.monotonic() < deadline:
            # The low-level listing: no inspect of each container (the engine is shared, and
            # others' sandboxes come and go meanwhile).
            mine = [
                c["Id"]
                for c in raw_docker.api.containers(filters={"label": f"{LABEL_SANDBOX}=1"})
                if c["Labels"].get(LABEL_WORKER, "").startswith(f"killed-worker:{proc.pid}:")
            ]
            time.sleep(0.1)
        assert mine, "the worker never started its container"
        time.sleep(0.5)  # the program is running now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        began = time.monotonic()
        while time.monotonic() - began < 15 and any(cid in sandboxes(raw_docker) for cid in mine):
            time.sleep(0.1)
        assert not any(cid in sandboxes(raw_docker) for cid in mine)
        assert time.monotonic() - began < 10  # well before the program's 60 s would end
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unreachable_docker_is_a_typed_error_naming_the_address():
    engine = Engine(
        Settings.from_env({"DOCKER_HOST": "tcp://127.0.0.1:9", "EXECUTOR_DOCKER_TIMEOUT": "2"})
    )
    with pytest.raises(DockerUnavailable, match=r"tcp://127\.0\.0\.1:9"):
        engine.ping()
    svc = ExecutionService(
        Settings.from_env({"DOCKER_HOST": "tcp://127.0.0.1:9", "EXECUTOR_DOCKER_TIMEOUT": "2"})
    )
    request = RunRequest(code="print(1)", limits=default_limits(svc.settings))
    with pytest.raises(DockerUnavailable) as caught:
        svc.run(request, "x")
    assert type(caught.value)(str(caught.value)).message == caught.value.message  # rebuilds
    assert "docker" not in type(caught.value).__module__.split(".")[0]


def test_missing_image_is_pulled_once_then_a_typed_error_naming_it(raw_docker):
    # Straight on the engine's socket: the proxy would (rightly) refuse a non-sandbox image.
    settings = replace(
        Settings.from_env({"DOCKER_HOST": DOCKER_SOCKET}), python_image="executor-missing:0"
    )
    engine = Engine(settings)
    with pytest.raises(ImageUnavailable, match="executor-missing:0"):
        engine.image_id("executor-missing:0")


def test_present_image_is_identified_by_digest(service):
    image_id = service.engine.image_id(service.settings.python_image)
    assert image_id.startswith("sha256:") and len(image_id) == 71
