"""The operator's page's two charts, drawn on the server as inline SVG (no script, no asset).

`executions_chart(minutes)`: a bar per minute, stacked by status. `latency_chart(minutes)`: a
line per percentile (timeline.PERCENTILES) of each minute's latency. Every bar and point has a
<title> (the browser's tooltip) with its exact numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from executor.models import FINISHED
from executor.timeline import PERCENTILES, Minute

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 48, 20, 8
# One color per final status (and one for a status this page does not know yet).
COLORS = {
    "success": "#2e7d32",
    "error": "#ef6c00",
    "timeout": "#f9a825",
    "memory_limit": "#6a1b9a",
    "compile_error": "#0277bd",
    "internal_error": "#c62828",
}
OTHER = "#757575"
LINE_COLORS = {50: "#1565c0", 95: "#ef6c00", 99: "#c62828"}


def color(status: str) -> str:
    return COLORS.get(status, OTHER)


def statuses_in(minutes: Sequence[Minute]) -> list[str]:
    """The statuses seen, in the contract's order, then any other."""
    seen = {s for m in minutes for s in m.statuses}
    return [s for s in FINISHED if s in seen] + sorted(seen - set(FINISHED))


def _clock(epoch_s: int) -> str:
    return time.strftime("%H:%M", time.gmtime(epoch_s))


def _frame(title: str, top_label: str, minutes: Sequence[Minute], body: list[str]) -> Markup:
    plot_h = HEIGHT - BOTTOM - TOP
    axis = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#999"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end">{escape(top_label)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    if minutes:
        step = (WIDTH - LEFT) / len(minutes)
        for i in range(0, len(minutes), 10):
            x = LEFT + i * step
            axis.append(f'<text x="{x:.1f}" y="{HEIGHT - 4}">{_clock(minutes[i].start)}</text>')
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" font-size="11" font-family="sans-serif">'
        f"<title>{escape(title)}</title>{''.join(axis)}{''.join(body)}</svg>"
    )
    return Markup(svg)  # noqa: S704 - built from numbers and escaped text only


def executions_chart(minutes: Sequence[Minute]) -> Markup:
    """Executions finished per minute, stacked by status."""
    plot_h = HEIGHT - BOTTOM - TOP
    peak = max((m.total for m in minutes), default=0) or 1
    step = (WIDTH - LEFT) / max(len(minutes), 1)
    order = statuses_in(minutes)
    bars: list[str] = []
    for i, minute in enumerate(minutes):
        x, y = LEFT + i * step + 1, float(TOP + plot_h)
        for status in order:
            n = minute.statuses.get(status, 0)
            if not n:
                continue
            h = n / peak * plot_h
            y -= h
            tip = escape(f"{_clock(minute.start)} UTC: {n} {status}")
            bars.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{color(status)}"><title>{tip}</title></rect>'
            )
    return _frame("Executions per minute by status", f"{peak}/min", minutes, bars)


def latency_chart(minutes: Sequence[Minute]) -> Markup:
    """Latency percentiles of each minute, in ms (a minute without executions has no point)."""
    plot_h = HEIGHT - BOTTOM - TOP
    per_minute = [m.percentiles() for m in minutes]
    peak = max((v for p in per_minute for v in p.values() if v is not None), default=0.0) or 1.0
    step = (WIDTH - LEFT) / max(len(minutes), 1)
    body: list[str] = []
    for q in PERCENTILES:
        points = []
        for i, (minute, values) in enumerate(zip(minutes, per_minute, strict=True)):
            value = values[q]
            if value is None:
                continue
            x = LEFT + (i + 0.5) * step
            y = TOP + plot_h - value / peak * plot_h
            points.append((x, y))
            tip = escape(f"{_clock(minute.start)} UTC: p{q} {value:.0f} ms")
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{LINE_COLORS[q]}">'
                f"<title>{tip}</title></circle>"
            )
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{LINE_COLORS[q]}" '
                'stroke-width="1.5"/>'
            )
    return _frame("Latency percentiles per minute", f"{peak:.0f} ms", minutes, body)
