"""Test cases: one build, one run per case in the same sandbox, each reported on its own.

A case that fails, crashes, times out or is killed for its memory does not stop the others.
Hostile: `make test` runs them under gVisor too.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from executor.models import RunRequest, TestCase
from executor.policy import LABEL_WORKER
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import language_image, wait_gone

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

MIB = 1024 * 1024

PYTHON = """\
import sys, time
x = sys.stdin.read().strip()
if x == "crash":
    raise ZeroDivisionError("boom")
if x == "sleep":
    time.sleep(60)
if x == "memory":
    hog = []
    while True:
        hog.append(bytearray(10**7))
print(int(x) * 2)
print(" ".join(sys.argv[1:]), file=sys.stderr)
"""


def test_python_cases_pass_fail_crash_time_out_and_run_out_of_memory(run):
    cases = (
        TestCase("2", expected_stdout="4"),
        TestCase("3", expected_stdout="7\n"),  # fails: prints 6
        TestCase("crash", expected_stdout="0"),
        TestCase("sleep"),
        TestCase("memory"),
        TestCase("5", args=("own", "args"), expected_stdout="10   \n\n\n"),  # trailing space
    )
    r = run(PYTHON, tests=cases, args=("default",), timeout=2, memory_mb=64)
    got = [(t.status, t.exit_code, t.signal, t.passed) for t in r.tests]
    assert got == [
        ("success", 0, None, True),
        ("success", 0, None, False),
        ("error", 1, None, False),
        ("timeout", None, "SIGKILL", None),
        ("memory_limit", None, "SIGKILL", None),
        ("success", 0, None, True),
    ]
    assert [t.stdout for t in r.tests[:2]] == ["4\n", "6\n"]
    assert r.tests[0].stderr == "default\n" and r.tests[5].stderr == "own args\n"
    assert "ZeroDivisionError: boom" in r.tests[2].stderr
    assert r.tests[3].duration_ms >= 1900  # the sleeping case had the whole timeout
    assert r.tests[4].usage.memory_bytes >= 32 * MIB
    assert (r.passed, r.failed) == (2, 2)
    # The first case that did not succeed speaks for the whole.
    assert (r.status, r.exit_code) == ("error", 1) and "ZeroDivisionError" in r.stderr
    assert r.usage.cpu_ms == sum(t.usage.cpu_ms for t in r.tests)
    assert r.usage.memory_bytes == max(t.usage.memory_bytes for t in r.tests)


def test_when_every_case_succeeds_the_last_one_speaks(run):
    r = run(PYTHON, tests=(TestCase("1"), TestCase("21")))
    assert r.status == "success" and r.stdout == "42\n"
    assert [t.passed for t in r.tests] == [None, None] and (r.passed, r.failed) == (0, 0)


C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    char line[64] = "";
    if (!fgets(line, sizeof line, stdin)) return 2;
    if (line[0] == 's') { int *p = 0; return *(volatile int *)p; }
    if (line[0] == 't') for (;;) {}
    if (line[0] == 'm') for (;;) { char *p = malloc(1 << 20); if (p) memset(p, 1, 1 << 20); }
    if (line[0] == 'e') return 3;
    printf("%d\n", 2 * atoi(line));
    return 0;
}
"""


def test_c_cases_are_built_once_and_run_one_by_one(run):
    cases = (
        TestCase("21", expected_stdout="42"),
        TestCase("1", expected_stdout="3"),
        TestCase("segv"),
        TestCase("t"),
        TestCase("m"),
        TestCase("e"),
        TestCase("4", expected_stdout="8"),
    )
    r = run(C, language="c", image=language_image("c"), tests=cases, timeout=2, memory_mb=64)
    assert r.compile is not None and r.compile.exit_code == 0
    got = [(t.status, t.exit_code, t.signal, t.passed) for t in r.tests]
    assert got == [
        ("success", 0, None, True),
        ("success", 0, None, False),
        ("error", None, "SIGSEGV", None),
        ("timeout", None, "SIGKILL", None),
        ("memory_limit", None, "SIGKILL", None),
        ("error", 3, None, None),
        ("success", 0, None, True),
    ]
    assert (r.status, r.signal, r.passed, r.failed) == ("error", "SIGSEGV", 2, 1)


def test_a_failed_build_runs_no_case(run):
    r = run("int main(void) { return x; }", language="c", image=language_image("c"),
            tests=(TestCase("1", expected_stdout="1"),))  # fmt: skip
    assert r.status == "compile_error" and r.compile is not None and r.compile.exit_code != 0
    assert r.tests == [] and (r.passed, r.failed) == (0, 0)


def test_nothing_a_case_left_running_is_there_for_the_next(run):
    code = (
        "import os, subprocess, sys\n"
        "if sys.stdin.read() == 'spawn':\n"
        "    subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "    open('left', 'w').write('x')\n"
        "else:\n"
        "    me = os.getpid()\n"
        "    others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, me)]\n"
        "    print(others, os.path.exists('left'))\n"
    )
    r = run(code, tests=(TestCase("spawn"), TestCase("look")))
    assert [t.status for t in r.tests] == ["success", "success"], r.tests
    # No process of the first case is left; its files are (the cases share the directory).
    assert r.tests[1].stdout == "[] True\n"


def test_the_cases_output_is_bounded_together(settings, raw_docker):
    svc = ExecutionService(
        replace(settings, max_output_bytes=65536, max_tests_output_bytes=100_000)
    )
    try:
        code = "import sys\nsys.stdout.write('x' * 40000)\nsys.stderr.write('e')"
        request = RunRequest(
            code=code, limits=default_limits(svc.settings), tests=(TestCase(),) * 3
        )
        r = svc.run(request, "33333333-3333-4333-8333-333333333333")
    finally:
        svc.stop()
    assert [t.status for t in r.tests] == ["success"] * 3
    kept = [len(t.stdout) + len(t.stderr) for t in r.tests]
    assert kept[:2] == [40001, 40001] and kept[2] == 100_000 - 80002
    assert [t.stdout_truncated for t in r.tests] == [False, False, True]
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []
