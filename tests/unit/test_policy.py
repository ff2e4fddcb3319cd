"""The sandbox policy, without Docker: what it builds, and what it refuses."""

from __future__ import annotations

import copy
import json

import pytest

from executor.config import Settings
from executor.policy import (
    RUNSC_TASKS_BASE,
    RUNSC_TASKS_PER_PROCESS,
    Rules,
    check_create,
    profile_name,
    sandbox_config,
)

RULES = Rules.from_settings(Settings())
CLIENT = "w:1:0123abcd"  # the authenticated worker that sends the create


def body(**overrides: object) -> dict:
    args = dict(
        image="executor-python:3.11",
        memory_mb=512,
        cpus=0.5,
        pids=64,
        tmpfs_mb=100,
        nofile=256,
        runtime="",
        uid=200000,
        worker=CLIENT,
        execution="",
    )
    args.update(overrides)
    args.setdefault("profile", profile_name("python", args["memory_mb"], args["cpus"]))  # type: ignore[arg-type]
    return sandbox_config(**args)  # type: ignore[arg-type]


def test_what_the_sandbox_builds_is_accepted():
    assert check_create(body(), RULES, CLIENT) == []
    assert check_create(body(memory_mb=16, cpus=0.05, pids=8, tmpfs_mb=1), RULES, CLIENT) == []
    assert check_create(body(runtime="runsc"), RULES, CLIENT) == []


def test_a_json_round_trip_is_accepted():
    assert check_create(json.loads(json.dumps(body())), RULES, CLIENT) == []


def with_change(path: str, value: object) -> dict:
    b = copy.deepcopy(body())
    *parents, last = path.split(".", 1) if path.startswith("Labels.") else path.split(".")
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
        ("HostConfig.Init", True),
        ("HostConfig.AutoRemove", "true"),
        ("User", "root"),
        ("User", "0"),
        ("User", ""),
        ("User", "10001:10001"),
        ("User", "200000:200000"),
        ("User", KeyError),
        ("HostConfig.CapAdd", ["CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SYS_PTRACE"]),
        ("HostConfig.CapAdd", ["CAP_SETUID", "CAP_SETGID", "CAP_KILL"]),
        ("HostConfig.CapAdd", ["ALL"]),
        ("HostConfig.CapAdd", KeyError),
        ("Cmd", ["10001"]),  # outside the sandbox uid range
        ("Cmd", ["0"]),
        ("Cmd", []),
        ("Cmd", ["200000", "200001"]),
        ("Cmd", ["200000\n"]),
        ("Cmd", ["0200000"]),
        ("Cmd", [200000]),
        ("Cmd", "200000"),
        ("Cmd", KeyError),
        ("Labels.io.executor.worker", "w:1:0123abcd\n"),
        ("Labels.io.executor.worker", "other:1:0123abcd"),
        ("Labels.io.executor.worker", ""),
        ("Labels.io.executor.execution", "x\n"),
        ("Labels.io.executor.execution", "a b"),
        ("Labels.io.executor.profile", "python-512m-0.5cpu\n"),
        ("Labels.io.executor.profile", "python-256m-0.5cpu"),
        ("Labels.io.executor.profile", "ruby-512m-0.5cpu"),
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
    assert check_create(with_change(path, value), RULES, CLIENT) != []


def test_non_object_and_wrong_types_are_refused():
    assert check_create([], RULES, CLIENT) == ["the body is not a JSON object"]
    assert check_create(with_change("HostConfig.Memory", "512m"), RULES, CLIENT)
    assert check_create(with_change("HostConfig.PidsLimit", True), RULES, CLIENT)
    assert check_create(with_change("HostConfig", None), RULES, CLIENT)


def test_the_worker_label_must_be_the_authenticated_client():
    assert check_create(body(), RULES, "w:2:0123abcd") != []
    assert check_create(body(worker="w:2:0123abcd"), RULES, "w:2:0123abcd") == []


def test_every_uid_of_the_range_and_none_outside_it():
    first, last = RULES.uids
    assert check_create(body(uid=first), RULES, CLIENT) == []
    assert check_create(body(uid=last), RULES, CLIENT) == []
    assert check_create(body(uid=first - 1), RULES, CLIENT) != []
    assert check_create(body(uid=last + 1), RULES, CLIENT) != []


def test_under_runsc_the_task_limit_leaves_gvisor_room_and_stands_for_the_same_processes():
    runsc = body(runtime="runsc", pids=64)
    room = RUNSC_TASKS_BASE + RUNSC_TASKS_PER_PROCESS * 64
    assert runsc["HostConfig"]["PidsLimit"] == room
    assert room >= 64 + 8 * 64  # measured: a fork bomb held at 64 peaks near 490 host tasks
    assert check_create(runsc, RULES, CLIENT) == []
    for tasks in (64, room + 1, room + RUNSC_TASKS_PER_PROCESS, 10**6):
        changed = copy.deepcopy(runsc)
        changed["HostConfig"]["PidsLimit"] = tasks
        assert check_create(changed, RULES, CLIENT) != [], tasks
    loose = body(pids=64)
    loose["HostConfig"]["PidsLimit"] = room  # gVisor's room, asked for under runc
    assert check_create(loose, RULES, CLIENT) != []
