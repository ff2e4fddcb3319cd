"""`python -m bench.live_output` (or `python -m bench --only live`): live output's latency.

(1) Latency: a program prints a line carrying its wall-clock time every 100 ms while it keeps
    running; an SSE client (GET /executions/{id}/events, http.client, read as it arrives)
    stamps each line on arrival. The difference (same host clock) is the latency from the
    program's print to the client: p50 and p95 (target: p50 <= 50 ms).
(2) Concurrent streams: S SSE clients (asyncio, one connection each) spread over E
    executions that print a line every 200 ms; each client must receive every line and the
    result. Reported: streams that completed whole, the same latency over all of them, and
    the API processes' memory per open stream.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from bench.__main__ import bench_redis_url, pct
from bench.serving import host_port, rss_mib
from bench.stack import running_stack
from executor import sse

TICKER = """
import time
for i in range({lines}):
    print(f"{{time.time():.6f}} {{i}}", flush=True)
    time.sleep({interval})
"""


def submit(api: str, code: str, timeout: float) -> str:
    host, port = host_port(api)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        body = json.dumps({"code": code, "timeout": timeout})
        conn.request("POST", "/executions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 202:
            raise RuntimeError(f"HTTP {response.status}: {data}")
        return str(data["id"])
    finally:
        conn.close()


def stamped(chunk: str, received: float, since: float = 0.0) -> Iterator[float | None]:
    """The latency (ms) of each whole line of `chunk`, received at `received`; None for a
    line printed before `since` (replayed to a client that connected later, not live)."""
    for line in chunk.splitlines():
        printed = float(line.partition(" ")[0])
        yield (received - printed) * 1000 if printed >= since else None


def latency(api: str, lines: int) -> list[float]:
    """One execution printing `lines` stamped lines every 100 ms; each line's latency."""
    execution_id = submit(api, TICKER.format(lines=lines, interval=0.1), lines * 0.1 + 20)
    host, port = host_port(api)
    conn = http.client.HTTPConnection(host, port, timeout=120)
    samples: list[float] = []
    try:
        conn.request("GET", f"/executions/{execution_id}/events")
        response = conn.getresponse()
        for event in sse.events(response.readline):
            received = time.time()
            if event.event == "stdout":
                samples += [
                    v for v in stamped(json.loads(event.data)["data"], received) if v is not None
                ]
            elif event.event == "result":
                result = json.loads(event.data)
                if result.get("status") != "success":
                    raise RuntimeError(f"the ticker ended {result.get('status')}")
                break
    finally:
        conn.close()
    if len(samples) != lines:
        raise RuntimeError(f"received {len(samples)} of {lines} lines")
    return samples


async def one_stream(api: str, execution_id: str, samples: list[float]) -> int:
    """Read one execution's stream to its end; the number of lines received (-1 on failure)."""
    host, port = host_port(api)
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(
            f"GET /executions/{execution_id}/events HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            return -1
        connected = time.time()
        received_lines, name, got_result = 0, "", False
        while line := await reader.readline():
            text = line.decode().rstrip("\r\n")
            if text.startswith("event: "):
                name = text[7:]
            elif text.startswith("data: ") and name == "stdout":
                now = time.time()
                for value in stamped(json.loads(text[6:])["data"], now, connected):
                    if value is not None:
                        samples.append(value)
                    received_lines += 1
            elif text.startswith("data: ") and name == "result":
                got_result = True
        return received_lines if got_result else -1
    except OSError:
        return -1
    finally:
        writer.close()


async def concurrent_streams(
    api: str,
    api_pid: int | None,
    streams: int,
    executions: int,
    lines: int,
    timeout: float = 300.0,
) -> dict[str, float]:
    """S streams over E executions of a ticker; whole streams, latency, API memory each."""
    code = TICKER.format(lines=lines, interval=0.2)
    ids = [submit(api, code, lines * 0.2 + 30) for _ in range(executions)]
    samples: list[float] = []
    before = rss_mib(api_pid) if api_pid else 0.0

    async def bounded(execution_id: str) -> int:
        try:
            return await asyncio.wait_for(one_stream(api, execution_id, samples), timeout)
        except TimeoutError:
            return -1

    tasks = [asyncio.create_task(bounded(ids[i % executions])) for i in range(streams)]
    await asyncio.sleep(min(2.0, lines * 0.1))
    during = rss_mib(api_pid) if api_pid else 0.0
    counts = await asyncio.gather(*tasks)
    whole = sum(1 for n in counts if n == lines)
    p50, p95, _ = pct(samples) if samples else (float("nan"),) * 3
    return {
        "streams": streams,
        "whole": whole,
        "p50": p50,
        "p95": p95,
        "kib_per_stream": (during - before) * 1024 / streams if api_pid else float("nan"),
    }


def api_master_pid(api: str) -> int | None:
    """The pid of the gunicorn master listening on the API's port (for its memory)."""
    port = urlsplit(api).port
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"gunicorn" in a for a in argv) and f"127.0.0.1:{port}".encode() in argv:
            return int(entry)
    return None


def report(api: str, lines: int, levels: list[int], executions: int) -> None:
    latency(api, 5)  # warm up: the pool, the API's event reader
    samples = latency(api, lines)
    p50, p95, p99 = pct(samples)
    print(f"\n| live output: print -> SSE client ({lines} lines) | p50 ms | p95 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| one stream, the program still running | {p50:.1f} | {p95:.1f} | {p99:.1f} |")
    mark = "met" if p50 <= 50 else "MISSED"
    print(f"\nlive output p50 {p50:.1f} ms (target <= 50 ms: {mark})")
    if not levels:
        return
    pid = api_master_pid(api)
    print("\n(latency of the lines printed once a stream was open; earlier ones are replayed)")
    print(
        f"\n| concurrent streams ({executions} executions, 20 lines each) | whole | p50 ms"
        " | p95 ms | API KiB per stream |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for level in levels:
        row = asyncio.run(concurrent_streams(api, pid, level, executions, 20))
        print(
            f"| {level} | {row['whole']:.0f}/{level} | {row['p50']:.1f} | {row['p95']:.1f}"
            f" | {row['kib_per_stream']:.1f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_output")
    parser.add_argument("--lines", type=int, default=100, help="lines of the latency run")
    parser.add_argument("--streams", default="100,1000", help="concurrent stream levels")
    parser.add_argument("--executions", type=int, default=4, help="executions they watch")
    parser.add_argument("--upstream", default="unix:///var/run/docker.sock")
    parser.add_argument("--redis", default=bench_redis_url(), help="Redis for the bench's stack")
    args = parser.parse_args()
    levels = [int(x) for x in args.streams.split(",") if x]
    with running_stack(args.redis, args.upstream, pool_size=4, concurrency=8) as stack:
        report(stack.api, args.lines, levels, args.executions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
