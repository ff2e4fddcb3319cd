"""The one check of an execution request, shared by the HTTP layer and the Celery task.

Queue producers bypass HTTP, so the task validates its input with the same function the API
uses: `parse_request(payload, bounds)` turns the contract's request body into a `RunRequest`,
or raises `InvalidRequest` whose `errors` name every bad field, marshmallow-style
(``{"field": ["message", ...]}``, nested as ``{"files": {"0": {"path": [...]}}}``).

`Bounds` holds every limit, derived from Settings and the contract; the OpenAPI schemas
(executor.web.schemas) are generated from the same `Bounds`, so the docs cannot drift from
what is enforced.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass, field
from typing import Any

from executor.config import Settings
from executor.errors import InvalidRequest
from executor.languages import languages
from executor.models import File, Limits, RunRequest
from executor.policy import MIN_CPUS, MIN_MEMORY_MB

MAX_ARGS = 64  # the contract's bound
MAX_ARG_BYTES = 8192  # one argument, in UTF-8
MAX_FILES = 64
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux
JSON_OVERHEAD_BYTES = 64 * 1024  # keys, punctuation and the small fields of a request
# Escaping can make the JSON text of a string longer than its UTF-8: an astral character sent
# as ASCII-only JSON ("\ud83d\ude00") takes 12 bytes for 4.
JSON_ESCAPE_FACTOR = 3

NOT_UTF8 = "Not valid UTF-8 text (it holds a lone surrogate)."
FIELDS = ("code", "language", "stdin", "args", "files", "timeout", "memory_mb", "cpus", "image")


@dataclass(frozen=True)
class Bounds:
    """Every limit a request is checked against."""

    max_code_bytes: int
    max_stdin_bytes: int
    max_files_bytes: int
    max_timeout: float
    max_memory_mb: int
    max_cpus: float
    default_timeout: float
    default_memory_mb: int
    default_cpus: float
    pids: int
    tmpfs_mb: int
    languages: dict[str, str]  # name -> the program's own file name, which files may not use
    min_memory_mb: int = MIN_MEMORY_MB
    min_cpus: float = MIN_CPUS
    max_args: int = MAX_ARGS
    max_arg_bytes: int = MAX_ARG_BYTES
    max_files: int = MAX_FILES
    images: dict[str, tuple[str, ...]] = field(default_factory=dict)  # language -> approved

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        return cls(
            max_code_bytes=settings.max_code_bytes,
            max_stdin_bytes=settings.max_stdin_bytes,
            max_files_bytes=settings.max_files_bytes,
            max_timeout=settings.max_timeout,
            max_memory_mb=settings.max_memory_mb,
            max_cpus=settings.max_cpus,
            default_timeout=settings.default_timeout,
            default_memory_mb=settings.default_memory_mb,
            default_cpus=settings.default_cpus,
            pids=settings.pids_limit,
            tmpfs_mb=settings.tmpfs_mb,
            languages={name: lang.source_file for name, lang in languages(settings).items()},
            images={
                name: (lang.image, *lang.extra_images) for name, lang in languages(settings).items()
            },
        )

    @property
    def max_body_bytes(self) -> int:
        """The largest request body that can hold a valid request (checked before parsing)."""
        strings = (
            self.max_code_bytes
            + self.max_stdin_bytes
            + self.max_files_bytes
            + self.max_args * self.max_arg_bytes
            + self.max_files * MAX_PATH_BYTES
        )
        return JSON_ESCAPE_FACTOR * strings + JSON_OVERHEAD_BYTES


def parse_request(payload: Any, bounds: Bounds) -> RunRequest:
    """The `RunRequest` of a request body, or InvalidRequest naming each bad field."""
    if not isinstance(payload, dict):
        raise InvalidRequest(
            "the request body must be a JSON object",
            {"_schema": ["Invalid input type: expected a JSON object."]},
        )
    check = _Checker(bounds)
    request = check.request(payload)
    if request is None:
        names = ", ".join(sorted(check.errors))
        raise InvalidRequest(f"invalid request: {names}", check.errors)
    return request


class _Checker:
    """Reads one request field by field, collecting every problem instead of stopping."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.errors: dict[str, Any] = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def request(self, payload: dict[str, Any]) -> RunRequest | None:
        b = self.bounds
        for key in payload:
            if key not in FIELDS:
                self.fail(str(key), "Unknown field.")
        if "code" not in payload:
            self.fail("code", "Missing data for required field.")
        code = self.text(payload, "code", "", 1, b.max_code_bytes)
        language = self.language(payload)
        stdin = self.text(payload, "stdin", "", 0, b.max_stdin_bytes)
        args = self.args(payload)
        files = self.files(payload, b.languages.get(language, ""))
        timeout = self.number(payload, "timeout", b.default_timeout, 0.0, b.max_timeout, True)
        memory_mb = self.integer(payload, "memory_mb", b.default_memory_mb)
        cpus = self.number(payload, "cpus", b.default_cpus, b.min_cpus, b.max_cpus, False)
        image = self.text(payload, "image", "", 1, 256) or None
        if image is not None and image not in b.images.get(language, ()):
            self.fail("image", f"Not an approved image for {language}.")
        if self.errors:
            return None
        limits = Limits(
            timeout=timeout, memory_mb=memory_mb, cpus=cpus, pids=b.pids, tmpfs_mb=b.tmpfs_mb
        )
        return RunRequest(
            code=code, limits=limits, language=language, stdin=stdin, args=args, files=files,
            image=image,
        )  # fmt: skip

    def present(self, payload: dict[str, Any], field: str) -> bool:
        if field not in payload:
            return False
        if payload[field] is None:
            self.fail(field, "Field may not be null.")
            return False
        return True

    def text(self, payload: dict[str, Any], field: str, default: str, least: int, most: int) -> str:
        if not self.present(payload, field):
            return default
        value = payload[field]
        if not isinstance(value, str):
            self.fail(field, "Not a valid string.")
            return default
        problem = _utf8_size_problem(value, least, most)
        if problem:
            self.fail(field, problem)
        return value

    def language(self, payload: dict[str, Any]) -> str:
        if not self.present(payload, "language"):
            return "python"
        value = payload["language"]
        if not isinstance(value, str):
            self.fail("language", "Not a valid string.")
            return "python"
        if value not in self.bounds.languages:
            known = ", ".join(sorted(self.bounds.languages))
            self.fail("language", f"Must be one of: {known}.")
        return value

    def args(self, payload: dict[str, Any]) -> tuple[str, ...]:
        if not self.present(payload, "args"):
            return ()
        value = payload["args"]
        if not isinstance(value, list):
            self.fail("args", "Not a valid list.")
            return ()
        if len(value) > self.bounds.max_args:
            self.fail("args", f"Longer than maximum length {self.bounds.max_args}.")
        problems: dict[str, list[str]] = {}
        for i, arg in enumerate(value):
            if not isinstance(arg, str):
                problems[str(i)] = ["Not a valid string."]
            elif "\x00" in arg:
                problems[str(i)] = ["Must not contain a NUL character."]
            elif problem := _utf8_size_problem(arg, 0, self.bounds.max_arg_bytes):
                problems[str(i)] = [problem]
        if problems:
            self.errors.setdefault("args", [])
            self._merge("args", problems)
        return tuple(a for a in value if isinstance(a, str))

    def files(self, payload: dict[str, Any], source_file: str) -> tuple[File, ...]:
        if not self.present(payload, "files"):
            return ()
        value = payload["files"]
        if not isinstance(value, list):
            self.fail("files", "Not a valid list.")
            return ()
        b = self.bounds
        if len(value) > b.max_files:
            self.fail("files", f"Longer than maximum length {b.max_files}.")
        problems: dict[str, dict[str, list[str]]] = {}
        files: list[File] = []
        seen: set[str] = set()
        total = 0
        for i, item in enumerate(value):
            where = problems.setdefault(str(i), {})
            if not isinstance(item, dict):
                where["_schema"] = ["Invalid input type: expected an object with path and content."]
                continue
            for key in item:
                if key not in ("path", "content"):
                    where.setdefault(str(key), []).append("Unknown field.")
            path, content = item.get("path"), item.get("content")
            if "path" not in item:
                where.setdefault("path", []).append("Missing data for required field.")
            elif not isinstance(path, str):
                where.setdefault("path", []).append("Not a valid string.")
            elif problem := _path_problem(path, source_file, seen):
                where.setdefault("path", []).append(problem)
            if "content" not in item:
                where.setdefault("content", []).append("Missing data for required field.")
            elif not isinstance(content, str):
                where.setdefault("content", []).append("Not a valid string.")
            elif (size := _utf8_len(content)) is None:
                where.setdefault("content", []).append(NOT_UTF8)
            else:
                total += size
            if not where and isinstance(path, str) and isinstance(content, str):
                seen.add(path)
                files.append(File(path=path, content=content))
        problems = {i: p for i, p in problems.items() if p}
        if total > b.max_files_bytes:
            self.fail("files", f"The files' contents exceed {b.max_files_bytes} bytes in total.")
        if problems:
            self.errors.setdefault("files", [])
            self._merge("files", problems)
        return tuple(files)

    def _merge(self, field: str, nested: dict[str, Any]) -> None:
        """Marshmallow's shape for a list: own messages under `_schema`, items by index."""
        own = self.errors.get(field) or []
        merged: dict[str, Any] = dict(nested)
        if own:
            merged["_schema"] = own
        self.errors[field] = merged

    def number(
        self,
        payload: dict[str, Any],
        field: str,
        default: float,
        least: float,
        most: float,
        exclusive: bool,
    ) -> float:
        if not self.present(payload, field):
            return default
        value = payload[field]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(field, "Not a valid number.")
            return default
        number = float(value)
        if not math.isfinite(number):
            self.fail(field, "Not a valid number.")
            return default
        low_ok = number > least if exclusive else number >= least
        if not low_ok or number > most:
            low = "greater than" if exclusive else "greater than or equal to"
            self.fail(field, f"Must be {low} {least:g} and less than or equal to {most:g}.")
        return number

    def integer(self, payload: dict[str, Any], field: str, default: int) -> int:
        if not self.present(payload, field):
            return default
        value = payload[field]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, "Not a valid integer.")
            return default
        b = self.bounds
        if not b.min_memory_mb <= value <= b.max_memory_mb:
            self.fail(
                field,
                f"Must be greater than or equal to {b.min_memory_mb}"
                f" and less than or equal to {b.max_memory_mb}.",
            )
        return value


def _utf8_len(value: str) -> int | None:
    """The length of `value` in UTF-8, or None when it has no UTF-8 form (a lone surrogate)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _utf8_size_problem(value: str, least: int, most: int) -> str:
    size = _utf8_len(value)
    if size is None:
        return NOT_UTF8
    if size < least:
        return "Must not be empty." if least == 1 else f"Shorter than {least} bytes."
    if size > most:
        return f"Longer than maximum length {most} bytes of UTF-8 (got {size})."
    return ""


def _path_problem(path: str, source_file: str, seen: set[str]) -> str:
    """Why `path` cannot be an extra file's path, or "" when it can."""
    if not path:
        return "Must not be empty."
    size = _utf8_len(path)
    if size is None:
        return NOT_UTF8
    if size > MAX_PATH_BYTES:
        return f"Longer than maximum length {MAX_PATH_BYTES} bytes."
    if any(ord(c) < 32 or c == "\x7f" for c in path) or "\\" in path:
        return "Must not contain control characters or backslashes."
    if path.startswith("/"):
        return "Must be a relative path."
    segments = path.split("/")
    if any(s == ".." for s in segments):
        return "Must not contain '..'."
    if any(s in ("", ".") for s in segments) or posixpath.normpath(path) != path:
        return "Must be a normalized path (no empty or '.' segments, no trailing slash)."
    if any(len(s.encode("utf-8")) > MAX_SEGMENT_BYTES for s in segments):
        return f"Each path segment must be at most {MAX_SEGMENT_BYTES} bytes."
    if path == source_file:
        return f"Must not be {source_file!r}, the program's own file."
    if path in seen:
        return "Duplicate path."
    for other in seen:
        if other.startswith(path + "/") or path.startswith(other + "/"):
            return f"Conflicts with {other!r} (a file cannot also be a directory)."
    return ""
