"""`python -m bench`: the latency and throughput of every path, measured side by side in one run.

(a) the bare-process floor: `python3 -I -S -c 'print(1)'` on the host
(b) the naive docker SDK path, same hardening: create, start, wait, logs, remove
(c) our sandbox, cold: a fresh container per run, through the proxy
(d) our sandbox, warm: a pooled container, through the proxy
(e) POST /execute end to end, warm: HTTP -> Redis -> worker -> container -> Redis -> HTTP
then throughput at several concurrencies (e against b), the memory of one idle pooled
container, and the ratios the targets are stated in. First, a row per language (bench/languages.py):
its naive path against our warm POST /execute, the service's own overhead, and the memory of an
idle warm container of it. Then 50 test cases of a C program in one request against 50 separate
requests (bench/cases.py). Last, live output (bench/live_output.py): the latency from a print to
an SSE client. `--only python`, `--only languages` or `--only tests` runs one part, `--only
baseline` just the side-by-side comparison with `--baseline DIR`, `--only live` live output with
concurrent streams (`--streams`), `--only history` GET /executions over 10^5 and 10^6 synthetic
records in a Redis of its own (bench/history.py; `--history-sizes`), `--only soak` the leak
watch of bench/soak.py (`--minutes`, `--clients`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import docker

from bench import soak
from bench.cases import cases_table
from bench.history import run as history_bench
from bench.languages import language_table
from bench.naive import BENCH_LABEL, naive_run
from bench.stack import running_stack
from executor.config import Settings
from executor.models import RunRequest
from executor.policy import LABEL_WORKER
from executor.sandbox import default_limits
from executor.service import ExecutionService

CODE = "print(1)"
IMAGE_SETTINGS = ("EXECUTOR_PYTHON_IMAGE", "EXECUTOR_IMAGE_TAG", "EXECUTOR_IMAGES")


def pct(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return at(0.5), at(0.95), at(0.99)


def timed(fn: Callable[[], object], n: int, pause: Callable[[], None] | None = None) -> list[float]:
    samples = []
    for _ in range(n):
        if pause is not None:
            pause()
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def floor_once() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CODE], capture_output=True, check=True
    ).stdout
    assert out == b"1\n"


class Naive:
    """The path most sandboxes take: one container per run, docker SDK, logs via the log driver."""

    def __init__(self, socket_url: str, settings: Settings) -> None:
        self.client = docker.DockerClient(base_url=socket_url, version="1.41", timeout=60)
        self.settings = settings

    def once(self) -> None:
        s = self.settings
        out, _ = naive_run(self.client, s, s.python_image, ["python3", "-c", CODE])
        assert out == b"1\n", out


class Api:
    """POST /execute over one kept-alive connection per thread."""

    def __init__(self, base: str) -> None:
        self.url = urlsplit(base)
        self.host = self.url.hostname or "127.0.0.1"
        self.warm = 0
        self.total = 0

    def once(self, conn: http.client.HTTPConnection | None = None) -> None:
        own = conn is None
        conn = conn or http.client.HTTPConnection(self.host, self.url.port, timeout=120)
        try:
            body = json.dumps({"code": CODE})
            conn.request("POST", "/execute", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read())
            if response.status != 200 or data.get("stdout") != "1\n":
                raise RuntimeError(f"HTTP {response.status}: {str(data)[:200]}")
            self.total += 1
            self.warm += bool(data.get("warm"))
        finally:
            if own:
                conn.close()


def throughput(
    make_call: Callable[[], Callable[[], None]], concurrency: int, total: int
) -> tuple[float, int]:
    """Executions per second with `concurrency` clients doing `total` runs; and the errors."""
    errors = 0
    per_client = max(1, total // concurrency)

    def client() -> int:
        call = make_call()
        failed = 0
        for _ in range(per_client):
            try:
                call()
            except Exception as e:  # noqa: BLE001 - counted and reported
                failed += 1
                print(f"  error: {e}", file=sys.stderr)
        return failed

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        errors = sum(pool.map(lambda _: client(), range(concurrency)))
    elapsed = time.perf_counter() - began
    return per_client * concurrency / elapsed, errors


def idle_pool_memory(svc: ExecutionService, raw: docker.DockerClient) -> int:
    wait_warm(svc, 1)
    time.sleep(1.0)
    ids = [
        c["Id"]
        for c in raw.api.containers(filters={"label": f"{LABEL_WORKER}={svc.sandbox.owner}"})
    ]
    stats = raw.api.stats(ids[0], stream=False)
    memory = stats["memory_stats"]
    # What the kernel charges the container, less reclaimable page cache (as `docker stats`).
    cache = memory.get("stats", {}).get(
        "total_inactive_file", memory.get("stats", {}).get("inactive_file", 0)
    )
    return int(memory["usage"]) - int(cache)


def wait_warm(svc: ExecutionService, n: int) -> None:
    deadline = time.monotonic() + 60
    while svc.pool_stats()["warm"] < n and time.monotonic() < deadline:
        time.sleep(0.02)


def bench_redis_url() -> str:
    """BENCH_REDIS_URL, else database 14 of REDIS_URL's server (as `make bench` passes it)."""
    if os.environ.get("BENCH_REDIS_URL"):
        return os.environ["BENCH_REDIS_URL"]
    parts = urlsplit(os.environ.get("REDIS_URL") or "redis://localhost:6379/0")
    return parts._replace(path="/14").geturl()


def row(name: str, samples: list[float]) -> tuple[str, float, float, float]:
    p50, p95, p99 = pct(samples)
    return name, p50, p95, p99


def compare_with_baseline(args: argparse.Namespace, n: int) -> None:
    """Warm POST /execute of this checkout and of a baseline, alternating, one run."""
    baseline_env = {"EXECUTOR_PYTHON_IMAGE": args.baseline_image} if args.baseline_image else {}
    other_redis = args.redis.rsplit("/", 1)[0] + "/13"
    with (
        running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as ours,
        running_stack(
            other_redis,
            args.upstream,
            pool_size=4,
            concurrency=8,
            root=Path(args.baseline).resolve(),
            extra_env=baseline_env,
        ) as theirs,
    ):
        apis = {"this checkout": Api(ours.api), "baseline": Api(theirs.api)}
        conns = {
            name: http.client.HTTPConnection(api.host, api.url.port, timeout=120)
            for name, api in apis.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in apis}
        for name, api in apis.items():
            api.once(conns[name])
        for _ in range(n):
            for name, api in apis.items():
                time.sleep(0.4)  # the pool refills between runs, as in row (e)
                began = time.perf_counter()
                api.once(conns[name])
                samples[name].append((time.perf_counter() - began) * 1000)
        for conn in conns.values():
            conn.close()
    print(f"\n| warm POST /execute, alternating ({n} each) | p50 ms | p95 ms |")
    print("| --- | ---: | ---: |")
    for name, values in samples.items():
        p50, p95, _ = pct(values)
        print(f"| {name} | {p50:.1f} | {p95:.1f} |")
    ratio = pct(samples["this checkout"])[0] / pct(samples["baseline"])[0]
    print(f"\nthis checkout / baseline, p50: {ratio:.2f} (target <= 1.10)")


def live_output(args: argparse.Namespace, streams: list[int]) -> None:
    """Live output's latency (and, with `streams`, concurrent streams) on a stack of its own."""
    from bench.live_output import report  # it imports this module

    with running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as stack:
        report(stack.api, 100, streams, 4)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="sequential runs per latency row")
    parser.add_argument("--levels", default="1,4,8,16", help="throughput concurrencies")
    parser.add_argument("--per-level", type=int, default=48, help="runs per throughput level")
    parser.add_argument("--upstream", default="unix:///var/run/docker.sock")
    parser.add_argument("--redis", default=bench_redis_url(), help="Redis for the bench's stack")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--baseline",
        help="another checkout (e.g. a git worktree of an earlier commit): its stack's warm"
        " POST /execute is measured alternately with this one's, and the ratio printed",
    )
    parser.add_argument(
        "--baseline-image", help="the baseline's sandbox image (EXECUTOR_PYTHON_IMAGE)"
    )
    parser.add_argument("--lang-n", type=int, default=10, help="runs per path per language")
    parser.add_argument(
        "--lang",
        default="",
        help="the languages of the per-language table, comma-separated (default: all);"
        " the overhead target compares with the first",
    )
    parser.add_argument(
        "--only",
        choices=["all", "python", "languages", "tests", "baseline", "history", "live", "soak"],
        default="all",
        help="which part to run (baseline: only the --baseline comparison; soak: bench.soak)",
    )
    parser.add_argument(
        "--history-sizes", default="100000,1000000", help="record counts for --only history"
    )
    parser.add_argument(
        "--streams", default="100,1000", help="concurrent live-output streams (--only live)"
    )
    parser.add_argument(
        "--c-image", help="the C image for the test-case rows (approved in EXECUTOR_IMAGES)"
    )
    soak.add_arguments(parser)
    args = parser.parse_args()
    if args.only == "soak":
        return soak.run(args, args.redis, args.upstream)
    if args.only == "history":
        history_bench([int(size) for size in args.history_sizes.split(",")], args.n)
        return 0
    levels = [int(x) for x in args.levels.split(",")]
    n = args.n

    # The images under test are the stack's (the environment's); nothing else of it is used.
    images = {k: v for k, v in os.environ.items() if k in IMAGE_SETTINGS}
    settings = Settings.from_env(
        {**images, "DOCKER_HOST": args.upstream, "HOSTNAME": "bench-inproc"}
    )
    raw = docker.DockerClient(base_url=args.upstream, version="1.41", timeout=60)
    naive = Naive(args.upstream, settings)
    print(
        f"# Executor Service benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC,"
        f" {os.cpu_count()} cores"
    )
    rows: list[tuple[str, float, float, float]] = []
    if args.only in ("all", "languages"):
        # The demand window of the pool (EXECUTOR_POOL_MAX_IDLE) short enough that the pool
        # follows the language being measured, as it follows a steady load.
        os.environ.setdefault("EXECUTOR_POOL_MAX_IDLE", "60")
        with running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as stack:
            through_proxy = replace(
                settings, docker_host=stack.docker_host, proxy_token=stack.proxy_token
            )
            language_table(
                stack.api, args.upstream, settings, through_proxy, args.lang_n, args.lang
            )
    if args.only in ("all", "tests"):
        with running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as stack:
            cases_table(stack.api, args.c_image)
    if args.only in ("languages", "tests"):
        return 0
    if args.only == "live":
        live_output(args, [int(x) for x in args.streams.split(",") if x])
        return 0
    if args.only == "baseline":
        if not args.baseline:
            parser.error("--only baseline needs --baseline DIR")
        compare_with_baseline(args, n)
        return 0

    rows.append(row("(a) bare process: python3 -I -S -c 'print(1)'", timed(floor_once, n)))
    naive.once()
    rows.append(row("(b) naive docker SDK: create+start+wait+logs+remove", timed(naive.once, n)))

    with running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as stack:
        through_proxy = replace(
            settings, docker_host=stack.docker_host, proxy_token=stack.proxy_token
        )
        request = RunRequest(code=CODE, limits=default_limits(settings))

        def sandbox_rows(sandbox_settings: Settings, cold_name: str, warm_name: str) -> int:
            """A cold and a warm row of the sandbox under `sandbox_settings`; the memory of
            an idle warm container."""
            cold = ExecutionService(replace(sandbox_settings, pool_size=0))
            warm = ExecutionService(replace(sandbox_settings, pool_size=2))
            warm.start()

            def run_on(svc: ExecutionService) -> Callable[[], None]:
                def call() -> None:
                    result = svc.run(request, "bench")
                    assert result.stdout == "1\n", result

                return call

            def settle() -> None:
                wait_warm(warm, 2)
                time.sleep(0.3)

            run_on(cold)()
            rows.append(row(cold_name, timed(run_on(cold), n)))
            rows.append(row(warm_name, timed(run_on(warm), n, settle)))
            idle = idle_pool_memory(warm, raw)
            warm.stop()
            cold.stop()
            return idle

        memory = sandbox_rows(
            through_proxy,
            "(c) our sandbox, cold (through the proxy)",
            "(d) our sandbox, warm (through the proxy)",
        )
        # The same two rows under gVisor, where the engine has it registered.
        if "runsc" in (raw.info().get("Runtimes") or {}):
            sandbox_rows(
                replace(through_proxy, runtime="runsc"),
                "(c') our sandbox, cold, runsc",
                "(d') our sandbox, warm, runsc",
            )

        api = Api(stack.api)
        api.once()
        conn = http.client.HTTPConnection(api.host, api.url.port, timeout=120)
        api.warm = api.total = 0
        e2e = timed(lambda: api.once(conn), n, lambda: time.sleep(0.4))
        conn.close()
        rows.append(row("(e) POST /execute end to end, warm", e2e))
        warm_share = f"{api.warm}/{api.total}"

        print("\n| path | p50 ms | p95 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
        for name, p50, p95, p99 in rows:
            print(f"| {name} | {p50:.1f} | {p95:.1f} | {p99:.1f} |")
        print(f"\n(e) ran warm in {warm_share} requests")

        print("\n| concurrency | naive docker SDK exec/s | POST /execute exec/s | errors (e) |")
        print("| ---: | ---: | ---: | ---: |")
        naive_best = 0.0
        e2e_rates: dict[int, tuple[float, int]] = {}
        for level in levels:
            naive_rate, naive_errors = throughput(lambda: naive.once, level, args.per_level)
            naive_best = max(naive_best, naive_rate)
            e2e_rate, e2e_errors = throughput(lambda: Api(stack.api).once, level, args.per_level)
            e2e_rates[level] = (e2e_rate, e2e_errors)
            print(f"| {level} | {naive_rate:.2f} | {e2e_rate:.2f} | {e2e_errors} |")
            if naive_errors:
                print(f"  (naive path errors at {level}: {naive_errors})")

    # A naive run that failed half-way (docker-py's pool errs under load) leaves its container.
    for leftover in raw.api.containers(all=True, filters={"label": BENCH_LABEL}):
        raw.api.remove_container(leftover["Id"], force=True)

    median = {name[:4].strip(): value for name, value, _, _ in rows}  # "(a)".."(e)", "(c')"
    floor, naive_p50, e2e_p50 = median["(a)"], median["(b)"], median["(e)"]
    top = max(levels)
    best_e2e = max(rate for rate, _ in e2e_rates.values())
    print(f"\nidle pooled container memory: {memory / 1024 / 1024:.1f} MiB")
    print("\n| ratio | value | target |\n| --- | ---: | --- |")
    checks = [
        ("e2e warm p50 / bare-process p50", e2e_p50 / floor, "<= 4", e2e_p50 / floor <= 4),
        ("e2e warm p50 / naive p50", e2e_p50 / naive_p50, "<= 0.2", e2e_p50 / naive_p50 <= 0.2),
        ("sandbox warm p50 / naive p50", median["(d)"] / naive_p50, "-", True),
        ("sandbox cold p50 / naive p50", median["(c)"] / naive_p50, "-", True),
        (
            "best e2e throughput / naive ceiling",
            best_e2e / naive_best,
            ">= 0.9",
            best_e2e / naive_best >= 0.9,
        ),
        (
            f"e2e throughput at {top} / naive ceiling",
            e2e_rates[top][0] / naive_best,
            ">= 0.9",
            e2e_rates[top][0] / naive_best >= 0.9,
        ),
        (f"e2e errors at concurrency {top}", float(e2e_rates[top][1]), "0", e2e_rates[top][1] == 0),
    ]
    if "(d')" in median:
        checks.append(("runsc warm p50 / runc warm p50", median["(d')"] / median["(d)"], "-", True))
        checks.append(("runsc cold p50 / runc cold p50", median["(c')"] / median["(c)"], "-", True))
    for name, value, target, ok in checks:
        mark = "" if target == "-" else (" (met)" if ok else " (MISSED)")
        print(f"| {name} | {value:.2f} | {target}{mark} |")
    if args.only == "all":
        live_output(args, [])
    if args.baseline:
        compare_with_baseline(args, n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "rows": rows,
                    "memory_bytes": memory,
                    "naive_best": naive_best,
                    "e2e": {str(k): v for k, v in e2e_rates.items()},
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
