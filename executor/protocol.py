"""The worker's half of the runner's wire protocol (the runner's half is executor/runner.py).

`encode_request()` makes the one request a runner reads; `Reply` decodes what comes back over
the attach stream: Docker's stream framing first, then the runner's own frames.

Nothing read from a container is trusted. The runner's reply channel is out of the program's
reach by construction (see runner.py), yet the decoder holds whatever arrives to the protocol:
frames in their order (ready, accepted, output, one result), each frame and the whole reply
within bounds, output kept up to the cap, each case's and the whole result strictly typed and
bounded, files back and build products within their caps with safe relative paths. Anything
else marks the reply broken, with a reason; the sandbox then kills the container and reports
the program's `error`. Nothing here raises on bad input.
"""

from __future__ import annotations

import json
import posixpath
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
# The ready frame's payload: the runner's features, space-separated (none from older runners).
_FEATURES = re.compile(rb"(?:[a-z]{1,16}(?: [a-z]{1,16}){0,7})?")
PRESTART = b"prestart"  # the runner starts a runtime in advance (encode_prestart)
STAGE = b"stage"  # the runner takes a build's products in advance (encode_stage)
_INT_MAX = 1 << 53
OUTPUT_KINDS = (b"O", b"E", b"o", b"e")  # program stdout, stderr; build stdout, stderr
PRODUCT_FILES_MAX = 1024  # files one build may give back to the build cache
# Called with (kind, payload) of each output frame as it is read, whole (before any cap):
# live output (executor.output). It must not block, nor raise.
OutputSink = Callable[[bytes, bytes], None]


@dataclass(frozen=True)
class Product:
    """One file a build made: a normalized relative path in the working directory, whether it
    is executable, its bytes."""

    path: str
    executable: bool
    data: bytes


def encode_request(
    request: RunRequest,
    language: Language,
    max_output: int,
    files_caps: tuple[int, int] = (0, 0),
    tests_output: int = 0,
    *,
    products_max: int = 0,
    prebuilt: tuple[Product, ...] | None = None,
    staged: bool = False,
) -> bytes:
    """The runner's request: b"<length>\\n" then fields b"<name> <length>\\n<raw value>".

    The language's command and environment templates are filled in here (see
    executor.languages): the runner only runs what it is given. `files_caps` is
    (max_files, max_files_bytes) of the files back, `tests_output` what the test cases'
    output may come to together. `products_max` > 0 asks for the build's products back (up
    to that many bytes, executor.build_cache); `prebuilt` are an identical build's products,
    written in place of the build, which then does not run; `staged`: those products are the
    ones the container took in advance (encode_stage), so only that is said.
    """
    program = steps(language, request.code, request.limits.memory_mb)
    if prebuilt is not None:
        program = replace(program, compile=None)
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
    if program.compile and products_max > 0 and language.products:
        fields += [("product", pattern) for pattern in language.products]
        fields += [("max_products", str(PRODUCT_FILES_MAX))]
        fields += [("max_products_bytes", str(products_max))]
    if staged and prebuilt is not None:
        fields += [("staged", "1")]
    else:
        fields += _product_fields(prebuilt or ())
    for case in request.tests:
        args = request.args if case.args is None else case.args
        fields += [("case", case.stdin), ("case_args", "".join(f"{a}\0" for a in args))]
    if request.tests:
        fields += [("max_total_output", str(tests_output))]
    if request.outputs:
        fields += [("output", pattern) for pattern in request.outputs]
        fields += [("max_files", str(files_caps[0])), ("max_files_bytes", str(files_caps[1]))]
    return _frame_fields(fields)


def _product_fields(products: Sequence[Product]) -> list[tuple[str, str | bytes]]:
    fields: list[tuple[str, str | bytes]] = []
    for product in products:
        mode = "755" if product.executable else "644"
        fields += [("built", f"{mode} {product.path}"), ("built_content", product.data)]
    return fields


def encode_stage(products: Sequence[Product]) -> bytes:
    """The message that has a warm container's runner write a cached build's products before
    its request comes (see executor.runner): a request for that very build then says it is
    `staged` instead of carrying them; any other has them removed first."""
    return _frame_fields([("stage", "1"), *_product_fields(products)])


def staging_collides(paths: Sequence[str], products: Sequence[Product]) -> bool:
    """Whether a request that writes `paths` (its source and extra files) would write over,
    or in the place of a directory of, one of `products`, written before them when staged
    (after them otherwise): then the request carries its products, and the staged are
    removed."""
    files = {posixpath.normpath(p.path) for p in products}
    directories = {d for f in files for d in _parents(f)}
    for path in paths:
        norm = posixpath.normpath(path)
        if norm in files or norm in directories or any(d in files for d in _parents(norm)):
            return True
    return False


def _parents(path: str) -> list[str]:
    """The directories above a relative path, nearest first ("a/b/c" -> "a/b", "a")."""
    parents = []
    while (path := posixpath.dirname(path)) not in ("", "."):
        parents.append(path)
    return parents


def _frame_fields(fields: Sequence[tuple[str, str | bytes]]) -> bytes:
    parts = []
    for name, value in fields:
        data = value.encode("utf-8") if isinstance(value, str) else value
        parts += [b"%s %d\n" % (name.encode(), len(data)), data]
    body = b"".join(parts)
    return b"%d\n" % len(body) + body


def encode_prestart(language: Language, memory_mb: int, nproc: int, held: bool = False) -> bytes:
    """The message that has a warm container's runner start the run's runtime in advance
    (sent before the request; see executor.runner): the command that starts it, and the run
    command, environment and process limit it stands for. A request that asks for another
    run, environment or limit is run afresh, and the pre-started runtime killed unused.
    `held`: the runtime's process is held before its main() (images/language/hold.c), not
    once it has started (EXECUTOR_PRESTART)."""
    program = steps(language, "", memory_mb)
    fields = [("launch", item) for item in program.prestart]
    fields += [("hold", "1")] if held else []
    fields += [("run", item) for item in program.run]
    fields += [("env", f"{name}={value}") for name, value in program.env]
    fields += [("nproc", str(nproc))]
    return _frame_fields(fields)


@dataclass(frozen=True)
class Usage:
    """What the kernel accounted to a step's processes."""

    cpu_ms: int  # user + system
    memory_bytes: int  # peak resident set


@dataclass(frozen=True)
class Step:
    """What the runner reports of one step (the build, or one run of the program)."""

    exit_code: int | None  # 0..255; None when it did not exit by itself
    signal: str | None  # "SIGKILL"...
    timed_out: bool
    oom: bool
    duration_ms: int
    stdout_bytes: int  # written by the program, kept or not
    stderr_bytes: int
    usage: Usage


@dataclass(frozen=True)
class Final:
    """The runner's last word: whether a cap left files out. The build and the runs are
    reported by their own frames (b"B", b"T") as each ends."""

    files_truncated: bool


@dataclass
class CaseReply:
    """One run of the program (a test case, or the one run without them) as it arrives."""

    streams: dict[bytes, bytearray] = field(
        default_factory=lambda: {b"O": bytearray(), b"E": bytearray()}
    )
    step: Step | None = None  # set by its b"T" frame


@dataclass
class FileReply:
    """One file back: its path and size from its b"F" frame, its content as it arrives."""

    path: str
    size: int
    data: bytearray = field(default_factory=bytearray)


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
    (
        "exit_code",
        "signal",
        "timed_out",
        "oom",
        "duration_ms",
        "stdout_bytes",
        "stderr_bytes",
        "usage",
    )
)
_USAGE_KEYS = frozenset(("cpu_ms", "memory_bytes"))
_FINAL_KEYS = frozenset(("files_truncated",))


def _count(data: dict[str, Any], key: str, where: str = "") -> int:
    value = data[key]
    if type(value) is not int or not 0 <= value < _INT_MAX:
        raise MalformedResult(f"{where}{key} must be a non-negative integer")
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
    usage = data["usage"]
    if not isinstance(usage, dict) or set(usage) != _USAGE_KEYS:
        raise MalformedResult(f"{where}.usage must hold exactly {sorted(_USAGE_KEYS)}")
    return Step(
        exit_code=exit_code,
        signal=sig,
        timed_out=data["timed_out"],
        oom=data["oom"],
        duration_ms=_count(data, "duration_ms"),
        stdout_bytes=_count(data, "stdout_bytes"),
        stderr_bytes=_count(data, "stderr_bytes"),
        usage=Usage(_count(usage, "cpu_ms", "usage."), _count(usage, "memory_bytes", "usage.")),
    )


def _json_object(payload: bytes) -> Any:
    if len(payload) > RESULT_MAX:
        raise MalformedResult(f"larger than {RESULT_MAX} bytes")
    try:
        return json.loads(
            payload.decode("ascii"), parse_constant=_no_constants, object_pairs_hook=_unique
        )
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        if isinstance(e, MalformedResult):
            raise
        raise MalformedResult("not JSON") from None


def parse_step(payload: bytes, where: str = "result") -> Step:
    """A b"T" (or b"B") frame, strictly: raise MalformedResult for anything but the runner's
    form."""
    return _step(_json_object(payload), where)


def parse_final(payload: bytes) -> Final:
    """The result frame, strictly: raise MalformedResult for anything but the runner's form."""
    data = _json_object(payload)
    if not isinstance(data, dict) or set(data) != _FINAL_KEYS:
        raise MalformedResult(f"not a result object of exactly {sorted(_FINAL_KEYS)}")
    if type(data["files_truncated"]) is not bool:
        raise MalformedResult("files_truncated must be a boolean")
    return Final(files_truncated=data["files_truncated"])


MAX_FILE_PATH_BYTES = 4096  # PATH_MAX


def _relative_path(raw: bytes) -> str:
    """A normalized relative UTF-8 path, without '..' or control characters."""
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResult("a file path must be UTF-8") from None
    segments = path.split("/")
    if (
        path.startswith("/")
        or any(s in ("", ".", "..") for s in segments)
        or any(ord(c) < 32 for c in path)
    ):
        raise MalformedResult("a file path must be relative and normalized, without '..'")
    return path


def _size(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 15:
        raise MalformedResult("a size must be a decimal number")
    return int(raw)


def _file_header(payload: bytes) -> tuple[str, int]:
    """(path, size) of a b"F" frame: b"<size> <path>", a normalized relative UTF-8 path."""
    size, sep, raw = payload.partition(b" ")
    if not sep or not size.isdigit() or len(size) > 15 or not 0 < len(raw) <= MAX_FILE_PATH_BYTES:
        raise MalformedResult("a file header must be b'<size> <path>'")
    return _relative_path(raw), int(size)


_PRODUCT_MODES = {b"644": False, b"755": True}  # all a build product may be


def _product_header(payload: bytes) -> tuple[str, bool, int]:
    """(path, executable, size) of a b"P" frame: b"<644|755> <size> <path>"."""
    mode, sep, rest = payload.partition(b" ")
    size, sep2, raw = rest.partition(b" ")
    if not (sep and sep2) or mode not in _PRODUCT_MODES:
        raise MalformedResult("a build product's header must be b'<644|755> <size> <path>'")
    if not 0 < len(raw) <= MAX_FILE_PATH_BYTES:
        raise MalformedResult("a build product's path must be 1 to 4096 bytes")
    return _relative_path(raw), _PRODUCT_MODES[mode], _size(size)


def _append(current: FileReply, payload: bytes, what: str) -> None:
    """A content frame of a file back or a build product: never empty, never past its size."""
    if len(current.data) + len(payload) > current.size or not payload:
        raise MalformedResult(f"{what}'s content exceeds its size")
    current.data += payload


class Reply:
    """Decodes one container's attach stream; keeps `cap` bytes per output stream and step.

    `ready` once the runner waits for its request, `accepted` once it has read it whole,
    `final` once it reported; `broken` names the first violation of the protocol. `cases` is
    how many runs the request asked for (its test cases, or 1), `cases_output` what is kept of
    all their output together (None: each run's streams up to the cap); `max_files` and
    `max_files_bytes` bound the files back. `products_max` > 0: the build's products were
    asked for, up to that many bytes (b"P"/b"Q", after a successful build, before any case).
    """

    def __init__(
        self,
        cap: int,
        *,
        ready: bool = False,
        cases: int = 1,
        cases_output: int | None = None,
        max_files: int = 0,
        max_files_bytes: int = 0,
        on_output: OutputSink | None = None,
        products_max: int = 0,
    ) -> None:
        self.cap = cap
        self.on_output = on_output
        self.expected_cases = cases
        self.cases_output_left = 2 * cap * cases if cases_output is None else cases_output
        self.max_files = max_files
        self.max_files_bytes = max_files_bytes
        # More than this from one runner is a broken runner: the build's streams at their cap,
        # the runs' output, the files, and the framing of it all (at most 13 bytes per 64 KiB
        # frame).
        self.budget = 2 * (2 * cap + self.cases_output_left + max_files_bytes) + (1 << 20)
        if products_max:  # and the build's products, their headers and framing
            self.budget += 2 * products_max + PRODUCT_FILES_MAX * (MAX_FILE_PATH_BYTES + 32)
        self.products_max = products_max
        self.built: list[FileReply] = []  # the build's products, when asked for
        self.built_executable: list[bool] = []
        self.built_bytes = 0
        self.raw = 0
        self.docker_buf = bytearray()
        self.frame_buf = bytearray()
        self.build: dict[bytes, bytearray] = {b"o": bytearray(), b"e": bytearray()}
        self.build_step: Step | None = None  # compiled languages, once the build ended
        self.cases: list[CaseReply] = []
        self.files: list[FileReply] = []
        self.files_bytes = 0
        self.diagnostics = bytearray()
        self.ready = ready
        self.features: frozenset[bytes] = frozenset()  # what the runner said it can do
        self.accepted = False
        self.final: Final | None = None
        self.broken = ""

    @property
    def done(self) -> bool:
        return self.final is not None or bool(self.broken)

    @property
    def open_case(self) -> CaseReply | None:
        """The case whose output is arriving (started, not yet ended)."""
        return self.cases[-1] if self.cases and self.cases[-1].step is None else None

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
            try:
                self._frame(kind, payload)
            except MalformedResult as e:
                self.broken = f"the sandbox sent a malformed result ({e})"

    def _frame(self, kind: bytes, payload: bytes) -> None:
        case = self.open_case
        if kind == b"r" and not self.ready and _FEATURES.fullmatch(payload):
            self.ready = True
            self.features = frozenset(payload.split())
        elif kind == b"a" and self.ready and not self.accepted and not payload:
            self.accepted = True
        elif kind in OUTPUT_KINDS and self.accepted and self._may_output(kind, case):
            self._output(kind, payload, case)
        elif kind == b"P" and self._may_send_product():
            self._product(payload)
        elif kind == b"Q" and self.built and not self._product_complete():
            _append(self.built[-1], payload, "a build product")
        elif (
            kind == b"c"
            and self.accepted
            and case is None
            and not self.files
            and self._product_complete()
        ):
            if payload != b"%d" % len(self.cases) or len(self.cases) >= self.expected_cases:
                raise MalformedResult(f"unexpected case {payload[:20]!r}")
            self.cases.append(CaseReply())
        elif kind == b"T" and case is not None:
            case.step = parse_step(payload)
        elif kind == b"B" and self.accepted and self.build_step is None and not self.cases:
            self.build_step = parse_step(payload, "compile")
        elif kind == b"F" and self.accepted and case is None and self._file_complete():
            self._file(payload)
        elif kind == b"D" and self.files and not self._file_complete():
            _append(self.files[-1], payload, "a file")
        elif (
            kind == b"R"
            and self.accepted
            and case is None
            and self._file_complete()
            and self._product_complete()
        ):
            final = parse_final(payload)
            ran = self.build_step is None or self.build_step.exit_code == 0
            if len(self.cases) != (self.expected_cases if ran else 0):
                raise MalformedResult(f"{len(self.cases)} runs of {self.expected_cases}")
            self.final = final
        else:
            self.broken = f"the sandbox broke the reply protocol (frame {kind!r} out of order)"

    def _may_output(self, kind: bytes, case: CaseReply | None) -> bool:
        """Build output comes before any case; a case's output between its b"c" and b"T"."""
        if kind in self.build:
            return not self.cases and self.build_step is None
        return case is not None

    def _output(self, kind: bytes, payload: bytes, case: CaseReply | None) -> None:
        """Every chunk of output passes here, in the order the program wrote it: the build's
        (case None) and each case's; kept up to the cap."""
        if case is None:
            kept = self.build[kind]
            kept += payload[: max(0, self.cap - len(kept))]
            return
        kept = case.streams[kind]
        room = max(0, min(self.cap - len(kept), self.cases_output_left))
        kept += payload[:room]
        self.cases_output_left -= min(room, len(payload))
        if self.on_output is not None:  # live output: the program's, whole (the sink caps it)
            self.on_output(kind, payload)

    def _may_send_product(self) -> bool:
        """Products come only when asked for, after a successful build, before any case."""
        build = self.build_step
        return (
            self.products_max > 0
            and build is not None
            and build.exit_code == 0
            and not self.cases
            and self._product_complete()
        )

    def _product(self, payload: bytes) -> None:
        path, executable, size = _product_header(payload)
        if len(self.built) >= PRODUCT_FILES_MAX:
            raise MalformedResult(f"more than {PRODUCT_FILES_MAX} build products")
        if self.built_bytes + size > self.products_max:
            raise MalformedResult(f"build products of more than {self.products_max} bytes")
        if any(p.path == path for p in self.built):
            raise MalformedResult("a build product sent twice")
        self.built_bytes += size
        self.built.append(FileReply(path, size))
        self.built_executable.append(executable)

    def _product_complete(self) -> bool:
        return not self.built or len(self.built[-1].data) == self.built[-1].size

    @property
    def products(self) -> tuple[Product, ...]:
        """The build's products, whole (none while one is still arriving, or none came)."""
        if not self._product_complete():
            return ()
        return tuple(
            Product(p.path, executable, bytes(p.data))
            for p, executable in zip(self.built, self.built_executable, strict=True)
        )

    def _file_complete(self) -> bool:
        return not self.files or len(self.files[-1].data) == self.files[-1].size

    def _file(self, payload: bytes) -> None:
        path, size = _file_header(payload)
        if len(self.files) >= self.max_files:
            raise MalformedResult(f"more than {self.max_files} files")
        if self.files_bytes + size > self.max_files_bytes:
            raise MalformedResult(f"files of more than {self.max_files_bytes} bytes")
        if any(f.path == path for f in self.files):
            raise MalformedResult("a file sent twice")
        self.files_bytes += size
        self.files.append(FileReply(path, size))

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished frame are waiting."""
        return bool(self.docker_buf or self.frame_buf)

    def build_text(self, kind: bytes) -> str:
        return decode_capped(bytes(self.build[kind]), self.cap)

    def case_text(self, case: CaseReply, kind: bytes) -> str:
        return decode_capped(bytes(case.streams[kind]), self.cap)


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
