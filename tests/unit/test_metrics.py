"""/status's counters and the Prometheus series of /metrics, from a store snapshot."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from executor import metrics
from executor.config import Settings
from executor.errors import RedisUnavailable
from executor.languages import languages
from executor.pool import Profile, WarmPool

COUNTERS = {
    "submitted": 12,
    "executions_success": 6,
    "executions_timeout": 2,
    "executions_internal_error": 1,
    "containers_created": 11,
    "containers_removed": 10,
    "containers_failed": 1,
    "containers_reaped": 3,
    "duration_ms_total": 900,
    "duration_count": 9,
}
for name, seconds in [(metrics.DURATION, 0.02), (metrics.DURATION, 0.3), (metrics.QUEUE_WAIT, 7)]:
    for key, n in metrics.observe(name, seconds, "python", "success").items():
        COUNTERS[key] = COUNTERS.get(key, 0) + n
SNAPSHOT: dict[str, Any] = {
    "workers": [
        {
            "name": 'celery@a"b',
            "active": 2,
            "processed": 7,
            "pool": {"warm": 3, "target": 4},
            "idle": {"python": 3},
        },
        {
            "name": "celery@c",
            "active": 0,
            "processed": 1,
            "pool": {"warm": 1, "target": 4},
            "idle": {"python": 1},
        },
    ],
    "queue": 5,
    "counters": COUNTERS,
    "recent": [],
}


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(metrics.registry(lambda: SNAPSHOT)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_for_status():
    counters = metrics.counters(SNAPSHOT["counters"])
    assert counters["executions"]["success"] == 6
    assert counters["executions"]["memory_limit"] == 0
    assert counters["timeouts"] == 2
    assert counters["containers_failed"] == 1
    assert counters["containers_reaped"] == 3
    assert counters["average_duration_ms"] == 100.0
    assert metrics.counters({})["average_duration_ms"] == 0


def test_prometheus_series():
    found = samples()
    assert found[("executor_executions_total", (("status", "success"),))] == 6
    assert found[("executor_executions_total", (("status", "internal_error"),))] == 1
    assert found[("executor_queue_depth", ())] == 5
    assert found[("executor_pool_warm", ())] == 4
    assert found[("executor_pool_target", ())] == 8
    assert found[("executor_pool_idle", (("language", "python"),))] == 4
    assert found[("executor_workers", ())] == 2
    for event in ("created", "removed", "failed", "reaped"):
        assert found[(f"executor_containers_{event}_total", ())] == COUNTERS[f"containers_{event}"]
    assert found[("executor_worker_active", (("worker", 'celery@a"b'),))] == 2


def test_histograms_are_cumulative_by_language_and_status():
    found = samples()
    labels = (("language", "python"), ("status", "success"))

    def bucket(name: str, le: str) -> float:
        return found[(f"{name}_bucket", (*labels[:1], ("le", le), *labels[1:]))]

    duration = "executor_execution_duration_seconds"
    assert bucket(duration, "0.01") == 0
    assert bucket(duration, "0.025") == 1
    assert bucket(duration, "0.5") == 2
    assert bucket(duration, "+Inf") == 2
    assert found[(f"{duration}_count", labels)] == 2
    assert found[(f"{duration}_sum", labels)] == 0.32
    wait = "executor_queue_wait_seconds"
    assert bucket(wait, "5.0") == 0 and bucket(wait, "10.0") == 1


def test_pool_misses_are_a_series():
    found = samples()
    assert found[("executor_pool_misses_total", ())] == 0
    with_misses = {**COUNTERS, metrics.POOL_MISSES: 4}
    text = metrics.render(metrics.registry(lambda: {**SNAPSHOT, "counters": with_misses})).decode()
    assert "executor_pool_misses_total 4.0" in text.splitlines()


def test_build_cache_hits_and_misses_are_a_series():
    found = samples()
    series = "executor_build_cache_lookups_total"
    assert found[(series, (("result", "hit"),))] == found[(series, (("result", "miss"),))] == 0
    counted = {**COUNTERS, metrics.BUILD_CACHE_HITS: 3, metrics.BUILD_CACHE_MISSES: 2}
    text = metrics.render(metrics.registry(lambda: {**SNAPSHOT, "counters": counted})).decode()
    assert f'{series}{{result="hit"}} 3.0' in text.splitlines()
    assert f'{series}{{result="miss"}} 2.0' in text.splitlines()


def test_rescued_executions_and_restored_results_are_series():
    counted = {
        **COUNTERS,
        metrics.RESCUED["requeued"]: 1,
        metrics.RESCUED["republished"]: 2,
        metrics.RESULTS_RESTORED: 5,
    }
    text = metrics.render(metrics.registry(lambda: {**SNAPSHOT, "counters": counted})).decode()
    lines = text.splitlines()
    series = "executor_rescued_executions_total"
    assert f'{series}{{action="requeued"}} 1.0' in lines
    assert f'{series}{{action="republished"}} 2.0' in lines
    assert f'{series}{{action="lost"}} 0.0' in lines
    assert "executor_restored_results_total 5.0" in lines


def test_a_pooled_profile_found_empty_counts_a_pool_miss():
    counted: Counter[str] = Counter()
    sandbox: Any = SimpleNamespace(events=lambda name, n: counted.update({name: n}))
    python = languages(Settings())["python"]
    pool = WarmPool(
        sandbox,
        [Profile(python, 512, 0.5)],
        size=4,
        max_idle_s=300,
        refill_concurrency=1,
        dispose=lambda container: None,
    )
    assert pool.take(python, 512, 0.5) is None
    assert pool.take(python, 256, 0.5) is None  # a profile not pooled: cold, but no miss
    assert counted == {metrics.POOL_MISSES: 1}


def test_dependencies_up_and_redis_down():
    def health() -> dict[str, bool]:
        return {"docker": True, "redis": False}

    text = metrics.render(metrics.registry(lambda: SNAPSHOT, health)).decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("executor_up", (("dependency", "docker"),))] == 1
    assert found[("executor_up", (("dependency", "redis"),))] == 0
    assert found[("executor_queue_depth", ())] == 5

    def no_redis() -> dict[str, Any]:
        raise RedisUnavailable("cannot read the service's state: Redis is down")

    text = metrics.render(metrics.registry(no_redis, health)).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names == {"executor_up"}  # the scrape still answers, saying what is down
