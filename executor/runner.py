"""The runner: the one process of ours inside a sandbox container (stdlib only).

It starts before any code exists (a warm pool starts containers in advance), reads ONE request
from its stdin, runs the program once and reports over its stdout, then exits, which ends the
container and every process left in it.

Request (worker -> runner, over the attached stdin): b"<decimal length>\\n" and a body of that
length made of fields b"<name> <length>\\n<value>". Names: code, source, stdin, inline (0/1),
timeout, compile_timeout, max_output, nproc (decimal; nproc is optional: the program's
processes and threads, RLIMIT_NPROC of its uid), and the repeatable arg, run, compile (argv
items), env (b"NAME=value", set for every step; optional) and path/content (one pair per extra
file). Test cases (optional, repeatable, in pairs): case (that case's stdin) and case_args (its
argv items, each ended by a NUL byte); without them the program runs once, on stdin and arg.
max_total_output (optional, decimal) bounds the output of all cases together, per reply.
Files back (optional): the repeatable output (a glob pattern relative to the working
directory), max_files and max_files_bytes (decimal). The build's products, for the worker's
build cache (optional): the repeatable product (a glob pattern as output's) with
max_products and max_products_bytes (decimal) asks for them back after a successful build;
the repeatable built (b"<644|755> <path>") and built_content pairs are an identical build's
products, written (after the extra files and the source) in place of a build, which the
request then does not ask for. Values are raw UTF-8: nothing is escaped.
A warm container's request may come after a pre-start message in the same format: launch (the
repeatable argv that starts the runtime in advance, see _Prestarted), hold (b"1": held before
its main(), optional), and the run, env and nproc it stands for. The request's first run uses
that runtime when it asks for no build, for exactly that run command, environment and nproc;
otherwise the runtime is killed unused before anything of the request is written.
A warm container's request may instead come after a stage message: stage, and built /
built_content pairs as above: the products of the language's latest cached build, written
into the working directory at once (the runner's only writes before a request: no process
of the program's uid exists yet). A request with staged (b"1") runs on them as written, in
place of a build (it carries no build, no products, and writes no file over a staged path);
any other request has them removed first, files and the directories made for them, before
anything of the request is written.
The run's timeout counts from the end of the build: the build has its own, compile_timeout;
each test case has the whole timeout to itself. A command whose first item starts with "./" is
a build product in the working directory: /tmp is a noexec tmpfs, so the runner executes a copy
of it in memory (memfd), which the program could do itself just as well; the sandbox's mounts
stay as they are.

Reply (runner -> worker, on stdout): frames of 1 type byte + 4-byte big-endian length + data.
    b"r"         sent once the runner has started and waits for its request: its features,
                 space-separated (b"prestart", b"stage": it takes such a message first)
    b"a"         empty; the whole request arrived (before it, nothing of the program has run)
    b"o" / b"e"  the build step's stdout / stderr (compiled languages), before any case
    b"B"         the build's end: JSON step (as b"T" below); no case runs unless it exited 0
    b"P"         after a successful build, when asked for: a build product, b"<644|755> <size>
                 <path>" (path relative to the working directory, UTF-8), its content following
                 in b"Q" frames of at most 64 KiB that add up to size (none for an empty file);
                 every product the patterns name or none (a pattern that matches nothing, a
                 cap, a file that is not regular: none), before any case starts
    b"c"         ASCII decimal index of the case that starts: the O/E frames up to its b"T" are
                 its own (a run without test cases is the one case 0)
    b"O" / b"E"  the running case's stdout / stderr (at most max_output bytes each per case,
                 and max_total_output of all cases' together)
    b"T"         the case's end: JSON step {"exit_code", "signal", "timed_out", "oom",
                 "duration_ms", "stdout_bytes", "stderr_bytes", "usage": {"cpu_ms",
                 "memory_bytes"}}
    b"F"         after the last case: a file back, b"<size> <path>" (path relative to the
                 working directory, UTF-8), its content following in b"D" frames of at
                 most 64 KiB that add up to size (none for an empty file)
    b"R"         last frame: JSON {"files_truncated": bool}
Frames that another always follows at once (b"a", b"B", b"T") go out in one write with it.

Usage is the kernel's: the CPU time (user + system) of every process of the step, reaped by
wait4 (the program and whatever it left behind, killed and reaped before the step's b"T"), and
the peak resident set of the largest of them (a process's own counts the children it waited
for). The runner's own CPU and memory are never in it.

Why the program cannot forge this reply: only the runner holds the container's stdout, and no
process of the program shares its uid. The runner is the container's PID 1 (no --init); it
starts as root with CAP_SETUID, CAP_SETGID and CAP_KILL only, and every program step (the
build, the run) runs in a child that drops to the sandbox's own uid (the runner's one
argument) with no capability before it runs anything of the user's. So the program cannot
open /proc/1/fd/* or /proc/1/mem, ptrace the runner (refused by our seccomp profile besides)
or signal it, under runc and gVisor alike; the runner is also non-dumpable, and as the init
of its PID namespace it gets no signal from inside but those it handles (none). Whatever the
program needs to open again by path (its files, /dev/stdin, /dev/stdout) is made under its
uid, and only while no process of that uid has run anything of the program's: before any
program runs, and between steps once every process the last one left is killed and reaped
(each step starts in a container where nothing of the previous one runs). A runtime started
in advance (below) is such a process until its go: the runtime and our own hook, blocked on
a pipe only the runner writes, before the program's first byte is read. The files back are
read the same way, under the program's uid once nothing of it runs, through directory
descriptors without following any symbolic link, regular files only: the runner reads
nothing the program could not have read itself, and nothing can change under it meanwhile.
When the runner exits, the kernel kills every process left in the container, so nothing the
program started outlives the reply.

Python programs run "inline": the runner's interpreter is already started, so the program is run
in a forked child with a fresh __main__ instead of paying for a new interpreter.
Other runtimes whose own start dominates (Node.js) are started in advance in a warm container:
forked, dropped to the program's uid and exec'd as the run would be, with a hook of ours
(images/language/prestart.js) that blocks on its highest descriptor before the main module is
loaded. At the request the runner writes the files, then the stdin into the runtime's fd 0 (an
empty regular file until then, sharing its offset with the runner's, so it is read from the
start) and the arguments into that descriptor; the hook sets them and returns, and the runtime
loads the program as a fresh `node main.js ARGS` would. What differs: its clocks since start
(process.uptime(), performance.now()) count from the runtime's start, and its process id is
a lower one.
A held start (hold) goes less far: the runtime is exec'd with our images/language/hold.c
preloaded, which holds the process once the dynamic linker is done, before the runtime's
main() (no heap, no thread yet), until it has read that descriptor to its end; it passes the
arguments on in the environment (EXECUTOR_HELD_ARGS, which the hook takes out), and the
runtime starts. Its clocks are a fresh process's; what differs is its process id, its start
time in /proc/self/stat, hold.so among its mappings, and NUL bytes at the end of
/proc/self/environ where LD_PRELOAD was (gone from its environment).
The attached stdin stays open while the program runs: when it closes, the worker is gone, and
the runner kills the program and exits at once. The worker does not trust any of this: it
caps what it reads and enforces the deadline itself.
"""

import sys

# The modules a fresh `python3 main.py` has when the program starts: the runner's own imports
# come after this, and a program run inline must not see them (a user's struct.py would be
# shadowed by ours).
_FRESH_MODULES = frozenset(sys.modules)

import _signal  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

# Imports are few and cheap on purpose (no json, re, enum, selectors): every container pays for
# them at start, and on two cores that start-up CPU is the service's throughput.

WORKDIR = "/tmp"
CHUNK = 65536
DRAIN_AFTER_EXIT = 0.1  # seconds to collect output still in flight once the program is gone
REAP_EVERY = 0.25  # seconds between reaping orphans while the program runs
_HEADER = struct.Struct(">cI")
_KEEP = []  # the runner's own module, kept alive while a program replaces __main__
_HELD = bytearray()  # frames waiting to go out with the next one (see _hold)


def _load_libc():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc, ctypes
    except (OSError, AttributeError):
        return None, None


_LIBC, _CTYPES = _load_libc()  # loaded before any request: ctypes is slow to import


def _prctl_dumpable(value):
    # A non-dumpable process cannot be ptraced and its /proc/<pid>/fd cannot be opened by
    # another of the same uid (under runc; gVisor ignores it: the separate uid is what holds).
    # Fails closed: a runner that cannot protect its reply channel does not run anything.
    if _LIBC is None or _LIBC.prctl(4, value, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError("prctl(PR_SET_DUMPABLE) is unavailable")


def _clear_capabilities():
    """Empty the effective, permitted and inheritable sets (lowering needs no privilege)."""
    header = (_CTYPES.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (_CTYPES.c_uint32 * 6)()
    if _LIBC.capset(header, data) != 0:
        raise OSError("capset failed")


def _read_exact(fd, n):
    parts = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("stdin closed before the whole request arrived")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_request(fd):
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            raise EOFError("stdin closed before a request arrived")
        line += byte
        if len(line) > 20:
            raise ValueError("bad request header")
    return _parse_fields(_read_exact(fd, int(line)))


def _parse_fields(body):
    fields = {}
    at = 0
    while at < len(body):
        eol = body.index(b"\n", at)
        name, _, size = body[at:eol].partition(b" ")
        end = eol + 1 + int(size)
        fields.setdefault(name.decode("ascii"), []).append(body[eol + 1 : end])
        at = end
    return fields


_SIGNALS = dict(
    enumerate(
        "HUP INT QUIT ILL TRAP ABRT BUS FPE KILL USR1 SEGV USR2 PIPE ALRM TERM STKFLT CHLD CONT"
        " STOP TSTP TTIN TTOU URG XCPU XFSZ VTALRM PROF WINCH IO PWR SYS".split(),
        start=1,
    )
)


def _signal_name(number):
    return "SIG" + _SIGNALS.get(number, str(number))


def _json(value):
    """JSON of the result: dicts, ints, bools, None and plain ASCII names only."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"%s"' % value
    return "{%s}" % ", ".join('"%s": %s' % (k, _json(v)) for k, v in value.items())


def _send(kind, data):
    """Write one frame, after those held (see _hold)."""
    _HELD.extend(_HEADER.pack(kind, len(data)) + data)
    _flush()


def _hold(kind, data):
    """Queue a frame to go out with the next one: a frame that something else always follows
    at once (the next case's b"c", the final b"R") costs no write, and no wake-up of the
    worker, of its own. Every spawn of a program step and every exit sends what is held first,
    so a held b"a" still precedes anything of the program, and nothing held is ever lost."""
    _HELD.extend(_HEADER.pack(kind, len(data)) + data)


def _flush():
    """Write the frames held."""
    view = memoryview(bytes(_HELD))
    _HELD.clear()
    while view:
        view = view[os.write(1, view) :]


def _oom_kills():
    for path, key in (
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except OSError:
            continue
    return 0


def _safe_path(path):
    norm = os.path.normpath(path)
    if os.path.isabs(norm) or norm == "." or norm.startswith(".."):
        raise ValueError("file path must be relative and stay in the working directory")
    return os.path.join(WORKDIR, norm)


def _write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _write_products(message):
    """Write a build's products (built / built_content pairs); return their paths and the
    directories made for them, deepest last."""
    paths, made = [], []
    for header, content in zip(
        message.get("built", ()), message.get("built_content", ()), strict=True
    ):
        mode, _, path = header.decode("utf-8").partition(" ")
        path = _safe_path(path)
        parent = os.path.dirname(path)
        missing = []
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        made += reversed(missing)
        _write_file(path, content)
        os.chmod(path, 0o755 if mode == "755" else 0o644)
        paths.append(path)
    return paths, made


class _Staged:
    """The products of a build, written before the request (see the module docstring)."""

    def __init__(self, message, uid):
        self.uid = uid
        with _AsUser(uid):  # no process of the uid exists: nothing can race these writes
            self.paths, self.made = _write_products(message)

    def remove(self):
        """Remove them, for a request they are not for (nothing of the program ran yet)."""
        with _AsUser(self.uid):
            for path in self.paths:
                os.unlink(path)
            for directory in reversed(self.made):
                os.rmdir(directory)


def _program_uid(argv):
    """The uid every program step runs as: the runner's one argument, never root."""
    if len(argv) != 2 or not argv[1].isdigit() or int(argv[1]) < 1000:
        raise SystemExit("runner: usage: runner.pyc UID (the program's uid, 1000 or more)")
    return int(argv[1])


class _AsUser:
    """Act as `uid` for the block only: the runner's effective ids (no supplementary group),
    so what it creates is the program's and what it opens, only what the program could.

    Only used while no process of that uid exists (see _clear).
    """

    def __init__(self, uid):
        self.uid = uid

    def __enter__(self):
        os.setgroups([])  # root's group would still open what the program's cannot
        os.setegid(self.uid)
        os.seteuid(self.uid)

    def __exit__(self, *exc):
        os.seteuid(0)
        os.setegid(0)


def _drop_to(uid):
    """For good: no groups, every uid and gid `uid`, no capability left (the kernel clears them)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _clear_capabilities()  # the inheritable set survives a change of uid: empty it too
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise OSError("could not drop to the program's uid")


def _stdin_fd(data):
    try:
        fd = os.open(WORKDIR, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (OSError, AttributeError):
        path = os.path.join(WORKDIR, ".stdin-%d" % os.getpid())
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.unlink(path)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Stream:
    """One output stream of a step: sends up to `limit` bytes, and no more than is left of
    `shared` (a one-item list: what all the cases may still send together), if given."""

    def __init__(self, kind, limit, shared=None):
        self.kind = kind
        self.limit = limit
        self.shared = shared
        self.total = 0

    def feed(self, data):
        keep = self.limit - self.total
        if self.shared is not None:
            keep = min(keep, self.shared[0])
        self.total += len(data)
        if keep > 0:
            chunk = data[:keep]
            if self.shared is not None:
                self.shared[0] -= len(chunk)
            _send(self.kind, chunk)


def _limit_processes(nproc):
    """RLIMIT_NPROC of the program's uid (its own: the count is this sandbox's alone)."""
    limit = (_CTYPES.c_ulong * 2)(nproc, nproc)
    if _LIBC.setrlimit(6, limit) != 0:  # RLIMIT_NPROC, on x86-64 and arm64 alike
        raise OSError("setrlimit(RLIMIT_NPROC) failed")


def _child_setup(stdin_fd, out_w, err_w, inline, uid, nproc, control=None):
    os.setsid()  # its own process group, so the deadline kills every process it started
    os.dup2(stdin_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    last = os.sysconf("SC_OPEN_MAX")  # RLIMIT_NOFILE's soft limit: every fd is below it
    if control is not None:
        # A pre-started runtime waits for its go on the highest fd it may have: the runtime's
        # own descriptors are then numbered as in any run (its hook closes this one).
        last -= 1
        os.dup2(control, last)
        os.set_inheritable(last, True)
    os.closerange(3, last)
    if nproc:
        _limit_processes(nproc)
    _drop_to(uid)
    _prctl_dumpable(1)  # changing uid made it non-dumpable: its /proc entries become its own
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # the OOM killer takes the program, not the runner
    except OSError:
        pass
    os.chdir(WORKDIR)
    # The signal dispositions a fresh process would have: an interpreter's (SIGINT raises
    # KeyboardInterrupt, SIGPIPE and SIGXFSZ ignored) or, for exec, the defaults.
    if inline:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    else:
        for number in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(number, _signal.SIG_DFL)


def _child_inline(path, args):
    """Run the program in this forked interpreter as `python3 main.py args` would; never returns."""
    import builtins

    sys.argv = [os.path.basename(path), *args]
    sys.path[0] = os.path.dirname(path)
    main = type(sys)("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__builtins__ = builtins
    _KEEP.append(sys.modules["__main__"])
    _hide_runner_frames()
    for name in [n for n in sys.modules if n not in _FRESH_MODULES]:
        del sys.modules[name]  # the program imports its own (or its files') afresh
    sys.modules["__main__"] = main
    interrupted = False
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
        exec(code, main.__dict__)
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        if isinstance(e, SyntaxError) and tb is None:
            e.__traceback__ = None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        status = 1
        interrupted = isinstance(e, KeyboardInterrupt)
    _finalize(main, status, interrupted)


def _hide_runner_frames():
    """Give the program the recursion depth a fresh interpreter would.

    The program's module runs below the runner's frames (its module and this function's
    caller): the limit is raised by that many, and sys.getrecursionlimit/setrecursionlimit
    show and take the program's own numbers.
    """
    frame, extra = sys._getframe(1), 0
    while frame is not None:
        extra += 1
        frame = frame.f_back
    real_get, real_set = sys.getrecursionlimit, sys.setrecursionlimit
    real_set(real_get() + extra)

    def getrecursionlimit():
        return real_get() - extra

    def setrecursionlimit(limit, /):
        limit = limit.__index__() if not isinstance(limit, int) else limit
        if limit < 1:
            raise ValueError("recursion limit must be greater or equal than 1")
        real_set(limit + extra)

    getrecursionlimit.__doc__ = real_get.__doc__
    setrecursionlimit.__doc__ = real_set.__doc__
    sys.getrecursionlimit, sys.setrecursionlimit = getrecursionlimit, setrecursionlimit


def _exit_status(code):
    """The exit status CPython gives `raise SystemExit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        # exit() of a C int: -1 is 255, 256 is 0; past a C long CPython exits with -1.
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 255
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _finalize(main, status, interrupted):
    """What interpreter shutdown does that a program can see, without the slow module teardown.

    As Py_FinalizeEx: join non-daemon threads, run atexit callbacks (their errors, SystemExit
    included, are printed and ignored), flush the standard streams that are still open (a
    failed flush makes the status 120); an uncaught KeyboardInterrupt ends by SIGINT.
    """
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()  # join non-daemon threads
    import atexit

    atexit._run_exitfuncs()
    main.__dict__.clear()  # closes (and flushes) files the program left open
    for stream in (sys.stdout, sys.stderr):
        try:
            if not getattr(stream, "closed", True):  # CPython skips what it cannot tell
                stream.flush()
        except Exception:
            status = 120
    if interrupted:
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
    os._exit(status)


def _spawn(argv, stdin_fd, inline_path, uid, pipes, nproc, env, control=None):
    (out_r, out_w), (err_r, err_w) = pipes
    _flush()  # what is held goes out before anything of the program runs
    pid = os.fork()
    if pid == 0:
        try:
            _child_setup(stdin_fd, out_w, err_w, inline_path is not None, uid, nproc, control)
            if env:
                os.environ.update(env)
            if inline_path is None:
                if argv[0].startswith("./"):
                    os.execve(_in_memory(argv[0]), argv, os.environ)
                os.execvpe(argv[0], argv, os.environ)
        except BaseException as e:  # exec failed: report it as the program's own error
            os.write(2, ("runner: cannot start %r: %s\n" % (argv[0], e)).encode())
            os._exit(127)
        # Unwind the runner's frames first: the program starts at the bottom of the stack,
        # with the recursion depth a fresh interpreter would give it.
        raise _Inline(inline_path, argv)
    os.close(out_w)
    os.close(err_w)
    return pid, out_r, err_r


def _in_memory(path):
    """A close-on-exec memfd holding a copy of the executable `path` (fexecve-able)."""
    fd = os.memfd_create(os.path.basename(path), os.MFD_CLOEXEC)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    return fd


def _wait_status(status):
    if os.WIFSIGNALED(status):
        return None, _signal_name(os.WTERMSIG(status))
    return os.WEXITSTATUS(status), None


class _Inline(BaseException):
    """Raised in a forked child to run the program from the runner's outermost frame."""

    def __init__(self, path, args):
        super().__init__()
        self.path = path
        self.args_ = args


class WorkerGone(Exception):
    """The worker closed our stdin: nobody waits for this result any more."""


def _supervise(pid, pipes, deadline, usage):
    """Pump output until the program ends or the deadline passes; return (status, timed_out)."""
    poller = select.poll()
    poller.register(0, select.POLLIN)  # the worker's connection: readable means it is gone
    for fd in pipes:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (OSError, AttributeError):
        pidfd = None
    status = None
    drain_until = 0.0
    timed_out = False
    open_pipes = len(pipes)
    while True:
        now = time.monotonic()
        if status is None and now >= deadline:
            timed_out = True
            break
        if status is not None and (open_pipes == 0 or now >= drain_until):
            break
        wait = max(0.0, (deadline if status is None else drain_until) - now)
        # As PID 1 we inherit every orphan: wake now and then to reap them (see _reap).
        wait = min(wait, 0.01 if pidfd is None else REAP_EVERY)
        for fd, _ in poller.poll(wait * 1000):
            if fd == 0:
                _kill_group(pid)
                raise WorkerGone
            if fd == pidfd:
                poller.unregister(fd)
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if data:
                pipes[fd].feed(data)
            else:
                poller.unregister(fd)
                open_pipes -= 1
        if status is None:
            status = _reap(pid, usage)
            if status is not None:
                drain_until = time.monotonic() + DRAIN_AFTER_EXIT
    if pidfd is not None:
        os.close(pidfd)
    if timed_out:
        _kill_group(pid)
        _, status, rusage = os.wait4(pid, 0)
        usage.add(rusage)
    return status, timed_out


class _Usage:
    """What the kernel accounts to the processes reaped during one step (see the docstring)."""

    def __init__(self):
        self.cpu_s = 0.0
        self.maxrss_kib = 0

    def add(self, rusage):
        self.cpu_s += rusage.ru_utime + rusage.ru_stime
        self.maxrss_kib = max(self.maxrss_kib, rusage.ru_maxrss)

    def report(self):
        return {"cpu_ms": int(self.cpu_s * 1000), "memory_bytes": self.maxrss_kib * 1024}


def _reap(pid, usage):
    """Reap every exited child (orphans are ours too); the wait status of `pid`, if it ended.

    Unreaped zombies would hold slots of the container's process limit.
    """
    status = None
    while True:
        try:
            done, raw, rusage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if done == 0:
            return status
        usage.add(rusage)
        if done == pid:
            status = raw


def _clear(usage=None, within=2.0):
    """Kill and reap every process left in the container; True once none is left.

    Under runc the kernel does this when PID 1 exits; under gVisor the sandbox was seen to
    live on until the program's last detached process ended by itself (a fork bomb's sleepers
    held a container, and the engine's kill of it, for 30 s). As PID 1 we may signal every
    process in the namespace (kill(-1) spares only ourselves) and every orphan is our child,
    so kill until nothing is left to reap: a process forked while the signal went round is
    caught by the next one. Between steps this is what makes the program's uid free for the
    runner's own use again (see _AsUser). Only ever as PID 1: anywhere else kill(-1) would
    reach the host, so there it reports False.
    """
    if os.getpid() != 1:
        return False
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            while True:
                done, _, rusage = os.wait4(-1, os.WNOHANG)
                if done == 0:
                    break
                if usage is not None:
                    usage.add(rusage)
        except ChildProcessError:
            return True
        try:
            os.kill(-1, _signal.SIGKILL)
        except OSError:
            pass
        time.sleep(0.001)
    return False


class Unsettled(Exception):
    """A process of the program outlived every kill: the runner uses its uid no more."""


def _kill_group(pid):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, _signal.SIGKILL)
        except OSError:
            pass


def _run_step(argv, stdin, inline_path, timeout, kinds, limit, uid, nproc, env, shared=None):
    """Run one step (the build: stdin None; a case) and clear up after it; its step dict."""
    if not _clear():
        raise Unsettled
    with _AsUser(uid):  # nothing of the program runs: see _clear
        stdin_fd = os.open(os.devnull, os.O_RDONLY) if stdin is None else _stdin_fd(stdin)
        pipes = (os.pipe(), os.pipe())
    streams = [_Stream(kinds[0], limit, shared), _Stream(kinds[1], limit, shared)]
    oom_before = _oom_kills()
    started = time.monotonic()
    pid, out_r, err_r = _spawn(argv, stdin_fd, inline_path, uid, pipes, nproc, env)
    os.close(stdin_fd)
    return _step_result(pid, out_r, err_r, streams, started, timeout, oom_before)


def _step_result(pid, out_r, err_r, streams, started, timeout, oom_before):
    """Supervise the started step `pid` to its end, clear up after it; its step dict."""
    usage = _Usage()
    status, timed_out = _supervise(
        pid, {out_r: streams[0], err_r: streams[1]}, started + timeout, usage
    )
    duration_ms = int((time.monotonic() - started) * 1000)
    os.close(out_r)
    os.close(err_r)
    exit_code, sig = _wait_status(status)
    oom = not timed_out and exit_code != 0 and _oom_kills() > oom_before
    _clear(usage)  # what the step left behind is killed, and its usage counted, now
    return {
        "exit_code": None if timed_out else exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "oom": oom,
        "duration_ms": duration_ms,
        "stdout_bytes": streams[0].total,
        "stderr_bytes": streams[1].total,
        "usage": usage.report(),
    }


class _Prestarted:
    """The run's runtime, started before its request (a warm container's): see the docstring.

    It is the program's process from its start: forked, set up and dropped to the program's
    uid as any run is, and exec'd into `launch`, which starts the runtime and then blocks on
    its highest descriptor (the control pipe) before anything of the program is loaded. The
    runner then writes the program's files, the run's stdin into fd 0 (an empty file until
    then, as any run's stdin a regular file) and the run's arguments into the control pipe
    (each ended by a NUL byte), and closes it: the runtime takes its arguments and runs the
    program as `run` would have. Only the first run of a request can be this one: nothing ran
    before it.
    """

    def __init__(self, message, uid):
        self.run = [item.decode("utf-8") for item in message.get("run", ())]
        self.env = [item.decode("utf-8") for item in message.get("env", ())]
        self.nproc = int(message.get("nproc", [b"0"])[0])
        launch = [item.decode("utf-8") for item in message["launch"]]
        with _AsUser(uid):  # nothing of the program runs: these are its own (/dev/stdin)
            self.stdin_fd = _stdin_fd(b"")
            control_r, self.control_w = os.pipe()
            pipes = (os.pipe(), os.pipe())
        env = _environment(self.env)
        if _holds(message, env):
            env["LD_PRELOAD"] = HOLD_LIBRARY  # last: hold.c overwrites its text in place
        self.pid, self.out_r, self.err_r = _spawn(
            launch, self.stdin_fd, None, uid, pipes, self.nproc, env, control_r
        )
        os.close(control_r)

    def serves(self, request):
        """True when this runtime runs the request's first case exactly as `run` would."""
        if request.get("compile") or request.get("inline", [b"0"])[0] == b"1":
            return False
        same = (
            [item.decode("utf-8") for item in request.get("run", ())] == self.run
            and [item.decode("utf-8") for item in request.get("env", ())] == self.env
            and int(request.get("nproc", [b"0"])[0]) == self.nproc
        )
        return same and self._alive()

    def _alive(self):
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def start(self, stdin, args):
        """Hand it the run's stdin and arguments: the program starts now."""
        _flush()  # what is held goes out before anything of the program runs
        # Its fd 0 shares this file description: written here and rewound, the program
        # reads the whole stdin from the start, a regular file as every run's.
        view = memoryview(stdin)
        while view:
            view = view[os.write(self.stdin_fd, view) :]
        os.lseek(self.stdin_fd, 0, os.SEEK_SET)
        os.close(self.stdin_fd)
        view = memoryview(_nul_items(args))
        try:
            while view:
                view = view[os.write(self.control_w, view) :]
        except BrokenPipeError:
            pass  # it is gone: its end is the step's result
        os.close(self.control_w)

    def discard(self):
        """Not used: close its files; the next _clear() kills it."""
        for fd in (self.stdin_fd, self.control_w, self.out_r, self.err_r):
            os.close(fd)


HOLD_LIBRARY = "/opt/executor/hold.so"


def _holds(message, env):
    """True when the pre-started runtime is to be held before its main(): asked for, the
    image has the library, and nothing else is preloaded (nor would the variable come last)."""
    return (
        message.get("hold", [b"0"])[0] == b"1"
        and "LD_PRELOAD" not in env
        and "LD_PRELOAD" not in os.environ
        and os.path.exists(HOLD_LIBRARY)
    )


def _environment(items):
    """The variables of b"NAME=value" items (decoded) that name one, for every step."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep and name:
            env[name] = value
    return env


def _nul_items(items):
    return b"".join(item.encode("utf-8") + b"\0" for item in items)


def _run_prestarted(warm, stdin, args, timeout, limit, shared):
    """Run a case in the pre-started runtime (the first case; nothing ran before it)."""
    streams = [_Stream(b"O", limit, shared), _Stream(b"E", limit, shared)]
    oom_before = _oom_kills()
    started = time.monotonic()
    warm.start(stdin, args)
    return _step_result(warm.pid, warm.out_r, warm.err_r, streams, started, timeout, oom_before)


def _cases(request):
    """[(stdin, args)] of every test case, or of the one run without them."""
    stdins = request.get("case")
    if stdins is None:
        args = [item.decode("utf-8") for item in request.get("arg", ())]
        return [(request.get("stdin", [b""])[0], args)]
    return [
        (stdin, [item.decode("utf-8") for item in args.split(b"\0")[:-1]])
        for stdin, args in zip(stdins, request.get("case_args", ()), strict=True)
    ]


MAX_WALK_ENTRIES = 10000  # directory entries looked at for files back
MAX_WALK_DEPTH = 32


def _glob_regex(pattern):
    """A regular expression of a glob pattern over relative paths: `*` and `?` stay within
    one segment, `**` spans any number of them, `[...]` is a set of characters."""
    import re

    out, at = [], 0
    while at < len(pattern):
        char = pattern[at]
        if pattern.startswith("**/", at):
            out.append("(?:[^/]+/)*")
            at += 3
            continue
        if pattern.startswith("**", at):
            out.append(".*")
            at += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and pattern.find("]", at + 2) > 0:
            end = pattern.find("]", at + 2)
            body = pattern[at + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[%s%s]" % ("^/" if negate else "", body.replace("\\", "\\\\")))
            at = end
        else:
            out.append(re.escape(char))
        at += 1
    return re.compile("(?s:%s)\\Z" % "".join(out))


class _Files:
    """The regular files under the working directory that match, within the caps."""

    OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

    def __init__(self, patterns, max_files, max_bytes):
        self.matchers = [_glob_regex(p) for p in patterns]
        self.max_files = max_files
        self.left = max_bytes
        self.seen = 0
        self.found = []
        self.truncated = False

    def walk(self, dir_fd, prefix, depth, descend=None):
        """Take the matching files under `dir_fd`; `descend`: the only directories to enter at
        this level (None: all)."""
        with os.scandir(dir_fd) as it:
            entries = sorted(
                (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                for e in it
            )
        for name, is_dir, is_file in entries:
            if is_dir and descend is not None and name not in descend:
                continue
            self.seen += 1
            if self.seen > MAX_WALK_ENTRIES:
                self.truncated = True
                return
            try:
                path = prefix + name
                path.encode("utf-8")  # a name that is not UTF-8 cannot be sent back
            except UnicodeEncodeError:
                self.truncated = True
                continue
            if is_dir:
                if depth >= MAX_WALK_DEPTH:
                    self.truncated = True
                    continue
                try:
                    fd = os.open(name, self.OPEN | os.O_DIRECTORY, dir_fd=dir_fd)
                except OSError:
                    continue  # unreadable to the program: not its to give back
                try:
                    self.walk(fd, path + "/", depth + 1)
                finally:
                    os.close(fd)
            elif is_file and any(m.match(path) for m in self.matchers):
                self.take(name, path, dir_fd)

    def take(self, name, path, dir_fd):
        if len(self.found) >= self.max_files:
            self.truncated = True
            return
        try:
            fd = os.open(name, self.OPEN, dir_fd=dir_fd)  # a symlink fails: ELOOP
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if not _is_regular(info.st_mode):
                return
            if info.st_size > self.left:
                self.truncated = True
                return
            data = bytearray()  # grows in place: a large file is not copied at every read
            while len(data) <= info.st_size:
                chunk = os.read(fd, min(1 << 20, info.st_size + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            if len(data) > self.left:
                self.truncated = True
                return
            self.left -= len(data)
            self.found.append((path, data, info.st_mode))
        except OSError:
            return
        finally:
            os.close(fd)


def _is_regular(mode):
    return mode & 0o170000 == 0o100000


def _send_files(uid, patterns, max_files, max_bytes):
    """Send the files back (b"F" and b"D" frames); True when a cap left something out.

    Read under the program's uid once nothing of it runs (see the module docstring).
    """
    files = _Files([p.decode("utf-8") for p in patterns], max_files, max_bytes)
    if not _clear():
        raise Unsettled
    with _AsUser(uid):
        root = os.open(WORKDIR, _Files.OPEN | os.O_DIRECTORY)
        try:
            files.walk(root, "", 0)
        finally:
            os.close(root)
    for path, data, _ in files.found:
        _send(b"F", b"%d " % len(data) + path.encode("utf-8"))
        for at in range(0, len(data), CHUNK):
            _send(b"D", data[at : at + CHUNK])
    return files.truncated


def _send_products(uid, patterns, max_files, max_bytes):
    """Send the build's products (b"P" and b"Q" frames): every file the patterns name, or none.

    Read as the files back are (see the module docstring), once nothing of the build runs:
    what is sent is what the build left, byte for byte. Only the directories a pattern names
    first are entered (a build's caches elsewhere in the working directory are not walked).
    """
    patterns = [p.decode("utf-8") for p in patterns]
    files = _Files(patterns, max_files, max_bytes)
    first = {p.split("/", 1)[0] for p in patterns if "/" in p}
    descend = None if any(c in "*?[" for name in first for c in name) else first
    if not _clear():
        raise Unsettled
    with _AsUser(uid):
        root = os.open(WORKDIR, _Files.OPEN | os.O_DIRECTORY)
        try:
            files.walk(root, "", 0, descend)
        finally:
            os.close(root)
    matched = all(any(m.match(path) for path, _, _ in files.found) for m in files.matchers)
    if files.truncated or not matched:
        return
    for path, data, mode in files.found:
        executable = b"755" if mode & 0o111 else b"644"
        _send(b"P", b"%s %d %s" % (executable, len(data), path.encode("utf-8")))
        for at in range(0, len(data), CHUNK):
            _send(b"Q", data[at : at + CHUNK])


def main():
    _prctl_dumpable(0)
    # PID 1 gets no signal from inside its namespace unless it handles it: handle none (the
    # interpreter installed one for SIGINT).
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    uid = _program_uid(sys.argv)
    _send(b"r", b"prestart stage")
    request = _read_request(0)
    warm = staged = None
    if "launch" in request:  # a warm container's runtime, started before its request
        warm = _Prestarted(request, uid)
        request = _read_request(0)
    elif "stage" in request:  # a build's products, written before the request
        staged = _Staged(request, uid)
        request = _read_request(0)
    received = time.monotonic()
    _hold(b"a", b"")  # out with the first case (or the build), before it starts

    def number(name, default=None):
        values = request.get(name)
        return float(values[0]) if values else default

    def argv(name):
        return [item.decode("utf-8") for item in request.get(name, ())]

    env = _environment(argv("env"))
    source = _safe_path(request["source"][0].decode("utf-8"))
    build = request.get("compile")
    cases = _cases(request)
    if warm is not None and not warm.serves(request):
        warm.discard()
        warm = None
        if not _clear():  # it is killed before anything is written under its uid
            raise Unsettled
    if staged is not None and request.get("staged") != [b"1"]:
        staged.remove()
    with _AsUser(uid):  # all the program may open by path again, owned by its uid
        for path, content in zip(request.get("path", ()), request.get("content", ()), strict=True):
            _write_file(_safe_path(path.decode("utf-8")), content)
        _write_file(source, request["code"][0])
        _write_products(request)
    limit = int(number("max_output"))
    nproc = int(number("nproc", 0))
    result = {"files_truncated": False}
    built = True
    if build:
        build_started = time.monotonic()
        timeout = number("compile_timeout", 30.0)
        step = _run_step(argv("compile"), None, None, timeout, (b"o", b"e"), limit, uid, nproc, env)
        _hold(b"B", _json(step).encode())  # a product, the first b"c" or b"R" follows at once
        built = step["exit_code"] == 0
        if built and request.get("product"):
            _send_products(
                uid,
                request["product"],
                int(number("max_products", 0)),
                int(number("max_products_bytes", 0)),
            )
        received += time.monotonic() - build_started  # the build had its own time limit
    if built:
        inline = source if request.get("inline", [b"0"])[0] == b"1" else None
        budget = max(0.0, number("timeout") - (time.monotonic() - received))
        total = number("max_total_output")
        shared = None if total is None else [int(total)]
        for index, (stdin, args) in enumerate(cases):
            command = args if inline else [*argv("run"), *args]
            _send(b"c", b"%d" % index)
            if warm is not None:
                step = _run_prestarted(warm, stdin, args, budget, limit, shared)
                warm = None  # it served its one case; the others start afresh
            else:
                step = _run_step(
                    command, stdin, inline, budget, (b"O", b"E"), limit, uid, nproc, env, shared
                )
            _hold(b"T", _json(step).encode())  # the next b"c", b"F" or b"R" follows at once
            budget = number("timeout")  # each case has the whole timeout to itself
    patterns = request.get("output")
    if patterns:
        result["files_truncated"] = _send_files(
            uid, patterns, int(number("max_files", 0)), int(number("max_files_bytes", 0))
        )
    _send(b"R", _json(result).encode())


if __name__ == "__main__":
    inline = None
    try:
        main()
    except _Inline as child:
        inline = (child.path, child.args_)  # run it outside this handler: no __context__
    except (WorkerGone, EOFError, Unsettled):
        try:
            _flush()
        except OSError:
            pass  # the worker is gone
        _clear()
        os._exit(3)  # nobody is listening, or it is not safe to go on: end the container
    except BaseException:
        _flush()  # what was held is true: the worker gets it before the runner's end
        raise
    if inline is not None:
        _child_inline(*inline)  # in the program's process; never returns
    _clear()
    os._exit(0)  # the reply is sent: end the container now, skip interpreter teardown
