"""/status's counters and the Prometheus text of /metrics, from a store snapshot."""

from __future__ import annotations

import re

from executor import metrics

SNAPSHOT = {
    "workers": [
        {"name": 'celery@a"b', "active": 2, "processed": 7, "pool": {"warm": 3, "target": 4}},
        {"name": "celery@c", "active": 0, "processed": 1, "pool": {"warm": 1, "target": 4}},
    ],
    "queue": 5,
    "counters": {
        "submitted": 12,
        "executions_success": 6,
        "executions_timeout": 2,
        "executions_internal_error": 1,
        "containers_created": 11,
        "containers_removed": 10,
        "containers_failed": 1,
        "duration_ms_total": 900,
        "duration_count": 9,
    },
    "recent": [],
}
SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="(?:[^"\\]|\\.)*"\})? (-?[0-9.e+]+)$')


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def test_counters_for_status():
    counters = metrics.counters(SNAPSHOT["counters"])
    assert counters["executions"]["success"] == 6
    assert counters["executions"]["memory_limit"] == 0
    assert counters["timeouts"] == 2
    assert counters["containers_failed"] == 1
    assert counters["average_duration_ms"] == 100.0
    assert metrics.counters({})["average_duration_ms"] == 0


def test_prometheus_text():
    text = metrics.render(SNAPSHOT)
    assert text.endswith("\n")
    found = samples(text)
    assert found['executor_executions_total{status="success"}'] == 6
    assert found['executor_executions_total{status="internal_error"}'] == 1
    assert found["executor_queue_depth"] == 5
    assert found["executor_pool_warm"] == 4
    assert found["executor_pool_target"] == 8
    assert found["executor_workers"] == 2
    assert found["executor_containers_created_total"] == 11
    assert found["executor_execution_duration_seconds_sum"] == 0.9
    assert found["executor_execution_duration_seconds_count"] == 9
    assert found['executor_worker_active{worker="celery@a\\"b"}'] == 2
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(types) == len({name for name, _ in types})  # each family declared once
    assert ("executor_queue_depth", "gauge") in types
    assert ("executor_executions_total", "counter") in types
