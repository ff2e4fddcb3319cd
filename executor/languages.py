"""The languages the service runs: the one place a language is defined.

`REGISTRY` is data, one entry per language: its image (and the Debian packages that image adds
to the shared base), the program's file name, the build command with its own time limit, the
run command, the environment of both steps, and the marker by which its runtime says that its
own heap is exhausted. Everything else (GET /languages, validation, the proxy's allowlist, the
warm pool, `scripts/build-images.sh`) reads it from here.

Commands and environment values are templates, filled in per execution by `Language.step()`:
`{file}` the program's file name, `{main}` that name without its extension (Java's class),
`{memory_mb}` the request's memory limit, `{heap_mb}` the heap a managed runtime may grow to
within it (the rest is left for the runtime itself: code, stacks, metadata), `{node_snapshot}`
Node.js's startup snapshot for that heap (see below), or nothing. A command item that fills in
to nothing is left out.

Node.js's start: Debian's Node.js 18 is built without Node's own startup snapshot (its
`process.config` says `node_use_node_snapshot: false`), so every start bootstraps Node's
JavaScript from source: a third of the CPU of `node main.js`. The images make that snapshot
themselves when they are built (`node --build-snapshot` of an empty script: Node's bootstrap
and nothing else, what an upstream build embeds), one per heap limit, since V8 refuses a
snapshot made under other flags; `--snapshot-blob` then starts from it. The program runs as
the main module exactly as without it: same argv, module, globals; only `process.execArgv`
names the option. A heap limit without a snapshot (a memory_mb not in `NODE_SNAPSHOT_MEMORY`)
starts as before.

Every step runs in the sandbox's working directory /tmp (a tmpfs, the only writable place),
so compilers keep their caches and temporary files there.

EXECUTOR_IMAGE_TAG runs every language's image under another tag (Python's is
EXECUTOR_PYTHON_IMAGE): the images `IMAGE_TAG=<tag> scripts/build-images.sh languages` builds
beside the registry's.

Operators add images with EXECUTOR_IMAGES: `language=image` pairs (comma-separated, by tag or
digest), each an extra image a request may choose for that language with "image".
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace

from executor.config import Settings
from executor.models import Language

# The JVM's own threads and memory, kept small: one GC thread (serial), the client compiler
# only (it starts fast), no perf-data file in /tmp.
_JVM = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xshare:auto")
_JAVAC_CDS = "/usr/local/lib/javac.jsa"  # made when the image is built (see java's setup)
_JAVAC_FLAGS = " ".join(f"-J{flag}" for flag in _JVM)
# The memory limits whose heaps have a Node.js startup snapshot in the images (the default
# memory_mb first), and where it is.
NODE_SNAPSHOT_MEMORY = (512, 64, 128, 256, 1024, 2048)
_NODE_SNAPSHOT = "/usr/local/lib/node-snapshot/heap-{heap}.blob"


def heap_mb(memory_mb: int) -> int:
    """What a managed runtime's heap may grow to within `memory_mb`: the rest is its own."""
    return max(8, memory_mb * 3 // 4 - 16)


def _node_snapshots() -> str:
    """The image build's command that makes the Node.js startup snapshots (root, at build)."""
    heaps = " ".join(str(heap_mb(m)) for m in NODE_SNAPSHOT_MEMORY)
    blob = _NODE_SNAPSHOT.format(heap="$h")
    return (
        f"mkdir -p {_NODE_SNAPSHOT.rpartition('/')[0]} && cd /tmp && : > empty.js"
        f" && for h in {heaps}; do node --max-old-space-size=$h --snapshot-blob {blob}"
        " --build-snapshot empty.js || exit 1; done && rm -f empty.js"
    )


REGISTRY: tuple[Language, ...] = (
    Language(
        name="python",
        version="3.11",
        image="executor-python:3.11",
        source_file="main.py",
        run=("python3", "main.py"),
        inline_python=True,
        oom_markers=("MemoryError",),
    ),
    Language(
        name="javascript",
        version="18 (Node.js)",
        image="executor-javascript:18",
        packages=("nodejs",),
        setup=_node_snapshots(),
        source_file="main.js",
        run=("node", "--max-old-space-size={heap_mb}", "{node_snapshot}", "main.js"),
        prestart=(
            "node",
            "--max-old-space-size={heap_mb}",
            "{node_snapshot}",
            "--require",
            "/opt/executor/prestart.js",
            "main.js",
        ),
        env=(("UV_THREADPOOL_SIZE", "2"),),
        oom_markers=("JavaScript heap out of memory",),
    ),
    Language(
        name="typescript",
        version="4.8 (Node.js 18)",
        image="executor-typescript:4.8",
        packages=("nodejs", "node-typescript"),
        setup=_node_snapshots(),
        source_file="main.ts",
        # Type-checked build, for Node.js (no DOM); /opt/executor/node.d.ts declares the
        # Node.js globals (require, process, console, timers...) that Debian ships no @types for.
        compile=(
            "node",
            "--max-old-space-size={heap_mb}",
            "{node_snapshot}",
            "/usr/bin/tsc",
            "--pretty",
            "false",
            "--target",
            "es2020",
            "--lib",
            "es2020",
            "--module",
            "commonjs",
            "--noEmitOnError",
            # TypeScript's own lib.*.d.ts are not type-checked again at every build (a third
            # of tsc's time): the program's diagnostics are the same.
            "--skipDefaultLibCheck",
            "--rootDir",
            "/",
            "--outDir",
            ".build",
            "main.ts",
            "/opt/executor/node.d.ts",
        ),
        compile_timeout=60.0,
        products=(".build/**",),
        run=("node", "--max-old-space-size={heap_mb}", "{node_snapshot}", ".build/tmp/main.js"),
        env=(("UV_THREADPOOL_SIZE", "2"),),
        oom_markers=("JavaScript heap out of memory",),
    ),
    Language(
        name="bash",
        version="5.2",
        image="executor-bash:5.2",
        source_file="main.sh",
        run=("bash", "main.sh"),
    ),
    Language(
        name="c",
        version="12 (GCC)",
        image="executor-c:12",
        packages=("gcc", "libc6-dev"),
        source_file="main.c",
        compile=("gcc", "-std=gnu17", "-O2", "-pipe", "-pthread", "-o", "main", "main.c", "-lm"),
        products=("main",),
        run=("./main",),
    ),
    Language(
        name="cpp",
        version="12 (GCC)",
        image="executor-cpp:12",
        packages=("g++", "libc6-dev"),
        source_file="main.cpp",
        compile=("g++", "-std=gnu++17", "-O2", "-pipe", "-pthread", "-o", "main", "main.cpp"),
        products=("main",),
        run=("./main",),
        oom_markers=("std::bad_alloc",),
    ),
    Language(
        name="go",
        version="1.19",
        image="executor-go:1.19",
        packages=("golang-go",),
        source_file="main.go",
        # Without the symbol table and DWARF (-s -w): 1.8 MB -> 1.2 MB; a panic's traceback
        # still names the program's functions, files and lines (from the runtime's own tables).
        compile=("go", "build", "-ldflags=-s -w", "-o", "main", "main.go"),
        compile_timeout=60.0,
        products=("main",),
        run=("./main",),
        # No module, no cgo (no C compiler in the image), caches in /tmp; a soft memory limit
        # so the collector works before the cgroup's hard one is reached; two Ps.
        env=(
            ("GO111MODULE", "off"),
            ("CGO_ENABLED", "0"),
            ("GOCACHE", "/tmp/.cache/go"),  # noqa: S108 - the sandbox's own tmpfs
            ("GOPATH", "/tmp/go"),  # noqa: S108
            ("GOFLAGS", "-p=1"),
            ("GOMAXPROCS", "2"),
            ("GOMEMLIMIT", "{heap_mb}MiB"),
        ),
        oom_markers=("runtime: out of memory",),
    ),
    Language(
        name="java",
        version="17 (OpenJDK)",
        image="executor-java:17",
        packages=("openjdk-17-jdk-headless",),
        # The JDK's class-data archive, and javac's own (AppCDS, made by compiling a sample
        # with the same JVM flags): javac starts in two thirds of the time.
        setup=(
            "java -Xshare:dump >/dev/null && cd /tmp && printf 'public class Main {"
            " public static void main(String[] a) { System.out.println(a.length); } }' > Main.java"
            f" && javac {_JAVAC_FLAGS} -J-XX:ArchiveClassesAtExit={_JAVAC_CDS} Main.java"
            " && rm -f Main.java Main.class"
        ),
        source_file="Main.java",
        source_from_code=r"\bpublic\s+(?:(?:final|abstract|sealed|strictfp)\s+)*class\s+([A-Za-z_$][A-Za-z0-9_$]*)",
        compile=(
            "javac",
            *(f"-J{flag}" for flag in _JVM),
            f"-J-XX:SharedArchiveFile={_JAVAC_CDS}",
            "-J-Xmx{heap_mb}m",
            "-encoding",
            "UTF-8",
            "{file}",
        ),
        compile_timeout=60.0,
        products=("*.class",),
        run=("java", *_JVM, "-Xmx{heap_mb}m", "-cp", ".", "{main}"),
        oom_markers=("java.lang.OutOfMemoryError",),
    ),
    Language(
        name="rust",
        version="1.63",
        image="executor-rust:1.63",
        packages=("rustc",),
        source_file="main.rs",
        # Without the standard library's debug info (as cargo's release profile builds since
        # Rust 1.77): 0.45 MB instead of 11.6, a third less link time; a panic's message and
        # backtrace still name the program's own file, line and functions.
        compile=(
            "rustc",
            "--edition",
            "2021",
            "-O",
            "-C",
            "strip=debuginfo",
            "-o",
            "main",
            "main.rs",
        ),
        compile_timeout=60.0,
        products=("main",),
        run=("./main",),
        oom_markers=("memory allocation of",),
    ),
    Language(
        name="ruby",
        version="3.1",
        image="executor-ruby:3.1",
        packages=("ruby",),
        source_file="main.rb",
        run=("ruby", "main.rb"),
        oom_markers=("failed to allocate memory (NoMemoryError)",),
    ),
    Language(
        name="php",
        version="8.2",
        image="executor-php:8.2",
        packages=("php8.2-cli",),
        source_file="main.php",
        run=("php", "-d", "memory_limit={heap_mb}M", "-d", "display_errors=stderr", "main.php"),
        oom_markers=("Allowed memory size of",),
    ),
    Language(
        name="csharp",
        version="6.8 (Mono)",
        image="executor-csharp:6.8",
        packages=("mono-mcs",),
        source_file="main.cs",
        compile=("mcs", "-out:main.exe", "main.cs"),
        compile_timeout=60.0,
        products=("main.exe",),
        run=("mono", "main.exe"),
        env=(("MONO_GC_PARAMS", "max-heap-size={heap_mb}m"),),
        oom_markers=("System.OutOfMemoryException",),
    ),
)

# The longest build any language may take (beyond every request's own timeout).
MAX_COMPILE_TIMEOUT_S = max(lang.compile_timeout for lang in REGISTRY if lang.compiled)

# Operator-approved images built here: the example image of EXECUTOR_IMAGES.
EXTRA_IMAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "python",
        "executor-python-data:3.11",
        ("python3-numpy", "python3-pandas", "python3-matplotlib"),
    ),
)


def languages(settings: Settings) -> dict[str, Language]:
    """Every language by name, with the image configured for it and its approved extras."""
    extras: dict[str, tuple[str, ...]] = {}
    for name, image in settings.images:
        extras[name] = (*extras.get(name, ()), image)
    result = {}
    for lang in REGISTRY:
        image = lang.image
        if lang.name == "python":
            image = settings.python_image
        elif settings.image_tag:  # as scripts/build-images.sh tags them with IMAGE_TAG
            image = f"{image.partition(':')[0]}:{settings.image_tag}"
        result[lang.name] = replace(lang, image=image, extra_images=extras.get(lang.name, ()))
    return result


def source_name(language: Language, code: str) -> str:
    """The program's file name: fixed, or (Java) named after the public class it declares."""
    if language.source_from_code:
        match = re.search(language.source_from_code, code)
        if match:
            suffix = language.source_file.rpartition(".")[2]
            return f"{match.group(1)}.{suffix}"
    return language.source_file


@dataclass(frozen=True)
class Steps:
    """One program's build and run, the templates filled in."""

    source: str
    compile: tuple[str, ...] | None
    run: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    prestart: tuple[str, ...] = ()


def steps(language: Language, code: str, memory_mb: int) -> Steps:
    """The commands and environment of `code` under `memory_mb` (see the module docstring)."""
    source = source_name(language, code)
    heap = heap_mb(memory_mb)
    snapshot = memory_mb in NODE_SNAPSHOT_MEMORY
    values = {
        "file": source,
        "main": source.rpartition(".")[0] or source,
        "memory_mb": str(memory_mb),
        "heap_mb": str(heap),
        "node_snapshot": f"--snapshot-blob={_NODE_SNAPSHOT.format(heap=heap)}" if snapshot else "",
    }

    def fill(items: tuple[str, ...]) -> tuple[str, ...]:
        filled = (item.format_map(values) for item in items)
        return tuple(item for item in filled if item)

    return Steps(
        source=source,
        compile=fill(language.compile) if language.compile is not None else None,
        run=fill(language.run),
        env=tuple((name, value.format_map(values)) for name, value in language.env),
        prestart=fill(language.prestart),
    )


def _images_table() -> None:
    """For scripts/build-images.sh: `name image packages setup` per image, tab-separated."""
    for lang in REGISTRY:
        if lang.name != "python":
            print(lang.name, lang.image, " ".join(lang.packages), lang.setup, sep="\t")
    for name, image, packages in EXTRA_IMAGES:
        print(f"{name}-data", image, " ".join(packages), "", sep="\t")


if __name__ == "__main__" and sys.argv[1:] == ["images"]:
    _images_table()
