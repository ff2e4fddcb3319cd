"""The history benchmark runs, in small: records in its own Redis, pages, memory per record."""

from __future__ import annotations

import shutil

import pytest

from bench.history import run

pytestmark = [pytest.mark.service]


def test_the_history_bench_measures_pages_and_memory():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    figures = run([1500], n=3)
    measured = figures["sizes"]["1500"]
    assert 500 < measured["bytes_per_record"] < 20000
    assert 0 < measured["index_bytes_per_record"] < measured["bytes_per_record"]
    labels = [label for label, _, _ in measured["pages"]]
    assert any(label.startswith("no filter: 50 items") for label in labels)
    assert all(store_ms > 0 and api_ms > 0 for _, store_ms, api_ms in measured["pages"])
