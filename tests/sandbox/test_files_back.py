"""Files back: the regular files a program leaves that match `outputs`, within the caps.

No symbolic link is followed, nothing outside the working directory is read, and nothing the
program could not read itself. Hostile: `make test` runs them under gVisor too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace

import pytest

from executor.config import Settings
from executor.service import ExecutionService

pytestmark = [pytest.mark.docker, pytest.mark.hostile]

MAX_FILES = 4
MAX_BYTES = 100_000


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[ExecutionService]:
    """The sandbox tests' service with small caps on the files back."""
    svc = ExecutionService(
        replace(
            settings,
            max_output_bytes=65536,
            max_output_files=MAX_FILES,
            max_output_files_bytes=MAX_BYTES,
        )
    )
    yield svc
    svc.stop()


def contents(result) -> dict[str, bytes]:
    assert result.files is not None
    got = {f.path: base64.b64decode(f.content_base64) for f in result.files}
    assert all(len(got[f.path]) == f.size for f in result.files)
    return got


def test_a_binary_file_comes_back_whole(run):
    code = (
        "import os\nos.makedirs('out/deep', exist_ok=True)\n"
        "open('out/deep/data.bin', 'wb').write(bytes(range(256)) * 40)\n"
        "open('notes.txt', 'w').write('hé\\n')\nopen('other.log', 'w').write('no')\n"
    )
    r = run(code, outputs=("out/**", "*.txt"))
    assert r.status == "success", r.stderr
    assert contents(r) == {
        "out/deep/data.bin": bytes(range(256)) * 40,
        "notes.txt": "hé\n".encode(),
    }
    assert r.files_truncated is False


def test_patterns_stay_within_their_directories(run):
    code = "import os\nos.makedirs('sub')\nfor p in ('a.txt', 'sub/b.txt'): open(p, 'w').write(p)"
    assert set(contents(run(code, outputs=("*.txt",)))) == {"a.txt"}
    assert set(contents(run(code, outputs=("**/*.txt",)))) == {"a.txt", "sub/b.txt"}
    assert set(contents(run(code, outputs=("sub/?.txt",)))) == {"sub/b.txt"}


def test_without_outputs_there_is_no_files_field(run):
    r = run("open('a.txt', 'w').write('x')")
    assert r.files is None and "files" not in r.to_dict()


def test_symlinks_are_never_followed(run):
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', 'passwd')\n"  # a file outside
        "os.symlink('/proc/1/environ', 'environ')\n"  # the runner's own
        "os.symlink('/etc', 'etc')\n"  # a directory outside
        "open('mine.txt', 'w').write('mine')\n"
        "os.symlink('mine.txt', 'alias.txt')\n"  # even one inside
        "os.mkdir('real')\nos.symlink('real', 'linked')\nopen('real/r.txt', 'w').write('r')\n"
    )
    r = run(code, outputs=("*", "etc/*", "etc/**", "linked/*", "**/passwd", "**"))
    assert r.status == "success", r.stderr
    # What matched is the regular files, by their real paths; no link, nothing under one.
    assert contents(r) == {"mine.txt": b"mine", "real/r.txt": b"r", "main.py": code.encode()}


def test_fifos_and_unreadable_files_are_left_out(run):
    code = (
        "import os\nos.mkfifo('fifo')\n"
        "open('secret', 'w').write('s')\nos.chmod('secret', 0)\n"  # not even its owner reads it
        "open('plain', 'w').write('p')\n"
    )
    r = run(code, outputs=("fifo", "secret", "plain"), timeout=10)
    assert r.status == "success", r.stderr
    assert contents(r) == {"plain": b"p"}


def test_the_count_cap_leaves_files_out_and_says_so(run):
    code = "for i in range(6): open(f'f{i}.txt', 'w').write(str(i))"
    r = run(code, outputs=("*.txt",))
    assert contents(r) == {f"f{i}.txt": str(i).encode() for i in range(MAX_FILES)}
    assert r.files_truncated is True


def test_the_byte_cap_leaves_files_out_and_says_so(run):
    code = (
        "open('a.bin', 'wb').write(b'a' * 60000)\n"
        "open('b.bin', 'wb').write(b'b' * 60000)\n"  # does not fit beside a.bin
        "open('c.bin', 'wb').write(b'c' * 30000)\n"  # does
        "open('huge.bin', 'wb').write(b'h' * 500000)\n"  # never fits
    )
    r = run(code, outputs=("*.bin",))
    assert contents(r) == {"a.bin": b"a" * 60000, "c.bin": b"c" * 30000}
    assert r.files_truncated is True


def test_files_come_back_after_a_timeout_and_with_test_cases(run):
    from executor.models import TestCase

    code = "import sys\nopen('seen.txt', 'a').write(sys.stdin.read())\nwhile 'z' in open('seen.txt').read(): pass"
    r = run(
        code, outputs=("seen.txt",), tests=(TestCase("x"), TestCase("y"), TestCase("z")), timeout=1
    )
    assert [t.status for t in r.tests] == ["success", "success", "timeout"]
    assert contents(r) == {"seen.txt": b"xyz"}
