"""A soak: a private stack under steady load for N minutes, watched for leaks.

`python -m bench.soak --minutes 10` (or `python -m bench --only soak`) starts its own proxy,
worker and API (bench.stack) on a Redis database of its own, and keeps `--clients` clients
posting `POST /execute` back to back: a closed loop, so the load is the throughput the
engine sustains, bounded by the count of clients and the duration. Every `--every` seconds it
samples the resident memory (RSS, with children) and the open file descriptors of the API,
the worker and the proxy, the stack's containers and Redis's key count. At the end it waits
for the records to expire (EXECUTOR_RESULT_TTL is set short for the soak) and reports what is
left: containers beyond the warm pool, keys beyond the idle ones, and how memory and fds grew.
`soak()` returns the same figures for the suite's short version (tests/faults/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import redis
import requests

from bench.stack import running_stack
from executor.policy import LABEL_WORKER, SANDBOX_LABEL_FILTER

POOL_SIZE = 2
RESULT_TTL_S = 60  # records expire this soon in a soak (the least allowed), so a leak shows


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, MiB."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def fds(pid: int) -> int:
    """Open file descriptors of `pid` and its descendants."""
    total = 0
    for p in tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total


@dataclass
class Sample:
    t_s: float
    done: int
    rss_mb: dict[str, float]
    fds: dict[str, int]
    containers: int
    keys: int
    keys_without_ttl: int  # keys that never expire: a few fixed ones, never one per execution


@dataclass
class Report:
    seconds: float
    clients: int
    requests: int
    answers: dict[str, int]
    throughput_per_s: float
    samples: list[Sample] = field(default_factory=list)
    containers_left: int = 0  # beyond the warm pool, after the load
    keys_idle: int = 0  # Redis keys before the load
    keys_left: int = 0  # after the load (once the records expired, when waited for)
    keys_without_ttl_idle: int = 0
    keys_without_ttl_left: int = 0
    growth_rss_mb: dict[str, float] = field(default_factory=dict)  # last minus first sample
    growth_fds: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Load:
    """`clients` threads posting POST /execute back to back until `stop`."""

    def __init__(self, api: str, clients: int) -> None:
        self.api = api
        self.clients = clients
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(120)

    def done(self) -> int:
        with self._lock:
            return sum(self.answers.values())

    def _client(self, n: int) -> None:
        session = requests.Session()
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                answer = session.post(
                    f"{self.api}/execute", json={"code": f"print({n}*{i})"}, timeout=120
                )
                ok = answer.status_code == 200 and answer.json().get("stdout") == f"{n * i}\n"
                outcome = "ok" if ok else f"{answer.status_code} {answer.json().get('code', '')}"
            except requests.RequestException as e:
                outcome = type(e).__name__
            with self._lock:
                self.answers[outcome.strip()] += 1
        session.close()


def soak(
    seconds: float,
    clients: int,
    redis_url: str,
    upstream: str = "unix:///var/run/docker.sock",
    every_s: float = 10.0,
    out: Any = None,
    wait_expiry: bool = True,
) -> Report:
    """Run the soak; print a line per sample to `out` (a file) if given. `wait_expiry`: wait
    for the records to expire before the last sample (else only keys without a TTL count)."""
    name = f"soak-{uuid.uuid4().hex[:6]}"
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    engine = docker.DockerClient(base_url=upstream, timeout=60)

    def containers() -> int:
        found = engine.api.containers(all=True, filters={"label": [SANDBOX_LABEL_FILTER]})
        return sum(1 for c in found if c["Labels"].get(LABEL_WORKER, "").startswith(f"{name}:"))

    env = {"HOSTNAME": name, "EXECUTOR_RESULT_TTL": str(RESULT_TTL_S)}
    try:
        with running_stack(redis_url, upstream, POOL_SIZE, 8, extra_env=env) as stack:

            def sample(t: float, done: int) -> Sample:
                s = Sample(
                    t_s=round(t, 1),
                    done=done,
                    rss_mb={k: round(rss_mb(p), 1) for k, p in stack.pids.items()},
                    fds={k: fds(p) for k, p in stack.pids.items()},
                    containers=containers(),
                    keys=int(store.dbsize()),
                    keys_without_ttl=sum(
                        1 for k in store.scan_iter(count=1000) if store.ttl(k) == -1
                    ),
                )
                if out is not None:
                    print(json.dumps(asdict(s)), file=out, flush=True)
                return s

            time.sleep(3)  # the pool fills
            idle = sample(0.0, 0)
            load = Load(stack.api, clients)
            began = time.monotonic()
            samples = [idle]
            load.start()
            while (elapsed := time.monotonic() - began) < seconds:
                time.sleep(min(every_s, max(0.1, seconds - elapsed)))
                samples.append(sample(time.monotonic() - began, load.done()))
            load.join()
            took = time.monotonic() - began
            # What the load leaves once it is over: the records expire, the pool stays.
            settled = time.monotonic() + 30  # removals still in flight finish
            while containers() > POOL_SIZE and time.monotonic() < settled:
                time.sleep(0.5)
            time.sleep(
                max(0.0, RESULT_TTL_S + 5 - (time.monotonic() - took - began)) if wait_expiry else 1
            )
            last = sample(time.monotonic() - began, load.done())
            first = samples[1] if len(samples) > 2 else samples[0]  # warmed up
            return Report(
                seconds=round(took, 1),
                clients=clients,
                requests=load.done(),
                answers=dict(load.answers),
                throughput_per_s=round(load.done() / took, 1),
                samples=[*samples, last],
                containers_left=max(0, last.containers - POOL_SIZE),
                keys_idle=idle.keys,
                keys_left=last.keys,
                keys_without_ttl_idle=idle.keys_without_ttl,
                keys_without_ttl_left=last.keys_without_ttl,
                growth_rss_mb={k: round(v - first.rss_mb[k], 1) for k, v in last.rss_mb.items()},
                growth_fds={k: v - first.fds[k] for k, v in last.fds.items()},
            )
    finally:
        engine.close()
        store.close()


def print_report(report: Report) -> None:
    first, last = report.samples[0], report.samples[-1]
    print(
        f"# soak: {report.seconds:.0f} s, {report.clients} clients, {report.requests} requests"
        f" ({report.throughput_per_s}/s), answers {report.answers}"
    )
    print("| process | RSS first MiB | RSS last MiB | growth | fds first | fds last |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in last.rss_mb:
        print(
            f"| {name} | {first.rss_mb[name]} | {last.rss_mb[name]} |"
            f" {report.growth_rss_mb[name]:+.1f} | {first.fds[name]} | {last.fds[name]} |"
        )
    print(
        f"containers left beyond the pool: {report.containers_left};"
        f" Redis keys idle {report.keys_idle}, after the load and {RESULT_TTL_S} s:"
        f" {report.keys_left}; keys without a TTL {report.keys_without_ttl_idle} ->"
        f" {report.keys_without_ttl_left}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--clients", type=int, default=8, help="clients posting back to back")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")


def run(args: argparse.Namespace, redis_url: str, upstream: str) -> int:
    samples = Path(args.json).with_suffix(".samples.jsonl") if getattr(args, "json", None) else None
    out = samples.open("w") if samples else None
    try:
        report = soak(args.minutes * 60, args.clients, redis_url, upstream, args.every, out)
    finally:
        if out is not None:
            out.close()
    print_report(report)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0 if set(report.answers) == {"ok"} and report.containers_left == 0 else 1


def main() -> int:
    from bench.__main__ import bench_redis_url

    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=summary)
    add_arguments(parser)
    parser.add_argument("--upstream", default="unix:///var/run/docker.sock")
    parser.add_argument("--redis", default=bench_redis_url(), help="a Redis database of its own")
    parser.add_argument("--json", help="also write the figures to this file (and the samples)")
    args = parser.parse_args()
    return run(args, args.redis, args.upstream)


if __name__ == "__main__":
    raise SystemExit(main())
