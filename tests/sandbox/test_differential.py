"""Results exactly as CPython gives them: each program of a corpus of edge cases runs through the
sandbox and as a bare `python3 main.py` in the same image, and the two must agree byte for
byte on exit code (or signal), stdout and stderr.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from dataclasses import dataclass, field

import pytest

from executor.models import File
from executor.policy import ENV, WORKDIR
from tests.conftest import DOCKER_SOCKET

pytestmark = pytest.mark.docker


@dataclass(frozen=True)
class Case:
    code: str
    stdin: str = ""
    args: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)


CORPUS = {
    "hello": Case("print('hello')"),
    "exit-minus-1": Case("import sys\nsys.exit(-1)"),
    "exit-minus-9": Case("import sys\nsys.exit(-9)"),
    "exit-256": Case("import sys\nsys.exit(256)"),
    "exit-3-after-output": Case(
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"
    ),
    "exit-true": Case("import sys\nsys.exit(True)"),
    "exit-huge": Case("import sys\nsys.exit(2**70)"),
    "exit-message": Case("import sys\nsys.exit('bye')"),
    "exit-none": Case("import sys\nsys.exit(None)"),
    "exit-float": Case("raise SystemExit(3.5)"),
    "os-exit-drops-buffers": Case("import os\nprint('lost?')\nos._exit(7)"),
    "uncaught-exception": Case("def f():\n    raise ValueError('boom')\nf()"),
    "chained-exception": Case(
        "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e"
    ),
    "exception-in-context": Case("try:\n    {}['x']\nexcept KeyError:\n    int('nope')"),
    "syntax-error": Case("print('a'\nx = = 1"),
    "indentation-error": Case("if True:\nprint(1)"),
    "keyboard-interrupt": Case("raise KeyboardInterrupt"),
    "stdout-closed": Case("import sys\nprint('x')\nsys.stdout.close()"),
    "stderr-closed": Case("import sys\nsys.stderr.close()\nprint('still')"),
    "atexit-and-threads": Case(
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "def late():\n    time.sleep(0.2)\n    print('thread done')\n"
        "threading.Thread(target=late).start()\n"
        "print('main done')"
    ),
    "input-then-eof": Case("print(input())\nprint(input())", stdin="abc\n"),
    "argv-and-file": Case(
        "import sys, os\nprint(sys.argv, __name__, __file__, sys.path[0], os.getcwd())",
        args=("a b", "-x", ""),
    ),
    "recursion-limit": Case("def f(n):\n    return f(n + 1)\nf(0)"),
    "recursion-limit-set": Case(
        "import sys\nsys.setrecursionlimit(50)\n"
        "def depth(n):\n    try:\n        return depth(n + 1)\n    except RecursionError:\n        return n\n"
        "print(sys.getrecursionlimit(), depth(0))\n"
        "try:\n    sys.setrecursionlimit(0)\nexcept ValueError as e:\n    print(e)"
    ),
    "recursion-depth": Case(
        "import sys\n"
        "def depth(n):\n    try:\n        return depth(n + 1)\n    except RecursionError:\n        return n\n"
        "print(sys.getrecursionlimit(), depth(0))"
    ),
    "shadowed-struct": Case("import struct\nprint(struct.MINE)", files={"struct.py": "MINE = 1\n"}),
    "shadowed-select": Case("import select\nprint(select.MINE)", files={"select.py": "MINE = 2\n"}),
    "fresh-modules": Case(
        "import sys\nprint(sorted(m for m in sys.modules if not m.startswith('_')))"
    ),
    "signal-death": Case("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"),
    "invalid-utf8": Case("import sys\nsys.stdout.buffer.write(b'ok\\xff\\xfe!\\n')"),
    "unicode": Case("print('héllo ✓ 漢字 😀')"),
    "sigpipe-ignored": Case("import signal\nprint(signal.getsignal(signal.SIGPIPE))"),
    "sigint-handler": Case("import signal\nprint(signal.getsignal(signal.SIGINT))"),
    "warnings": Case("import warnings\nwarnings.warn('careful')\nprint('after')"),
    "open-files-flushed": Case(
        "f = open('out.txt', 'w')\nf.write('kept')\nprint(open('out.txt').read() == '')"
    ),
    "del-at-exit": Case(
        "class A:\n    def __del__(self):\n        print('deleted')\na = A()\nprint('end')"
    ),
}


def bare(image: str, case: Case, uid: int) -> tuple[int, str, str]:
    """`python3 main.py ARGS` in a plain container of the same image, as the same uid."""
    files = {"main.py": case.code, **case.files}
    setup = (
        "import base64, json, os\n"
        f"files = json.loads(base64.b64decode({base64.b64encode(json.dumps(files).encode())!r}))\n"
        "for path, text in files.items():\n"
        "    open(path, 'w').write(text)\n"
    )
    env = [arg for item in ENV for arg in ("-e", item)]
    command = [
        "docker", "-H", DOCKER_SOCKET, "run", "--rm", "-i", "--network", "none",
        "--user", f"{uid}:{uid}", "--workdir", WORKDIR, "--read-only",
        "--tmpfs", f"{WORKDIR}:rw,nosuid,nodev,size=16m,mode=1777", "--entrypoint", "sh",
        "--init",  # python3 must not be PID 1 (which ignores signals it does not handle)
        *env, image, "-c", 'python3 -I -S -c "$0" && exec python3 main.py "$@"', setup,
        *case.args,
    ]  # fmt: skip
    done = subprocess.run(
        command, input=case.stdin.encode(), capture_output=True, timeout=60, check=False
    )
    decode = lambda data: data.decode("utf-8", "replace")  # noqa: E731 - as the sandbox does
    return done.returncode, decode(done.stdout), decode(done.stderr)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_sandbox_answers_as_cpython_does(run, service, name):
    case = CORPUS[name]
    files = tuple(File(path, text) for path, text in case.files.items())
    r = run(case.code, stdin=case.stdin, args=case.args, files=files)
    if r.exit_code is not None:
        ours = r.exit_code
    else:
        assert r.signal is not None, r
        ours = 128 + int(signal.Signals[r.signal])
    image = service.languages["python"].image
    theirs = bare(image, case, run.settings.sandbox_uids[0])
    assert (ours, r.stdout, r.stderr) == theirs
    assert r.status == ("success" if ours == 0 else "error")
