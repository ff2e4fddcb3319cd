"""How the worker turns a runner's reply into a result: test cases, the top-level fields, the
comparison of expected output, and a reply that breaks after the last run. No Docker: the
reply is made of the runner's frames (the sandbox's own seam)."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest

from executor.config import Settings
from executor.engine import Engine
from executor.languages import languages
from executor.models import RunRequest, TestCase
from executor.protocol import Reply
from executor.results import resumed, same_output
from executor.sandbox import Container, Sandbox, default_limits

SETTINGS = Settings.from_env({"HOSTNAME": "unit"})
PYTHON = languages(SETTINGS)["python"]


def frame(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">cI", kind, len(data)) + data


def step(exit_code: int | None = 0, **changes: object) -> bytes:
    body = {
        "exit_code": exit_code, "signal": None, "timed_out": False, "oom": False,
        "duration_ms": 10, "stdout_bytes": 2, "stderr_bytes": 0,
        "usage": {"cpu_ms": 3, "memory_bytes": 1000},
    } | changes  # fmt: skip
    return json.dumps(body).encode()


def case(index: int, out: bytes, result: bytes) -> bytes:
    return frame(b"c", b"%d" % index) + frame(b"O", out) + frame(b"T", result)


@pytest.fixture
def container() -> Iterator[Container]:
    left, right = socket.socketpair()
    yield Container("c0ffee" * 10, left, b"", PYTHON, "", "sha256:x", 200000)
    left.close()
    right.close()


def result_of(container: Container, request: RunRequest, *frames: bytes):
    reply = Reply(1024, cases=max(1, len(request.tests)), max_files=4, max_files_bytes=100)
    data = b"".join([frame(b"r"), frame(b"a"), *frames])
    reply.feed(struct.pack(">BxxxI", 1, len(data)) + data)
    sandbox = Sandbox(SETTINGS, Engine(SETTINGS))
    return sandbox._result(container, request, reply, False, 50, "")


REQUEST = RunRequest(
    code="x",
    limits=default_limits(SETTINGS),
    tests=(TestCase("1", expected_stdout="1"), TestCase("2", expected_stdout="1"), TestCase("3")),
)
FINAL = frame(b"R", b'{"files_truncated": false}')


def test_the_first_case_that_failed_speaks_for_the_whole(container):
    r = result_of(
        container, REQUEST,
        case(0, b"1\n", step()), case(1, b"2\n", step(3)), case(2, b"3\n", step(4)), FINAL,
    )  # fmt: skip
    assert [t.status for t in r.tests] == ["success", "error", "error"]
    assert [t.passed for t in r.tests] == [True, False, None]
    assert (r.status, r.exit_code, r.stdout, r.passed, r.failed) == ("error", 3, "2\n", 1, 1)
    assert (r.usage.cpu_ms, r.usage.memory_bytes, r.duration_ms) == (9, 1000, 30)


def test_a_reply_that_breaks_after_the_last_run_is_an_error(container):
    broken = frame(b"R", b'{"compile": null, "files_truncated": false}')
    runs = [case(i, b"1\n", step()) for i in range(3)]
    r = result_of(container, REQUEST, *runs, broken)
    assert r.status == "error" and "malformed result" in r.stderr
    assert [t.status for t in r.tests] == ["success"] * 3


def test_a_broken_case_ends_the_runs_after_it(container):
    r = result_of(container, REQUEST, case(0, b"1\n", step()), case(1, b"", b"{}"))
    assert [t.status for t in r.tests] == ["success", "error", "error"]
    assert r.tests[1].signal == "SIGKILL" and "malformed" in r.tests[1].stderr
    assert "not run" in r.tests[2].stderr and r.resume_at is None


def test_a_resumed_execution_joins_the_runs(container):
    first = result_of(container, REQUEST, case(0, b"1\n", step()), case(1, b"", b"{}"))
    first = replace(first, resume_at=1)  # as after a memory kill under gVisor
    rest_request = replace(REQUEST, tests=REQUEST.tests[1:])
    rest = result_of(container, rest_request, case(0, b"1\n", step()), case(1, b"x", step()), FINAL)
    whole = resumed(first, rest)
    assert [t.passed for t in whole.tests] == [True, True, None]
    assert (whole.status, whole.passed, whole.failed, whole.resume_at) == ("success", 2, 0, None)


@pytest.mark.parametrize(
    ("stdout", "expected", "same"),
    [
        ("4\n", "4", True),
        ("4  \t\n\n\n", "4\n", True),
        ("a \nb\n", "a\nb", True),
        ("a\r\nb\r\n", "a\nb\n", True),
        ("4\n", "5\n", False),
        ("a\n\nb\n", "a\nb\n", False),  # an empty line inside counts
        (" 4\n", "4\n", False),  # leading whitespace counts
        ("", "", True),
        ("", "x", False),
    ],
)
def test_expected_output_ignores_trailing_whitespace_and_empty_lines(stdout, expected, same):
    assert same_output(stdout, expected) is same
