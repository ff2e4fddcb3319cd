"""The last hour, minute by minute: executions finished per status and their latency.

The store keeps one small Redis hash per minute (names.MINUTES + the minute since the epoch,
expiring after SPAN_MINUTES and a margin): `s:<status>` counts the executions that finished
that minute with that status, `b:<i>` counts those whose latency fell in bucket i of
BUCKETS_MS. A minute's size is bounded by the statuses and the buckets, and at most
SPAN_MINUTES of them exist: the operator's page reads an hour in one round trip, whatever the
traffic. Latency is the time from submission to the program's end (queue wait plus run time,
`queued_ms + duration_ms`); percentiles are estimated within a bucket, linearly.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

SPAN_MINUTES = 60
KEY_TTL_S = (SPAN_MINUTES + 5) * 60
# Upper edges of the latency buckets, in ms; the last bucket is everything above.
BUCKETS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000,
)  # fmt: skip
PERCENTILES = (50, 95, 99)
STATUS_FIELD = "s:"
BUCKET_FIELD = "b:"


def bucket_of(latency_ms: float) -> int:
    """The index of the bucket `latency_ms` falls in (len(BUCKETS_MS) for the overflow)."""
    return bisect.bisect_left(BUCKETS_MS, latency_ms)


def fields_for(status: str, latency_ms: float | None) -> list[str]:
    """The hash fields one finished execution increments."""
    out = [STATUS_FIELD + status]
    if latency_ms is not None:
        out.append(f"{BUCKET_FIELD}{bucket_of(latency_ms)}")
    return out


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0-100) of a bucket histogram, None when it is empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q / 100 * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = BUCKETS_MS[i - 1] if i > 0 else 0.0
            high = BUCKETS_MS[i] if i < len(BUCKETS_MS) else BUCKETS_MS[-1] * 2
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(BUCKETS_MS[-1]) * 2


@dataclass(frozen=True)
class Minute:
    """One minute of the timeline: `start` (epoch seconds), counts by status, histogram."""

    start: int
    statuses: dict[str, int] = field(default_factory=dict)
    histogram: tuple[int, ...] = (0,) * (len(BUCKETS_MS) + 1)

    @classmethod
    def from_hash(cls, start: int, row: Mapping[str, str]) -> Minute:
        statuses: dict[str, int] = {}
        histogram = [0] * (len(BUCKETS_MS) + 1)
        for name, value in row.items():
            if name.startswith(STATUS_FIELD):
                statuses[name[len(STATUS_FIELD) :]] = int(value)
            elif name.startswith(BUCKET_FIELD):
                index = int(name[len(BUCKET_FIELD) :])
                if 0 <= index < len(histogram):
                    histogram[index] = int(value)
        return cls(start, statuses, tuple(histogram))

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def percentiles(self) -> dict[int, float | None]:
        return {q: percentile(self.histogram, q) for q in PERCENTILES}


def minute_of(epoch_s: float) -> int:
    """The minute (since the epoch) that `epoch_s` falls in."""
    return int(epoch_s // 60)


def span(now_s: float) -> list[int]:
    """The minutes of the last hour up to `now_s`, oldest first."""
    last = minute_of(now_s)
    return list(range(last - SPAN_MINUTES + 1, last + 1))


def overall(minutes: Sequence[Minute]) -> dict[int, float | None]:
    """Percentiles over the whole span."""
    merged = [sum(m.histogram[i] for m in minutes) for i in range(len(BUCKETS_MS) + 1)]
    return {q: percentile(merged, q) for q in PERCENTILES}
