"""The sandbox policy, without Docker: what it builds, and what it refuses."""

from __future__ import annotations

import copy
import json

import pytest

from executor.config import Settings
from executor.policy import Rules, check_create, sandbox_config

RULES = Rules.from_settings(Settings())


def body(**overrides: object) -> dict:
    args = dict(
        image="executor-python:3.11",
        memory_mb=512,
        cpus=0.5,
        pids=64,
        tmpfs_mb=100,
        nofile=256,
        runtime="",
        worker="w:1:ab",
        execution="",
        profile="python-512m-0.5cpu",
    )
    args.update(overrides)
    return sandbox_config(**args)  # type: ignore[arg-type]


def test_what_the_sandbox_builds_is_accepted():
    assert check_create(body(), RULES) == []
    assert check_create(body(memory_mb=16, cpus=0.05, pids=8, tmpfs_mb=1), RULES) == []
    assert check_create(body(runtime="runsc"), RULES) == []


def test_a_json_round_trip_is_accepted():
    assert check_create(json.loads(json.dumps(body())), RULES) == []


def with_change(path: str, value: object) -> dict:
    b = copy.deepcopy(body())
    *parents, last = path.split(".")
    node = b
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return b


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("HostConfig.Privileged", True),
        ("HostConfig.privileged", True),
        ("HostConfig.CapAdd", ["SYS_ADMIN"]),
        ("HostConfig.CapDrop", KeyError),
        ("HostConfig.NetworkMode", "host"),
        ("HostConfig.NetworkMode", "bridge"),
        ("HostConfig.PidMode", "host"),
        ("HostConfig.IpcMode", "host"),
        ("HostConfig.UTSMode", "host"),
        ("HostConfig.UsernsMode", "host"),
        ("HostConfig.CgroupnsMode", "host"),
        ("HostConfig.Binds", ["/:/host"]),
        ("HostConfig.Mounts", [{"Type": "bind", "Source": "/", "Target": "/host"}]),
        ("HostConfig.VolumesFrom", ["other"]),
        ("HostConfig.Devices", [{"PathOnHost": "/dev/sda"}]),
        ("HostConfig.DeviceRequests", [{"Count": -1}]),
        ("HostConfig.DeviceCgroupRules", ["a *:* rwm"]),
        ("HostConfig.SecurityOpt", ["seccomp=unconfined", "no-new-privileges"]),
        ("HostConfig.SecurityOpt", ["apparmor=unconfined", "no-new-privileges"]),
        ("HostConfig.SecurityOpt", []),
        ("HostConfig.Runtime", "crun"),
        ("HostConfig.Memory", 0),
        ("HostConfig.Memory", 4096 * 1024 * 1024),
        ("HostConfig.MemorySwap", -1),
        ("HostConfig.PidsLimit", 0),
        ("HostConfig.PidsLimit", -1),
        ("HostConfig.PidsLimit", KeyError),
        ("HostConfig.NanoCpus", 4_000_000_000),
        ("HostConfig.LogConfig", {"Type": "json-file", "Config": {}}),
        ("HostConfig.RestartPolicy", {"Name": "always"}),
        ("HostConfig.Sysctls", {"kernel.shm_rmid_forced": "1"}),
        ("HostConfig.ReadonlyRootfs", False),
        ("HostConfig.Tmpfs", {"/tmp": "rw,exec,size=100000m"}),
        ("HostConfig.Init", False),
        ("HostConfig.AutoRemove", "true"),
        ("User", "root"),
        ("User", "0"),
        ("User", ""),
        ("WorkingDir", "/"),
        ("Entrypoint", ["sh", "-c", "id"]),
        ("Image", "alpine:latest"),
        ("NetworkDisabled", False),
        ("Labels", {"other": "1"}),
        ("Tty", True),
        ("Env", ["LD_PRELOAD=/tmp/x.so"]),
    ],
)
def test_anything_that_loosens_the_sandbox_is_refused(path, value):
    assert check_create(with_change(path, value), RULES) != []


def test_non_object_and_wrong_types_are_refused():
    assert check_create([], RULES) == ["the body is not a JSON object"]
    assert check_create(with_change("HostConfig.Memory", "512m"), RULES)
    assert check_create(with_change("HostConfig.PidsLimit", True), RULES)
    assert check_create(with_change("HostConfig", None), RULES)
