"""How the API is served: gunicorn, for `gunicorn api:app` (gunicorn.conf.py) and `python api.py`.

The default worker is executor.http_worker.GeventWorker: one event loop per process, where a
waiting request (POST /execute on its result, soon a live-output stream) is a greenlet of a
few kilobytes instead of a thread, and where slow clients are bounded: heads, bodies and
writes have deadlines, idle connections close, and past a cap of open connections a process
answers 503 with Retry-After. `GUNICORN_WORKER_CLASS=gthread` serves with the former threads
(`GUNICORN_THREADS` each; none of those bounds), for comparison in the benchmark.

This module is imported by gunicorn's master (through gunicorn.conf.py), before gevent
patches the worker processes: it must not import Redis, Celery or the app, nor anything that
creates sockets, locks or threads at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from executor.config import Settings
from executor.languages import MAX_COMPILE_TIMEOUT_S

WORKER_CLASSES = {
    "gevent": "executor.http_worker.GeventWorker",
    "gthread": "gthread",
}


def options(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn's settings for `settings` (GUNICORN_WORKERS / _THREADS / _WORKER_CLASS override)."""
    env = os.environ if environ is None else environ
    kind = env.get("GUNICORN_WORKER_CLASS") or "gevent"
    if kind not in WORKER_CLASSES:
        raise ValueError(f"GUNICORN_WORKER_CLASS must be one of {sorted(WORKER_CLASSES)}")
    # A request may wait up to the longest build and timeout plus the queueing grace.
    longest = int(settings.max_timeout + MAX_COMPILE_TIMEOUT_S + settings.queue_grace_s) + 30
    return {
        "bind": [f"0.0.0.0:{settings.port}"],
        "worker_class": WORKER_CLASSES[kind],
        "workers": int(env.get("GUNICORN_WORKERS") or 2),
        "threads": int(env.get("GUNICORN_THREADS") or 64),  # gthread only
        # gevent: greenlets per process; past http_max_connections they only answer 503.
        "worker_connections": 2 * settings.http_max_connections,
        "timeout": longest,
        "graceful_timeout": longest,
        "keepalive": int(settings.http_idle_timeout) or 1,
        "backlog": 2048,
        "accesslog": "-",
        "logger_class": "executor.gunicorn_logging.GunicornLogger",  # EXECUTOR_LOG_FORMAT
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        # Method, path, status, size, time: never a body.
        "access_log_format": '%(h)s "%(r)s" %(s)s %(B)s %(M)sms',
        "proc_name": "executor-api",
    }


def serve(module: str = "api", settings: Settings | None = None) -> None:
    """Run gunicorn in this process with `module`:app (blocks until gunicorn stops).

    The app is imported by each worker process after it started (and, for gevent, patched),
    exactly as `gunicorn api:app` does; so the caller must not have imported it.
    """
    import importlib

    from gunicorn.app.base import BaseApplication  # only when serving

    config = options(settings or Settings.from_env())

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return importlib.import_module(module).app

    Server().run()
