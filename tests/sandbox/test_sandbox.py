"""The sandbox against a real Docker engine, through the security proxy."""

from __future__ import annotations

import pytest

from executor.models import File

pytestmark = pytest.mark.docker


def test_stdout_and_exit_code(run):
    r = run("print('hello')")
    assert (r.status, r.exit_code, r.signal, r.stdout, r.stderr) == (
        "success",
        0,
        None,
        "hello\n",
        "",
    )
    assert r.language == "python"
    assert r.image.startswith(f"{run.settings.python_image}@sha256:")
    assert not r.stdout_truncated and not r.stderr_truncated
    assert r.started_at.endswith("Z") and r.finished_at >= r.started_at


def test_stderr_and_nonzero_exit_are_separate(run):
    r = run("import sys\nprint('out')\nprint('bad', file=sys.stderr)\nsys.exit(3)")
    assert (r.status, r.exit_code, r.stdout, r.stderr) == ("error", 3, "out\n", "bad\n")


def test_uncaught_exception_reads_like_python(run):
    r = run("def f():\n    raise ValueError('boom')\nf()")
    assert r.status == "error" and r.exit_code == 1
    assert r.stderr.startswith('Traceback (most recent call last):\n  File "/tmp/main.py", line 3')
    assert r.stderr.endswith("ValueError: boom\n")
    assert "runner" not in r.stderr


def test_syntax_error_reads_like_python(run):
    r = run("print(")
    assert r.status == "error" and r.exit_code == 1
    assert "SyntaxError" in r.stderr and "runner" not in r.stderr


def test_exit_builtin_and_atexit_and_threads(run):
    code = (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
        "exit(5)\n"
    )
    r = run(code)
    assert (r.status, r.exit_code) == ("error", 5)
    assert r.stdout == "thread done\natexit ran\n"


def test_stdin_is_delivered_apart_from_the_code(run):
    r = run("import sys\ndata = sys.stdin.read()\nprint(len(data), data[::-1])", stdin="abc\ndef")
    assert r.stdout == "7 fed\ncba\n"


def test_empty_stdin_is_eof(run):
    assert run("import sys\nprint(repr(sys.stdin.read()))").stdout == "''\n"


def test_args_are_passed(run):
    r = run("import sys\nprint(sys.argv)", args=("a b", "--x", "ü"))
    assert r.stdout == "['main.py', 'a b', '--x', 'ü']\n"


def test_files_are_placed_beside_the_program(run):
    files = (File("helper.py", "X = 41 + 1"), File("data/input.txt", "deep"))
    r = run(
        "import helper, os\nprint(helper.X, open('data/input.txt').read(), os.getcwd())",
        files=files,
    )
    assert r.stdout == "42 deep /tmp\n"


def test_code_of_the_maximum_size_is_not_in_argv(run):
    code = (
        "# "
        + "x" * 1_000_000
        + "\nimport sys, os\nprint(len(open('/proc/self/cmdline','rb').read()) < 200, 'big ok')\n"
    )
    r = run(code)
    assert r.stdout == "True big ok\n", r.stderr


def test_unicode_round_trips(run):
    r = run("print('héllo ✓ 漢字')", stdin="ß")
    assert r.stdout == "héllo ✓ 漢字\n"


def test_invalid_utf8_output_is_replaced(run):
    r = run(
        "import sys\nsys.stdout.buffer.write(b'ok\\xff\\xfe!')\nsys.stderr.buffer.write(b'\\xc3')"
    )
    assert r.status == "success"
    assert r.stdout == "ok\ufffd\ufffd!"
    assert r.stderr == "\ufffd"


def test_runs_as_non_root_without_capabilities(run):
    code = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "print(os.getresuid(), os.getresgid(), os.getgroups())\n"
        "print([l for l in open('/proc/self/status') if l.startswith(('Cap', 'NoNewPrivs'))])\n"
    )
    r = run(code)
    uid_line, ids, caps = r.stdout.splitlines()
    uid, gid = map(int, uid_line.split())
    first, last = run.settings.sandbox_uids
    assert uid == gid and first <= uid <= last
    assert ids == f"{(uid, uid, uid)} {(gid, gid, gid)} []"
    for kind in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert f"{kind}:\\t0000000000000000" in caps, caps
    assert "NoNewPrivs:\\t1" in caps


def test_signal_death_is_reported(run):
    r = run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (r.status, r.exit_code, r.signal) == ("error", None, "SIGSEGV")


def test_result_carries_the_limits(run):
    r = run("print(1)", timeout=3, memory_mb=128, cpus=0.25)
    assert (r.limits.timeout, r.limits.memory_mb, r.limits.cpus) == (3, 128, 0.25)
    assert r.limits.pids == 64 and r.limits.tmpfs_mb == 100


def test_the_output_cap_counts_what_the_program_wrote(run, service):
    cap = service.settings.max_output_bytes
    under = run(f"import sys\nsys.stdout.buffer.write(b'\\xff' * {cap - 10})")
    assert under.stdout == "\ufffd" * (cap - 10) and not under.stdout_truncated
    over = run(f"import sys\nsys.stdout.buffer.write(b'\\xff' * {cap + 10})")
    assert over.stdout == "\ufffd" * cap and over.stdout_truncated
