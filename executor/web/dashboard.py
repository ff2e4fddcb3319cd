"""The operator's page, GET / and GET /dashboard: one server-rendered HTML page.

What it shows comes from the same place as GET /status (workers, queue, warm pool per
language, recent executions with status and timings) plus the store's last hour
(executor.timeline): executions per minute by status and latency percentiles, as inline SVG.
No script, no framework, no asset from anywhere: it reads in any browser, refreshes itself
every REFRESH_S seconds, and never shows code, stdin or output (the recent list holds none).
It is an ordinary view: whatever guards /status (operator keys) can guard it too.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, render_template_string

from executor.timeline import PERCENTILES, overall
from executor.web import charts
from executor.web.context import context
from executor.web.operations import status

REFRESH_S = 10

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<title>Executor Service: {{ s.instance }}</title>
<style>
body { font: 14px/1.4 sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } th, td { padding: .2em .7em; border-bottom: 1px solid #ddd;
  text-align: left; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: .4em .9em; }
.card b { display: block; font-size: 1.4em; } .muted { color: #666; }
.key { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 .8em; }
</style></head>
<body>
<h1>Executor Service</h1>
<p class="muted">API <span id="instance">{{ s.instance }}</span>, version {{ s.version }},
up {{ "%.0f"|format(s.uptime_s) }} s. Generated {{ generated }} UTC; refreshes every
{{ refresh }} s.</p>

<div class="cards">
<div class="card">Workers<b id="workers-count">{{ s.workers|length }}</b></div>
<div class="card">Queued<b id="queue-depth">{{ s.queue.depth }}</b></div>
<div class="card">Warm pool<b><span id="pool-warm">{{ s.pool.warm }}</span> /
<span id="pool-target">{{ s.pool.target }}</span></b></div>
<div class="card">Last hour<b id="hour-total">{{ hour_total }}</b></div>
{% for q in percentiles %}<div class="card">p{{ q }} latency<b id="hour-p{{ q }}">
{{- ms(hour[q]) }}</b></div>{% endfor %}
</div>

<h2>Workers</h2>
{% if s.workers %}<table id="workers"><tr><th>Name</th><th class="n">Active</th>
<th class="n">Concurrency</th><th class="n">Processed</th><th class="n">Warm</th>
<th class="n">Target</th><th>Started</th></tr>
{% for w in s.workers %}<tr class="worker"><td class="name">{{ w.name }}</td>
<td class="n">{{ w.active }}</td><td class="n">{{ w.concurrency }}</td>
<td class="n">{{ w.processed }}</td><td class="n">{{ w.pool.warm }}</td>
<td class="n">{{ w.pool.target }}</td><td>{{ w.started_at }}</td></tr>
{% endfor %}</table>{% else %}<p id="workers">No worker is alive.</p>{% endif %}

<h2>Warm pool per language</h2>
<table id="pool"><tr><th>Language</th><th class="n">Warm</th><th class="n">Target</th></tr>
{% for name, p in s.pool.languages|dictsort %}<tr class="language"><td class="name">{{ name }}
</td><td class="n warm">{{ p.warm }}</td><td class="n target">{{ p.target }}</td></tr>
{% endfor %}</table>

<h2>Executions per minute, last hour</h2>
<figure>{{ executions_chart }}<figcaption>
{% for st in statuses %}<span class="key" style="background: {{ color(st) }}"></span>{{ st }}
{% else %}No execution finished in the last hour.{% endfor %}</figcaption></figure>

<h2>Latency percentiles per minute (queue wait + run time)</h2>
<figure>{{ latency_chart }}<figcaption>
{% for q in percentiles %}<span class="key" style="background: {{ line_colors[q] }}"></span>p{{ q }}
{% endfor %}</figcaption></figure>

<h2>Recent executions</h2>
<table id="recent"><tr><th>Id</th><th>Language</th><th>Status</th><th class="n">Run time</th>
<th>Submitted</th><th>Worker</th></tr>
{% for r in s.recent %}<tr class="execution"><td class="id">{{ r.id }}</td>
<td>{{ r.language }}</td><td class="status">{{ r.status }}</td>
<td class="n">{{ ms(r.duration_ms) }}</td><td>{{ r.created_at }}</td>
<td>{{ r.worker or "" }}</td></tr>
{% endfor %}</table>
</body></html>
"""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def page() -> str:
    """The page, rendered from /status's data and the store's last hour."""
    ctx = context()
    state = status(ctx)
    minutes = ctx.store.last_hour()
    values: dict[str, Any] = {
        "s": state,
        "refresh": REFRESH_S,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "hour": overall(minutes),
        "hour_total": sum(m.total for m in minutes),
        "percentiles": PERCENTILES,
        "statuses": charts.statuses_in(minutes),
        "executions_chart": charts.executions_chart(minutes),
        "latency_chart": charts.latency_chart(minutes),
        "color": charts.color,
        "line_colors": charts.LINE_COLORS,
        "ms": _ms,
    }
    return render_template_string(PAGE, **values)


def blueprint() -> Blueprint:
    blp = Blueprint("dashboard", __name__)
    blp.add_url_rule("/", "index", page)
    blp.add_url_rule("/dashboard", "dashboard", page)
    return blp
