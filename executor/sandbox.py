"""One container, one run: create, deliver the code, wait with a deadline, collect, destroy.

A `Container` is created, attached and started before any code exists, so a warm pool can
prepare it in advance; `Sandbox.execute()` then hands it exactly one program. The worker trusts
nothing that comes back: it caps what it keeps, enforces the deadline itself (SIGKILL to the
whole container) and treats a broken reply as the program's own failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from executor.config import Settings
from executor.engine import Engine
from executor.errors import ContainerLost
from executor.models import Language, Limits, RunRequest, RunResult, StepResult
from executor.policy import sandbox_config

log = logging.getLogger(__name__)

DEADLINE_GRACE_S = 1.0  # the runner kills at the deadline; we kill the container this much later
COMPILE_TIMEOUT_S = 30.0
_DOCKER_HEADER = struct.Struct(">BxxxI")
_FRAME_HEADER = struct.Struct(">cI")
_DIAGNOSTICS = 8192

Events = Callable[[str, int], None]


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def profile_name(language: str, memory_mb: int, cpus: float) -> str:
    return f"{language}-{memory_mb}m-{cpus:g}cpu"


@dataclass
class Container:
    """A sandbox container that is running its runner and waits for one program."""

    id: str
    sock: socket.socket
    pending: bytes
    language: Language
    profile: str
    image_id: str
    created: float = field(default_factory=time.monotonic)
    reported: bool = False  # the runner sent its result, so it exits and AutoRemove follows

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


class _Reply:
    """Decodes Docker's stream framing, then the runner's frames; keeps `cap` bytes per stream."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.budget = 4 * cap + (1 << 20)  # more than this from one runner is a broken runner
        self.raw = 0
        self.docker_buf = b""
        self.frame_buf = b""
        self.streams: dict[bytes, bytearray] = {k: bytearray() for k in (b"O", b"E", b"o", b"e")}
        self.diagnostics = bytearray()
        self.final: dict[str, Any] | None = None
        self.ready = False
        self.broken = ""

    def feed(self, data: bytes) -> None:
        self.raw += len(data)
        if self.raw > self.budget:
            self.broken = "the sandbox sent more than its output limits allow"
            return
        self.docker_buf += data
        while len(self.docker_buf) >= _DOCKER_HEADER.size:
            kind, size = _DOCKER_HEADER.unpack_from(self.docker_buf)
            end = _DOCKER_HEADER.size + size
            if len(self.docker_buf) < end:
                break
            payload = self.docker_buf[_DOCKER_HEADER.size : end]
            self.docker_buf = self.docker_buf[end:]
            if kind == 1:
                self._frames(payload)
            elif len(self.diagnostics) < _DIAGNOSTICS:
                self.diagnostics += payload[: _DIAGNOSTICS - len(self.diagnostics)]

    def _frames(self, data: bytes) -> None:
        self.frame_buf += data
        while len(self.frame_buf) >= _FRAME_HEADER.size and self.final is None:
            kind, size = _FRAME_HEADER.unpack_from(self.frame_buf)
            end = _FRAME_HEADER.size + size
            if len(self.frame_buf) < end:
                break
            payload = self.frame_buf[_FRAME_HEADER.size : end]
            self.frame_buf = self.frame_buf[end:]
            if kind == b"R":
                try:
                    final = json.loads(payload)
                except ValueError:
                    final = None
                if not isinstance(final, dict):
                    self.broken = "the sandbox sent an unreadable result"
                    return
                self.final = final
            elif kind == b"r":
                self.ready = True
            elif kind in self.streams:
                kept = self.streams[kind]
                if len(kept) < self.cap:
                    kept += payload[: self.cap - len(kept)]
            else:
                self.broken = "the sandbox broke the reply protocol"
                return

    def text(self, kind: bytes) -> str:
        return decode_capped(bytes(self.streams[kind]), self.cap)


def decode_capped(data: bytes, cap: int) -> str:
    """UTF-8 text of `data` with invalid bytes replaced, at most `cap` bytes once encoded."""
    if len(data) >= cap:
        # Do not end on half a character cut by the cap.
        for back in range(1, 4):
            if len(data) > back and (data[-back] & 0xC0) != 0x80:
                lead = data[-back]
                need = 2 if lead >= 0xC0 else 1
                need = 3 if lead >= 0xE0 else need
                need = 4 if lead >= 0xF0 else need
                if need > back:
                    data = data[:-back]
                break
    text = data.decode("utf-8", "replace")
    if len(data) * 3 > cap:
        encoded = text.encode("utf-8")
        if len(encoded) > cap:
            text = encoded[:cap].decode("utf-8", "ignore")
    return text


def encode_request(request: RunRequest, language: Language, max_output: int) -> bytes:
    """The runner's request: b"<length>\\n" then fields b"<name> <length>\\n<raw value>"."""
    fields: list[tuple[str, str | bytes]] = [
        ("source", language.source_file),
        ("code", request.code),
        ("stdin", request.stdin),
        ("inline", "1" if language.inline_python else "0"),
        ("timeout", repr(float(request.limits.timeout))),
        ("compile_timeout", repr(COMPILE_TIMEOUT_S)),
        ("max_output", str(max_output)),
    ]
    fields += [("arg", arg) for arg in request.args]
    fields += [("run", item) for item in language.run]
    fields += [("compile", item) for item in language.compile or ()]
    for extra in request.files:
        fields += [("path", extra.path), ("content", extra.content)]
    parts = []
    for name, value in fields:
        data = value.encode("utf-8") if isinstance(value, str) else value
        parts += [b"%s %d\n" % (name.encode(), len(data)), data]
    body = b"".join(parts)
    return b"%d\n" % len(body) + body


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


class Sandbox:
    """Makes, runs and destroys sandbox containers through an Engine."""

    def __init__(self, settings: Settings, engine: Engine, events: Events | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.events: Events = events or (lambda name, n: None)
        # An engine on a small host creates containers fastest a few at a time: past that,
        # parallel creates only slow each other down (and every execution waits longer).
        self._starts = threading.BoundedSemaphore(settings.max_starts)
        instance = re.sub(r"[^A-Za-z0-9_.-]", "-", settings.instance)[:80] or "executor"
        self.owner = f"{instance}:{os.getpid()}:{secrets.token_hex(4)}"

    def prepare(
        self, language: Language, memory_mb: int, cpus: float, execution: str = ""
    ) -> Container:
        """Create, attach and start a container whose runner then waits for one program."""
        image_id = self.engine.image_id(language.image)
        profile = profile_name(language.name, memory_mb, cpus)
        config = sandbox_config(
            image=language.image,
            memory_mb=memory_mb,
            cpus=cpus,
            pids=self.settings.pids_limit,
            tmpfs_mb=self.settings.tmpfs_mb,
            nofile=self.settings.nofile_limit,
            runtime=self.settings.runtime,
            worker=self.owner,
            execution=execution,
            profile=profile,
        )
        with self._starts:
            try:
                container_id = self.engine.create(config)
            except Exception:
                self.events("containers_failed", 1)
                raise
            self.events("containers_created", 1)
            try:
                attached = self.engine.attach(container_id)
                try:
                    self.engine.start(container_id)
                except BaseException:
                    attached.sock.close()
                    raise
            except BaseException:
                self._remove(container_id)
                raise
        return Container(container_id, attached.sock, attached.pending, language, profile, image_id)

    def wait_ready(self, container: Container, timeout: float) -> bool:
        """Wait until the container's runner says it waits for a program (warm pool use)."""
        reply = _Reply(0)
        reply.feed(container.pending)
        container.pending = b""
        deadline = time.monotonic() + timeout
        sock = container.sock
        while not reply.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or reply.broken or reply.final is not None:
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
        return not (reply.docker_buf or reply.frame_buf)

    def destroy(self, container: Container) -> None:
        """Close the connection and remove the container (it may be gone already).

        A runner that reported its result has exited or is exiting, and the engine removes
        its container by itself (AutoRemove): asking again would only cost the engine work.
        Anything else is force-removed; the reaper catches what even that misses.
        """
        try:
            container.sock.close()
        finally:
            if container.reported:
                self.events("containers_removed", 1)
            else:
                self._remove(container.id)

    def _remove(self, container_id: str) -> None:
        try:
            self.engine.remove(container_id)
        except Exception:
            log.exception("could not remove container %s; the reaper will", container_id[:12])
            return
        self.events("containers_removed", 1)

    def execute(self, container: Container, request: RunRequest) -> RunResult:
        """Run `request` in `container` (once). Outcomes of the program are data; faults raise."""
        language = container.language
        limits = request.limits
        payload = encode_request(request, language, self.settings.max_output_bytes)
        reply = _Reply(self.settings.max_output_bytes)
        sock = container.sock
        try:
            sock.settimeout(self.settings.docker_timeout)
            sock.sendall(payload)
        except OSError as e:
            raise ContainerLost(
                f"container {container.id[:12]} ended before its program arrived: {e}"
            ) from None
        started_at = utcnow()
        delivered = time.monotonic()
        budget = limits.timeout + (COMPILE_TIMEOUT_S if language.compile else 0.0)
        deadline = delivered + budget + DEADLINE_GRACE_S
        if container.pending:
            reply.feed(container.pending)
        killed = False
        while reply.final is None and not reply.broken:
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
        measured_ms = int((time.monotonic() - delivered) * 1000)
        container.reported = reply.final is not None and not reply.broken
        if killed or reply.broken:
            self.engine.kill(container.id)
        return self._result(container, request, reply, killed, measured_ms, started_at)

    def _result(
        self,
        container: Container,
        request: RunRequest,
        reply: _Reply,
        killed: bool,
        measured_ms: int,
        started_at: str,
    ) -> RunResult:
        language = container.language
        final = reply.final or {}
        cap = self.settings.max_output_bytes
        compile_info = final.get("compile")
        compile_step = None
        if isinstance(compile_info, dict):
            compile_step = StepResult(
                exit_code=compile_info.get("exit_code"),
                stdout=reply.text(b"o"),
                stderr=reply.text(b"e"),
                duration_ms=int(compile_info.get("duration_ms") or 0),
            )
        exit_code: int | None = final.get("exit_code")
        sig: str | None = final.get("signal")
        duration_ms = int(final.get("duration_ms", measured_ms))
        stderr = reply.text(b"E")
        if killed:
            status, exit_code, sig, duration_ms = "timeout", None, "SIGKILL", measured_ms
        elif reply.broken:
            status, exit_code, sig = "error", None, "SIGKILL"
            stderr += f"\n[executor] {reply.broken}; the sandbox was killed\n"
        elif reply.final is None:
            # The runner died before reporting: the program killed it, or the OOM killer did.
            code = self.engine.wait(container.id, 2.0)
            status, exit_code, sig = "error", None, None
            if code is not None and code > 128:
                sig = _signal_name(code - 128)
            log.warning(
                "runner of container %s ended without a result (exit %s): %s",
                container.id[:12],
                code,
                bytes(reply.diagnostics[:500]).decode("utf-8", "replace"),
            )
        elif compile_step is not None and compile_step.exit_code != 0:
            status = "compile_error"
        elif final.get("timed_out"):
            status = "timeout"
        elif final.get("oom"):
            status = "memory_limit"
        elif exit_code == 0:
            status = "success"
        else:
            status = "error"
        ran = compile_step is None or compile_step.exit_code == 0
        return RunResult(
            status=status,
            exit_code=exit_code if ran else None,
            signal=sig if ran else None,
            stdout=reply.text(b"O"),
            stderr=stderr,
            stdout_truncated=_written(final, "stdout_bytes", reply.streams[b"O"]) > cap,
            stderr_truncated=_written(final, "stderr_bytes", reply.streams[b"E"]) > cap,
            duration_ms=duration_ms if ran else 0,
            language=language.name,
            image=f"{language.image}@{container.image_id}",
            limits=request.limits,
            compile=compile_step,
            started_at=started_at,
            finished_at=utcnow(),
            container_id=container.id,
        )


def _written(final: dict[str, Any], key: str, kept: bytearray) -> int:
    """Bytes the program wrote to a stream, as far as we can tell."""
    reported = final.get(key)
    return reported if isinstance(reported, int) and not isinstance(reported, bool) else len(kept)


def default_limits(settings: Settings) -> Limits:
    """The contract's default limits under these settings."""
    return Limits(
        timeout=settings.default_timeout,
        memory_mb=settings.default_memory_mb,
        cpus=settings.default_cpus,
        pids=settings.pids_limit,
        tmpfs_mb=settings.tmpfs_mb,
    )
