"""executor.timeline: the bounded per-minute series behind the operator's page's charts."""

from __future__ import annotations

from executor import timeline
from executor.web import charts


def test_latencies_fall_in_buckets_and_percentiles_come_back_within_them():
    assert timeline.fields_for("success", 7.0) == ["s:success", "b:1"]  # 5 < 7 <= 10
    assert timeline.fields_for("internal_error", None) == ["s:internal_error"]
    histogram = [0] * (len(timeline.BUCKETS_MS) + 1)
    histogram[timeline.bucket_of(30)] = 90  # 25 < 30 <= 50
    histogram[timeline.bucket_of(3000)] = 10  # 2500 < 3000 <= 5000
    assert 25 <= timeline.percentile(histogram, 50) <= 50  # type: ignore[operator]
    assert 2500 <= timeline.percentile(histogram, 95) <= 5000  # type: ignore[operator]
    assert timeline.percentile([0] * len(histogram), 50) is None


def test_a_minute_reads_back_from_its_hash_and_the_span_is_an_hour():
    minute = timeline.Minute.from_hash(600, {"s:success": "3", "s:error": "1", "b:2": "4"})
    assert minute.total == 4 and minute.statuses == {"success": 3, "error": 1}
    assert minute.histogram[2] == 4
    minutes = timeline.span(3600 * 5 + 59)
    assert len(minutes) == timeline.SPAN_MINUTES and minutes[-1] == 300


def test_the_charts_draw_a_titled_bar_per_status_and_escape_unknown_ones():
    minute = timeline.Minute.from_hash(0, {"s:success": "2", "s:<odd>": "1", "b:3": "3"})
    svg = str(charts.executions_chart([minute]))
    assert svg.count('<rect class="bar"') == 2 and "2 success" in svg
    assert "&lt;odd&gt;" in svg and "<odd>" not in svg
    assert "<circle" in str(charts.latency_chart([minute]))
