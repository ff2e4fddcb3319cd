"""The proxy's decisions as Prometheus series, on its own metrics port and nowhere else.

Each test runs a proxy of its own (in front of a fake engine, or of nothing at all), so the
counts it reads are exactly the requests it sent.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxy_helpers import API, FakeEngine, Wire, auth_value, exchange, own_proxy, request

from executor.metrics import PROXY_SERIES
from executor.proxyauth import worker_identity
from tests.conftest import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_total(samples: Samples, decision: str, rule: str) -> float:
    key = (f"{PROXY_SERIES['requests'][0]}_total", (("decision", decision), ("rule", rule)))
    return samples.get(key, 0)


def refusals_total(samples: Samples, client: str, rule: str) -> float:
    key = (f"{PROXY_SERIES['refusals'][0]}_total", (("client", client), ("rule", rule)))
    return samples.get(key, 0)


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    fake = FakeEngine()
    yield fake
    fake.close()


@pytest.fixture
def served(tmp_path: Path, engine: FakeEngine) -> Iterator[tuple[str, str]]:
    """(the proxy's Docker URL, its metrics URL), in front of the fake engine."""
    scrape_at = f"127.0.0.1:{free_port()}"
    with own_proxy(
        f"tcp://127.0.0.1:{engine.port}",
        tmp_path / "audit.jsonl",
        PROXY_METRICS_LISTEN=scrape_at,
    ) as url:
        yield url, f"http://{scrape_at}/metrics"


def test_allowed_and_refused_requests_move_their_series(served: tuple[str, str]):
    url, metrics = served
    before = scrape(metrics)
    assert requests_total(before, "allowed", "ping") == 0

    for _ in range(3):
        assert exchange(url, request("GET", f"{API}/_ping")).status == 200
    # Refused after authentication: the client is the identity it proved.
    stranger = worker_identity("metrics-test")
    denied = exchange(url, request("GET", f"{API}/networks", auth=auth_value(stranger)))
    assert denied.status == 403
    # Refused before: the client is its address (the port left out).
    assert exchange(url, request("GET", f"{API}/_ping", auth=None)).status == 401

    after = scrape(metrics)
    assert requests_total(after, "allowed", "ping") == 3
    assert requests_total(after, "refused", "auth") == 1
    endpoint_rules = {
        rule
        for (name, labels) in after
        if name == "executor_proxy_requests_total"
        for key, rule in labels
        if key == "rule" and dict(labels)["decision"] == "refused" and rule != "auth"
    }
    assert len(endpoint_rules) == 1, after
    (rule,) = endpoint_rules
    assert requests_total(after, "refused", rule) == 1
    assert refusals_total(after, stranger, rule) == 1
    assert refusals_total(after, "127.0.0.1", "auth") == 1
    # Allowed requests are timed, refusals are not.
    count = "executor_proxy_request_duration_seconds_count"
    assert after[(count, (("rule", "ping"),))] == 3


def test_an_engine_that_cannot_be_reached_is_an_upstream_failure(tmp_path: Path):
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        scrape_at = f"127.0.0.1:{free_port()}"
        upstream = f"tcp://127.0.0.1:{dead.getsockname()[1]}"
        with own_proxy(upstream, tmp_path / "audit.jsonl", PROXY_METRICS_LISTEN=scrape_at) as url:
            assert exchange(url, request("GET", f"{API}/_ping")).status == 502
            samples = scrape(f"http://{scrape_at}/metrics")
    failures = f"{PROXY_SERIES['upstream'][0]}_total"
    assert samples[(failures, (("rule", "ping"),))] == 1
    assert requests_total(samples, "allowed", "ping") == 1
    assert requests_total(samples, "refused", "ping") == 0


def test_the_docker_port_does_not_serve_metrics(served: tuple[str, str]):
    url, metrics = served
    answer = exchange(url, request("GET", "/metrics"))
    assert answer.status == 403
    assert answer.message.startswith("executor-proxy refused GET /metrics")
    assert b"executor_proxy" not in answer.body
    assert exchange(url, request("GET", "/metrics", auth=None)).status == 401
    # And the refusal is counted like any other.
    assert (
        sum(
            v
            for (name, labels), v in scrape(metrics).items()
            if name == "executor_proxy_requests_total" and ("decision", "refused") in labels
        )
        == 2
    )


def test_the_metrics_port_serves_nothing_but_metrics(served: tuple[str, str], engine: FakeEngine):
    _, metrics = served
    base = metrics.removesuffix("/metrics")
    for path in ("/", "/v1.41/_ping", "/_ping", "/v1.41/containers/json", "/metricsx", "/healthz"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=10)
        assert e.value.code == 404, path
    # Not a way to the engine, whatever is sent: the fake engine saw none of it
    with Wire(base) as wire:
        wire.send(request("POST", f"{API}/containers/create", b"{}"))
        assert wire.answer().status == 404
    with Wire(base) as wire:
        wire.send(request("POST", "/metrics"))
        answer = wire.answer()
        assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD"
    with Wire(base) as wire:
        wire.send(b"GET /metrics HTTP/1.1\r\nbroken\r\n\r\n")
        assert wire.answer().status == 400
    # (the proxy's own reading of the engine's sandboxes at start aside)
    assert [h for h in engine.heads if b"/containers/json?" not in h.split(b"\r\n")[0]] == []
    with urllib.request.urlopen(metrics, timeout=10) as answer:  # and /metrics itself answers
        families = {f.name for f in text_string_to_metric_families(answer.read().decode())}
    assert {name for name, _ in PROXY_SERIES.values()} <= families


def test_an_empty_setting_turns_the_metrics_port_off(
    tmp_path: Path, served: tuple[str, str], engine: FakeEngine
):
    with own_proxy(
        f"tcp://127.0.0.1:{engine.port}", tmp_path / "off.jsonl", PROXY_METRICS_LISTEN=""
    ) as url:
        assert exchange(url, request("GET", f"{API}/_ping")).status == 200
    # The proxy of `served` (metrics on) says where; this one serves none.
    assert "metrics on http://" in (tmp_path / "audit.log").read_text()
    assert "metrics" not in (tmp_path / "off.log").read_text()
