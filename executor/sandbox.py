"""One container, one run: create, deliver the code, wait with a deadline, collect, destroy.

A `Container` is created, attached and started before any code exists, so a warm pool can
prepare it in advance; `Sandbox.execute()` then hands it exactly one program. The worker trusts
nothing that comes back (see executor.protocol): it caps what it keeps, enforces the deadline
itself (SIGKILL to the whole container) and treats a broken reply as the program's own failure.
Whatever the reply said, `destroy()` then kills and removes the container: nothing a program
started outlives its execution, and the counters count only what Docker confirmed.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from executor import metrics
from executor.budget import run_seconds
from executor.build_cache import Build, BuildCache, build_key
from executor.cancellation import CancelToken
from executor.config import Settings
from executor.engine import Engine
from executor.errors import ContainerLost, SandboxError, UidInUse
from executor.languages import steps
from executor.models import (
    CaseResult,
    Language,
    Limits,
    OutputFile,
    RunRequest,
    RunResult,
    StepResult,
    TestCase,
    Usage,
    iso,
)
from executor.policy import profile_name, sandbox_config
from executor.protocol import (
    PRESTART,
    STAGE,
    CaseReply,
    OutputSink,
    Reply,
    encode_prestart,
    encode_request,
    encode_stage,
    staging_collides,
)
from executor.results import NOT_RUN, run_status, same_output, summarize
from executor.uids import UidAllocator, UidsExhausted

log = logging.getLogger(__name__)

# The runner kills at the deadline and reports; we kill the container this much after the
# deadline, counted from when the runner took the program: enough for a runner's report that
# a loaded host delays, small enough that a program whose runner froze is not credited with
# much more than its limit.
DEADLINE_GRACE_S = 0.5
UID_ATTEMPTS = 5  # draws of a uid before a create gives up (another worker may hold each)

Events = Callable[[str, int], None]


@dataclass
class Container:
    """A sandbox container that is running its runner and waits for one program."""

    id: str
    sock: socket.socket
    pending: bytes
    language: Language
    profile: str
    image_id: str
    uid: int
    created: float = field(default_factory=time.monotonic)
    ready: bool = False  # its runner's ready frame has been read (warm containers)
    features: frozenset[bytes] = frozenset()  # what its runner said it can do, when ready
    staged: str = ""  # the build cache key of the products it took in advance (encode_stage)

    def alive(self) -> bool:
        """True while the runner still waits: nothing to read, connection open."""
        if self.pending:
            return False
        try:
            readable, _, failed = select.select([self.sock], [], [self.sock], 0)
        except (OSError, ValueError):
            return False
        # Readable means EOF or bytes nobody asked for: either way this runner no longer waits.
        return not readable and not failed


class Sandbox:
    """Makes, runs and destroys sandbox containers through an Engine."""

    def __init__(self, settings: Settings, engine: Engine, events: Events | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.events: Events = events or (lambda name, n: None)
        # An engine on a small host creates containers fastest a few at a time: past that,
        # parallel creates only slow each other down (and every execution waits longer).
        self._starts = threading.BoundedSemaphore(settings.max_starts)
        self.owner = engine.identity  # the worker label of every container made here
        self.uids = UidAllocator(*settings.sandbox_uids)
        self.builds = BuildCache(settings.build_cache_mb << 20, settings.build_cache_admit)

    def prepare(
        self, language: Language, memory_mb: int, cpus: float, execution: str = ""
    ) -> Container:
        """Create, attach and start a container whose runner then waits for one program."""
        image_id = self.engine.image_id(language.image)
        profile = profile_name(language.name, memory_mb, cpus)
        with self._starts:
            container_id, uid = self._create(language, memory_mb, cpus, execution, profile)
            try:
                attached = self.engine.attach(container_id)
                try:
                    self.engine.start(container_id)
                except BaseException:
                    attached.sock.close()
                    raise
            except BaseException:
                self._remove(container_id, uid)
                raise
        return Container(
            container_id, attached.sock, attached.pending, language, profile, image_id, uid
        )

    def _create(
        self, language: Language, memory_mb: int, cpus: float, execution: str, profile: str
    ) -> tuple[str, int]:
        """Create the container under a uid no other living sandbox has; (id, uid)."""
        for _ in range(UID_ATTEMPTS):
            try:
                uid = self.uids.acquire()
            except UidsExhausted as e:
                self.events(metrics.CONTAINERS_FAILED, 1)
                raise SandboxError(f"cannot create a sandbox: {e}") from None
            config = sandbox_config(
                image=language.image,
                memory_mb=memory_mb,
                cpus=cpus,
                pids=self.settings.pids_limit,
                tmpfs_mb=self.settings.tmpfs_mb,
                nofile=self.settings.nofile_limit,
                runtime=self.settings.runtime,
                uid=uid,
                worker=self.owner,
                execution=execution,
                profile=profile,
            )
            try:
                container_id = self.engine.create(config)
            except UidInUse:
                self.uids.release(uid)  # another worker's sandbox runs as it: draw again
                continue
            except BaseException:
                self.uids.release(uid)
                self.events(metrics.CONTAINERS_FAILED, 1)
                raise
            self.events(metrics.CONTAINERS_CREATED, 1)
            return container_id, uid
        self.events(metrics.CONTAINERS_FAILED, 1)
        raise SandboxError(f"no free sandbox uid after {UID_ATTEMPTS} draws")

    def prepare_warm(
        self, language: Language, memory_mb: int, cpus: float, timeout: float
    ) -> Container | None:
        """A container for the warm pool: prepared, ready, and its language's runtime started
        in advance where it has one to start (Language.prestart, EXECUTOR_PRESTART) and its
        runner can (an image built before pre-starts cannot: it waits as it is); or, for a
        compiled language, holding the products of the build this profile ran last, when the
        build cache has them (EXECUTOR_STAGE_BUILDS): the same program again then ships none.
        None, and nothing left behind, when it did not become ready within `timeout`."""
        container = self.prepare(language, memory_mb, cpus)
        ready = self.wait_ready(container, timeout)
        message, staged = b"", ""
        prestart = self.settings.prestart
        if language.prestart and prestart != "off" and PRESTART in container.features:
            message = encode_prestart(
                language, memory_mb, self.settings.pids_limit, held=prestart == "held"
            )
        elif self.settings.stage_builds and STAGE in container.features:
            latest = self.builds.latest(container.profile)
            if latest is not None:
                staged, build = latest
                message = encode_stage(build.products)
        if ready and message:
            try:
                container.sock.settimeout(self.settings.docker_timeout)
                container.sock.sendall(message)
                container.staged = staged
            except OSError:
                ready = False
        if not ready:
            self.destroy(container)
            return None
        return container

    def wait_ready(self, container: Container, timeout: float) -> bool:
        """Wait until the container's runner says it waits for a program (warm pool use)."""
        reply = Reply(0)
        reply.feed(container.pending)
        container.pending = b""
        deadline = time.monotonic() + timeout
        sock = container.sock
        while not reply.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or reply.done:
                return False
            sock.settimeout(remaining)
            try:
                data = sock.recv(64)
            except OSError:
                return False
            if not data:
                return False
            reply.feed(data)
        # Anything beyond the ready frame would be a runner that does not wait: refuse it.
        container.ready = not reply.pending and not reply.broken
        container.features = reply.features
        return container.ready

    def destroy(self, container: Container) -> None:
        """Close the connection, then kill and remove the container, whatever it reported.

        A runner that reported has exited and its container is being removed (AutoRemove),
        but nothing the container says is taken on trust: the force-removal is what ends it.
        """
        try:
            container.sock.close()
        finally:
            self._remove(container.id, container.uid)

    def _remove(self, container_id: str, uid: int) -> None:
        try:
            self.engine.remove(container_id)
        except Exception:
            log.exception("could not remove container %s; the reaper will", container_id[:12])
            return
        finally:
            self.uids.release(uid)
        self.events(metrics.CONTAINERS_REMOVED, 1)

    def execute(
        self,
        container: Container,
        request: RunRequest,
        cancel: CancelToken | None = None,
        output: OutputSink | None = None,
    ) -> RunResult:
        """Run `request` in `container` (once). Outcomes of the program are data; faults raise.

        `started_at` is when the runner took the program (a cold container's boot before it is
        not the program's time). A `cancel` kills the container at once: the result is then
        `cancelled` with the output written until then. `output` receives each output frame as
        it is read (live output).

        Raises ContainerLost when the runner ended before it had the whole request: then
        nothing of the program ran, and a fresh container may take it.
        """
        language = container.language
        limits = request.limits
        settings = self.settings
        caps = (settings.max_output_files, settings.max_output_files_bytes)
        tests_output = settings.max_tests_output_bytes
        key = cached = None
        if self.builds.enabled and language.compiled and language.products:
            key = build_key(container.image_id, settings.runtime, language, request)
            cached = self.builds.get(key)
            self.events(metrics.BUILD_CACHE_HITS if cached else metrics.BUILD_CACHE_MISSES, 1)
        wanted = key is not None and cached is None and self.builds.admits(key)
        products_max = self.builds.entry_max if wanted else 0
        staged = cached is not None and container.staged == key
        if staged and cached is not None:  # unless the request writes where they are
            source = steps(language, request.code, limits.memory_mb).source
            paths = [source, *(f.path for f in request.files)]
            staged = not staging_collides(paths, cached.products)
        payload = encode_request(
            request,
            language,
            settings.max_output_bytes,
            caps,
            tests_output,
            products_max=products_max,
            prebuilt=cached.products if cached is not None else None,
            staged=staged,
        )
        runs = max(1, len(request.tests))
        reply = Reply(
            settings.max_output_bytes,
            ready=container.ready,
            cases=runs,
            cases_output=tests_output if request.tests else None,
            max_files=caps[0] if request.outputs else 0,
            max_files_bytes=caps[1] if request.outputs else 0,
            on_output=output,
            products_max=products_max,
        )
        sock = container.sock
        try:
            sock.settimeout(self.settings.docker_timeout)
            sock.sendall(payload)
        except OSError as e:
            raise ContainerLost(
                f"container {container.id[:12]} ended before its program arrived: {e}"
            ) from None
        started, started_wall = time.monotonic(), time.time()
        build_s = language.compile_timeout if language.compile and cached is None else 0.0
        budget = run_seconds(limits.timeout, runs, build_s, bool(request.outputs))
        # Until the runner takes the program, a cold one may still be booting.
        deadline = started + budget + self.settings.docker_timeout
        if container.pending:
            reply.feed(container.pending)
        killed = False
        stop = cancel.stopping_with if cancel is not None else _no_stop
        took = reply.accepted
        with stop(lambda: self.engine.kill(container.id)):
            while not reply.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    killed = True
                    break
                sock.settimeout(remaining)
                try:
                    data = sock.recv(262144)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    break
                reply.feed(data)
                if reply.accepted and not took:
                    took = True  # the program's own time starts now
                    started, started_wall = time.monotonic(), time.time()
                    deadline = started + budget + DEADLINE_GRACE_S
        measured_ms = int((time.monotonic() - started) * 1000)
        # Read in one piece with the result (a short program), the runner's `accepted` came in
        # late: its reported times say when the program began.
        reported_ms = _reported_ms(reply)
        if reported_ms > measured_ms:
            started_wall -= (reported_ms - measured_ms) / 1000
        started_at = iso(started_wall)
        cancelled = cancel is not None and cancel.is_set() and not reply.done
        if not reply.accepted and not killed and not cancelled:
            raise ContainerLost(
                f"container {container.id[:12]} ended before its program arrived"
                + (f": {reply.broken}" if reply.broken else "")
            )
        if killed or reply.broken or cancelled:
            self.engine.kill(container.id)
        if cancelled and not reply.accepted:
            measured_ms = 0  # nothing of the program ran
        result = self._result(container, request, reply, killed, measured_ms, started_at, cancelled)
        if cached is not None and key is not None:
            result.compile = StepResult(0, cached.stdout, cached.stderr, 0, cached=True)
            self.builds.note(container.profile, key)
        elif wanted and key is not None and _built_whole(reply) and result.compile is not None:
            built = Build(reply.products, result.compile.stdout, result.compile.stderr)
            self.builds.put(key, built)
            self.builds.note(container.profile, key)
        return result

    def _result(
        self,
        container: Container,
        request: RunRequest,
        reply: Reply,
        killed: bool,
        measured_ms: int,
        started_at: str,
        cancelled: bool = False,
    ) -> RunResult:
        language = container.language
        final = reply.final
        build = reply.build_step
        compile_step = None
        if build is not None:
            compile_step = StepResult(
                exit_code=build.exit_code,
                stdout=reply.build_text(b"o"),
                stderr=reply.build_text(b"e"),
                duration_ms=build.duration_ms,
                usage=Usage(build.usage.cpu_ms, build.usage.memory_bytes),
            )
        built = build is None or build.exit_code == 0
        runs, resume_at = (
            self._runs(container, request, reply, killed, measured_ms, cancelled)
            if built
            else ([], None)
        )
        result = RunResult(
            status="compile_error",
            exit_code=None,
            signal=None,
            stdout="",
            stderr="",
            stdout_truncated=False,
            stderr_truncated=False,
            duration_ms=0,
            language=language.name,
            image=f"{language.image}@{container.image_id}",
            limits=request.limits,
            compile=compile_step,
            started_at=started_at,
            container_id=container.id,
        )
        summarize(result, runs, bool(request.tests))
        result.resume_at = resume_at
        reported = len(reply.cases) == len(runs) and all(c.step for c in reply.cases)
        if runs and reported and final is None and not cancelled:
            # Every run reported, then the sandbox failed its protocol or its deadline: the
            # runs stand, the execution did not end well.
            reason = reply.broken or (
                "the sandbox passed its deadline" if killed else "the sandbox ended early"
            )
            log.warning("container %s: %s after its last run", container.id[:12], reason)
            result.status = "error"
            result.stderr += f"\n[executor] {reason} after the program's last run\n"
        if request.outputs:
            complete = [f for f in reply.files if len(f.data) == f.size]
            result.files = [
                OutputFile(f.path, f.size, base64.b64encode(bytes(f.data)).decode("ascii"))
                for f in complete
            ]
            result.files_truncated = final.files_truncated if final is not None else True
        result.finished_at = iso()
        return result

    def _runs(
        self,
        container: Container,
        request: RunRequest,
        reply: Reply,
        killed: bool,
        measured_ms: int,
        cancelled: bool = False,
    ) -> tuple[list[CaseResult], int | None]:
        """One result per run (each test case, or the one run): reported, cut short by the
        end of the sandbox, or never started because of it; and the first case that a fresh
        sandbox may still run (see `resume_at`)."""
        language = container.language
        cases = request.tests or (TestCase(),)
        runs: list[CaseResult] = []
        ended = False  # the sandbox ended in a run: the runs after it never started
        resume_at = None
        for index, case in enumerate(cases):
            got = reply.cases[index] if index < len(reply.cases) else None
            if got is not None and got.step is not None:
                step = got.step
                stdout, stderr = reply.case_text(got, b"O"), reply.case_text(got, b"E")
                run = CaseResult(
                    status=run_status(language, step, stderr),
                    exit_code=step.exit_code,
                    signal=step.signal,
                    stdout=stdout,
                    stderr=stderr,
                    stdout_truncated=step.stdout_bytes > len(got.streams[b"O"]),
                    stderr_truncated=step.stderr_bytes > len(got.streams[b"E"]),
                    duration_ms=step.duration_ms,
                    usage=Usage(step.usage.cpu_ms, step.usage.memory_bytes),
                    passed=None,
                )
            elif not ended:
                spent = sum(r.duration_ms for r in runs)
                run = self._cut_short(
                    container, request, reply, got, killed, measured_ms - spent, cancelled
                )
                ended = True
                if run.status == "memory_limit" and index + 1 < len(cases):
                    resume_at = index + 1
            else:
                run = NOT_RUN
            if case.expected_stdout is not None:
                run = replace(run, passed=same_output(run.stdout, case.expected_stdout))
            runs.append(run)
        return runs, resume_at

    def _cut_short(
        self,
        container: Container,
        request: RunRequest,
        reply: Reply,
        got: CaseReply | None,
        killed: bool,
        measured_ms: int,
        cancelled: bool = False,
    ) -> CaseResult:
        """The run the sandbox ended in: no report of it, or none that can be trusted."""
        stdout = reply.case_text(got, b"O") if got is not None else ""
        stderr = reply.case_text(got, b"E") if got is not None else ""
        usage = Usage()
        if cancelled:  # DELETE or a Celery revoke: the container was killed on purpose
            status, exit_code, sig = "cancelled", None, "SIGKILL"
        elif killed:
            status, exit_code, sig = "timeout", None, "SIGKILL"
        elif reply.broken:
            status, exit_code, sig = "error", None, "SIGKILL"
            stderr += f"\n[executor] {reply.broken}; the sandbox was killed\n"
            log.warning("container %s: %s", container.id[:12], reply.broken)
        else:
            # The runner died before reporting: the OOM killer took it (under gVisor it takes
            # the whole sandbox), or the sandbox's runtime failed.
            # The engine records an OOM kill as it happens, and forgets it when it removes the
            # container (AutoRemove): ask at once, and again once it has stopped.
            oom = self.engine.oom_killed(container.id)
            code = self.engine.wait(container.id, 2.0)
            status, exit_code, sig = "error", None, None
            if code is not None and code > 128:
                sig = _signal_name(code - 128)
            if oom or self.engine.oom_killed(container.id):
                status, sig = "memory_limit", "SIGKILL"
                # No report: the peak is the limit the kernel held it to.
                usage = Usage(memory_bytes=request.limits.memory_mb * 1024 * 1024)
            else:
                stderr += "\n[executor] the sandbox ended without reporting a result\n"
            log.warning(
                "runner of container %s ended without a result (exit %s): %s",
                container.id[:12],
                code,
                bytes(reply.diagnostics[:500]).decode("utf-8", "replace"),
            )
        cap = self.settings.max_output_bytes
        return CaseResult(
            status=status,
            exit_code=exit_code,
            signal=sig,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=got is not None and len(got.streams[b"O"]) >= cap,
            stderr_truncated=got is not None and len(got.streams[b"E"]) >= cap,
            duration_ms=max(0, measured_ms),
            usage=usage,
            passed=None,
        )


def _built_whole(reply: Reply) -> bool:
    """The build succeeded and every product came back whole, in a reply that kept to the
    protocol (the run may have failed or timed out after: its build's products are the same)."""
    build = reply.build_step
    return (
        not reply.broken
        and build is not None
        and build.exit_code == 0
        and not build.timed_out
        and bool(reply.products)
    )


@contextlib.contextmanager
def _no_stop(stop: Callable[[], None]) -> Iterator[None]:
    yield


def _reported_ms(reply: Reply) -> int:
    """The build's and the runs' time as the runner reported them (0 without a report)."""
    steps = [reply.build_step, *(case.step for case in reply.cases)]
    return sum(step.duration_ms for step in steps if step is not None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def default_limits(settings: Settings) -> Limits:
    """The contract's default limits under these settings."""
    return Limits(
        timeout=settings.default_timeout,
        memory_mb=settings.default_memory_mb,
        cpus=settings.default_cpus,
        pids=settings.pids_limit,
        tmpfs_mb=settings.tmpfs_mb,
    )
