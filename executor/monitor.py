"""A worker's own monitoring endpoint: probe a worker without the API.

Each worker process serves, on `EXECUTOR_MONITOR_PORT` (default 8084; 0 turns it off):

    GET /healthz   200 while the worker process and its Celery consumer are alive (liveness)
    GET /readyz    200 when it reaches Redis and Docker and its warm pool is filling or warm;
                   503 naming what is not (readiness)
    GET /metrics   this worker's Prometheus series (executor.metrics names them)

A small threaded HTTP server in the worker process (standard library), started once the
worker is ready and stopped with it. Answers are JSON but /metrics. Nothing here runs code
or shows any execution's data.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from executor import metrics
from executor.errors import ExecutorError

log = logging.getLogger(__name__)

Check = Callable[[], None]  # raises ExecutorError naming the fault


class WorkerProbe:
    """What the endpoint asks of a worker (executor.runtime.WorkerRuntime provides it)."""

    def __init__(
        self,
        alive: Callable[[], bool],
        redis: Check,
        docker: Check,
        info: Callable[[], dict[str, Any]],
    ) -> None:
        self.alive = alive
        self.redis = redis
        self.docker = docker
        self.info = info

    def readiness(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        ready = True
        for name, check in (("redis", self.redis), ("docker", self.docker)):
            try:
                check()
                checks[name] = "ok"
            except ExecutorError as e:
                checks[name], ready = e.message, False
        pool = self.info().get("pool") or {}
        target, warm, starting = pool.get("target", 0), pool.get("warm", 0), pool.get("starting", 0)
        if target and not (warm or starting):
            checks["pool"], ready = f"no warm container of {target} and none starting", False
        else:
            checks["pool"] = f"{warm} of {target} warm" if target else "off"
        return ready, checks


class MonitorServer:
    """The endpoint of one worker process; `start()` listens in a thread, `stop()` ends it."""

    def __init__(self, port: int, probe: WorkerProbe, host: str = "0.0.0.0") -> None:  # noqa: S104
        self.port = port
        self.probe = probe
        self.host = host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.port == 0 or self._server is not None:
            return
        probe = self.probe

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    alive = probe.alive()
                    self._json(200 if alive else 503, {"status": "ok" if alive else "dead"})
                elif path == "/readyz":
                    ready, checks = probe.readiness()
                    status = "ok" if ready else "unavailable"
                    self._json(200 if ready else 503, {"status": status, "checks": checks})
                elif path == "/metrics":
                    body = metrics.worker_metrics(probe.info())
                    self._send(200, metrics.CONTENT_TYPE, body)
                else:
                    self._json(404, {"code": "not_found", "status": 404, "message": "no such path"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, "application/json", json.dumps(body).encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the worker's log

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as e:
            log.error("worker monitoring endpoint cannot listen on port %d: %s", self.port, e)
            return
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="monitor", daemon=True
        )
        self._thread.start()
        log.info("worker monitoring endpoint on port %d", self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
