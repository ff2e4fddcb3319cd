"""Result integrity and isolation, tried as an attacker would with nothing but submitted code.

A program must not be able to forge its result (write into the runner's reply channel, stop or
trace the runner), outlive its result (anything it started dies with the container, which the
worker kills and removes whatever was reported), or starve a neighbour (per-user kernel limits
are per sandbox: each runs under its own host uid).
Each test asserts the honest outcome a user sees, and (through the `run` fixture) that no
container is left behind.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from executor.models import RunRequest, RunResult
from executor.sandbox import default_limits
from executor.service import ExecutionService

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

# A forged reply frame: a result claiming success, as the runner's protocol would carry it.
FORGE = r"""
import os, struct, json
def frame(kind, data):
    return struct.pack(">cI", kind, len(data)) + data
final = json.dumps({"compile": None, "exit_code": 0, "signal": None, "timed_out": False,
                    "oom": False, "duration_ms": 1, "stdout_bytes": 6, "stderr_bytes": 0})
FORGED = frame(b"O", b"FORGED") + frame(b"R", final.encode())
"""


def test_no_process_of_the_container_exposes_its_file_descriptors(run):
    # Every /proc/<pid>/fd/<n> of every process but the program's own: the runner (PID 1)
    # holds the reply channel (its stdout, fd 1), and nothing of it may be opened for writing.
    # (Under gVisor the runner's descriptors of the program's own pipes, made under the
    # program's uid, may open: writing there is just more of the program's own output.)
    code = FORGE + (
        "import time\n"
        "opened = []\n"
        "me = {os.getpid()}\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    if int(pid) in me: continue\n"
        "    for what in ('fd/0', 'fd/1', 'fd/2', 'fd/3', 'mem', 'root/proc/1/fd/1'):\n"
        "        try:\n"
        "            fd = os.open(f'/proc/{pid}/{what}', os.O_WRONLY)\n"
        "        except OSError:\n"
        "            continue\n"
        "        opened.append(f'{pid}/{what}')\n"
        "        try: os.write(fd, FORGED)\n"
        "        except OSError: pass\n"
        "print('opened', opened, flush=True)\n"
        "time.sleep(30)\n"
    )
    r = run(code, timeout=1.5)
    assert r.stdout.startswith("opened [")
    opened = r.stdout.split("\n", 1)[0]
    for channel in ("'1/fd/0'", "'1/fd/1'", "'1/fd/2'", "'1/mem'", "root/proc/1/fd/1"):
        assert channel not in opened
    if run.settings.runtime != "runsc":
        assert opened == "opened []"
    assert (r.status, r.exit_code, r.signal) == ("timeout", None, "SIGKILL")


def test_a_forged_frame_on_the_programs_own_stdout_is_just_output(run):
    r = run(FORGE + "import sys\nsys.stdout.buffer.write(FORGED)\nsys.exit(3)")
    assert (r.status, r.exit_code) == ("error", 3)
    assert "FORGED" in r.stdout and r.stdout.startswith("O\x00\x00\x00\x06")


def test_pid_1_is_the_runner_and_cannot_be_traced_or_signalled(run):
    code = (
        "import ctypes, os, signal, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(open('/proc/1/cmdline', 'rb').read().split(b'\\0')[:2])\n"
        "for request in (16, 0x4206):  # PTRACE_ATTACH, PTRACE_SEIZE\n"
        "    print('ptrace', request, libc.ptrace(request, 1, 0, 0), ctypes.get_errno())\n"
        "refused = []\n"
        "for number in [*range(1, 32), signal.SIGSTOP, signal.SIGKILL]:\n"
        "    try:\n"
        "        os.kill(1, number)\n"
        "    except PermissionError:\n"
        "        refused.append(number)\n"
        "time.sleep(0.3)\n"
        "print('refused', len(refused), 'still here')\n"
    )
    r = run(code)
    assert r.status == "success", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("[b'python3', b'/opt/executor/runner.pyc'")
    assert lines[1].startswith("ptrace 16 -1") and lines[2].startswith("ptrace 16902 -1")
    assert lines[3] == "refused 33 still here"


def test_the_runner_shares_no_uid_with_the_program(run):
    code = (
        "import os\n"
        "status = open('/proc/1/status').read()\n"
        "print(os.stat('/proc/1/fd').st_uid, os.getuid(), status.count('Uid:\\t0\\t0\\t0'))\n"
        "for path in ('/proc/1/mem', '/proc/1/fd/0', '/proc/1/fd/1', '/proc/1/fd/2'):\n"
        "    try:\n"
        "        open(path, 'rb').close()\n"
        "        print(path, 'opened')\n"
        "    except PermissionError:\n"
        "        print(path, 'refused')\n"
    )
    r = run(code)
    lines = r.stdout.splitlines()
    owner, uid, root = lines[0].split()
    assert owner == "0" and uid != "0" and root == "1", r.stderr
    paths = ("/proc/1/mem", "/proc/1/fd/0", "/proc/1/fd/1", "/proc/1/fd/2")
    assert lines[1:] == [f"{path} refused" for path in paths]


def _on_host(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", pattern], check=False, capture_output=True, text=True)
    return found.stdout.split()


@pytest.mark.parametrize(
    "how",
    [
        "subprocess.Popen(['sleep', MARK], start_new_session=True)",
        "os.fork() == 0 and (os.setsid(), os.fork() == 0 and os.execvp('sleep', ['sleep', MARK]),"
        " os._exit(0))",
        "subprocess.Popen(['sh', '-c', f'trap \"\" HUP TERM; exec sleep {MARK}'],"
        " start_new_session=True)",
    ],
    ids=["setsid-child", "double-fork-daemon", "ignores-hup-and-term"],
)
def test_nothing_the_program_started_outlives_its_result(run, how):
    mark = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    code = f"import os, subprocess, time\nMARK = {mark!r}\n{how}\ntime.sleep(0.2)\nprint('done')"
    r = run(code)
    assert (r.status, r.stdout) == ("success", "done\n")
    deadline = time.monotonic() + 5
    while _on_host(f"sleep {mark}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _on_host(f"sleep {mark}") == [], "a process of the program outlived its result"


def _run_concurrently(service: ExecutionService, codes: list[str], delay: float) -> list[Any]:
    results: list[Any] = [None] * len(codes)

    def one(i: int) -> None:
        limits = default_limits(service.settings)
        request = RunRequest(code=codes[i], limits=replace(limits, timeout=15))
        results[i] = service.run(request, str(uuid.uuid4()))

    threads = []
    for i in range(len(codes)):
        thread = threading.Thread(target=one, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(delay)
    for thread in threads:
        thread.join(60)
    return results


# Per-user kernel resources: the hog takes all of its user's share and holds it; the neighbour,
# started while the hog holds it, needs a little. Each as (hog, neighbour).
PER_USER = {
    "inotify-instances": (
        "import ctypes, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "held = []\n"
        "while len(held) < 10000:\n"
        "    fd = libc.inotify_init()\n"
        "    if fd < 0: break\n"
        "    held.append(fd)\n"
        "print('held', len(held), 'then errno', ctypes.get_errno(), flush=True)\n"
        "time.sleep(6)\n",
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('neighbour', 'ok' if libc.inotify_init() >= 0 else ctypes.get_errno())\n",
    ),
    "pipe-buffer-pages": (
        "import fcntl, os, time\n"
        "held = []\n"
        "try:\n"
        "    while len(held) < 240:  # 120 pipes of 1 MiB: past the per-user soft limit\n"
        "        r, w = os.pipe()\n"
        "        held += [r, w]\n"
        "        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ: 256 pages each\n"
        "except OSError as e:\n"
        "    print('held', len(held) // 2, 'then', e.errno, flush=True)\n"
        "time.sleep(6)\n",
        "import fcntl, os\n"
        "r, w = os.pipe()\n"
        "try:\n"
        "    fcntl.fcntl(w, 1031, 1 << 20)\n"
        "    print('neighbour ok')\n"
        "except OSError as e:\n"
        "    print('neighbour', e.errno)\n",
    ),
    "posix-message-queues": (
        "import ctypes, os, time\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "class Attr(ctypes.Structure):\n"
        "    _fields_ = [('flags', ctypes.c_long), ('maxmsg', ctypes.c_long),\n"
        "                ('msgsize', ctypes.c_long), ('curmsgs', ctypes.c_long), ('pad', ctypes.c_long * 4)]\n"
        "rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(Attr)]\n"
        "n = 0\n"
        "while n < 1000:\n"
        "    a = Attr(0, 10, 8192, 0)\n"
        "    if rt.mq_open(f'/hog{n}'.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(a)) < 0: break\n"
        "    n += 1\n"
        "print('held', n, 'then errno', ctypes.get_errno(), flush=True)\n"
        "time.sleep(6)\n",
        "import ctypes, os\n"
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
        "class Attr(ctypes.Structure):\n"
        "    _fields_ = [('flags', ctypes.c_long), ('maxmsg', ctypes.c_long),\n"
        "                ('msgsize', ctypes.c_long), ('curmsgs', ctypes.c_long), ('pad', ctypes.c_long * 4)]\n"
        "rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(Attr)]\n"
        "a = Attr(0, 10, 8192, 0)\n"
        "ok = rt.mq_open(b'/mine', os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(a)) >= 0\n"
        "print('neighbour', 'ok' if ok else ctypes.get_errno())\n",
    ),
}


@pytest.mark.parametrize("resource", sorted(PER_USER))
def test_a_neighbour_keeps_its_per_user_kernel_resources(service, raw_docker, resource):
    hog, neighbour = PER_USER[resource]
    first, second = _run_concurrently(service, [hog, neighbour], delay=2.5)
    # The hog really did take all its user had (else this test proves nothing; gVisor's own
    # kernel keeps no per-user pipe buffer limit at all, so there the hog never runs out)...
    if not (resource == "pipe-buffer-pages" and service.settings.runtime == "runsc"):
        assert first.stdout.startswith("held "), first.stderr
        assert not first.stdout.startswith("held 0 "), first.stdout
    # ...and the neighbour, running meanwhile, still got its share.
    assert second.stdout == "neighbour ok\n", (first.stdout, second.stdout, second.stderr)


def test_two_running_sandboxes_never_share_a_uid(service):
    code = "import os, time\nprint(os.getuid(), flush=True)\ntime.sleep(2)"
    results: list[RunResult] = _run_concurrently(service, [code] * 6, delay=0.05)
    uids = [r.stdout.strip() for r in results]
    assert all(r.status == "success" for r in results)
    assert len(set(uids)) == len(uids), uids


def test_every_container_is_removed_and_counted_only_once_removed(settings, raw_docker):
    events: dict[str, int] = {}
    lock = threading.Lock()

    def count(name: str, n: int) -> None:
        with lock:
            events[name] = events.get(name, 0) + n

    svc = ExecutionService(settings, count)
    try:
        code = "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)"
        for _ in range(3):
            request = RunRequest(code=code, limits=default_limits(settings))
            assert svc.run(request, str(uuid.uuid4())).status == "success"
    finally:
        svc.stop()  # waits for the background removals
    assert events.get("containers_created") == 3
    assert events.get("containers_removed") == 3
    from executor.policy import LABEL_WORKER
    from tests.conftest import sandboxes

    assert sandboxes(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []
