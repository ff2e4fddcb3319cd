"""Our seccomp profile, without Docker: its shape, what it refuses, and that the proxy needs it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from executor import seccomp
from executor.config import Settings
from executor.policy import Rules, check_create, profile_name, sandbox_config
from executor.seccomp import PROFILE

RULES = Rules.from_settings(Settings())
CLIENT = "w:1:0123abcd"
P = json.loads(PROFILE)
ALLOW = "SCMP_ACT_ALLOW"

# What the profile must refuse whatever the arguments (brief, gVisor and isolate).
NEVER_TEXT = """
    io_uring_setup io_uring_enter io_uring_register ptrace process_vm_readv process_vm_writev
    pidfd_getfd kcmp perf_event_open bpf userfaultfd keyctl add_key request_key unshare setns
    clone3 mount umount umount2 pivot_root chroot kexec_load kexec_file_load init_module
    finit_module delete_module acct quotactl swapon swapoff reboot syslog lookup_dcookie
    open_by_handle_at name_to_handle_at fanotify_init fsopen fsmount move_mount open_tree
    socketcall modify_ldt iopl ioperm settimeofday clock_settime sethostname vhangup
"""
NEVER = NEVER_TEXT.split()


def rules_for(name: str) -> list[dict[str, Any]]:
    return [r for r in P["syscalls"] if name in r["names"]]


def _holds(cond: dict[str, Any], args: tuple[int, ...]) -> bool:
    value, datum = args[cond["index"]], cond["value"]
    op = cond["op"]
    if op == "SCMP_CMP_EQ":
        return value == datum
    if op == "SCMP_CMP_GT":
        return value > datum
    if op == "SCMP_CMP_MASKED_EQ":
        return value & datum == cond.get("valueTwo", 0)
    raise AssertionError(f"operator {op} is not modelled here")


def action(name: str, *args: int) -> tuple[str, int | None]:
    """What the profile does with one call, as libseccomp would: (action, errno)."""
    args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    matched = {
        (r["action"], r.get("errnoRet"))
        for r in rules_for(name)
        if all(_holds(c, args) for c in r.get("args", []))
    }
    assert len(matched) <= 1, f"{name}{args}: rules overlap with different actions {matched}"
    return matched.pop() if matched else (P["defaultAction"], P.get("defaultErrnoRet"))


def test_profile_is_compact_json_within_the_size_bound():
    assert json.dumps(P, separators=(",", ":"), sort_keys=True) == PROFILE
    assert len(PROFILE.encode()) < 24 * 1024
    # It travels JSON-escaped inside a create body, which the proxy caps at 64 KiB.
    assert len(json.dumps(f"seccomp={PROFILE}")) < 24 * 1024


def test_default_action_is_an_errno():
    assert P["defaultAction"] == "SCMP_ACT_ERRNO"
    assert P["defaultErrnoRet"] == 1  # EPERM
    assert action("no_such_syscall") == ("SCMP_ACT_ERRNO", 1)


def test_architectures_leave_i386_out():
    arches = {a["architecture"]: a["subArchitectures"] for a in P["archMap"]}
    assert arches == {"SCMP_ARCH_X86_64": ["SCMP_ARCH_X32"], "SCMP_ARCH_AARCH64": ["SCMP_ARCH_ARM"]}


@pytest.mark.parametrize("name", sorted(set(NEVER) | set(seccomp.REFUSED.split())))
def test_refused_syscall_is_in_no_allow_rule(name):
    assert all(r["action"] != ALLOW for r in rules_for(name))
    assert action(name)[0] != ALLOW


@pytest.mark.parametrize("name", seccomp.ABSENT.split())
def test_probed_syscalls_look_absent(name):
    # SCMP_ACT_TRACE with no tracer: ENOSYS on Linux and under gVisor alike.
    assert [(r["action"], r.get("args")) for r in rules_for(name)] == [("SCMP_ACT_TRACE", None)]


def test_what_programs_need_is_allowed_unconditionally():
    needed = ("read", "openat", "mmap", "futex", "epoll_pwait", "execve", "wait4", "rseq")
    # glibc's select() is pselect6, which gVisor calls pselect
    for name in (*needed, "pselect6", "pselect"):
        assert action(name) == (ALLOW, None), name
    names = [n for r in P["syscalls"] for n in r["names"] if "args" not in r]
    assert len(names) == len(set(names)), "a syscall is listed twice without arguments"


@pytest.mark.parametrize("kernel_name", sorted(seccomp.GVISOR_NAMES))
def test_gvisor_spelling_gets_the_same_action(kernel_name):
    # runsc finds syscalls by the names of gVisor's own table, which spells these otherwise;
    # a name it lacks is skipped, so a syscall allowed by one name only is EPERM under gVisor.
    alias = seccomp.GVISOR_NAMES[kernel_name]
    assert alias != kernel_name
    assert action(alias) == action(kernel_name)


def test_socket_only_for_the_four_families():
    allowed = {f for f in range(64) if action("socket", f, 1, 0)[0] == ALLOW}
    assert allowed == {1, 2, 10, 16}
    for family in (*range(64), 2**31, 2**32 + 2, 2**64 - 1):
        if family not in allowed:
            assert action("socket", family, 1, 0) == ("SCMP_ACT_ERRNO", 97), family
    assert action("socket", 16, 3, 0) == (ALLOW, None)  # NETLINK_ROUTE
    assert action("socket", 16, 3, 9)[0] != ALLOW  # NETLINK_AUDIT and the rest
    assert action("socketpair", 1, 1, 0) == (ALLOW, None)
    assert {f for f in range(64) if action("socketpair", f)[0] == ALLOW} == {1}


def test_personality_only_harmless_values():
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert action("personality", persona)[0] == ALLOW
    for persona in (0x0040000, 0x0400000, 0x0200000, 0x0800000, 1):  # ADDR_NO_RANDOMIZE...
        assert action("personality", persona)[0] != ALLOW


def test_clone_without_namespace_flags_only():
    threads = 0x003D0F00  # what glibc's pthread_create passes
    assert action("clone", threads)[0] == ALLOW
    assert action("clone", 17)[0] == ALLOW  # fork(): SIGCHLD
    namespaces = (
        0x00020000,
        0x02000000,
        0x04000000,
        0x08000000,
        0x10000000,
        0x20000000,
        0x40000000,
    )
    for flag in namespaces:  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
        assert action("clone", threads | flag)[0] != ALLOW, hex(flag)


def body(**overrides: object) -> dict:
    args: dict[str, Any] = dict(
        image="executor-python:3.11",
        memory_mb=512,
        cpus=0.5,
        pids=64,
        tmpfs_mb=100,
        nofile=RULES.nofile,
        runtime="",
        uid=RULES.uids[0],
        worker=CLIENT,
        execution="",
        profile=profile_name("python", 512, 0.5),
    )
    args.update(overrides)
    return sandbox_config(**args)


def test_the_policy_carries_the_profile():
    assert body()["HostConfig"]["SecurityOpt"] == ["no-new-privileges", f"seccomp={PROFILE}"]
    assert check_create(body(), RULES, CLIENT) == []
    assert check_create(json.loads(json.dumps(body())), RULES, CLIENT) == []


def with_security_opt(value: list[str]) -> dict:
    b = copy.deepcopy(body())
    b["HostConfig"]["SecurityOpt"] = value
    return b


def profile_with(change: Any) -> str:
    p = copy.deepcopy(P)
    change(p)
    return json.dumps(p, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize(
    "security_opt",
    [
        [
            "no-new-privileges",
            "seccomp=" + profile_with(lambda p: p["syscalls"][0]["names"].append("ptrace")),
        ],
        [
            "no-new-privileges",
            "seccomp=" + profile_with(lambda p: p.update(defaultAction="SCMP_ACT_ALLOW")),
        ],
        ["no-new-privileges", "seccomp=" + json.dumps(P, indent=1)],  # same profile, other bytes
        ["no-new-privileges"],
        ["no-new-privileges", "seccomp=unconfined"],
        ["no-new-privileges", "seccomp=/etc/docker/seccomp.json"],
        [f"seccomp={PROFILE}", "no-new-privileges"],
        [f"seccomp={PROFILE}"],
        ["no-new-privileges", f"seccomp={PROFILE}", "seccomp=unconfined"],
    ],
    ids=[
        "one-syscall-added",
        "default-allow",
        "reformatted",
        "absent",
        "unconfined",
        "a-file",
        "reordered",
        "no-new-privileges-missing",
        "unconfined-appended",
    ],
)
def test_the_proxy_refuses_any_other_profile(security_opt):
    problems = check_create(with_security_opt(security_opt), RULES, CLIENT)
    assert problems and all(p.startswith("body.HostConfig.SecurityOpt") for p in problems)
