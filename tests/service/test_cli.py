"""`python -m executor`: run a file through the real API, and the service's status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.service


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "executor", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_passes_output_and_exit_code_through(api: str, tmp_path: Path):
    program = tmp_path / "prog.py"
    program.write_text(
        "import sys\nprint('out', sys.stdin.read())\nprint('err', file=sys.stderr)\nsys.exit(3)\n"
    )
    given = tmp_path / "in.txt"
    given.write_text("hello")
    done = cli("run", str(program), "--stdin", str(given), "--api", api)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out hello\n", "err\n")


def test_run_maps_what_did_not_exit_by_itself(api: str, tmp_path: Path):
    program = tmp_path / "slow.py"
    program.write_text("import time\nprint('started', flush=True)\ntime.sleep(30)\n")
    done = cli("run", str(program), "--timeout", "1", "--api", api)
    assert (done.returncode, done.stdout) == (124, "started\n")
    killed = tmp_path / "killed.py"
    killed.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert cli("run", str(killed), "--api", api).returncode == 128 + 11


def test_failures_of_its_own_name_their_cause_and_exit_2(api: str, tmp_path: Path):
    program = tmp_path / "prog.py"
    program.write_text("print(1)\n")
    down = cli("run", str(program), "--api", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "cannot reach the API" in down.stderr
    unknown = tmp_path / "prog.unknown"
    unknown.write_text("x")
    guess = cli("run", str(unknown), "--api", api)
    assert guess.returncode == 2 and "--language" in guess.stderr
    refused = cli("run", str(program), "--timeout", "100000", "--api", api)
    assert refused.returncode == 2 and "HTTP 422" in refused.stderr and "timeout" in refused.stderr
    missing = cli("run", str(tmp_path / "nope.py"), "--api", api)
    assert missing.returncode == 2 and "nope.py" in missing.stderr


def test_status_shows_workers_queue_pool_and_recent(api: str, tmp_path: Path):
    program = tmp_path / "prog.py"
    program.write_text("print(1)\n")
    assert cli("run", str(program), "--api", api).returncode == 0
    done = cli("status", "--api", api)
    assert done.returncode == 0, done.stderr
    assert "queue depth" in done.stdout and "warm containers" in done.stdout
    assert "celery@" in done.stdout or "workers (" in done.stdout
    assert "success" in done.stdout  # the run above, among the recent executions


def test_run_stream_writes_output_as_the_program_writes_it(api: str, tmp_path: Path):
    program = tmp_path / "live.py"
    program.write_text(
        "import sys, time\nprint('early', flush=True)\nprint('oops', file=sys.stderr)\n"
        "time.sleep(30)\n"
    )
    argv = [sys.executable, "-m", "executor", "run", str(program), "--timeout", "4", "--stream"]
    with subprocess.Popen(
        [*argv, "--api", api], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "early\n"
        assert proc.poll() is None  # the program still runs (until its timeout)
        assert proc.wait(120) == 124
        assert proc.stdout.read() == "" and proc.stderr.read() == "oops\n"
    done = cli("run", str(program), "--timeout", "100000", "--stream", "--api", api)
    assert done.returncode == 2 and "HTTP 422" in done.stderr
