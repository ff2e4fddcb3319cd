"""A runtime started in advance (Node.js in a warm container) gives the program what a fresh
process would: each program of a corpus runs in a pre-started runtime, held before its main()
(EXECUTOR_PRESTART=held) or started (booted), and in a container that starts the runtime for
it, and the two must agree on status, exit code, signal, stdout and stderr. Then what decides
whether the pre-started runtime is used at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import docker
import pytest

from executor.config import Settings
from executor.models import File, RunRequest, RunResult, TestCase
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.sandbox.conftest import one_language_services
from tests.sandbox.test_differential import Case  # a program, its stdin, args and files

pytestmark = pytest.mark.docker

Services = Callable[[str, str], ExecutionService]

ID = "55555555-5555-4555-8555-555555555555"
# How the program's process was started, as it can tell: `fresh` for its request; `held`
# before it (its process is older than the wait after the pool is warm), the runtime starting
# for the request (its own clock, process.uptime(), is younger); `booted` before it, the
# runtime too. /proc/self/stat's start time and /proc/uptime count clock ticks since boot.
WAITED_S = 1.5
PRESTARTED = (
    "{ const fs = require('fs'), st = fs.readFileSync('/proc/self/stat', 'utf8');\n"
    "  const age = parseFloat(fs.readFileSync('/proc/uptime', 'utf8'))"
    " - st.slice(st.lastIndexOf(')') + 2).split(' ')[19] / 100;\n"
    "  console.log('started', age < 1 ? 'fresh' : process.uptime() < 1 ? 'held' : 'booted') }\n"
)
MODES = ("held", "booted")  # EXECUTOR_PRESTART's modes that start a runtime in advance


JS_CORPUS = {
    "hello": Case("console.log('hello')"),
    "argv-and-main": Case(
        "console.log(process.argv, process.execArgv, require.main === module, module.id,"
        " __filename, Object.keys(require.cache), process.cwd())",
        args=("a b", "", "-x", "ünï"),
    ),
    "exit-code-after-output": Case(
        "console.log('out'); console.error('err'); process.exitCode = 4"
    ),
    "process-exit": Case("process.stdout.write('x\\n'); process.exit(3)"),
    "uncaught-exception": Case("function f() { throw new TypeError('boom') }\nf()"),
    "unhandled-rejection": Case("Promise.reject(new Error('late'))"),
    "syntax-error": Case("let x = = 1"),
    "import-in-commonjs": Case("import fs from 'fs'\nconsole.log(fs)"),
    "stdin-read-whole": Case(
        "const fs = require('fs'); console.log(JSON.stringify(fs.readFileSync(0, 'utf8')),"
        " fs.readFileSync('/dev/stdin', 'utf8').length)",
        stdin="line 1\nline 2\n",
    ),
    "stdin-stream": Case(
        "let n = 0; process.stdin.on('data', d => n += d.length);"
        " process.stdin.on('end', () => console.log('bytes', n))",
        stdin="x" * 200000,
    ),
    "env": Case(
        "for (const k of Object.keys(process.env).sort())"
        " if (k !== 'HOSTNAME') console.log(k, process.env[k])"
    ),
    "globals": Case(
        "console.log(Object.getOwnPropertyNames(globalThis).sort().join(' '));"
        " console.log(typeof require, typeof module, typeof exports)"
    ),
    "fork-inherits-exec-argv": Case(
        "const { fork } = require('child_process');\n"
        "if (process.argv[2] === 'child') { console.log('child', process.execArgv); }\n"
        "else { fork(__filename, ['child']).on('exit', c => console.log('exit', c)); }"
    ),
    "child-process": Case(
        "console.log(require('child_process').execFileSync('node', ['-e',"
        " 'console.log(process.argv.length)']).toString().trim())"
    ),
    "worker-threads": Case(
        "const { Worker } = require('worker_threads');\n"
        "let done = 0;\n"
        'for (let i = 0; i < 8; i++) new Worker(\'require("worker_threads").parentPort'
        ".postMessage(1)', { eval: true }).on('message', () => { if (++done === 8)"
        " console.log('workers', done) });"
    ),
    "worker-sees": Case(
        "const { Worker } = require('worker_threads');\n"
        "new Worker('console.log(process.argv, process.execArgv,"
        " Object.keys(require.cache))', { eval: true, argv: ['w'] })"
    ),
    "open-files": Case(
        "const fs = require('fs');\n"
        "console.log(fs.readdirSync('/proc/self/fd').length,"
        " [0, 1, 2, 3].map(fd => { try { return fs.fstatSync(fd).isFile() } catch (e) { return e.code } }))"
    ),
    "environ-block": Case(
        "const fs = require('fs');\n"
        "const block = text => text.split('\\0').filter(v => v && !v.startsWith('HOSTNAME='))"
        ".sort();\n"
        "console.log(block(fs.readFileSync('/proc/self/environ', 'utf8')));\n"
        "console.log(block(require('child_process').execFileSync('cat', ['/proc/self/environ'])"
        ".toString()))"
    ),
    "child-env": Case(
        "console.log(require('child_process').execFileSync('sh', ['-c',"
        " 'echo ${LD_PRELOAD-none}; env | wc -l']).toString())"
    ),
    "signal-death": Case("process.kill(process.pid, 'SIGTERM')"),
    "sibling-module": Case(
        "console.log(require('./lib').answer, Object.keys(require.cache).length)",
        files={"lib.js": "exports.answer = 42\n"},
    ),
    "stack-depth": Case(
        "let n = 0; function f() { n++; f() }\n"
        "try { f() } catch (e) { console.log(e.constructor.name, n > 1000) }"
    ),
}


CORPORA = {"javascript": JS_CORPUS}
MARKERS = {"javascript": PRESTARTED}


def wait_warm(svc: ExecutionService, aged: bool) -> None:
    deadline = time.monotonic() + 60
    while svc.pool_stats()["warm"] < 1:
        assert time.monotonic() < deadline, f"no warm container: {svc.pool_stats()}"
        time.sleep(0.05)
    if aged:
        time.sleep(WAITED_S)  # long enough that a pre-started runtime shows its age


@pytest.fixture(scope="module")
def services(settings: Settings, raw_docker: docker.DockerClient) -> Iterator[Services]:
    """services(language, mode): a worker's service with a warm pool of that language only
    (the branch's own image) and EXECUTOR_PRESTART=mode, made once per module."""
    pooled = one_language_services(settings, raw_docker, "prestart")
    get = next(pooled)
    yield lambda language, mode: get(language, prestart=mode, max_stdin_bytes=3 << 20)
    next(pooled, None)


@pytest.fixture(params=MODES)
def warm(request: pytest.FixtureRequest, services: Services) -> ExecutionService:
    """A JavaScript service whose warm containers start Node.js in advance, in each mode."""
    return services("javascript", request.param)


def run(svc: ExecutionService, code: str, aged: bool = False, **fields: object) -> RunResult:
    """The program's result in a warm container; `aged`: one that waited WAITED_S first (for
    PRESTARTED to tell how it was started)."""
    wait_warm(svc, aged)
    fields.setdefault("limits", default_limits(svc.settings))
    fields.setdefault("language", svc.served[0])
    request = RunRequest(code=code, **fields)  # type: ignore[arg-type]
    result = svc.run(request, ID)
    assert result.warm, result
    return result


def outcome(r: RunResult) -> tuple[object, ...]:
    """What the program showed; a warning's process id is whatever the kernel gave."""
    stderr = re.sub(r"^\(node:\d+\)", "(node:PID)", r.stderr, flags=re.M)
    return (r.status, r.exit_code, r.signal, r.stdout, stderr)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("language", "name"), [(lang, name) for lang, cases in CORPORA.items() for name in cases]
)
def test_a_prestarted_runtime_answers_as_a_fresh_one(services, language, name, mode):
    case = CORPORA[language][name]
    files = tuple(File(path, text) for path, text in case.files.items())
    fields = {"stdin": case.stdin, "args": case.args, "files": files}
    ours = run(services(language, mode), case.code, **fields)
    theirs = run(services(language, "off"), case.code, **fields)
    assert outcome(ours) == outcome(theirs)


@pytest.mark.parametrize("language", sorted(CORPORA))
def test_the_runtime_is_started_in_advance_as_the_setting_says(services, language):
    marker = MARKERS[language]
    for mode, seen in (("held", "held"), ("booted", "booted"), ("off", "fresh")):
        assert run(services(language, mode), marker, aged=True).stdout == f"started {seen}\n"


def test_the_first_test_case_runs_prestarted_and_the_others_afresh(warm):
    code = PRESTARTED + "console.log(process.argv.slice(2), require('fs').readFileSync(0, 'utf8'))"
    cases = (TestCase(stdin="one", args=("1",)), TestCase(stdin="two", args=("2", "b")))
    r = run(warm, code, aged=True, tests=cases)
    assert [case.stdout for case in r.tests] == [
        f"started {warm.settings.prestart}\n[ '1' ] one\n",
        "started fresh\n[ '2', 'b' ] two\n",
    ]


def test_a_large_stdin_arrives_whole(warm):
    stdin = "y" * (2 << 20)
    code = (
        PRESTARTED
        + "const fs = require('fs'); console.log(fs.readFileSync(0).length, fs.fstatSync(0).isFile())"
    )
    mode = warm.settings.prestart
    assert run(warm, code, aged=True, stdin=stdin).stdout == f"started {mode}\n{len(stdin)} true\n"


def test_a_prestarted_runtime_keeps_the_limits(warm):
    r = run(warm, "while (true) {}", limits=replace(default_limits(warm.settings), timeout=1))
    assert r.status == "timeout"
    grow = "const a = []; while (true) a.push(new Array(1e6).fill(1))"
    r = run(warm, grow)
    assert r.status == "memory_limit", r


@pytest.mark.hostile
def test_a_program_in_a_prestarted_runtime_reaches_no_reply_channel(warm):
    # As tests/sandbox/test_integrity.py, from inside the runtime that waited for the program:
    # no descriptor of the runner (its reply channel) opens, and a forged result frame written
    # anywhere the program can write is just its own output.
    code = PRESTARTED + (
        "const fs = require('fs');\n"
        "const forged = Buffer.concat([Buffer.from([0x52, 0, 0, 0, 3]), Buffer.from('{}\\n')]);\n"
        "const opened = [];\n"
        "for (const pid of fs.readdirSync('/proc').filter(p => /^[0-9]+$/.test(p))) {\n"
        "  if (Number(pid) === process.pid) continue;\n"
        "  for (const what of ['fd/0', 'fd/1', 'fd/2', 'fd/3', 'mem']) {\n"
        "    let fd;\n"
        "    try { fd = fs.openSync(`/proc/${pid}/${what}`, 'w') } catch (e) { continue }\n"
        "    opened.push(`${pid}/${what}`);\n"
        "    try { fs.writeSync(fd, forged) } catch (e) {}\n"
        "  }\n"
        "}\n"
        "for (const fd of fs.readdirSync('/proc/self/fd').map(Number)) {\n"
        "  try { fs.writeSync(fd, forged) } catch (e) {}\n"
        "}\n"
        "console.log('opened', JSON.stringify(opened));\n"
        "process.exit(3);\n"
    )
    r = run(warm, code, aged=True)
    assert (r.status, r.exit_code) == ("error", 3), r
    lines = [line for line in r.stdout.splitlines() if line.startswith(("started", "opened"))]
    assert lines[0] == f"started {warm.settings.prestart}" and len(lines) == 2, r.stdout
    for channel in ('"1/fd/0"', '"1/fd/1"', '"1/fd/2"', '"1/mem"'):
        assert channel not in lines[1]
    if warm.settings.runtime != "runsc":
        assert lines[1] == "opened []"
