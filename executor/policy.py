"""What a sandbox container must look like: the one source of truth for the security rules.

The sandbox builds every container from `sandbox_config()`; the Docker security proxy checks
every create request with `check_create()`, which accepts a body only when it is exactly what
`sandbox_config()` would build for some image, runtime and limits within the rules. Any other
key, spelling, type or value (a privileged flag, a bind mount, a network, a weaker seccomp
profile...) is a violation.
The seccomp profile is ours (`executor.seccomp.PROFILE`), required byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from executor.config import MIB, Settings
from executor.languages import languages
from executor.seccomp import PROFILE as SECCOMP_PROFILE

LABEL_SANDBOX = "io.executor.sandbox"
LABEL_EXECUTION = "io.executor.execution"
LABEL_WORKER = "io.executor.worker"
LABEL_PROFILE = "io.executor.profile"
SANDBOX_LABEL_FILTER = f"{LABEL_SANDBOX}=1"

WORKDIR = "/tmp"
RUNNER = ("python3", "/opt/executor/runner.pyc")
# The runner starts as root with these capabilities only: it needs SETUID/SETGID to run every
# program step as the sandbox's own uid, and KILL to end that uid's processes at the deadline.
# The program runs as that uid with no capability at all, so no process it can start shares a
# uid with the runner: the reply channel is out of its reach under any runtime.
RUNNER_USER = "0:0"
RUNNER_CAPS = ("CAP_KILL", "CAP_SETGID", "CAP_SETUID")
ENV = ("LANG=C.UTF-8", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1")
SHM_BYTES = 64 * MIB
OOM_SCORE_ADJ = 500  # the host's OOM killer prefers a sandbox over anything else
MIN_MEMORY_MB = 16
MIN_CPUS = 0.05
# Label values: fullmatch only (a `$` anchor would let a trailing newline through).
WORKER_ID = re.compile(r"[A-Za-z0-9_.-]{1,80}:[0-9]{1,10}:[0-9a-f]{8}")
EXECUTION_ID = re.compile(r"[A-Za-z0-9._:-]{0,128}")  # empty: a warm container's
ID_RULE = "1 to 128 characters of A-Z a-z 0-9 . _ : -"


def valid_execution_id(execution_id: object) -> bool:
    """Whether `execution_id` may name an execution (a UUID, or a producer's own task id)."""
    return (
        isinstance(execution_id, str)
        and bool(execution_id)
        and bool(EXECUTION_ID.fullmatch(execution_id))
    )


PROFILE = re.compile(r"[a-z0-9_+-]{1,32}-[0-9]{1,6}m-[0-9.]{1,12}cpu")
_UID = re.compile(r"[1-9][0-9]{0,9}")


# gVisor's kernel runs as threads of the sandbox's own host processes, and the container's
# task limit counts them: about 40 at rest and, measured with a fork bomb held at 64, up to
# about 8 more per program process (the ptrace platform keeps a host process per address space
# and a host thread per task in each). When the limit bites, the sentry cannot make the threads
# it needs to tear an address space down: it panics, and runsc's kill and delete then hang for
# 30 s. So under runsc the limit leaves it ample room, and the program's processes are held by
# RLIMIT_NPROC instead, which the runner sets for the program's uid (its own, so the count is
# this sandbox's alone).
RUNSC_TASKS_BASE = 128
RUNSC_TASKS_PER_PROCESS = 12


def container_tasks(pids: int, runtime: str) -> int:
    """The container's PidsLimit for a program limited to `pids` processes and threads."""
    return RUNSC_TASKS_BASE + RUNSC_TASKS_PER_PROCESS * pids if runtime == "runsc" else pids


def program_pids(tasks: Any, runtime: str) -> int | None:
    """The program's process limit a PidsLimit stands for (None: it stands for none)."""
    if not _is_int(tasks):
        return None
    if runtime != "runsc":
        return int(tasks)
    pids, rest = divmod(int(tasks) - RUNSC_TASKS_BASE, RUNSC_TASKS_PER_PROCESS)
    return pids if rest == 0 else None


def profile_name(language: str, memory_mb: int, cpus: float) -> str:
    """The warm-pool profile a container is made for (also its profile label)."""
    return f"{language}-{memory_mb}m-{cpus:g}cpu"


@dataclass(frozen=True)
class Rules:
    """The bounds a sandbox must stay within (from Settings)."""

    images: dict[str, str]  # image -> the language it serves
    runtimes: frozenset[str]
    uids: tuple[int, int]  # first and last host uid a sandbox may run as
    max_memory_mb: int
    max_cpus: float
    max_pids: int
    max_tmpfs_mb: int
    nofile: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            images={
                image: lang.name
                for lang in languages(settings).values()
                for image in (lang.image, *lang.extra_images)
            },
            runtimes=frozenset(settings.proxy_allowed_runtimes),
            uids=settings.sandbox_uids,
            max_memory_mb=settings.max_memory_mb,
            max_cpus=settings.max_cpus,
            max_pids=settings.pids_limit,
            max_tmpfs_mb=settings.tmpfs_mb,
            nofile=settings.nofile_limit,
        )


def sandbox_config(
    *,
    image: str,
    memory_mb: int,
    cpus: float,
    pids: int,
    tmpfs_mb: int,
    nofile: int,
    runtime: str,
    uid: int,
    worker: str,
    execution: str,
    profile: str,
) -> dict[str, Any]:
    """The Docker Engine API body of a container create for one sandbox.

    No --init: the runner itself is PID 1 and runs every program step as `uid` (its one
    argument), so no process the program can open, trace or signal holds the container's
    stdout (the reply channel); and when it exits, the kernel kills every process left in it.
    """
    memory = memory_mb * MIB
    host_config: dict[str, Any] = {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "Tmpfs": {WORKDIR: f"rw,nosuid,nodev,size={tmpfs_mb}m,mode=1777"},
        "Memory": memory,
        "MemorySwap": memory,  # swap equal to memory: no swap at all
        "NanoCpus": round(cpus * 1e9),
        "PidsLimit": container_tasks(pids, runtime),
        "CapDrop": ["ALL"],
        "CapAdd": list(RUNNER_CAPS),
        "SecurityOpt": ["no-new-privileges", f"seccomp={SECCOMP_PROFILE}"],
        "Ulimits": [
            {"Name": "nofile", "Soft": nofile, "Hard": nofile},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "Init": False,
        "LogConfig": {"Type": "none", "Config": {}},
        "AutoRemove": True,
        "IpcMode": "private",
        "ShmSize": SHM_BYTES,
        "OomScoreAdj": OOM_SCORE_ADJ,
    }
    if runtime:
        host_config["Runtime"] = runtime
    return {
        "Image": image,
        "Entrypoint": list(RUNNER),
        "Cmd": [str(uid)],
        "User": RUNNER_USER,
        "WorkingDir": WORKDIR,
        "Env": list(ENV),
        "Hostname": "sandbox",
        "Labels": {
            LABEL_SANDBOX: "1",
            LABEL_WORKER: worker,
            LABEL_EXECUTION: execution,
            LABEL_PROFILE: profile,
        },
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "NetworkDisabled": True,
        "HostConfig": host_config,
    }


def _get(body: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(body, dict) or key not in body:
            return None
        body = body[key]
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_create(body: Any, rules: Rules, client: str) -> list[str]:
    """Every reason `body` is not a proper sandbox of `client`; an empty list means it is one.

    `client` is the authenticated identity of the worker that sends the create: the worker
    label must name it, so no client can make containers that pass for another's.
    """
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    problems: list[str] = []

    image = body.get("Image")
    if image not in rules.images:
        problems.append(f"image {image!r} is not an allowed sandbox image")
    memory = _get(body, "HostConfig", "Memory")
    memory_mb = 0
    if not _is_int(memory) or memory % MIB:
        problems.append("HostConfig.Memory must be a whole number of MiB")
    else:
        memory_mb = memory // MIB
        if not MIN_MEMORY_MB <= memory_mb <= rules.max_memory_mb:
            problems.append(f"memory must be {MIN_MEMORY_MB}..{rules.max_memory_mb} MiB")
    nano = _get(body, "HostConfig", "NanoCpus")
    cpus = 0.0
    if not _is_int(nano):
        problems.append("HostConfig.NanoCpus must be an integer")
    else:
        cpus = nano / 1e9
        if not MIN_CPUS <= cpus <= rules.max_cpus + 1e-9:
            problems.append(f"cpus must be {MIN_CPUS}..{rules.max_cpus}")
    tmpfs_mb = _tmpfs_mb(body)
    if tmpfs_mb is None or not 1 <= tmpfs_mb <= rules.max_tmpfs_mb:
        problems.append(f"HostConfig.Tmpfs must be exactly {WORKDIR} of 1..{rules.max_tmpfs_mb}m")
        tmpfs_mb = rules.max_tmpfs_mb
    runtime = _get(body, "HostConfig", "Runtime")
    runtime = "" if runtime is None else runtime
    if not isinstance(runtime, str) or runtime not in rules.runtimes:
        problems.append(f"runtime {runtime!r} is not allowed")
        runtime = ""
    pids = program_pids(_get(body, "HostConfig", "PidsLimit"), runtime)
    if pids is None or not 1 <= pids <= rules.max_pids:
        problems.append(f"HostConfig.PidsLimit must stand for 1..{rules.max_pids} processes")
        pids = rules.max_pids
    uid = sandbox_uid(body)
    if uid is None or not rules.uids[0] <= uid <= rules.uids[1]:
        problems.append(f"Cmd must be [uid] with a uid in {rules.uids[0]}..{rules.uids[1]}")
        uid = rules.uids[0]
    labels = body.get("Labels")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        problems.append("Labels must be the sandbox labels with string values")
        labels = {}
    worker = labels.get(LABEL_WORKER, "")
    if worker != client or not WORKER_ID.fullmatch(worker):
        problems.append(f"label {LABEL_WORKER} must be the client's own identity")
    if not EXECUTION_ID.fullmatch(labels.get(LABEL_EXECUTION, "")):
        problems.append(f"label {LABEL_EXECUTION} must match {EXECUTION_ID.pattern}")
    profile = labels.get(LABEL_PROFILE, "")
    language = rules.images.get(str(image), "")
    if not PROFILE.fullmatch(profile) or profile != profile_name(language, memory_mb, cpus):
        problems.append(f"label {LABEL_PROFILE} must name the image's language and the limits")
    if problems:
        return problems

    expected = sandbox_config(
        image=str(image),
        memory_mb=memory_mb,
        cpus=cpus,
        pids=pids,
        tmpfs_mb=tmpfs_mb,
        nofile=rules.nofile,
        runtime=runtime,
        uid=uid,
        worker=worker,
        execution=labels.get(LABEL_EXECUTION, ""),
        profile=profile,
    )
    expected["HostConfig"]["NanoCpus"] = nano  # rounding must not turn a valid body away
    return [f"{where} differs from the sandbox policy" for where in _differences(body, expected)]


def sandbox_uid(config: Any) -> int | None:
    """The uid a sandbox runs its program as (its Cmd, `[uid]`); None when it has no such Cmd.

    Takes a create body or the Config of an inspected container alike.
    """
    cmd = config.get("Cmd") if isinstance(config, dict) else None
    if not isinstance(cmd, list) or len(cmd) != 1 or not isinstance(cmd[0], str):
        return None
    return int(cmd[0]) if _UID.fullmatch(cmd[0]) else None


def _tmpfs_mb(body: dict[str, Any]) -> int | None:
    tmpfs = _get(body, "HostConfig", "Tmpfs")
    if (
        not isinstance(tmpfs, dict)
        or list(tmpfs) != [WORKDIR]
        or not isinstance(tmpfs[WORKDIR], str)
    ):
        return None
    match = re.fullmatch(r"rw,nosuid,nodev,size=([1-9][0-9]{0,6})m,mode=1777", tmpfs[WORKDIR])
    return int(match.group(1)) if match else None


def _differences(actual: Any, expected: Any, where: str = "body") -> list[str]:
    """Paths at which two JSON values differ, with types compared strictly."""
    if type(actual) is not type(expected):
        return [where]
    if isinstance(expected, dict):
        found = []
        for key in sorted(set(actual) | set(expected)):
            if key not in actual or key not in expected:
                found.append(f"{where}.{key}")
            else:
                found.extend(_differences(actual[key], expected[key], f"{where}.{key}"))
        return found
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [where]
        found = []
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            found.extend(_differences(a, e, f"{where}[{i}]"))
        return found
    return [] if actual == expected else [where]
