"""Usage: CPU time and peak memory as the kernel measured them, for the run and the build.

Marked hostile as well, so `make test` measures them under gVisor too, whose /proc and
cgroups differ from the host kernel's.
"""

from __future__ import annotations

import pytest

from tests.conftest import language_image

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

MIB = 1024 * 1024
BUSY_SECOND = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass\n"


def test_a_second_of_cpu_under_half_a_cpu_takes_two_of_wall_time(run):
    r = run(BUSY_SECOND, cpus=0.5, timeout=20)
    assert r.status == "success", r.stderr
    assert 950 <= r.usage.cpu_ms <= 1500
    if run.settings.runtime == "runsc":
        # gVisor's kernel keeps its own CPU clock, which the program's loop reads too: it runs
        # on while the host throttles the sandbox, so its second ends sooner than the host's.
        assert r.duration_ms >= 1000
    else:
        # Half a CPU: the second of CPU is spread over about two of wall time (the quota's
        # period is 100 ms, so a little less is possible; the machine's load makes it longer).
        assert r.duration_ms >= 1700


def test_a_200_mb_allocation_peaks_above_200_mb(run):
    r = run("data = b'x' * (200 * 1024 * 1024)\nprint(len(data))", memory_mb=512)
    assert r.status == "success", r.stderr
    assert 200 * MIB < r.usage.memory_bytes < 512 * MIB


def test_usage_counts_the_programs_children_not_the_runner(run):
    code = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {BUSY_SECOND!r}], check=True)\n"
        "data = b'x' * (64 * 1024 * 1024)\n"
    )
    r = run(code, timeout=20)
    assert r.status == "success", r.stderr
    assert r.usage.cpu_ms >= 950  # the child's second
    assert 64 * MIB < r.usage.memory_bytes < 256 * MIB


def test_what_a_program_leaves_running_counts_too(run):
    # A detached child burns CPU after the program exited: it is killed, and counted.
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True)\n"
        "time.sleep(2)\n"
    )
    r = run(code, timeout=10)
    assert r.status == "success", r.stderr
    # Most of the half CPU over those 2 s, on a loaded machine at least a fraction; the
    # program's own share (a forked interpreter that sleeps) is a few ms.
    assert r.usage.cpu_ms >= 150


def test_an_idle_program_uses_little(run):
    r = run("print('hi')")
    assert r.usage.cpu_ms < 500
    assert 0 < r.usage.memory_bytes < 64 * MIB


def test_a_compiled_program_reports_its_build_and_its_run(run):
    code = (
        "#include <stdlib.h>\n#include <stdio.h>\n"
        "int main(void) { size_t n = 100u << 20; char *p = malloc(n); long sum = 0;\n"
        "  for (size_t i = 0; i < n; i += 4096) p[i] = (char)(i >> 12);\n"
        "  for (size_t i = 0; i < n; i += 4096) sum += p[i];\n"
        '  printf("%ld\\n", sum); return 0; }\n'
    )
    r = run(code, language="c", image=language_image("c"))
    assert r.status == "success", (r.stderr, r.compile)
    assert r.compile is not None and r.compile.usage.cpu_ms > 0
    assert r.compile.usage.memory_bytes > MIB
    assert 100 * MIB < r.usage.memory_bytes < 200 * MIB
