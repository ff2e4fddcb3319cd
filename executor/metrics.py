"""The shared counters as /status shows them, and in Prometheus text format for /metrics.

Pure functions over `Store.snapshot()`; the counters live in Redis, so every API process
reports the same totals for the whole service.
"""

from __future__ import annotations

from typing import Any

from executor.models import FINISHED

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def counters(raw: dict[str, int]) -> dict[str, Any]:
    """/status's counters from the raw Redis hash."""
    count = raw.get("duration_count", 0)
    return {
        "submitted": raw.get("submitted", 0),
        "executions": {status: raw.get(f"executions_{status}", 0) for status in FINISHED},
        "rejected": raw.get("rejected", 0),
        "timeouts": raw.get("executions_timeout", 0),
        "containers_created": raw.get("containers_created", 0),
        "containers_removed": raw.get("containers_removed", 0),
        "containers_failed": raw.get("containers_failed", 0),
        "average_duration_ms": round(raw.get("duration_ms_total", 0) / count, 1) if count else 0,
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


def _label(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{text}"'


def render(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition (version 0.0.4) of a Store.snapshot()."""
    raw: dict[str, int] = snapshot["counters"]
    workers: list[dict[str, Any]] = snapshot["workers"]
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    metric(
        "executor_executions_total",
        "counter",
        "Finished executions by status.",
        [(f"{{status={_label(s)}}}", raw.get(f"executions_{s}", 0)) for s in FINISHED],
    )
    metric(
        "executor_submitted_total",
        "counter",
        "Executions submitted.",
        [("", raw.get("submitted", 0))],
    )
    metric(
        "executor_rejected_total",
        "counter",
        "Queued payloads that failed validation.",
        [("", raw.get("rejected", 0))],
    )
    metric(
        "executor_timeouts_total",
        "counter",
        "Programs killed at their deadline.",
        [("", raw.get("executions_timeout", 0))],
    )
    for event, text in (
        ("created", "Sandbox containers created."),
        ("removed", "Sandbox containers removed."),
        ("failed", "Sandbox containers that failed to be created."),
    ):
        metric(
            f"executor_containers_{event}_total",
            "counter",
            text,
            [("", raw.get(f"containers_{event}", 0))],
        )
    metric(
        "executor_execution_duration_seconds",
        "summary",
        "Wall time of the programs themselves.",
        [
            ("_sum", raw.get("duration_ms_total", 0) / 1000),  # name_sum, name_count
            ("_count", raw.get("duration_count", 0)),
        ],
    )
    metric(
        "executor_queue_depth",
        "gauge",
        "Executions waiting for a worker.",
        [("", snapshot["queue"])],
    )
    pool = pool_totals(workers)
    metric("executor_pool_warm", "gauge", "Warm containers over all workers.", [("", pool["warm"])])
    metric(
        "executor_pool_target",
        "gauge",
        "Warm containers wanted over all workers.",
        [("", pool["target"])],
    )
    per_language = sorted(pool["languages"].items())
    metric(
        "executor_pool_language_warm",
        "gauge",
        "Warm containers of each language over all workers.",
        [(f"{{language={_label(name)}}}", counts["warm"]) for name, counts in per_language],
    )
    metric(
        "executor_pool_language_target",
        "gauge",
        "Each language's share of the warm pools, by recent demand.",
        [(f"{{language={_label(name)}}}", counts["target"]) for name, counts in per_language],
    )
    metric("executor_workers", "gauge", "Workers alive (heartbeating).", [("", len(workers))])
    metric(
        "executor_worker_active",
        "gauge",
        "Executions running now, per worker.",
        [(f"{{worker={_label(w.get('name'))}}}", w.get("active", 0)) for w in workers],
    )
    metric(
        "executor_worker_processed_total",
        "counter",
        "Executions finished by each worker since it started.",
        [(f"{{worker={_label(w.get('name'))}}}", w.get("processed", 0)) for w in workers],
    )
    return "\n".join(lines) + "\n"
