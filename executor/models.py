"""Plain data of the domain: what is asked, the limits applied, what happened. No I/O."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUSES = ("success", "error", "timeout", "memory_limit", "compile_error", "cancelled")
FINISHED = (*STATUSES, "internal_error")


def iso(epoch: float | None = None) -> str:
    """ISO 8601 in UTC with milliseconds (of `epoch`, default now): every timestamp we send."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Limits:
    """The limits one execution runs under."""

    timeout: float
    memory_mb: int
    cpus: float
    pids: int
    tmpfs_mb: int


@dataclass(frozen=True)
class File:
    """An extra file placed beside the program; `path` is relative and already checked."""

    path: str
    content: str


@dataclass(frozen=True)
class TestCase:
    """One test case: the program runs once on its stdin (and args, else the request's)."""

    __test__ = False  # not a pytest class

    stdin: str = ""
    args: tuple[str, ...] | None = None
    expected_stdout: str | None = None


@dataclass(frozen=True)
class RunRequest:
    """One validated execution request."""

    code: str
    limits: Limits
    language: str = "python"
    stdin: str = ""
    args: tuple[str, ...] = ()
    files: tuple[File, ...] = ()
    image: str | None = None  # an operator-approved image for this language (EXECUTOR_IMAGES)
    tests: tuple[TestCase, ...] = ()  # none: the program runs once, on stdin and args
    outputs: tuple[str, ...] = ()  # glob patterns of the files to send back


@dataclass(frozen=True)
class Language:
    """A language the service runs: its image, how to build and how to run a program.

    Commands and env values are templates (see executor.languages): {file}, {main},
    {memory_mb}, {heap_mb}.
    """

    name: str
    version: str
    image: str
    source_file: str
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    compile_timeout: float = 30.0  # seconds the build may take, apart from the run's timeout
    env: tuple[tuple[str, str], ...] = ()  # set for the build and the run
    inline_python: bool = False  # run in the runner's pre-started interpreter (no exec)
    source_from_code: str = ""  # a regex whose group 1 names the file (Java's public class)
    oom_markers: tuple[str, ...] = ()  # the runtime's own "heap exhausted" on stderr
    packages: tuple[str, ...] = ()  # the Debian packages its image adds to the base
    setup: str = ""  # a shell command run once when its image is built
    extra_images: tuple[str, ...] = ()  # operator-approved images (EXECUTOR_IMAGES)
    # What the build makes that the run needs, as glob patterns relative to the working
    # directory (`**` spans directories): what the worker's build cache keeps (see
    # executor.build_cache).
    products: tuple[str, ...] = ()
    # A warm container starts the run's runtime in advance with this command (a template as
    # `run`): its run command with the runtime's own hook (images/language/prestart.*), which
    # waits for the program's arguments before the program is loaded (see executor.runner).
    prestart: tuple[str, ...] = ()

    @property
    def compiled(self) -> bool:
        return self.compile is not None


@dataclass(frozen=True)
class Usage:
    """CPU time (user + system, the program and its children) and peak memory, by the kernel."""

    cpu_ms: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class StepResult:
    """The build step of a compiled language."""

    exit_code: int | None
    stdout: str
    stderr: str
    duration_ms: int
    usage: Usage = field(default_factory=Usage)
    cached: bool = False  # no build ran: an identical build's products were used (build cache)


@dataclass(frozen=True)
class CaseResult:
    """One test case's run; `passed` is None without an expected stdout."""

    status: str
    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    usage: Usage
    passed: bool | None


@dataclass(frozen=True)
class OutputFile:
    """A file the program left that matched `outputs`."""

    path: str
    size: int
    content_base64: str


@dataclass
class RunResult:
    """What happened to one program: the contract's result fields that the sandbox knows.

    The worker adds the bookkeeping fields (id, queued_ms, worker, timestamps) on top.
    """

    status: str
    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    language: str
    image: str
    limits: Limits
    compile: StepResult | None = None
    usage: Usage = field(default_factory=Usage)
    tests: list[CaseResult] | None = None  # with test cases only, as the four below
    passed: int | None = None
    failed: int | None = None
    files: list[OutputFile] | None = None  # with outputs only, as files_truncated
    files_truncated: bool | None = None
    started_at: str = ""
    finished_at: str = ""
    container_id: str = field(default="", repr=False)
    warm: bool = False
    # The first test case a fresh sandbox may still run: this one ended (its runtime's OOM
    # kill takes the whole sandbox under gVisor) before the cases from there on could run.
    resume_at: int | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("container_id")
        data.pop("resume_at")
        for key in ("tests", "passed", "failed", "files", "files_truncated"):
            if data[key] is None:
                del data[key]  # the fields of what the request did not ask for
        return data
