"""`python -m bench.serving`: the API under many waiting and stalled clients, per worker class.

One stack (proxy, one worker), two APIs side by side in the same run: today's gthread
server (GUNICORN_WORKER_CLASS=gthread, 2 x 64 threads) and the gevent worker. For each:
(1) warm POST /execute p50, one request at a time, the servers in turns, before the rest;
(2) GET /health latency while N clients are stalled mid-body (head and 1 byte of 100);
(3) M concurrent POST /execute of a short program: how each was answered (200, 202, 429/503
    with Retry-After, or refused / timed out), and the API processes' memory per waiting client;
(4) S concurrent live-output streams (GET /executions/{id}/events, bench/live_output.py) over
    4 executions printing 20 lines: streams received whole, line latency, memory per stream.
Between phases the queue is emptied, so leftovers of one phase do not slow the next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis

from bench.__main__ import pct
from bench.stack import ROOT, VENV_BIN, Stack, free_port, running_stack, wait_http
from executor.names import QUEUE_KEYS

PROGRAM = json.dumps({"code": "print(1)", "timeout": 1}).encode()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


@contextlib.contextmanager
def api_server(stack: Stack, worker_class: str) -> Iterator[tuple[str, int]]:
    """A second gunicorn api:app on the stack's Redis and proxy: (url, master pid)."""
    port = free_port()
    env = {
        **os.environ,
        "EXECUTOR_PROXY_TOKEN": stack.proxy_token,
        "DOCKER_HOST": stack.docker_host,
        "REDIS_URL": stack.redis_url,
        "HOSTNAME": f"bench-{worker_class}",
        "EXECUTOR_LOG_LEVEL": "WARNING",
        "GUNICORN_WORKER_CLASS": worker_class,
    }
    argv = [str(VENV_BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "api:app"]
    with open(stack.logs / f"api-{worker_class}.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, [proc])
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mib(master: int) -> float:
    """Resident memory of a gunicorn master and its workers, MiB."""
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(entry.name))
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def empty_queue(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.delete(*QUEUE_KEYS)
    finally:
        client.close()


def warm_p50(urls: dict[str, str], n: int) -> dict[str, float]:
    """Warm POST /execute p50 of each server, their requests in turns (the same worker, pool
    and load for all), before any other phase; 0.4 s apart, so the pool refills between."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for i in range(n + 5):
        for name, url in urls.items():
            host, port = host_port(url)
            conn = http.client.HTTPConnection(host, port, timeout=60)
            began = time.perf_counter()
            conn.request("POST", "/execute", PROGRAM, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            conn.close()
            if i >= 5 and response.status == 200:
                samples[name].append((time.perf_counter() - began) * 1000)
            time.sleep(0.4)
    return {name: pct(values)[0] if values else float("nan") for name, values in samples.items()}


def health_while_stalled(url: str, stalled: int, samples: int) -> tuple[int, int, float, float]:
    """(answered, asked, p50 ms, p99 ms) of GET /health while `stalled` clients hold on."""
    host, port = host_port(url)
    held = []
    try:
        for _ in range(stalled):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(
                b"POST /execute HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            held.append(sock)
        time.sleep(0.5)
        times = []
        for _ in range(samples):
            conn = http.client.HTTPConnection(host, port, timeout=2)
            began = time.perf_counter()
            with contextlib.suppress(OSError):
                conn.request("GET", "/health")
                conn.getresponse().read()
                times.append((time.perf_counter() - began) * 1000)
            conn.close()
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
    p50, _, p99 = pct(times) if times else (float("nan"),) * 3
    return len(times), samples, p50, p99


async def one_execute(host: str, port: int, timeout: float) -> str:
    request = (
        b"POST /execute HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(PROGRAM), PROGRAM)
    )
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return "refused"
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return "timed out"
    except OSError:
        return "reset"
    finally:
        writer.close()
    if not answer:
        return "closed"
    head = answer.partition(b"\r\n\r\n")[0].lower()
    status = answer.split(b" ", 2)[1].decode()
    if status in ("429", "503") and b"retry-after:" not in head:
        return f"{status} without Retry-After"
    return status


async def many_executes(url: str, n: int, timeout: float) -> Counter[str]:
    host, port = host_port(url)
    return Counter(await asyncio.gather(*(one_execute(host, port, timeout) for _ in range(n))))


def concurrent_executes(
    url: str, master: int, n: int, timeout: float
) -> tuple[Counter[str], float, float]:
    """(answers by kind, API RSS before MiB, peak API RSS MiB) of n concurrent POST /execute."""
    before = rss_mib(master)
    peak = before
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(many_executes(url, n, timeout))
        while not task.done():
            loop.run_until_complete(asyncio.wait([task], timeout=0.5))
            peak = max(peak, rss_mib(master))
        return task.result(), before, peak
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stalled", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    parser.add_argument("--warm", type=int, default=30)
    parser.add_argument("--classes", default="gthread,gevent")
    parser.add_argument("--streams", type=int, default=1000, help="live-output streams; 0: none")
    args = parser.parse_args()
    base = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    redis_url = urlsplit(base)._replace(path="/14").geturl()
    redis.Redis.from_url(redis_url).flushdb()
    upstream = os.environ.get("PROXY_UPSTREAM", "unix:///var/run/docker.sock")
    from bench.live_output import concurrent_streams  # it imports this module

    rows = []
    streamed: dict[str, dict[str, float]] = {}
    classes = args.classes.split(",")
    with (
        running_stack(redis_url, upstream, pool_size=4, concurrency=8) as stack,
        contextlib.ExitStack() as servers,
    ):
        apis = {name: servers.enter_context(api_server(stack, name)) for name in classes}
        print(f"# {', '.join(classes)}: warm POST /execute, in turns", file=sys.stderr)
        p50s = warm_p50({name: url for name, (url, _) in apis.items()}, args.warm)
        for worker_class, (url, master) in apis.items():
            p50 = p50s[worker_class]
            print(f"# {worker_class}: {args.stalled} stalled clients", file=sys.stderr)
            health = health_while_stalled(url, args.stalled, 20)
            time.sleep(2)
            print(f"# {worker_class}: {args.concurrent} concurrent", file=sys.stderr)
            answers, before, peak = concurrent_executes(url, master, args.concurrent, args.timeout)
            empty_queue(stack)
            rows.append((worker_class, p50, health, answers, before, peak))
            time.sleep(5)  # the worker finishes what it had taken
            if args.streams:
                print(f"# {worker_class}: {args.streams} live streams", file=sys.stderr)
                try:
                    streamed[worker_class] = asyncio.run(
                        concurrent_streams(url, master, args.streams, 4, 20, args.timeout)
                    )
                except OSError as e:  # a server that cannot even take the executions
                    print(f"# {worker_class}: streams not run: {e!r}", file=sys.stderr)
                    nan = float("nan")
                    streamed[worker_class] = dict(whole=0, p50=nan, p95=nan, kib_per_stream=nan)
                empty_queue(stack)  # what a server took but never answered for
                time.sleep(5)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# API under waiting and stalled clients, {when}, {os.cpu_count()} cores\n")
    print(
        "| server | warm POST /execute p50 ms | /health with stalled clients: answered, p50, "
        "p99 ms | concurrent POST /execute: answers | API RSS before / peak MiB "
        "| KiB per waiting client |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for worker_class, p50, (answered, asked, h50, h99), answers, before, peak in rows:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
        per_client = (peak - before) * 1024 / args.concurrent
        print(
            f"| {worker_class} | {p50:.1f} | {answered}/{asked}, {h50:.1f}, {h99:.1f} | {kinds} "
            f"| {before:.0f} / {peak:.0f} | {per_client:.0f} |"
        )
    print(
        f"\n{args.stalled} stalled clients (head + 1 byte of a 100-byte body); {args.concurrent} "
        f"concurrent POST /execute of print(1) with timeout 1 (wait budget 11 s), client timeout "
        f"{args.timeout:g} s; one worker, EXECUTOR_CONCURRENCY 8, pool 4."
    )
    if streamed:
        print(
            f"\n| server | {args.streams} live-output streams: whole | line p50 ms | line p95 ms"
            " | API KiB per stream |"
        )
        print("| --- | ---: | ---: | ---: | ---: |")
        for worker_class, row in streamed.items():
            print(
                f"| {worker_class} | {row['whole']:.0f}/{args.streams} | {row['p50']:.1f}"
                f" | {row['p95']:.1f} | {row['kib_per_stream']:.1f} |"
            )
        print(
            "\n4 executions print 20 lines 200 ms apart; latency of the lines printed once a"
            " stream was open; a stream is whole when it got every line and the result within"
            " the client timeout."
        )


if __name__ == "__main__":
    main()
