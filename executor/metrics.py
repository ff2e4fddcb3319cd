"""Every counter of the service, by name, and the Prometheus series made of them.

The counters live in one Redis hash (executor.store), so every API process reports the same
totals for the whole service, whichever gunicorn or Celery process counted them. This module
is the only one that spells a counter's or a metric's name: the store's scripts and the
workers take the names from here.

Histograms are counted the same way: a worker adds one to the bucket an observation falls in
(and to its count and sum); `SnapshotCollector` turns the buckets into Prometheus' cumulative
ones, and `generate_latest` writes the text.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from executor.errors import RedisUnavailable
from executor.models import FINISHED

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Counter names: fields of the Redis hash executor:counters.
SUBMITTED = "submitted"
REJECTED = "rejected"
CONTAINERS_CREATED = "containers_created"
CONTAINERS_REMOVED = "containers_removed"
CONTAINERS_FAILED = "containers_failed"  # failed to be created
CONTAINERS_REAPED = "containers_reaped"
POOL_MISSES = "pool_misses"  # a pooled profile's execution found no warm container
BUILD_CACHE_HITS = "build_cache_hits"  # a build's products came from the build cache
BUILD_CACHE_MISSES = "build_cache_misses"  # a cacheable build that was not there: it ran
# Executions whose message the broker lost (executor.rescue), by what was done; results a
# Redis lost after taking them, stored again (executor.outbox).
RESCUED = {
    "requeued": "rescued_requeued",  # delivered, never claimed: back at the head of its queue
    "republished": "rescued_republished",  # no message anywhere: published from its request
    "lost": "rescued_lost",  # a producer's message, gone with its program: execution_lost
}
RESULTS_RESTORED = "results_restored"
DURATION_MS_TOTAL = "duration_ms_total"
DURATION_COUNT = "duration_count"
CONTAINER_EVENTS = {
    CONTAINERS_CREATED: "Sandbox containers created.",
    CONTAINERS_REMOVED: "Sandbox containers removed.",
    CONTAINERS_FAILED: "Sandbox containers that failed to be created.",
    CONTAINERS_REAPED: "Abandoned sandbox containers removed by a reaper.",
}


def executions(status: str) -> str:
    """The counter of executions finished with `status`."""
    return f"executions_{status}"


# Histograms, by language and status; bucket bounds in seconds.
DURATION = "execution_duration"
QUEUE_WAIT = "queue_wait"
HISTOGRAMS = {
    DURATION: ("executor_execution_duration_seconds", "Wall time of the programs themselves."),
    QUEUE_WAIT: ("executor_queue_wait_seconds", "From submission until a worker began."),
}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_HIST = "h|"  # h|<histogram>|<language>|<status>|<bucket index, or "sum" (ms), or "count">


def observe(histogram: str, seconds: float, language: str, status: str) -> dict[str, int]:
    """The counter increments that record one observation (language and status are checked
    values: a language of the request schema, a status of the contract)."""
    key = f"{_HIST}{histogram}|{language}|{status}|"
    bucket = bisect.bisect_left(BUCKETS, seconds)  # len(BUCKETS) is +Inf
    return {f"{key}{bucket}": 1, f"{key}count": 1, f"{key}sum": round(seconds * 1000)}


def counters(raw: Mapping[str, int]) -> dict[str, Any]:
    """/status's counters from the raw Redis hash."""
    count = raw.get(DURATION_COUNT, 0)
    return {
        "submitted": raw.get(SUBMITTED, 0),
        "executions": {status: raw.get(executions(status), 0) for status in FINISHED},
        "rejected": raw.get(REJECTED, 0),
        "timeouts": raw.get(executions("timeout"), 0),
        **{name: raw.get(name, 0) for name in CONTAINER_EVENTS},
        "average_duration_ms": round(raw.get(DURATION_MS_TOTAL, 0) / count, 1) if count else 0,
    }


def pool_totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Warm containers (and the target) summed over the live workers, in all and per language."""
    warm = sum(int((w.get("pool") or {}).get("warm", 0)) for w in workers)
    target = sum(int((w.get("pool") or {}).get("target", 0)) for w in workers)
    languages: dict[str, dict[str, int]] = {}
    for worker in workers:
        for name, counts in ((worker.get("pool") or {}).get("languages") or {}).items():
            total = languages.setdefault(str(name), {"warm": 0, "target": 0})
            for key in total:
                value = counts.get(key, 0) if isinstance(counts, dict) else 0
                total[key] += value if isinstance(value, int) else 0
    return {"warm": warm, "target": target, "languages": languages}


def idle_by_language(workers: list[dict[str, Any]]) -> dict[str, int]:
    """Warm containers waiting, per language, summed over the live workers."""
    idle: dict[str, int] = {}
    for worker in workers:
        for language, n in (worker.get("idle") or {}).items():
            idle[str(language)] = idle.get(str(language), 0) + int(n)
    return idle


class SnapshotCollector:
    """A prometheus_client collector over `Store.snapshot()` (read at each scrape).

    With `health` (the API's checks: {dependency: whether it answers}), `executor_up` says
    which dependencies answer; then a snapshot that fails (Redis down) leaves out the series
    read from Redis instead of failing the scrape, so an alert can tell Redis down from the
    API down.
    """

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        health: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._health = health

    def collect(self) -> Iterator[Metric]:
        if self._health is not None:
            up = GaugeMetricFamily(
                "executor_up",
                "1 when the dependency answers the API's health check, else 0.",
                labels=["dependency"],
            )
            for dependency, ok in sorted(self._health().items()):
                up.add_metric([dependency], 1 if ok else 0)
            yield up
            try:
                snap = self._snapshot()
            except RedisUnavailable:
                return  # Redis is down: executor_up{dependency="redis"} says so
        else:
            snap = self._snapshot()
        raw: dict[str, int] = snap["counters"]
        workers: list[dict[str, Any]] = snap["workers"]
        by_status = CounterMetricFamily(
            "executor_executions", "Finished executions by status.", labels=["status"]
        )
        for status in FINISHED:
            by_status.add_metric([status], raw.get(executions(status), 0))
        yield by_status
        yield CounterMetricFamily(
            "executor_submitted", "Executions submitted.", value=raw.get(SUBMITTED, 0)
        )
        yield CounterMetricFamily(
            "executor_rejected",
            "Queued payloads that failed validation.",
            value=raw.get(REJECTED, 0),
        )
        yield CounterMetricFamily(
            "executor_timeouts",
            "Programs killed at their deadline.",
            value=raw.get(executions("timeout"), 0),
        )
        for name, text in CONTAINER_EVENTS.items():
            yield CounterMetricFamily(f"executor_{name}", text, value=raw.get(name, 0))
        yield CounterMetricFamily(
            "executor_pool_misses",
            "Executions of a pooled profile that found no warm container (went cold).",
            value=raw.get(POOL_MISSES, 0),
        )
        build_cache = CounterMetricFamily(
            "executor_build_cache_lookups",
            "Builds of compiled languages looked up in the workers' build caches, by result"
            " (hit: the products of an identical build were used; miss: the build ran).",
            labels=["result"],
        )
        build_cache.add_metric(["hit"], raw.get(BUILD_CACHE_HITS, 0))
        build_cache.add_metric(["miss"], raw.get(BUILD_CACHE_MISSES, 0))
        yield build_cache
        rescued = CounterMetricFamily(
            "executor_rescued_executions",
            "Queued executions whose message the broker lost, by what the workers did"
            " (requeued: delivered and never claimed, put back; republished: sent again from"
            " the stored request; lost: a producer's message, finished as execution_lost).",
            labels=["action"],
        )
        for action, counter in RESCUED.items():
            rescued.add_metric([action], raw.get(counter, 0))
        yield rescued
        yield CounterMetricFamily(
            "executor_restored_results",
            "Results a Redis lost after taking them (a restart from an older snapshot, a"
            " failover), stored again by their workers.",
            value=raw.get(RESULTS_RESTORED, 0),
        )
        yield from _histograms(raw)
        yield GaugeMetricFamily(
            "executor_queue_depth", "Executions waiting for a worker.", value=snap["queue"]
        )
        pool = pool_totals(workers)
        yield GaugeMetricFamily(
            "executor_pool_warm", "Warm containers over all workers.", value=pool["warm"]
        )
        yield GaugeMetricFamily(
            "executor_pool_target", "Warm containers wanted over all workers.", value=pool["target"]
        )
        language_warm = GaugeMetricFamily(
            "executor_pool_language_warm",
            "Warm containers of each language over all workers.",
            labels=["language"],
        )
        language_target = GaugeMetricFamily(
            "executor_pool_language_target",
            "Each language's share of the warm pools, by recent demand.",
            labels=["language"],
        )
        for language, counts in sorted(pool["languages"].items()):
            language_warm.add_metric([language], counts["warm"])
            language_target.add_metric([language], counts["target"])
        yield language_warm
        yield language_target
        idle = GaugeMetricFamily(
            "executor_pool_idle", "Warm containers waiting, per language.", labels=["language"]
        )
        for language, n in sorted(idle_by_language(workers).items()):
            idle.add_metric([language], n)
        yield idle
        yield GaugeMetricFamily(
            "executor_workers", "Workers alive (heartbeating).", value=len(workers)
        )
        active = GaugeMetricFamily(
            "executor_worker_active", "Executions running now, per worker.", labels=["worker"]
        )
        processed = CounterMetricFamily(
            "executor_worker_processed",
            "Executions finished by each worker since it started.",
            labels=["worker"],
        )
        for w in workers:
            active.add_metric([str(w.get("name"))], w.get("active", 0))
            processed.add_metric([str(w.get("name"))], w.get("processed", 0))
        yield active
        yield processed


def _histograms(raw: Mapping[str, int]) -> Iterable[Metric]:
    # {histogram: {(language, status): {"0".."13", "sum", "count": n}}}
    found: dict[str, dict[tuple[str, str], dict[str, int]]] = {h: {} for h in HISTOGRAMS}
    for field, n in raw.items():
        if not field.startswith(_HIST):
            continue
        parts = field[len(_HIST) :].split("|")
        if len(parts) == 4 and parts[0] in found:
            histogram, language, status, part = parts
            found[histogram].setdefault((language, status), {})[part] = n
    for histogram, series in found.items():
        name, text = HISTOGRAMS[histogram]
        family = HistogramMetricFamily(name, text, labels=["language", "status"])
        for (language, status), counts in sorted(series.items()):
            cumulative, buckets = 0, []
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                cumulative += counts.get(str(i), 0)
                buckets.append(("+Inf" if i == len(BUCKETS) else str(bound), cumulative))
            family.add_metric([language, status], buckets, counts.get("sum", 0) / 1000)
        yield family


def registry(
    snapshot: Callable[[], dict[str, Any]],
    health: Callable[[], Mapping[str, bool]] | None = None,
) -> CollectorRegistry:
    """A registry of the service's series, read from `snapshot` (and `health`, the
    dependencies that answer: see SnapshotCollector) at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, health))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of `registry`."""
    return generate_latest(registry)


# A worker's own series, on its monitoring endpoint (executor.monitor).
WORKER_SERIES = {
    "active": ("executor_worker_active_executions", "Executions running on this worker."),
    "processed": ("executor_worker_processed_total", "Executions this worker has finished."),
    "concurrency": ("executor_worker_concurrency", "Executions this worker runs at once."),
    "warm": ("executor_worker_pool_warm", "Warm containers ready on this worker."),
    "starting": ("executor_worker_pool_starting", "Warm containers being started."),
    "target": ("executor_worker_pool_target", "Warm containers this worker keeps."),
    "idle": ("executor_worker_pool_idle", "Warm containers ready, by language."),
}


def worker_metrics(info: Mapping[str, Any]) -> bytes:
    """The Prometheus text of one worker (its /status entry, `WorkerRuntime.info()`)."""
    pool = info.get("pool") or {}
    labels = {"worker": str(info.get("name", ""))}
    families: list[Metric] = []
    for key in ("active", "processed", "concurrency"):
        name, text = WORKER_SERIES[key]
        kind = CounterMetricFamily if key == "processed" else GaugeMetricFamily
        family = kind(name.removesuffix("_total"), text, labels=list(labels))
        family.add_metric(list(labels.values()), float(info.get(key) or 0))
        families.append(family)
    for key in ("warm", "starting", "target"):
        name, text = WORKER_SERIES[key]
        gauge = GaugeMetricFamily(name, text, labels=list(labels))
        gauge.add_metric(list(labels.values()), float(pool.get(key) or 0))
        families.append(gauge)
    name, text = WORKER_SERIES["idle"]
    idle = GaugeMetricFamily(name, text, labels=[*labels, "language"])
    for language, count in sorted((info.get("idle") or {}).items()):
        idle.add_metric([*labels.values(), str(language)], float(count))
    families.append(idle)

    class _Fixed:
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return bytes(generate_latest(registry))


# The Docker security proxy's own series, on its metrics port (PROXY_METRICS_LISTEN), never
# on the Docker port. One sample per decision the audit log records (executor.proxy.audit).
PROXY_SERIES = {
    "requests": (
        "executor_proxy_requests",
        "Requests decided by the proxy, by decision (allowed, refused, or missing: a container "
        "that does not exist, answered 404 as the engine would) and rule.",
    ),
    "refusals": (
        "executor_proxy_refusals",
        "Requests refused, by client (its authenticated identity, else its address) and rule.",
    ),
    "upstream": (
        "executor_proxy_upstream_failures",
        "Allowed requests the Docker engine could not answer (502), by rule.",
    ),
    "latency": (
        "executor_proxy_request_duration_seconds",
        "Allowed requests: from the request head to the engine's answer head, by rule.",
    ),
}


class ProxyMetrics:
    """The proxy's counters in a registry of their own (the proxy's process serves only it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        name, text = PROXY_SERIES["requests"]
        self._requests = Counter(name, text, ["decision", "rule"], registry=self.registry)
        name, text = PROXY_SERIES["refusals"]
        self._refusals = Counter(name, text, ["client", "rule"], registry=self.registry)
        name, text = PROXY_SERIES["upstream"]
        self._upstream = Counter(name, text, ["rule"], registry=self.registry)
        name, text = PROXY_SERIES["latency"]
        self._latency = Histogram(name, text, ["rule"], buckets=BUCKETS, registry=self.registry)

    def decision(
        self,
        *,
        client: str,
        identity: str | None,
        allowed: bool,
        rule: str,
        ms: float | None,
        unreachable: bool = False,
        missing: bool = False,
    ) -> None:
        """Count one decision; `client` is "host:port" (the port is left out of the label).

        `missing`: refused only because the container does not exist (sandboxes remove
        themselves, so workers meet this every day): not a refusal an operator looks at.
        """
        decision = "missing" if missing else "allowed" if allowed else "refused"
        self._requests.labels(decision, rule).inc()
        if decision == "refused":
            self._refusals.labels(identity or client.rpartition(":")[0] or client, rule).inc()
        if unreachable:
            self._upstream.labels(rule).inc()
        elif allowed and ms is not None:
            self._latency.labels(rule).observe(ms / 1000)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
