"""One container, one run: create, deliver the code, wait with a deadline, collect, destroy.

A `Container` is created, attached and started before any code exists, so a warm pool can
prepare it in advance; `Sandbox.execute()` then hands it exactly one program. The worker trusts
nothing that comes back (see executor.protocol): it caps what it keeps, enforces the deadline
itself (SIGKILL to the whole container) and treats a broken reply as the program's own failure.
Whatever the reply said, `destroy()` then kills and removes the container: nothing a program
started outlives its execution, and the counters count only what Docker confirmed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from executor import metrics
from executor.cancellation import CancelToken
from executor.config import Settings
from executor.engine import Engine
from executor.errors import ContainerLost, SandboxError, UidInUse
from executor.models import Language, Limits, RunRequest, RunResult, StepResult, iso
from executor.policy import profile_name, sandbox_config
from executor.protocol import OutputSink, Reply, Step, encode_request
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
        payload = encode_request(request, language, self.settings.max_output_bytes)
        reply = Reply(self.settings.max_output_bytes, ready=container.ready, on_output=output)
        sock = container.sock
        try:
            sock.settimeout(self.settings.docker_timeout)
            sock.sendall(payload)
        except OSError as e:
            raise ContainerLost(
                f"container {container.id[:12]} ended before its program arrived: {e}"
            ) from None
        started, started_wall = time.monotonic(), time.time()
        budget = limits.timeout + (language.compile_timeout if language.compile else 0.0)
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
        cancelled = cancel is not None and cancel.is_set()
        if not reply.accepted and not killed and not cancelled:
            raise ContainerLost(
                f"container {container.id[:12]} ended before its program arrived"
                + (f": {reply.broken}" if reply.broken else "")
            )
        if killed or reply.broken or cancelled:
            self.engine.kill(container.id)
        result = self._result(container, request, reply, killed, measured_ms, started_at)
        if cancelled and not reply.done:
            result.status, result.exit_code, result.signal = "cancelled", None, "SIGKILL"
            result.duration_ms = measured_ms if reply.accepted else 0
            result.stderr = reply.text(b"E")  # without the "ended without a result" note
        return result

    def _result(
        self,
        container: Container,
        request: RunRequest,
        reply: Reply,
        killed: bool,
        measured_ms: int,
        started_at: str,
    ) -> RunResult:
        language = container.language
        final = reply.final
        cap = self.settings.max_output_bytes
        build = final.compile if final is not None else None
        run: Step | None = final.run if final is not None else None
        compile_step = None
        if build is not None:
            compile_step = StepResult(
                exit_code=build.exit_code,
                stdout=reply.text(b"o"),
                stderr=reply.text(b"e"),
                duration_ms=build.duration_ms,
            )
        exit_code = run.exit_code if run is not None else None
        sig = run.signal if run is not None else None
        duration_ms = run.duration_ms if run is not None else measured_ms
        stderr = reply.text(b"E")
        if killed:
            status, exit_code, sig, duration_ms = "timeout", None, "SIGKILL", measured_ms
        elif reply.broken:
            status, exit_code, sig = "error", None, "SIGKILL"
            stderr += f"\n[executor] {reply.broken}; the sandbox was killed\n"
            log.warning("container %s: %s", container.id[:12], reply.broken)
        elif final is None:
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
            else:
                stderr += "\n[executor] the sandbox ended without reporting a result\n"
            log.warning(
                "runner of container %s ended without a result (exit %s): %s",
                container.id[:12],
                code,
                bytes(reply.diagnostics[:500]).decode("utf-8", "replace"),
            )
        elif run is None:
            status = "compile_error"
        elif run.timed_out:
            status = "timeout"
        elif run.oom or _runtime_out_of_memory(language, run, stderr):
            status = "memory_limit"
        elif exit_code == 0:
            status = "success"
        else:
            status = "error"
        ran = final is None or run is not None
        return RunResult(
            status=status,
            exit_code=exit_code if ran else None,
            signal=sig if ran else None,
            stdout=reply.text(b"O"),
            stderr=stderr,
            stdout_truncated=_written(run, "stdout_bytes", reply.streams[b"O"]) > cap,
            stderr_truncated=_written(run, "stderr_bytes", reply.streams[b"E"]) > cap,
            duration_ms=duration_ms if ran else 0,
            language=language.name,
            image=f"{language.image}@{container.image_id}",
            limits=request.limits,
            compile=compile_step,
            started_at=started_at,
            finished_at=iso(),
            container_id=container.id,
        )


@contextlib.contextmanager
def _no_stop(stop: Callable[[], None]) -> Iterator[None]:
    yield


def _reported_ms(reply: Reply) -> int:
    """The build's and the run's time as the runner reported them (0 without a report)."""
    final = reply.final
    if final is None:
        return 0
    steps = (final.compile, final.run)
    return sum(step.duration_ms for step in steps if step is not None)


def _runtime_out_of_memory(language: Language, run: Step, stderr: str) -> bool:
    """The runtime's own heap limit (set from memory_mb) ended the program: it failed, and the
    end of its stderr carries the runtime's out-of-memory message."""
    if run.exit_code == 0 or not language.oom_markers:
        return False
    tail = stderr[-4096:]
    return any(marker in tail for marker in language.oom_markers)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _written(run: Step | None, key: str, kept: bytearray) -> int:
    """Bytes the program wrote to a stream, as far as we can tell."""
    return int(getattr(run, key)) if run is not None else len(kept)


def default_limits(settings: Settings) -> Limits:
    """The contract's default limits under these settings."""
    return Limits(
        timeout=settings.default_timeout,
        memory_mb=settings.default_memory_mb,
        cpus=settings.default_cpus,
        pids=settings.pids_limit,
        tmpfs_mb=settings.tmpfs_mb,
    )
