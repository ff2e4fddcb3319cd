"""How the API is served: gunicorn's gthread workers, for `gunicorn api:app` and `python api.py`.

A POST /execute mostly waits (on Redis, for its result), so a few processes with many threads
each carry the load. gunicorn.conf.py reads `options()`; `serve()` runs the same server
in-process for `python api.py`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from executor.config import Settings
from executor.languages import MAX_COMPILE_TIMEOUT_S


def options(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn's settings for `settings` (GUNICORN_WORKERS / GUNICORN_THREADS override)."""
    env = os.environ if environ is None else environ
    # A request may wait up to the longest build and timeout plus the queueing grace.
    longest = int(settings.max_timeout + MAX_COMPILE_TIMEOUT_S + settings.queue_grace_s) + 30
    return {
        "bind": [f"0.0.0.0:{settings.port}"],
        "worker_class": "gthread",
        "workers": int(env.get("GUNICORN_WORKERS") or 2),
        "threads": int(env.get("GUNICORN_THREADS") or 64),
        "timeout": longest,
        "graceful_timeout": longest,
        "keepalive": 75,
        "backlog": 2048,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        # Method, path, status, size, time: never a body.
        "access_log_format": '%(h)s "%(r)s" %(s)s %(B)s %(M)sms',
        "proc_name": "executor-api",
    }


def serve(app: Flask, settings: Settings | None = None) -> None:
    """Run `app` under gunicorn in this process (blocks until gunicorn stops)."""
    from gunicorn.app.base import BaseApplication  # only when serving

    config = options(settings or Settings.from_env())

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    Server().run()
