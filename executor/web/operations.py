"""GET /languages, /health, /status (flower-style) and /metrics (Prometheus)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from executor import __version__, metrics
from executor.errors import ExecutorError
from executor.languages import languages
from executor.web.context import Context, context
from executor.web.schemas import HealthSchema, LanguageSchema, StatusSchema


def blueprint() -> Blueprint:
    blp = Blueprint(
        "operations", __name__, description="Languages, health and state.", url_prefix="/"
    )
    # Read at each scrape, in the scraping request's app: the series are the whole service's.
    series = metrics.registry(lambda: snapshot(context()), lambda: dependencies_up(context()))

    @blp.route("/languages")
    class Languages(MethodView):
        @blp.doc(summary="The languages the service runs")
        @blp.response(200, LanguageSchema(many=True), description="Name, version, image.")
        def get(self) -> Any:
            return list(languages(context().settings).values())

    @blp.route("/health")
    class Health(MethodView):
        @blp.doc(
            summary="Docker, Redis and live workers (cheap: cached for a second)",
            security=[],  # open to probes, with API keys too
        )
        @blp.response(200, HealthSchema, description="Every check is ok.")
        @blp.alt_response(503, schema=HealthSchema, description="A check failed; see its message.")
        def get(self) -> Any:
            ok, body = context().health.report()
            return (body, 200) if ok else (body, 503, {"Retry-After": "5"})

    @blp.route("/status")
    class Status(MethodView):
        @blp.doc(summary="Workers, queue, pool, counters and recent executions (never their code)")
        @blp.response(200, StatusSchema, description="The service's state.")
        def get(self) -> Any:
            return status(context())

    @blp.route("/metrics")
    class Metrics(MethodView):
        @blp.doc(
            summary="Prometheus metrics",
            responses={"200": {"description": "Prometheus text.", "content": {"text/plain": {}}}},
        )
        def get(self) -> Response:
            return Response(metrics.render(series), content_type=metrics.CONTENT_TYPE)

    return blp


def snapshot(ctx: Context) -> dict[str, Any]:
    """The shared state, after finishing any execution whose worker was lost."""
    with contextlib.suppress(ExecutorError):  # the snapshot below reports Redis being down
        ctx.store.sweep_lost()
    return ctx.store.snapshot()


def dependencies_up(ctx: Context) -> dict[str, bool]:
    """Whether Docker and Redis answer, from the health checks (cached for a second)."""
    _, body = ctx.health.report()
    checks = body["checks"]
    return {name: checks[name]["status"] == "ok" for name in ("docker", "redis")}


def status(ctx: Context) -> dict[str, Any]:
    snap = snapshot(ctx)
    workers = snap["workers"]
    return {
        "instance": ctx.settings.instance,
        "version": __version__,
        "uptime_s": round(time.monotonic() - ctx.started, 3),
        "workers": [
            {
                "name": w.get("name"),
                "instance": w.get("instance"),
                "active": w.get("active", 0),
                "processed": w.get("processed", 0),
                "concurrency": w.get("concurrency"),
                "pool": w.get("pool", {}),
                "pid": w.get("pid"),
                "started_at": w.get("started_at"),
            }
            for w in workers
        ],
        "queue": {"depth": snap["queue"]},
        "pool": metrics.pool_totals(workers),
        "counters": metrics.counters(snap["counters"]),
        "recent": snap["recent"],
    }
