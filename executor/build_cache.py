"""The worker's cache of build products: an identical program is not built twice.

Judge-style workloads run the same program again and again (each resubmission, each batch of
inputs); for a compiled language the build is most of the time. After a successful build the
runner sends the build's products back (the language's `products`: the binary, Java's classes,
the emitted JavaScript...), before any of the program runs, and the next request with exactly
the same build inputs gets them written into its sandbox in place of the build, which then does
not run.

Safe by design (the README's security model says why in full):
- an entry is only ever used for exactly the inputs that produced it: the key is the SHA-256 of
  the image's id (its content, runner included), the runtime, the language, the source's name
  and text, every extra file, the filled-in build command and environment, the product patterns
  and the limits the build ran under (all but the run's own timeout and the test cases, which
  the build never sees); a product never crosses between languages, images or inputs;
- only successful builds whose products all came back whole are kept, with their output
  (warnings), which a hit reports again (`compile.cached` true, `duration_ms` 0);
- the products are the bytes the build left, read by the runner once nothing of the build ran
  and before anything of the program did; they are only ever written into a sandbox, to run
  there as the program would have after its own build: nothing outside a sandbox opens them;
- per worker process, in memory, bounded in bytes (least recently used first out, a build over
  a quarter of the cache is not kept), and off with EXECUTOR_BUILD_CACHE_MB=0.
Kept on second sight (EXECUTOR_BUILD_CACHE_ADMIT, 2 by default): a build is only asked for its
products once its key was seen before (a bounded set of recent keys), so a program that never
comes again (an agent's, each one new) costs no transfer of products; one that does is built
twice, then never again.
What a program could tell apart from a fresh build: its build's own caches (Go's GOCACHE under
the working directory) are absent, and the products' timestamps are those of the copy.

Staged in advance (EXECUTOR_STAGE_BUILDS): the cache remembers, per pool profile (language,
memory, CPUs), the build its last run used (`note`, `latest`). A warm container of that
profile takes those products as it starts, before any request (executor.sandbox), so a
program run again and again ships nothing on its way: the request only says they are there.
A request for any other build has them removed before anything of it is written.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from executor.languages import steps
from executor.models import Language, RunRequest
from executor.protocol import Product


@dataclass(frozen=True)
class Build:
    """A successful build's products and what it printed."""

    products: tuple[Product, ...]
    stdout: str
    stderr: str

    @property
    def size(self) -> int:
        """What it holds in memory, about: the products, their paths and the output."""
        data = sum(len(p.data) + len(p.path) for p in self.products)
        return data + len(self.stdout) + len(self.stderr)


def build_key(image_id: str, runtime: str, language: Language, request: RunRequest) -> str:
    """The hash of everything a build's products depend on (see the module docstring)."""
    program = steps(language, request.code, request.limits.memory_mb)
    limits = request.limits
    digest = hashlib.sha256()

    def add(*items: str | bytes) -> None:
        for item in items:
            data = item.encode("utf-8") if isinstance(item, str) else item
            digest.update(b"%d:" % len(data) + data)  # length-prefixed: no two inputs collide

    add("build-v1", image_id, runtime, language.name, program.source, request.code)
    add("compile", *(program.compile or ()))
    add("env", *(f"{name}={value}" for name, value in program.env))
    add("products", *language.products)
    add("limits", *(str(v) for v in (limits.memory_mb, limits.cpus, limits.pids, limits.tmpfs_mb)))
    add("compile_timeout", repr(float(language.compile_timeout)))
    add("files", str(len(request.files)))
    for extra in request.files:
        add(extra.path, extra.content)
    return digest.hexdigest()


SEEN_MAX = 8192  # keys remembered for admission (about 1.5 MiB at most)


class BuildCache:
    """Builds by key, at most `max_bytes` of them, least recently used evicted first; a build
    is worth keeping from the `admit`-th time its key is looked up (see the docstring)."""

    def __init__(self, max_bytes: int, admit: int = 1) -> None:
        self.max_bytes = max_bytes
        self.admit = admit
        self._entries: OrderedDict[str, Build] = OrderedDict()
        self._seen: OrderedDict[str, int] = OrderedDict()  # key: its lookups (up to `admit`)
        self._bytes = 0
        self._latest: dict[str, str] = {}  # pool profile: the key its last run used
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def entry_max(self) -> int:
        """The largest build kept: a quarter of the cache."""
        return self.max_bytes // 4

    def get(self, key: str) -> Build | None:
        with self._lock:
            build = self._entries.get(key)
            if build is not None:
                self._entries.move_to_end(key)
            return build

    def admits(self, key: str) -> bool:
        """Whether the build of `key`, missed now, is worth asking for its products: true
        from its `admit`-th lookup on. Each call counts one lookup."""
        if not self.enabled:
            return False
        with self._lock:
            seen = min(self.admit, self._seen.pop(key, 0) + 1)
            self._seen[key] = seen  # the most recent now
            while len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return seen >= self.admit

    def put(self, key: str, build: Build) -> None:
        if not self.enabled or not build.products or build.size > self.entry_max:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = build
            self._bytes += build.size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size

    def note(self, profile: str, key: str) -> None:
        """The run of a container of `profile` used the build of `key`."""
        with self._lock:
            self._latest[profile] = key

    def latest(self, profile: str) -> tuple[str, Build] | None:
        """The key and build the last run of `profile` used, while the cache still has it."""
        with self._lock:
            key = self._latest.get(profile)
            build = self._entries.get(key) if key is not None else None
            return (key, build) if key is not None and build is not None else None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes}
