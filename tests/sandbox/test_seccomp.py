"""Our seccomp profile on real containers: what it refuses, and what ordinary programs still do.

Each case is one program through the real proxy; a refused syscall is called with arguments
that would succeed (or fail otherwise) without the profile, so its errno names the filter.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

# Syscall numbers of the architecture the program runs on.
NR = {
    "x86_64": {
        "io_uring_setup": 425,
        "ptrace": 101,
        "process_vm_readv": 310,
        "pidfd_getfd": 438,
        "kcmp": 312,
        "bpf": 321,
        "userfaultfd": 323,
        "perf_event_open": 298,
        "keyctl": 250,
        "unshare": 272,
        "mount": 165,
        "clone": 56,
        "clone3": 435,
        "personality": 135,
    },
    "aarch64": {
        "io_uring_setup": 425,
        "ptrace": 117,
        "process_vm_readv": 270,
        "pidfd_getfd": 438,
        "kcmp": 272,
        "bpf": 280,
        "userfaultfd": 282,
        "perf_event_open": 241,
        "keyctl": 219,
        "unshare": 97,
        "mount": 40,
        "clone": 220,
        "clone3": 435,
        "personality": 92,
    },
}

PRELUDE = f"""\
import ctypes, errno, os, platform, struct
NR = {NR!r}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEEP = []

def ptr(data):
    buf = ctypes.create_string_buffer(data)
    KEEP.append(buf)
    return ctypes.addressof(buf)

def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *(ctypes.c_long(a) for a in args))
    print(errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "allowed", flush=True)
    return r
"""

REFUSED = {
    "io_uring_setup": ("call('io_uring_setup', 8, ptr(bytes(120)))", "ENOSYS"),
    "ptrace_traceme": ("call('ptrace', 0, 0, 0, 0)", "EPERM"),
    "ptrace_attach_pid1": ("call('ptrace', 16, 1, 0, 0)", "EPERM"),
    "process_vm_readv": (
        "src, dst = ptr(b'secret'), ptr(bytes(6))\n"
        "local, remote = ptr(struct.pack('PN', dst, 6)), ptr(struct.pack('PN', src, 6))\n"
        "call('process_vm_readv', os.getpid(), local, 1, remote, 1, 0)",
        "EPERM",
    ),
    "pidfd_getfd": (
        # A pidfd of this process: without the filter, pidfd_getfd would hand over its fd 1.
        # gVisor has neither pidfd_open nor pidfd_getfd (ENOSYS): there fd 0, not a pidfd,
        # stands in, and only the filter (it runs before gVisor's syscall table) says EPERM.
        "try:\n"
        "    pidfd = os.pidfd_open(os.getpid())\n"
        "except OSError as e:\n"
        "    if e.errno != errno.ENOSYS:\n"
        "        raise\n"
        "    pidfd = 0\n"
        "call('pidfd_getfd', pidfd, 1, 0)",
        "EPERM",
    ),
    "kcmp": ("call('kcmp', os.getpid(), os.getpid(), 0, 1, 1)", "EPERM"),  # KCMP_FILE
    "bpf": ("call('bpf', 0, ptr(bytes(128)), 128)", "EPERM"),  # BPF_MAP_CREATE
    "userfaultfd": ("call('userfaultfd', os.O_CLOEXEC | 1)", "EPERM"),  # UFFD_USER_MODE_ONLY
    "perf_event_open": (
        # PERF_TYPE_SOFTWARE / CPU_CLOCK of this process, disabled, user space only
        "attr = ptr(struct.pack('IIQQQQQ', 1, 112, 0, 0, 0, 0, 1 | 32 | 64) + bytes(64))\n"
        "call('perf_event_open', attr, 0, -1, -1, 0)",
        "EPERM",
    ),
    "keyctl": ("call('keyctl', 0, -3, 0)", "EPERM"),  # GET_KEYRING_ID of the session keyring
    "unshare_newuser": ("call('unshare', 0x10000000)", "EPERM"),
    "mount": (
        "os.mkdir('/tmp/m')\ncall('mount', ptr(b'none'), ptr(b'/tmp/m'), ptr(b'tmpfs'), 0, 0)",
        "EPERM",
    ),
    "clone_newuser": (
        "pid = call('clone', 0x10000000 | 17, 0, 0, 0, 0)\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "if pid > 0:\n"
        "    os.waitpid(pid, 0)",
        "EPERM",
    ),
    "clone3": ("call('clone3', 0, 0)", "ENOSYS"),  # the kernel would say EINVAL
    "personality_addr_no_randomize": ("call('personality', 0x0040000)", "EPERM"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_syscall(run, case):
    code, errno_name = REFUSED[case]
    r = run(PRELUDE + code)
    assert (r.status, r.stdout) == ("success", f"{errno_name}\n"), r.stderr


SOCKETS = {  # family: (type, protocol), a combination the kernel would accept
    "AF_VSOCK": (40, "SOCK_STREAM", 0),
    "AF_PACKET": (17, "SOCK_DGRAM", 0),
    "AF_ALG": (38, "SOCK_SEQPACKET", 0),
    "AF_BLUETOOTH": (31, "SOCK_STREAM", 3),  # BTPROTO_RFCOMM
    "AF_KEY": (15, "SOCK_RAW", 2),  # PF_KEY_V2
    "AF_TIPC": (30, "SOCK_RDM", 0),
    "AF_RDS": (21, "SOCK_SEQPACKET", 0),
    "AF_CAN": (29, "SOCK_RAW", 1),  # CAN_RAW
    "AF_NETLINK-KOBJECT_UEVENT": (16, "SOCK_DGRAM", 15),  # netlink other than NETLINK_ROUTE
}


@pytest.mark.parametrize("family", list(SOCKETS))
def test_socket_family_is_refused(run, family):
    number, kind, proto = SOCKETS[family]
    code = (
        "import errno, socket\n"
        "try:\n"
        f"    socket.socket({number}, socket.{kind}, {proto}).close()\n"
        "    print('created')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    r = run(code)
    assert r.status == "success", r.stderr
    assert r.stdout in ("EAFNOSUPPORT\n", "EPERM\n")


ORDINARY = {
    "threads": (
        "import threading\n"
        "out = []\n"
        "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n"
        "print(sorted(out) == list(range(8)))",
        "True\n",
    ),
    "fork": (
        "import os\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
        "7\n",
    ),
    "subprocess": (
        "import subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)\n"
        "print(done.stdout, end='')",
        "42\n",
    ),
    "multiprocessing_pool": (
        "import multiprocessing\n"
        "with multiprocessing.Pool(2) as pool:\n"
        "    print(pool.map(abs, [-1, -2, -3]))",
        "[1, 2, 3]\n",
    ),
    "asyncio_socketpair": (
        "import asyncio, socket\n"
        "async def main():\n"
        "    a, b = socket.socketpair()\n"
        "    _, w1 = await asyncio.open_connection(sock=a)\n"
        "    r2, w2 = await asyncio.open_connection(sock=b)\n"
        "    w1.write(b'ping\\n')\n"
        "    await w1.drain()\n"
        "    print((await r2.readline()).decode(), end='')\n"
        "    w1.close(); w2.close()\n"
        "asyncio.run(main())",
        "ping\n",
    ),
    "af_unix": (
        "import socket\n"
        "srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "srv.bind('/tmp/s.sock'); srv.listen()\n"
        "c = socket.socket(socket.AF_UNIX); c.connect('/tmp/s.sock')\n"
        "conn, _ = srv.accept(); c.sendall(b'unix'); print(conn.recv(16).decode())",
        "unix\n",
    ),
    "af_inet": (
        "import socket\n"
        "srv = socket.create_server(('127.0.0.1', 0))\n"
        "c = socket.create_connection(srv.getsockname())\n"
        "conn, _ = srv.accept(); c.sendall(b'tcp'); print(conn.recv(16).decode())\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\n"
        "u.sendto(b'udp', u.getsockname()); print(u.recv(16).decode())",
        "tcp\nudp\n",
    ),
    # Docker turns IPv6 off on the loopback of a container without a network (no ::1), so
    # this binds the wildcard address: socket(), bind() and listen() of AF_INET6 all the same.
    "af_inet6": (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n"
        "s.bind(('::', 0)); s.listen()\n"
        "print(s.family.name, s.getsockname()[1] > 0)",
        "AF_INET6 True\n",
    ),
    "netlink_route": (
        "import socket\n"
        "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)\n"
        "s.bind((0, 0))\n"
        "print(s.family.name, [n for _, n in socket.if_nameindex()])",
        "AF_NETLINK ['lo']\n",
    ),
    "select_poll_epoll": (
        "import os, select\n"
        "r, w = os.pipe(); os.write(w, b'x')\n"
        "print(select.select([r], [], [], 1)[0] == [r])\n"
        "p = select.poll(); p.register(r, select.POLLIN); print(p.poll(1000) == [(r, select.POLLIN)])\n"
        "e = select.epoll(); e.register(r, select.EPOLLIN); print(e.poll(1) == [(r, select.EPOLLIN)])",
        "True\nTrue\nTrue\n",
    ),
    "mmap": (
        "import mmap\n"
        "m = mmap.mmap(-1, 1 << 20); m[:5] = b'hello'; print(m[:5].decode())\n"
        "with open('/tmp/f', 'wb+') as f:\n"
        "    f.write(bytes(4096)); f.flush()\n"
        "    fm = mmap.mmap(f.fileno(), 4096); fm[:4] = b'file'; fm.flush(); fm.close()\n"
        "print(open('/tmp/f', 'rb').read(4).decode())",
        "hello\nfile\n",
    ),
    "sqlite3_memory": (
        "import sqlite3\n"
        "db = sqlite3.connect(':memory:')\n"
        "db.execute('create table t(x)')\n"
        "db.executemany('insert into t values (?)', [(1,), (2,)])\n"
        "print(db.execute('select sum(x) from t').fetchone()[0])",
        "3\n",
    ),
    "ctypes": (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"
        "arr = (ctypes.c_int * 4)(3, 1, 4, 2)\n"
        "P = ctypes.POINTER(ctypes.c_int)\n"
        "cmp = ctypes.CFUNCTYPE(ctypes.c_int, P, P)(lambda a, b: a[0] - b[0])\n"
        "libc.qsort(arr, 4, ctypes.sizeof(ctypes.c_int), cmp)\n"
        "print(list(arr), libc.strlen(b'abc'))",
        "[1, 2, 3, 4] 3\n",
    ),
    "inotify": (
        "import ctypes, os, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.inotify_init1(os.O_CLOEXEC)\n"
        "wd = libc.inotify_add_watch(fd, b'/tmp', 0x100)  # IN_CREATE\n"
        "open('/tmp/new', 'w').close()\n"
        "data = os.read(fd, 4096)\n"
        "_, mask, _, n = struct.unpack_from('iIII', data)\n"
        "print(fd >= 0 and wd >= 0, mask & 0x100 == 0x100, data[16:16 + n].rstrip(bytes(1)).decode())",
        "True True new\n",
    ),
    "pipe": (
        "import os\n"
        "r, w = os.pipe(); os.write(w, b'through a pipe'); os.close(w)\n"
        "print(os.read(r, 100).decode())",
        "through a pipe\n",
    ),
    "signals": (
        "import os, signal, time\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
        "signal.signal(signal.SIGALRM, lambda s, f: got.append(s))\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.05)\n"
        "while len(got) < 2: time.sleep(0.01)\n"
        "print([signal.Signals(s).name for s in got])",
        "['SIGUSR1', 'SIGALRM']\n",
    ),
    "time_and_clocks": (
        "import time\n"
        "t0 = time.monotonic(); time.sleep(0.01)\n"
        "clocks = [time.CLOCK_REALTIME, time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME,\n"
        "          time.CLOCK_PROCESS_CPUTIME_ID, time.CLOCK_THREAD_CPUTIME_ID]\n"
        "print(time.monotonic() - t0 >= 0.01, all(time.clock_gettime(c) >= 0 for c in clocks),\n"
        "      time.time() > 1.7e9, time.perf_counter() > 0, time.process_time() >= 0)",
        "True True True True True\n",
    ),
    "bin_sh": (
        "import subprocess\n"
        "done = subprocess.run(['/bin/sh', '-c', 'echo $((6 * 7)) | cat'], capture_output=True, text=True)\n"
        "print(done.stdout, end='')",
        "42\n",
    ),
    "proc_self_status": (
        "import ctypes\n"
        "fields = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "no_new_privs = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS\n"
        "print(fields['Seccomp'].strip(), fields.get('NoNewPrivs', 'none').strip(), no_new_privs)",
        "2 1 1\n",  # a filter is in force, and no-new-privileges (as /proc and prctl tell)
    ),
    "random": (
        "import os, secrets\nprint(len(os.urandom(16)), len(os.getrandom(16)), len(secrets.token_bytes(8)))",
        "16 16 8\n",
    ),
}


# What differs under gVisor (runtime runsc): its /proc/<pid>/status has no NoNewPrivs line.
ORDINARY_UNDER_GVISOR = {"proc_self_status": "2 none 1\n"}


@pytest.mark.parametrize("case", list(ORDINARY))
def test_ordinary_program_still_works(run, case):
    code, expected = ORDINARY[case]
    if run.settings.runtime == "runsc":
        expected = ORDINARY_UNDER_GVISOR.get(case, expected)
    r = run(code)
    assert (r.status, r.stdout) == ("success", expected), r.stderr
