"""GET /executions at scale: a page with a filter at 10^5 and 10^6 records, and Redis memory.

`python -m bench --only history` (or `python -m bench.history`). Synthetic records, shaped as
the worker writes them (record hash with its result and history item, its index entries, its
expiry), go straight into a dedicated Redis started for the run; then a page is fetched many
times through the store (`Store.history`) and through the API's own view (the Flask app,
in-process, without a socket), and the median printed with the memory each record costs.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from executor.config import Settings
from executor.history import HistoryQuery, index_key, summary
from executor.models import iso
from executor.names import HISTORY, RECORD
from executor.store import Store
from executor.web import create_app
from executor.web.auth import key_id

TTL_S = 86400
LANGUAGES = {"python": 50, "javascript": 15, "bash": 10, "go": 8, "java": 7, "rust": 5, "c": 5}
STATUSES = {"success": 80, "error": 15, "timeout": 3, "memory_limit": 1, "compile_error": 1}
WORKERS = [f"worker-{n}" for n in range(8)]
KEYS = [f"bench-api-key-{n}" for n in range(20)]  # the API's keys: records hold their ids
OWNERS = [key_id(key) for key in KEYS]
OPERATOR = "bench-operator-key"
BATCH = 2000
# (label, store filters): the filters a user of the history would combine. Through the API
# every row but the owner's is an operator's request (it sees all).
PAGES: list[tuple[str, dict[str, str]]] = [
    ("no filter", {}),
    ("language=rust (5%)", {"language": "rust"}),
    ("status=timeout (3%)", {"status": "timeout"}),
    ("status=error & language=go", {"status": "error", "language": "go"}),
    ("one key's own (owner, 5%)", {"owner": OWNERS[3]}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dedicated_redis() -> Iterator[str]:
    """A Redis of its own for the run (no persistence), stopped after."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench history needs redis-server on PATH")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def _weighted(table: dict[str, int], rng: random.Random) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def result(
    execution_id: str, language: str, status: str, worker: str, created: float
) -> dict[str, Any]:
    """A result as the worker stores it, with a short output."""
    return {
        "id": execution_id,
        "status": status,
        "compile": None,
        "exit_code": 0 if status == "success" else 1,
        "signal": None,
        "stdout": "hello from the sandbox\n",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "duration_ms": 42,
        "queued_ms": 3,
        "language": language,
        "image": f"executor-{language}:1@sha256:{'ab' * 32}",
        "limits": {"timeout": 10.0, "memory_mb": 512, "cpus": 0.5, "pids": 64, "tmpfs_mb": 100},
        "worker": worker,
        "created_at": iso(created),
        "started_at": iso(created + 0.003),
        "finished_at": iso(created + 0.045),
        "warm": True,
        "usage": {"cpu_ms": 30, "memory_bytes": 9_000_000},
    }


def fill(url: str, count: int, rng: random.Random) -> None:
    """`count` finished executions over the last 23 hours, written as the store writes them."""
    client = redis.Redis.from_url(url)
    now = time.time()
    try:
        for start in range(0, count, BATCH):
            pipe = client.pipeline(transaction=False)
            indexes: dict[str, dict[str, float]] = {}
            for _ in range(min(BATCH, count - start)):
                execution_id = str(uuid.uuid4())
                created = now - rng.uniform(0, 23 * 3600)
                language, status = _weighted(LANGUAGES, rng), _weighted(STATUSES, rng)
                worker, owner = rng.choice(WORKERS), rng.choice(OWNERS)
                body = result(execution_id, language, status, worker, created)
                text = json.dumps(body)
                key = RECORD + execution_id
                pipe.hset(
                    key,
                    mapping={
                        "id": execution_id,
                        "status": status,
                        "language": language,
                        "created": repr(created),
                        "created_at": iso(created),
                        "worker": worker,
                        "incarnation": f"{worker}:1:abcdef",
                        "started": repr(created + 0.003),
                        "owner": owner,
                        "result": text,
                        "duration_ms": "42",
                        **({"summary": kept} if (kept := summary(body, text)) else {}),
                    },
                )
                pipe.expire(key, TTL_S)
                for index in (
                    HISTORY,
                    index_key("status", status),
                    index_key("language", language),
                    index_key("worker", worker),
                    index_key("owner", owner),
                ):
                    indexes.setdefault(index, {})[execution_id] = created
            for index, members in indexes.items():
                pipe.zadd(index, members)
                pipe.expire(index, TTL_S)
            pipe.execute()
    finally:
        client.close()


def used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def index_memory(url: str) -> int:
    """Bytes the history's indexes take (every entry counted)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [HISTORY, *client.scan_iter(match=index_key("*", "*"), count=1000)]
        return sum(int(client.memory_usage(key, samples=0) or 0) for key in keys)
    finally:
        client.close()


def p50(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    return sorted(samples)[len(samples) // 2]


def measure(url: str, n: int) -> list[tuple[str, float, float]]:
    """(page, p50 ms through the store, p50 ms through the API view) per PAGES row."""
    store = Store(url, ttl_s=TTL_S, history_size=100)
    settings = Settings.from_env(
        {
            "REDIS_URL": url,
            "HOSTNAME": "bench-history",
            "EXECUTOR_API_KEYS": ",".join(KEYS),
            "EXECUTOR_OPERATOR_KEYS": OPERATOR,
        }
    )
    app = create_app(settings, store=store)
    client = app.test_client()
    rows = []
    try:
        for label, params in PAGES:
            query = HistoryQuery(filters=params, limit=50)

            def from_store(q: HistoryQuery = query) -> int:
                return len(store.history(q).items)

            # A key sees its own: the owner filter comes from the key the request carries.
            key = KEYS[OWNERS.index(params["owner"])] if "owner" in params else OPERATOR
            headers = {"Authorization": f"Bearer {key}"}
            args = {k: v for k, v in params.items() if k != "owner"}

            def from_api(a: dict[str, str] = args, h: dict[str, str] = headers) -> None:
                response = client.get("/executions", query_string={**a, "limit": 50}, headers=h)
                assert response.status_code == 200, response.get_data(as_text=True)

            items = from_store()
            rows.append((f"{label}: {items} items", p50(from_store, n), p50(from_api, n)))
    finally:
        store.close()
    return rows


def run(sizes: list[int], n: int, seed: int = 16) -> dict[str, Any]:
    """Fill a dedicated Redis to each of `sizes` in turn and measure; print and return figures."""
    rng = random.Random(seed)
    figures: dict[str, Any] = {"sizes": {}}
    print("\n## History: GET /executions, a page of 50, p50 over", n, "fetches")
    with dedicated_redis() as url:
        base = used_memory(url)
        filled = 0
        for size in sorted(sizes):
            began = time.perf_counter()
            fill(url, size - filled, rng)
            filled = size
            inserted_s = time.perf_counter() - began
            per_record = (used_memory(url) - base) / size
            per_entry = index_memory(url) / size
            rows = measure(url, n)
            figures["sizes"][str(size)] = {
                "bytes_per_record": per_record,
                "index_bytes_per_record": per_entry,
                "pages": rows,
            }
            day = ", ".join(
                f"{rate}/s: {per_record * rate * 86400 / 2**30:.2f} GiB" for rate in (1, 10, 100)
            )
            print(
                f"\n{size:,} records (inserted in {inserted_s:.0f} s):"
                f" {per_record:,.0f} bytes of Redis memory per record, {per_entry:,.0f} of them"
                f" the five index entries; a day of history at {day}\n"
            )
            print("| page | store p50 ms | API view p50 ms |\n| --- | ---: | ---: |")
            for label, store_ms, api_ms in rows:
                print(f"| {label} | {store_ms:.2f} | {api_ms:.2f} |")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", default="100000,1000000", help="record counts, comma-separated")
    parser.add_argument("-n", type=int, default=50, help="fetches per page")
    args = parser.parse_args()
    run([int(s) for s in args.sizes.split(",")], args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
