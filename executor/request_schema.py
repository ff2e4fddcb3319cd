"""The execution request: one marshmallow schema, the single statement of its rules.

The API loads request bodies with it (`@blp.arguments`), the Celery task loads producers'
dicts with it (`parse_request`), and the OpenAPI document is generated from it. A load gives a
`RunRequest`; a bad payload gives marshmallow's errors, naming each bad field
(``{"field": ["message", ...]}``, nested as ``{"files": {"0": {"path": [...]}}}``).

Marshmallow has no schema context, so the class is built per app from its Settings
(`request_schema(settings)`): every bound comes from there. A new request field is one line
here and one field of `RunRequest`.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from executor.budget import MAX_TESTS
from executor.config import Settings
from executor.errors import InvalidRequest
from executor.languages import languages
from executor.models import File, Limits, RunRequest, TestCase
from executor.policy import MIN_CPUS, MIN_MEMORY_MB

MAX_ARGS = 64  # the contract's bound
MAX_ARG_BYTES = 8192  # one argument, in UTF-8
MAX_FILES = 64
MAX_PATH_BYTES = 1024
MAX_OUTPUTS = 16  # glob patterns of files back
MAX_SEGMENT_BYTES = 255  # NAME_MAX on Linux
JSON_OVERHEAD_BYTES = 64 * 1024  # keys, punctuation and the small fields of a request
# Escaping can make the JSON text of a string longer than its UTF-8: an astral character sent
# as ASCII-only JSON ("\ud83d\ude00") takes 12 bytes for 4.
JSON_ESCAPE_FACTOR = 3

NOT_UTF8 = "Not valid UTF-8 text (it holds a lone surrogate)."
NOT_AN_OBJECT = "Invalid input type: expected a JSON object."


def max_body_bytes(settings: Settings) -> int:
    """The largest request body that can hold a valid request (checked before parsing)."""
    strings = (
        settings.max_code_bytes
        + settings.max_stdin_bytes
        + settings.max_files_bytes
        + MAX_ARGS * MAX_ARG_BYTES
        + MAX_FILES * MAX_PATH_BYTES
        + settings.max_tests_bytes
        + MAX_TESTS * MAX_ARGS * 8  # the punctuation of the cases' (possibly empty) args
        + MAX_OUTPUTS * MAX_PATH_BYTES
    )
    return JSON_ESCAPE_FACTOR * strings + JSON_OVERHEAD_BYTES


def _utf8_len(value: str) -> int | None:
    """The length of `value` in UTF-8, or None when it has no UTF-8 form (a lone surrogate)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None


class Utf8Length(validate.Length):
    """`validate.Length` in bytes of UTF-8 (the docs show it as minLength/maxLength)."""

    def __call__(self, value: Any) -> Any:
        size = _utf8_len(value)
        if size is None:
            raise ValidationError(NOT_UTF8)
        if self.min is not None and size < self.min:
            raise ValidationError(
                "Must not be empty." if self.min == 1 else f"Shorter than {self.min} bytes."
            )
        if self.max is not None and size > self.max:
            raise ValidationError(
                f"Longer than maximum length {self.max} bytes of UTF-8 (got {size})."
            )
        return value


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Must not contain a NUL character.")


def _safe_path(path: str) -> None:
    """Raise unless `path` can be an extra file's path: relative, normalized, no `..`."""
    if any(ord(c) < 32 or c == "\x7f" for c in path) or "\\" in path:
        raise ValidationError("Must not contain control characters or backslashes.")
    if path.startswith("/"):
        raise ValidationError("Must be a relative path.")
    segments = path.split("/")
    if any(s == ".." for s in segments):
        raise ValidationError("Must not contain '..'.")
    if any(s in ("", ".") for s in segments) or posixpath.normpath(path) != path:
        raise ValidationError(
            "Must be a normalized path (no empty or '.' segments, no trailing slash)."
        )
    if any(len(s.encode("utf-8")) > MAX_SEGMENT_BYTES for s in segments):
        raise ValidationError(f"Each path segment must be at most {MAX_SEGMENT_BYTES} bytes.")


class JsonNumber(fields.Float):
    """A JSON number: no strings, booleans, NaN or infinities."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, str | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise self.make_error("invalid")
        return float(super()._validated(value))


class JsonInteger(fields.Integer):
    """A JSON integer (64.0 is one); no strings, booleans or fractions."""

    def _validated(self, value: Any) -> int:
        fraction = isinstance(value, float) and not value.is_integer()
        if isinstance(value, str | bool) or fraction:
            raise self.make_error("invalid")
        return int(super()._validated(value))


class FileSchema(Schema):
    path = fields.String(
        required=True,
        validate=[Utf8Length(min=1, max=MAX_PATH_BYTES), _safe_path],
        metadata={"description": "Relative, normalized path beside the program; no '..'."},
    )
    content = fields.String(
        required=True, validate=Utf8Length(min=0), metadata={"description": "The file's text."}
    )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> File:
        return File(**data)


def _args_field(description: str, **kwargs: Any) -> Any:
    return fields.List(
        fields.String(validate=[Utf8Length(max=MAX_ARG_BYTES), _no_nul]),
        validate=validate.Length(max=MAX_ARGS),
        metadata=_doc(description),
        **kwargs,
    )


class TestCaseSchema(Schema):
    """One test case; `test_case_schema()` adds the settings' bounds."""

    __test__ = False  # not a pytest class

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> TestCase:
        args = data.get("args")
        return TestCase(
            stdin=data["stdin"],
            args=None if args is None else tuple(args),
            expected_stdout=data.get("expected_stdout"),
        )


def test_case_schema(settings: Settings) -> type[TestCaseSchema]:
    s = settings

    class TestCaseInputSchema(TestCaseSchema):
        stdin = fields.String(
            load_default="",
            validate=Utf8Length(max=s.max_stdin_bytes),
            metadata=_doc(f"This case's stdin: up to {s.max_stdin_bytes} bytes of UTF-8."),
        )
        args = _args_field(
            "This case's arguments; without them, the request's.",
            load_default=None,
            allow_none=True,
        )
        expected_stdout = fields.String(
            load_default=None,
            allow_none=True,
            validate=Utf8Length(max=s.max_output_bytes),
            metadata=_doc(
                "What stdout should be (trailing whitespace of each line and trailing empty"
                " lines aside): sets `passed`."
            ),
        )

    return TestCaseInputSchema


def _case_bytes(item: Any) -> int:
    """The UTF-8 bytes a test case carries (what is not a string counts for nothing)."""
    if not isinstance(item, dict):
        return 0
    values = [item.get("stdin"), item.get("expected_stdout")]
    args = item.get("args")
    values += args if isinstance(args, list) else []
    return sum((_utf8_len(v) or 0) for v in values if isinstance(v, str))


class RequestSchema(Schema):
    """What every request schema shares; `request_schema()` adds the settings' bounds."""

    error_messages = {"type": NOT_AN_OBJECT}  # noqa: RUF012 - marshmallow's own attribute

    source_files: Mapping[str, str] = {}  # language -> the program's own file name
    images: Mapping[str, tuple[str, ...]] = {}  # language -> its images (EXECUTOR_IMAGES)
    max_files_bytes = 0
    max_tests_bytes = 0
    pids = 0
    tmpfs_mb = 0

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def check_files(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        """Across files: no path twice, none is a directory of another, none is the
        program's own file, and the contents stay within the total."""
        items = original.get("files") if isinstance(original, dict) else None
        if not isinstance(items, list):
            return
        own = self.source_files.get(str(data.get("language", "")), "")
        problems: dict[int, dict[str, list[str]]] = {}
        seen: list[str] = []
        total = 0
        for i, item in enumerate(items):
            path = item.get("path") if isinstance(item, dict) else None
            content = item.get("content") if isinstance(item, dict) else None
            total += (_utf8_len(content) or 0) if isinstance(content, str) else 0
            if not isinstance(path, str) or not _valid(path):
                continue
            problem = _clash(path, own, seen)
            if problem:
                problems[i] = {"path": [problem]}
            else:
                seen.append(path)
        limit = self.max_files_bytes
        errors: dict[str, Any] = {}
        if problems:
            errors["files"] = problems
        if total > limit:
            errors.setdefault("files", {})["_schema"] = [
                f"The files' contents exceed {limit} bytes in total."
            ]
        if errors:
            raise ValidationError(errors)

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def check_tests(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        """The test cases' stdin, args and expected stdout stay within the total."""
        items = original.get("tests") if isinstance(original, dict) else None
        if not isinstance(items, list):
            return
        total = sum(_case_bytes(item) for item in items)
        if total > self.max_tests_bytes:
            message = f"The test cases carry more than {self.max_tests_bytes} bytes in total."
            raise ValidationError({"tests": {"_schema": [message]}})

    @validates_schema(skip_on_field_errors=True)
    def check_image(self, data: dict[str, Any], **_: Any) -> None:
        """An image, when asked for, is one the operator approved for the language."""
        image, language = data.get("image"), str(data.get("language", ""))
        if image is not None and image not in self.images.get(language, ()):
            raise ValidationError({"image": [f"Not an approved image for {language}."]})

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RunRequest:
        limits = Limits(**data.pop("limits"), pids=self.pids, tmpfs_mb=self.tmpfs_mb)
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return RunRequest(limits=limits, **values)


def _valid(path: str) -> bool:
    try:
        Utf8Length(min=1, max=MAX_PATH_BYTES)(path)
        _safe_path(path)
    except ValidationError:
        return False
    return True


def _clash(path: str, own: str, seen: list[str]) -> str:
    if path == own:
        return f"Must not be {own!r}, the program's own file."
    if path in seen:
        return "Duplicate path."
    for other in seen:
        if other.startswith(path + "/") or path.startswith(other + "/"):
            return f"Conflicts with {other!r} (a file cannot also be a directory)."
    return ""


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


def request_schema(settings: Settings) -> type[RequestSchema]:
    """The request schema with every bound of `settings` (one class per app or worker)."""
    s = settings
    known = languages(s)
    sources = {name: lang.source_file for name, lang in known.items()}

    class ExecutionRequestSchema(RequestSchema):
        source_files = sources
        images = {name: (lang.image, *lang.extra_images) for name, lang in known.items()}  # noqa: RUF012
        max_files_bytes = s.max_files_bytes
        max_tests_bytes = s.max_tests_bytes
        pids = s.pids_limit
        tmpfs_mb = s.tmpfs_mb

        code = fields.String(
            required=True,
            validate=Utf8Length(min=1, max=s.max_code_bytes),
            metadata=_doc(f"The program: 1 to {s.max_code_bytes} bytes of UTF-8."),
        )
        language = fields.String(
            load_default="python",
            validate=validate.OneOf(sorted(sources)),
            metadata=_doc("See /languages."),
        )
        stdin = fields.String(
            load_default="",
            validate=Utf8Length(max=s.max_stdin_bytes),
            metadata=_doc(f"Up to {s.max_stdin_bytes} bytes of UTF-8."),
        )
        args = _args_field("The program's arguments (no NUL characters).", load_default=list)
        files = fields.List(
            fields.Nested(FileSchema),
            load_default=list,
            validate=validate.Length(max=MAX_FILES),
            metadata=_doc(
                f"Extra files beside the program, {s.max_files_bytes} bytes in all;"
                " the program's own file name is reserved."
            ),
        )
        timeout = JsonNumber(
            attribute="limits.timeout",
            load_default=s.default_timeout,
            validate=validate.Range(min=0, max=s.max_timeout, min_inclusive=False),
            metadata=_doc(f"Seconds: more than 0, at most {s.max_timeout:g}."),
        )
        memory_mb = JsonInteger(
            attribute="limits.memory_mb",
            load_default=s.default_memory_mb,
            validate=validate.Range(min=MIN_MEMORY_MB, max=s.max_memory_mb),
        )
        cpus = JsonNumber(
            attribute="limits.cpus",
            load_default=s.default_cpus,
            validate=validate.Range(min=MIN_CPUS, max=s.max_cpus),
        )
        tests = fields.List(
            fields.Nested(test_case_schema(s)),
            load_default=list,
            validate=validate.Length(max=MAX_TESTS),
            metadata=_doc(
                f"Test cases: the program is built once and runs once per case, in order, each"
                f" with the whole timeout and limits (up to {MAX_TESTS} cases,"
                f" {s.max_tests_bytes} bytes in all). The top-level stdin is then unused."
            ),
        )
        outputs = fields.List(
            fields.String(validate=[Utf8Length(min=1, max=MAX_PATH_BYTES), _safe_path]),
            load_default=list,
            validate=validate.Length(max=MAX_OUTPUTS),
            metadata=_doc(
                "Glob patterns (relative to the working directory, no '..'; * and ? within a"
                " directory, ** across them) of the files to send back in `files`."
            ),
        )
        image = fields.String(
            load_default=None,
            allow_none=True,
            validate=Utf8Length(min=1, max=256),
            metadata=_doc("An operator-approved image for the language (EXECUTOR_IMAGES)."),
        )

    return ExecutionRequestSchema


def invalid(error: ValidationError) -> InvalidRequest:
    """The InvalidRequest (422) of a failed load, naming each bad field."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    named = [str(name) for name in messages if name != "_schema"]
    whole = [str(m) for m in messages.get("_schema", [])]  # the body as a whole
    return InvalidRequest(f"invalid request: {'; '.join(sorted(named) + whole)}", messages)


def parse_request(schema: Schema, payload: Any) -> RunRequest:
    """The `RunRequest` of `payload`, or InvalidRequest naming each bad field."""
    try:
        request: RunRequest = schema.load(payload)
    except ValidationError as e:
        raise invalid(e) from None
    return request
