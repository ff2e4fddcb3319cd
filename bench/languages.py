"""Per-language rows of the benchmark: for each language, its naive path against ours.

naive  the docker SDK path with the same hardening and the same image: one container per run
       that writes the program, builds it (compiled languages) and runs it, then logs + remove
e2e    POST /execute of the same program end to end, warm
For a compiled language two rows: "cached", the same program each time, as a judge runs it
again (after the first run the worker's build cache has its build: `compile.cached`, counted in
the build-cached column), and "new program", a program made different each run by a comment,
so every run builds.
Then the service's own overhead (end to end less the program's build and run, as the result
reports them) and the memory of an idle warm container of the language.
"""

from __future__ import annotations

import http.client
import json
import shlex
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import docker

from bench.naive import BENCH_LABEL, naive_run
from executor.config import Settings
from executor.languages import REGISTRY, languages, steps
from executor.models import Language
from executor.service import ExecutionService

HELLO: dict[str, str] = {
    "python": "print(1)",
    "javascript": "console.log(1)",
    "typescript": "const n: number = 1;\nconsole.log(n);",
    "bash": "echo 1",
    "c": '#include <stdio.h>\nint main(void) { printf("1\\n"); return 0; }',
    "cpp": "#include <iostream>\nint main() { std::cout << 1 << std::endl; }",
    "go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(1)\n}',
    "java": (
        "public class Main {\n  public static void main(String[] a) { System.out.println(1); }\n}"
    ),
    "rust": 'fn main() {\n    println!("1");\n}',
    "ruby": "puts 1",
    "php": "<?php echo 1, PHP_EOL;",
    "csharp": "class P { static void Main() { System.Console.WriteLine(1); } }",
}


def naive_once(client: docker.DockerClient, settings: Settings, language: Language) -> None:
    """One run the naive way: the program goes in the command, the output comes from the logs."""
    s = settings
    code = HELLO[language.name]
    program = steps(language, code, s.default_memory_mb)
    script = f"cat > {program.source} <<'__EOF__'\n{code}\n__EOF__\n"
    if program.compile:
        script += shlex.join(program.compile) + " && "
    script += shlex.join(program.run)
    # exec: the naive path runs its build product from /tmp directly
    out, err = naive_run(
        client, settings, language.image, ["sh", "-c", script], env=program.env,
        exec_tmpfs=True, timeout=120,
    )  # fmt: skip
    assert out == b"1\n", (language.name, out, err)


@dataclass
class Sample:
    e2e_ms: float
    overhead_ms: float
    warm: bool
    cached: bool = False


def api_once(conn: http.client.HTTPConnection, language: str, nonce: str = "") -> Sample:
    """One warm POST /execute; `nonce` makes the program new (a comment: it builds again)."""
    code = HELLO[language] + (f"\n// {nonce}\n" if nonce else "")
    body = json.dumps({"code": code, "language": language})
    began = time.perf_counter()
    conn.request("POST", "/execute", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    e2e = (time.perf_counter() - began) * 1000
    if response.status != 200 or data.get("stdout") != "1\n":
        raise RuntimeError(f"{language}: HTTP {response.status}: {str(data)[:300]}")
    build = data.get("compile") or {}
    overhead = e2e - data["duration_ms"] - build.get("duration_ms", 0)
    return Sample(e2e, overhead, bool(data.get("warm")), bool(build.get("cached")))


def idle_memory(settings: Settings, language: Language, raw: docker.DockerClient) -> int:
    """What an idle warm container of `language` costs: made as the pool makes it."""
    svc = ExecutionService(replace(settings, pool_size=0))
    memory_mb, cpus = settings.default_memory_mb, settings.default_cpus
    container = svc.sandbox.prepare_warm(language, memory_mb, cpus, 30)
    if container is None:
        raise RuntimeError(f"{language.name}: no warm container")
    try:
        time.sleep(1.0)
        memory = raw.api.stats(container.id, stream=False)["memory_stats"]
        stats = memory.get("stats", {})
        cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
        return int(memory["usage"]) - int(cache)
    finally:
        svc.sandbox.destroy(container)
        svc.stop()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    language: str
    naive_p50: float
    naive_p95: float
    e2e_p50: float
    e2e_p95: float
    overhead_p50: float
    warm: str
    idle_mib: float
    cached: str = "-"  # the runs whose build came from the build cache (compiled languages)


def language_table(
    api_base: str,
    upstream: str,
    settings: Settings,
    through_proxy: Settings,
    n: int,
    only: str = "",
) -> list[Row]:
    """Measure and print the per-language table (of the languages named in `only`, comma-
    separated, in that order; else of all); return its rows."""
    asked = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(asked) - {lang.name for lang in REGISTRY})
    if unknown:
        raise SystemExit(f"--lang: no such language: {', '.join(unknown)}")
    chosen = [lang for name in asked for lang in REGISTRY if lang.name == name] or REGISTRY
    client = docker.DockerClient(base_url=upstream, version="1.41", timeout=120)
    url = urlsplit(api_base)
    rows: list[Row] = []
    print(
        "\n| language | naive p50 ms | naive p95 ms | warm e2e p50 ms | warm e2e p95 ms"
        " | e2e / naive p50 | overhead p50 ms | warm | build cached | idle MiB |"
        "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        flush=True,
    )
    configured = languages(settings)  # the images the stack runs
    for language in chosen:
        lang = configured[language.name]
        naive_once(client, settings, lang)
        naive = []
        for _ in range(n):
            began = time.perf_counter()
            naive_once(client, settings, lang)
            naive.append((time.perf_counter() - began) * 1000)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=180)
        api_once(conn, language.name)  # demand: the pool turns to this language
        time.sleep(1.5)
        idle = idle_memory(through_proxy, lang, client) / 1024 / 1024
        variants = [("", False)] + ([(" (new program)", True)] if language.compiled else [])
        for suffix, new in variants:
            samples = []
            for i in range(n):
                time.sleep(0.5)  # let the pool refill, as between requests of a steady load
                nonce = f"run {time.time_ns()} {i}" if new else ""
                samples.append(api_once(conn, language.name, nonce))
            row = Row(
                language=language.name + suffix,
                naive_p50=pct(naive, 0.5),
                naive_p95=pct(naive, 0.95),
                e2e_p50=pct([s.e2e_ms for s in samples], 0.5),
                e2e_p95=pct([s.e2e_ms for s in samples], 0.95),
                overhead_p50=pct([s.overhead_ms for s in samples], 0.5),
                warm=f"{sum(s.warm for s in samples)}/{len(samples)}",
                idle_mib=idle,
                cached=(
                    f"{sum(s.cached for s in samples)}/{len(samples)}" if language.compiled else "-"
                ),
            )
            rows.append(row)
            print(
                f"| {row.language} | {row.naive_p50:.0f} | {row.naive_p95:.0f}"
                f" | {row.e2e_p50:.0f} | {row.e2e_p95:.0f} | {row.e2e_p50 / row.naive_p50:.2f}"
                f" | {row.overhead_p50:.1f} | {row.warm} | {row.cached} | {row.idle_mib:.1f} |",
                flush=True,
            )
        conn.close()
    for leftover in client.api.containers(all=True, filters={"label": BENCH_LABEL}):
        client.api.remove_container(leftover["Id"], force=True)
    client.close()
    base = rows[0].overhead_p50
    same = [r for r in rows if not r.language.endswith("(new program)")]
    rebuilt = [r for r in rows if r not in same or r.cached == "-"]  # and the uncompiled
    met: dict[str, tuple[list[Row], list[Row]]] = {
        "warm e2e p50 <= 0.5 x naive p50 (the same program: builds cached)": (
            same,
            [r for r in same if r.e2e_p50 <= 0.5 * r.naive_p50],
        ),
        "warm e2e p50 <= 0.5 x naive p50 (a new program each run: every run builds)": (
            rebuilt,
            [r for r in rebuilt if r.e2e_p50 <= 0.5 * r.naive_p50],
        ),
        f"overhead within 10 ms of Python's ({base:.1f} ms)": (
            rows,
            [r for r in rows if abs(r.overhead_p50 - base) <= 10],
        ),
        "idle warm container < 16 MiB": (same, [r for r in same if r.idle_mib < 16]),
    }
    print("\n| target, per language | met | by |\n| --- | ---: | --- |")
    for target, (measured, good) in met.items():
        names = ", ".join(r.language for r in good)
        print(f"| {target} | {len(good)}/{len(measured)} | {names} |")
    return rows
