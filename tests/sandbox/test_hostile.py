"""Hostile programs: each is held, reports what a user would see, and leaves nothing behind."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


def test_infinite_loop_ignoring_sigterm_is_killed_at_the_deadline(run):
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass"
    began = time.monotonic()
    r = run(code, timeout=1.5)
    assert (r.status, r.exit_code, r.signal) == ("timeout", None, "SIGKILL")
    assert 1400 <= r.duration_ms <= 3000
    assert time.monotonic() - began < 6


def test_sleeping_program_times_out_too(run):
    r = run("import time\nprint('before', flush=True)\ntime.sleep(60)", timeout=1)
    assert r.status == "timeout" and r.stdout == "before\n"


def test_memory_bomb_is_reported_as_memory_limit(run):
    r = run("a = []\nwhile True: a.append(bytearray(10**7))", memory_mb=64)
    assert r.status == "memory_limit"
    assert r.exit_code is None and r.signal == "SIGKILL"


def test_fork_bomb_is_held_by_the_process_limit(run):
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('held after', n, type(e).__name__)\n"
    )
    r = run(code, timeout=5)
    assert r.status == "success", r.stderr
    assert r.stdout.startswith("held after") and "BlockingIOError" in r.stdout
    assert int(r.stdout.split()[2]) <= 64  # the program never has more than its limit


def test_stdout_flood_is_capped(run, service):
    cap = service.settings.max_output_bytes
    r = run(
        "import sys\nfor _ in range(2000): sys.stdout.write('x' * 65536)\nprint('done', file=sys.stderr)"
    )
    assert r.status == "success"
    assert r.stdout_truncated and len(r.stdout.encode()) == cap and set(r.stdout) == {"x"}
    assert r.stderr == "done\n" and not r.stderr_truncated


def test_stderr_flood_is_capped(run, service):
    cap = service.settings.max_output_bytes
    r = run("import sys\nfor _ in range(2000): sys.stderr.write('y' * 65536)\nprint('fine')")
    assert r.stderr_truncated and len(r.stderr.encode()) == cap
    assert r.stdout == "fine\n" and not r.stdout_truncated


def test_endless_flood_on_both_streams_ends_at_the_deadline(run, service):
    cap = service.settings.max_output_bytes
    code = "import sys\nwhile True:\n    sys.stdout.write('o' * 8192)\n    sys.stderr.write('e' * 8192)"
    began = time.monotonic()
    r = run(code, timeout=2)
    assert r.status == "timeout"
    assert len(r.stdout.encode()) == cap and len(r.stderr.encode()) == cap
    assert r.stdout_truncated and r.stderr_truncated
    assert time.monotonic() - began < 8


def test_background_process_does_not_outlive_the_execution(run):
    code = "import subprocess\nsubprocess.Popen(['sleep', '300'])\nprint('main done')"
    began = time.monotonic()
    r = run(code)
    assert (r.status, r.stdout) == ("success", "main done\n")
    assert time.monotonic() - began < 5  # no waiting for the orphan
    # the `run` fixture then asserts that the container (and so the orphan) is gone


def test_daemonised_grandchild_cannot_keep_output_open(run):
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True: print('zombie'); time.sleep(0.01)\n"
        "    os._exit(0)\n"
        "print('parent exits')\n"
    )
    r = run(code, timeout=5)
    assert r.status == "success" and r.stdout.startswith("parent exits\n")


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
        "import socket\nsocket.getaddrinfo('example.com', 80)",
        "import urllib.request\nurllib.request.urlopen('http://10.0.0.1', timeout=2)",
    ],
    ids=["tcp", "dns", "http"],
)
def test_network_is_unreachable(run, code):
    r = run(code)
    assert r.status == "error"
    assert any(
        s in r.stderr
        for s in (
            "Network is unreachable",
            "No route to host",
            "name resolution",
            "Name or service",
        )
    )


def test_only_loopback_interface_exists(run):
    r = run("import socket\nprint(sorted(n for _, n in socket.if_nameindex()))")
    assert r.stdout == "['lo']\n"


@pytest.mark.parametrize(
    "path", ["/etc/owned", "/owned", "/opt/executor/runner.pyc", "/usr/bin/python3"]
)
def test_writes_outside_the_tmpfs_fail(run, path):
    r = run(f"open({path!r}, 'w').write('x')")
    assert r.status == "error"
    assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr


def test_tmpfs_is_writable_and_bounded(run):
    code = (
        "open('/tmp/f', 'w').write('ok'); print(open('/tmp/f').read())\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(200): f.write(b'0' * 1024 * 1024)\n"
        "except OSError as e:\n"
        "    print('full', e.errno)\n"
    )
    r = run(code)
    assert r.stdout == "ok\nfull 28\n", r.stderr  # ENOSPC at the tmpfs size


def test_killing_the_runner_is_an_error_not_a_hang(run):
    code = "import os, signal\nos.kill(1, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(30)"
    began = time.monotonic()
    r = run(code, timeout=10)
    assert r.status in ("error", "timeout")
    assert time.monotonic() - began < 15


def test_runner_memory_is_not_readable_by_the_program(run):
    code = (
        "import os\n"
        "for what, mode in (('mem', 'rb'), ('fd/0', 'rb'), ('fd/1', 'wb'), ('fd/2', 'wb')):\n"
        "    try:\n"
        "        open(f'/proc/{os.getppid()}/{what}', mode).close()\n"
        "        print(what, 'exposed')\n"
        "    except PermissionError:\n"
        "        print(what, 'protected')\n"
    )
    assert run(code).stdout == "mem protected\nfd/0 protected\nfd/1 protected\nfd/2 protected\n"


def test_truncation_never_splits_a_character(run, service):
    cap = service.settings.max_output_bytes
    r = run("print('漢' * 40000)")  # 120 000 bytes of 3-byte characters
    assert r.stdout_truncated
    assert cap - 3 < len(r.stdout.encode()) <= cap
    assert set(r.stdout) == {"漢"}
