"""One schema for every request, HTTP or queued: what passes, and how each failure is named."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from executor.budget import MAX_TESTS
from executor.config import Settings
from executor.errors import InvalidRequest
from executor.models import File, Limits, TestCase
from executor.request_schema import (
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_FILES,
    MAX_OUTPUTS,
    RequestSchema,
    max_body_bytes,
    parse_request,
    request_schema,
)

SETTINGS = Settings.from_env({"HOSTNAME": "unit"})
SCHEMA = request_schema(SETTINGS)()


def errors_of(payload: Any, schema: RequestSchema = SCHEMA) -> dict[Any, Any]:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(schema, payload)
    assert caught.value.status == 422
    assert caught.value.errors
    return caught.value.errors


def test_defaults_fill_a_minimal_request():
    request = parse_request(SCHEMA, {"code": "print(1)"})
    assert request.code == "print(1)"
    assert request.language == "python"
    assert (request.stdin, request.args, request.files) == ("", (), ())
    assert request.limits == Limits(
        timeout=SETTINGS.default_timeout,
        memory_mb=SETTINGS.default_memory_mb,
        cpus=SETTINGS.default_cpus,
        pids=SETTINGS.pids_limit,
        tmpfs_mb=SETTINGS.tmpfs_mb,
    )


def test_every_field_is_read():
    request = parse_request(
        SCHEMA,
        {
            "code": "x",
            "language": "python",
            "stdin": "in",
            "args": ["a b", "--x"],
            "files": [{"path": "pkg/helper.py", "content": "X = 1"}],
            "timeout": 2,
            "memory_mb": 64,
            "cpus": 0.25,
        },
    )
    assert request.args == ("a b", "--x")
    assert request.files == (File("pkg/helper.py", "X = 1"),)
    assert (request.limits.timeout, request.limits.memory_mb, request.limits.cpus) == (
        2.0,
        64,
        0.25,
    )
    assert isinstance(request.limits.timeout, float)


def test_bounds_follow_the_settings():
    settings = Settings.from_env({"EXECUTOR_MAX_TIMEOUT": "5", "EXECUTOR_DEFAULT_TIMEOUT": "1"})
    schema = request_schema(settings)()
    assert parse_request(schema, {"code": "x", "timeout": 5}).limits.timeout == 5
    assert "timeout" in errors_of({"code": "x", "timeout": 5.01}, schema)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "code"),
        ({"code": ""}, "code"),
        ({"code": 3}, "code"),
        ({"code": None}, "code"),
        ({"code": "é" * (SETTINGS.max_code_bytes // 2 + 1)}, "code"),  # bytes, not characters
        ({"code": "\ud800"}, "code"),  # a lone surrogate has no UTF-8
        ({"code": "x", "language": "cobol"}, "language"),
        ({"code": "x", "language": 1}, "language"),
        ({"code": "x", "stdin": "x" * (SETTINGS.max_stdin_bytes + 1)}, "stdin"),
        ({"code": "x", "stdin": 5}, "stdin"),
        ({"code": "x", "args": "a b"}, "args"),
        ({"code": "x", "args": ["a"] * (MAX_ARGS + 1)}, "args"),
        ({"code": "x", "args": [1]}, "args"),
        ({"code": "x", "args": ["a\x00b"]}, "args"),
        ({"code": "x", "timeout": 0}, "timeout"),
        ({"code": "x", "timeout": -1}, "timeout"),
        ({"code": "x", "timeout": SETTINGS.max_timeout + 1}, "timeout"),
        ({"code": "x", "timeout": True}, "timeout"),
        ({"code": "x", "timeout": "5"}, "timeout"),
        ({"code": "x", "timeout": float("nan")}, "timeout"),
        ({"code": "x", "memory_mb": 15}, "memory_mb"),
        ({"code": "x", "memory_mb": SETTINGS.max_memory_mb + 1}, "memory_mb"),
        ({"code": "x", "memory_mb": 64.5}, "memory_mb"),
        ({"code": "x", "memory_mb": False}, "memory_mb"),
        ({"code": "x", "cpus": 0.01}, "cpus"),
        ({"code": "x", "cpus": SETTINGS.max_cpus + 0.1}, "cpus"),
        ({"code": "x", "cpus": "half"}, "cpus"),
        ({"code": "x", "timout": 3}, "timout"),
    ],
)
def test_each_bad_field_is_named(payload: dict[str, Any], field: str):
    assert field in errors_of(payload)


def test_every_bad_field_is_named_at_once():
    errors = errors_of({"code": "", "timeout": 0, "memory_mb": 1, "cpus": 9, "extra": 1})
    assert set(errors) == {"code", "timeout", "memory_mb", "cpus", "extra"}
    assert all(isinstance(messages, list) and messages for messages in errors.values())


def test_integral_floats_are_integers():
    assert parse_request(SCHEMA, {"code": "x", "memory_mb": 64.0}).limits.memory_mb == 64


@pytest.mark.parametrize("payload", [None, [], "print(1)", 42])
def test_the_body_must_be_an_object(payload: Any):
    assert errors_of(payload) == {"_schema": ["Invalid input type: expected a JSON object."]}


@pytest.mark.parametrize(
    "path",
    [
        "../escape.py",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/./b",
        "dir/",
        "",
        "main.py",  # the program's own file
        "bad\nname",
        "back\\slash",
        "x" * 256,
    ],
)
def test_unsafe_or_reserved_paths_are_refused(path: str):
    errors = errors_of({"code": "x", "files": [{"path": path, "content": ""}]})
    assert "path" in errors["files"][0]


def test_file_items_are_checked_one_by_one():
    errors = errors_of(
        {
            "code": "x",
            "files": [
                {"path": "ok.py", "content": ""},
                {"path": "ok.py", "content": ""},
                {"content": 1},
                "not an object",
                {"path": "ok.py/inner", "content": "", "mode": 7},
            ],
        }
    )
    files = errors["files"]  # marshmallow's item indices are integers
    assert 0 not in files
    assert files[1] == {"path": ["Duplicate path."]}
    assert set(files[2]) == {"path", "content"}
    assert "_schema" in files[3]
    assert set(files[4]) == {"path", "mode"}


def test_files_are_bounded_in_total():
    schema = request_schema(replace(SETTINGS, max_files_bytes=10))()
    errors = errors_of(
        {
            "code": "x",
            "files": [{"path": "a", "content": "123456"}, {"path": "b", "content": "12345"}],
        },
        schema,
    )
    assert errors["files"] == {"_schema": ["The files' contents exceed 10 bytes in total."]}
    many = [{"path": f"f{i}", "content": ""} for i in range(MAX_FILES + 1)]
    assert "files" in errors_of({"code": "x", "files": many})


def test_the_body_limit_covers_the_largest_valid_request():
    import json

    largest = {
        "code": "\U0001f600" * (SETTINGS.max_code_bytes // 4),
        "stdin": "\x01" * (SETTINGS.max_stdin_bytes // 6 * 2),
        "files": [{"path": "f", "content": "x" * SETTINGS.max_files_bytes}],
        "args": ["a" * MAX_ARG_BYTES] * MAX_ARGS,
    }
    parse_request(SCHEMA, largest)
    assert len(json.dumps(largest).encode()) <= max_body_bytes(SETTINGS)


def test_a_loaded_request_dumps_to_a_payload_that_loads_the_same():
    request = parse_request(
        SCHEMA, {"code": "x", "args": ["a"], "files": [{"path": "p", "content": "c"}]}
    )
    assert parse_request(SCHEMA, SCHEMA.dump(request)) == request


def test_test_cases_and_outputs_are_read():
    request = parse_request(
        SCHEMA,
        {
            "code": "x",
            "args": ["default"],
            "tests": [{"stdin": "1"}, {"stdin": "2", "args": [], "expected_stdout": "4\n"}],
            "outputs": ["*.png", "out/**/*.csv"],
        },
    )
    assert request.tests == (
        TestCase(stdin="1"),
        TestCase(stdin="2", args=(), expected_stdout="4\n"),
    )
    assert request.outputs == ("*.png", "out/**/*.csv")
    assert parse_request(SCHEMA, SCHEMA.dump(request)) == request


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"tests": [{"stdin": ""}] * (MAX_TESTS + 1)}, "tests"),
        ({"tests": "1"}, "tests"),
        ({"tests": [1]}, "tests"),
        ({"tests": [{"stdin": 1}]}, "tests"),
        ({"tests": [{"stdin": "x" * (SETTINGS.max_stdin_bytes + 1)}]}, "tests"),
        ({"tests": [{"args": ["a\x00b"]}]}, "tests"),
        ({"tests": [{"args": ["a"] * (MAX_ARGS + 1)}]}, "tests"),
        ({"tests": [{"args": ["a" * (MAX_ARG_BYTES + 1)]}]}, "tests"),
        ({"tests": [{"expected_stdout": 3}]}, "tests"),
        ({"tests": [{"stdin": "", "bogus": 1}]}, "tests"),
        ({"outputs": ["/etc/passwd"]}, "outputs"),
        ({"outputs": ["../x"]}, "outputs"),
        ({"outputs": ["a/../../x"]}, "outputs"),
        ({"outputs": ["a/.."]}, "outputs"),
        ({"outputs": [""]}, "outputs"),
        ({"outputs": ["a\\b"]}, "outputs"),
        ({"outputs": ["*"] * (MAX_OUTPUTS + 1)}, "outputs"),
        ({"outputs": "*"}, "outputs"),
    ],
)
def test_bad_tests_and_outputs_are_named(payload: dict[str, Any], field: str):
    assert field in errors_of({"code": "x", **payload})


def test_test_cases_are_bounded_in_total():
    each = SETTINGS.max_stdin_bytes  # every case within its own bound, not all of them together
    many = [{"stdin": "x" * each} for _ in range(SETTINGS.max_tests_bytes // each + 1)]
    errors = errors_of({"code": "x", "tests": many})
    assert "in total" in str(errors["tests"])


def test_the_body_limit_covers_the_largest_request_with_tests():
    import json

    largest = {
        "code": "\U0001f600" * (SETTINGS.max_code_bytes // 4),
        "stdin": "\x01" * (SETTINGS.max_stdin_bytes // 6 * 2),
        "files": [{"path": "f", "content": "x" * SETTINGS.max_files_bytes}],
        "args": ["a" * MAX_ARG_BYTES] * MAX_ARGS,
        "tests": [
            {"stdin": "\x01" * (SETTINGS.max_tests_bytes // MAX_TESTS // 6), "args": [""] * 64}
        ]
        * MAX_TESTS,
        "outputs": ["/".join(["o" * 200] * 5)] * MAX_OUTPUTS,
    }
    parse_request(SCHEMA, largest)
    assert len(json.dumps(largest).encode()) <= max_body_bytes(SETTINGS)
