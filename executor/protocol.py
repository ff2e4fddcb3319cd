"""The worker's half of the runner's wire protocol (the runner's half is executor/runner.py).

`encode_request()` makes the one request a runner reads; `Reply` decodes what comes back over
the attach stream: Docker's stream framing first, then the runner's own frames.

Nothing read from a container is trusted. The runner's reply channel is out of the program's
reach by construction (see runner.py), yet the decoder holds whatever arrives to the protocol:
frames in their order (ready, accepted, output, one result), each frame and the whole reply
within bounds, output kept up to the cap, and the result strictly typed and bounded. Anything
else marks the reply broken, with a reason; the sandbox then kills the container and reports
the program's `error`. Nothing here raises on bad input.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from executor.languages import MAX_COMPILE_TIMEOUT_S, steps
from executor.models import Language, RunRequest

COMPILE_TIMEOUT_S = MAX_COMPILE_TIMEOUT_S  # the longest build
FRAME_MAX = 65536  # the runner sends output in chunks of at most this
RESULT_MAX = 4096  # the result frame is a small JSON object
DIAGNOSTICS_MAX = 8192  # what is kept of the runner's own stderr
_DOCKER_HEADER = struct.Struct(">BxxxI")
_FRAME_HEADER = struct.Struct(">cI")
_SIGNAL = re.compile(r"SIG[A-Z0-9]{1,12}")
_INT_MAX = 1 << 53
OUTPUT_KINDS = (b"O", b"E", b"o", b"e")  # program stdout, stderr; build stdout, stderr
# Called with (kind, payload) of each output frame as it is read, whole (before any cap):
# live output (executor.output). It must not block, nor raise.
OutputSink = Callable[[bytes, bytes], None]


def encode_request(request: RunRequest, language: Language, max_output: int) -> bytes:
    """The runner's request: b"<length>\\n" then fields b"<name> <length>\\n<raw value>".

    The language's command and environment templates are filled in here (see
    executor.languages): the runner only runs what it is given.
    """
    program = steps(language, request.code, request.limits.memory_mb)
    fields: list[tuple[str, str | bytes]] = [
        ("source", program.source),
        ("code", request.code),
        ("stdin", request.stdin),
        ("inline", "1" if language.inline_python else "0"),
        ("timeout", repr(float(request.limits.timeout))),
        ("compile_timeout", repr(float(language.compile_timeout))),
        ("max_output", str(max_output)),
        ("nproc", str(request.limits.pids)),
    ]
    fields += [("arg", arg) for arg in request.args]
    fields += [("run", item) for item in program.run]
    fields += [("compile", item) for item in program.compile or ()]
    fields += [("env", f"{name}={value}") for name, value in program.env]
    for extra in request.files:
        fields += [("path", extra.path), ("content", extra.content)]
    parts = []
    for name, value in fields:
        data = value.encode("utf-8") if isinstance(value, str) else value
        parts += [b"%s %d\n" % (name.encode(), len(data)), data]
    body = b"".join(parts)
    return b"%d\n" % len(body) + body


@dataclass(frozen=True)
class Step:
    """What the runner reports of one step (the build, or the program's run)."""

    exit_code: int | None  # 0..255; None when it did not exit by itself
    signal: str | None  # "SIGKILL"...
    timed_out: bool
    oom: bool
    duration_ms: int
    stdout_bytes: int  # written by the program, kept or not
    stderr_bytes: int


@dataclass(frozen=True)
class Final:
    """The runner's result: the build step (compiled languages) and the run (absent when the
    build failed)."""

    compile: Step | None
    run: Step | None


class MalformedResult(ValueError):
    """The result frame breaks the protocol; the message says how."""


def _no_constants(name: str) -> Any:
    raise MalformedResult(f"{name} is not a JSON number")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise MalformedResult("duplicate keys")
    return dict(pairs)


_STEP_KEYS = frozenset(
    ("exit_code", "signal", "timed_out", "oom", "duration_ms", "stdout_bytes", "stderr_bytes")
)


def _count(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if type(value) is not int or not 0 <= value < _INT_MAX:
        raise MalformedResult(f"{key} must be a non-negative integer")
    return value


def _step(data: Any, where: str) -> Step:
    if not isinstance(data, dict) or set(data) != _STEP_KEYS:
        raise MalformedResult(f"{where} must hold exactly {sorted(_STEP_KEYS)}")
    exit_code, sig = data["exit_code"], data["signal"]
    if exit_code is not None and (type(exit_code) is not int or not 0 <= exit_code <= 255):
        raise MalformedResult(f"{where}.exit_code must be null or 0..255")
    if sig is not None and (not isinstance(sig, str) or not _SIGNAL.fullmatch(sig)):
        raise MalformedResult(f"{where}.signal must be null or a signal name")
    if (exit_code is None) == (sig is None) and not data["timed_out"]:
        raise MalformedResult(f"{where} must have either an exit code or a signal")
    for key in ("timed_out", "oom"):
        if type(data[key]) is not bool:
            raise MalformedResult(f"{where}.{key} must be a boolean")
    return Step(
        exit_code=exit_code,
        signal=sig,
        timed_out=data["timed_out"],
        oom=data["oom"],
        duration_ms=_count(data, "duration_ms"),
        stdout_bytes=_count(data, "stdout_bytes"),
        stderr_bytes=_count(data, "stderr_bytes"),
    )


def parse_final(payload: bytes) -> Final:
    """The result frame, strictly: raise MalformedResult for anything but the runner's form."""
    if len(payload) > RESULT_MAX:
        raise MalformedResult(f"larger than {RESULT_MAX} bytes")
    try:
        data = json.loads(
            payload.decode("ascii"), parse_constant=_no_constants, object_pairs_hook=_unique
        )
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        if isinstance(e, MalformedResult):
            raise
        raise MalformedResult("not JSON") from None
    if not isinstance(data, dict) or "compile" not in data:
        raise MalformedResult("not a result object")
    raw_compile = data.pop("compile")
    build = None if raw_compile is None else _step(raw_compile, "compile")
    if build is not None and build.exit_code != 0:
        if data:
            raise MalformedResult("a failed build cannot have a run")
        return Final(compile=build, run=None)
    return Final(compile=build, run=_step(data, "result"))


class Reply:
    """Decodes one container's attach stream; keeps `cap` bytes per output stream.

    `ready` once the runner waits for its request, `accepted` once it has read it whole,
    `final` once it reported; `broken` names the first violation of the protocol.
    """

    def __init__(
        self, cap: int, *, ready: bool = False, on_output: OutputSink | None = None
    ) -> None:
        self.cap = cap
        self.on_output = on_output
        self.budget = 4 * cap + (1 << 20)  # more than this from one runner is a broken runner
        self.raw = 0
        self.docker_buf = bytearray()
        self.frame_buf = bytearray()
        self.streams: dict[bytes, bytearray] = {k: bytearray() for k in OUTPUT_KINDS}
        self.diagnostics = bytearray()
        self.ready = ready
        self.accepted = False
        self.final: Final | None = None
        self.broken = ""

    @property
    def done(self) -> bool:
        return self.final is not None or bool(self.broken)

    def feed(self, data: bytes) -> None:
        if self.done:
            if data:
                self.broken = self.broken or "the sandbox sent data after its result"
            return
        self.raw += len(data)
        if self.raw > self.budget:
            self.broken = "the sandbox sent more than its output limits allow"
            return
        self.docker_buf += data
        while len(self.docker_buf) >= _DOCKER_HEADER.size and not self.done:
            kind, size = _DOCKER_HEADER.unpack_from(self.docker_buf)
            end = _DOCKER_HEADER.size + size
            if kind not in (1, 2):
                self.broken = "the sandbox broke Docker's stream framing"
                return
            if len(self.docker_buf) < end:
                break
            payload = bytes(self.docker_buf[_DOCKER_HEADER.size : end])
            del self.docker_buf[:end]
            if kind == 1:
                self._frames(payload)
            elif len(self.diagnostics) < DIAGNOSTICS_MAX:
                self.diagnostics += payload[: DIAGNOSTICS_MAX - len(self.diagnostics)]

    def _frames(self, data: bytes) -> None:
        self.frame_buf += data
        while len(self.frame_buf) >= _FRAME_HEADER.size and not self.done:
            kind, size = _FRAME_HEADER.unpack_from(self.frame_buf)
            if size > FRAME_MAX:
                self.broken = "the sandbox sent an oversized frame"
                return
            end = _FRAME_HEADER.size + size
            if len(self.frame_buf) < end:
                break
            payload = bytes(self.frame_buf[_FRAME_HEADER.size : end])
            del self.frame_buf[:end]
            self._frame(kind, payload)

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind == b"r" and not self.ready and not payload:
            self.ready = True
        elif kind == b"a" and self.ready and not self.accepted and not payload:
            self.accepted = True
        elif kind in self.streams and self.accepted:
            kept = self.streams[kind]
            if len(kept) < self.cap:
                kept += payload[: self.cap - len(kept)]
            if self.on_output is not None:
                self.on_output(kind, payload)
        elif kind == b"R" and self.accepted:
            try:
                self.final = parse_final(payload)
            except MalformedResult as e:
                self.broken = f"the sandbox sent a malformed result ({e})"
        else:
            self.broken = f"the sandbox broke the reply protocol (frame {kind!r} out of order)"

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished frame are waiting."""
        return bool(self.docker_buf or self.frame_buf)

    def text(self, kind: bytes) -> str:
        return decode_capped(bytes(self.streams[kind]), self.cap)


def decode_capped(data: bytes, cap: int) -> str:
    """UTF-8 text of `data` (at most `cap` bytes the program wrote), invalid bytes replaced.

    The cap counts what the program wrote, so nothing is cut after decoding (replacement
    characters take 3 bytes for each invalid one); only a character the cap itself split
    is dropped, whole.
    """
    if len(data) >= cap:
        # Do not end on half a character cut by the cap: a lead byte of a longer sequence
        # than what follows it (bytes that can lead nothing are the program's own).
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 == 0x80:
                continue  # a continuation byte: its lead is further back
            need = _SEQUENCE.get(byte >> 4, 0) if 0xC2 <= byte <= 0xF4 else 0
            if need > back:
                data = data[:-back]
            break
    return data.decode("utf-8", "replace")


_SEQUENCE = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}  # by a lead byte's high nibble
