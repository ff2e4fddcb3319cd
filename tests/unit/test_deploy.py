"""deploy/: the alerting rules pass promtool's checks and their own unit tests; the Grafana
dashboard is valid JSON whose every query parses and names only series the service exports.

promtool comes with Debian's `prometheus` package (scripts/host-setup.sh installs it): missing,
it fails the run in CI and skips these tests elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from executor import metrics
from executor.errors import RedisUnavailable
from tests.conftest import ROOT, missing

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "executor.json"
# Grafana's own variables, as Prometheus would see them once Grafana substituted them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# A name in PromQL: ours all begin so; label names and functions never do.
SERIES_NAME = re.compile(r"\bexecutor_[a-zA-Z0-9_:]*")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool is not installed (Debian package prometheus; make setup installs it)")
    assert found is not None
    return found


def exported_series() -> set[str]:
    """The name of every sample the service, its workers and the proxy can export."""
    counters = {name: 1 for name in (*metrics.CONTAINER_EVENTS, metrics.POOL_MISSES)}
    for key, n in metrics.observe(metrics.DURATION, 0.1, "python", "success").items():
        counters[key] = n
    for key, n in metrics.observe(metrics.QUEUE_WAIT, 0.1, "python", "success").items():
        counters[key] = n
    worker = {"name": "w", "active": 1, "processed": 1, "pool": {"warm": 1}, "idle": {"python": 1}}
    snapshot = {"workers": [worker], "queue": 1, "counters": counters, "recent": []}
    texts = [
        metrics.render(metrics.registry(lambda: snapshot, lambda: {"docker": True})),
        metrics.worker_metrics(worker),
    ]
    proxy = metrics.ProxyMetrics()
    proxy.decision(client="1.2.3.4:5", identity=None, allowed=False, rule="auth", ms=None)
    proxy.decision(client="1.2.3.4:5", identity="w", allowed=True, rule="ping", ms=1.0)
    proxy.decision(
        client="1.2.3.4:5", identity="w", allowed=True, rule="ping", ms=1.0, unreachable=True
    )
    texts.append(proxy.render())
    return {
        sample.name
        for text in texts
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_the_known_series_cover_what_operators_alert_on():
    names = exported_series()
    for name in (
        "executor_proxy_requests_total",
        "executor_proxy_refusals_total",
        "executor_proxy_upstream_failures_total",
        "executor_proxy_request_duration_seconds_bucket",
        "executor_containers_failed_total",
        "executor_executions_total",
        "executor_queue_depth",
        "executor_queue_wait_seconds_bucket",
        "executor_workers",
        "executor_pool_warm",
        "executor_pool_misses_total",
        "executor_up",
    ):
        assert name in names


def unknown_series(expr: str) -> set[str]:
    return set(SERIES_NAME.findall(expr)) - exported_series()


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alerts_name_only_exported_series():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "ExecutorProxyRefusals",
        "ExecutorContainerCreationFailing",
        "ExecutorTimeoutRatioJump",
        "ExecutorQueueWaitOverBudget",
        "ExecutorNoLiveWorker",
        "ExecutorDockerDown",
        "ExecutorRedisDown",
        "ExecutorWarmPoolEmpty",
    }
    for rule in rules:
        assert SERIES_NAME.search(rule["expr"]), rule["alert"]
        assert unknown_series(rule["expr"]) == set(), rule["alert"]


def test_every_alert_is_unit_tested():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


def test_promtool_checks_the_rules():
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass():
    result = subprocess.run(
        [promtool(), "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_covers_the_signals():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    everything = " ".join(expr for _, expr in dashboard_queries())
    for series in (
        "executor_executions_total",
        "executor_execution_duration_seconds_bucket",
        "executor_queue_depth",
        "executor_queue_wait_seconds_bucket",
        "executor_pool_warm",
        "executor_proxy_refusals_total",
        "executor_containers_failed_total",
    ):
        assert series in everything


def test_dashboard_queries_name_only_exported_series():
    for title, expr in dashboard_queries():
        assert SERIES_NAME.search(expr), title
        assert unknown_series(expr) == set(), title
        pairs = {"(": ")", "[": "]", "{": "}"}
        stack: list[str] = []
        for char in re.sub(r'"[^"]*"', '""', expr):
            if char in pairs:
                stack.append(pairs[char])
            elif char in pairs.values():
                assert stack and stack.pop() == char, (title, expr)
        assert not stack, (title, expr)


def test_promtool_parses_every_dashboard_query(tmp_path: Path):
    """promtool 2.42 checks no bare expression, but it parses a rule's: each query becomes
    a recording rule (Grafana's variables replaced by what Grafana would send)."""
    rules = []
    for i, (_, query) in enumerate(dashboard_queries()):
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_scrape_with_redis_down_still_feeds_the_redis_alert():
    def down() -> dict[str, Any]:
        raise RedisUnavailable("Redis is down")

    text = metrics.render(metrics.registry(down, lambda: {"docker": True, "redis": False}))
    assert b'executor_up{dependency="redis"} 0.0' in text


@pytest.mark.parametrize("path", [ALERTS, ALERTS_TEST, DASHBOARD])
def test_deploy_files_exist(path: Path):
    assert path.is_file()
