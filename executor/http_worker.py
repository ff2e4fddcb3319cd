"""The API's gunicorn worker: gevent, with every client connection bounded in time and number.

One process serves thousands of connections on one event loop: a request that waits (on
Redis, for its result) is a greenlet, not a thread. What a slow or hostile client may hold is
bounded here, per connection (settings in executor.config):

    head     EXECUTOR_HTTP_HEAD_TIMEOUT   from the connection (or, on a kept-alive one, from the
                                          first byte of the next request) until the head is in:
                                          408 and close after it
    body     EXECUTOR_HTTP_BODY_TIMEOUT   from the end of the head until the body is in: 408
                                          (through the app's error handler) and close after it
    write    EXECUTOR_HTTP_SEND_TIMEOUT   each write of a response must be taken by the client
                                          within it, else the connection is dropped
    idle     EXECUTOR_HTTP_IDLE_TIMEOUT   a kept-alive connection with no new request closes
    number   EXECUTOR_HTTP_MAX_CONNECTIONS  open connections per process; past it a connection
                                          is answered 503 with Retry-After and closed at once

A waiting request reads nothing from its client, so none of these deadlines limits a wait.
gunicorn's master imports this module before gevent patches its workers: nothing here may
import Redis, Celery or the app.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from gevent import GreenletExit
from gunicorn import http, util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, NoMoreData, ParseException
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from executor.config import Settings

_QUIET_ERRNOS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ETIMEDOUT)
REFUSAL_TIMEOUT_S = 1.0  # what a refused or timed-out client is given to take its answer


def _refusal(error: Exception) -> tuple[int, str, str] | None:
    """(status, reason, code) of a request gunicorn's parser refused, answered in the API's
    error shape (gunicorn's own answer is an HTML page); None for any other error."""
    if isinstance(error, LimitRequestLine):
        return 414, "URI Too Long", "uri_too_long"
    if isinstance(error, LimitRequestHeaders):
        return 431, "Request Header Fields Too Large", "headers_too_large"
    if isinstance(error, ParseException):
        return 400, "Bad Request", "bad_request"
    return None


class HeadTimeout(Exception):
    """The request head did not arrive whole in time."""


class IdleTimeout(Exception):
    """A kept-alive connection brought no new request in time."""


def _body_timeout(seconds: float) -> Exception:
    # werkzeug's 408, so the app's error handler answers it; imported late (in the worker).
    from werkzeug.exceptions import RequestTimeout

    return RequestTimeout(f"the request body did not arrive within {seconds:g} s")


def answer(sock: Any, status: int, reason: str, code: str, message: str, **headers: str) -> None:
    """Write a whole JSON error answer (the API's error shape) and close the sending side.

    Then read what the client still sends for a moment, so that closing does not reset the
    connection before the client read the answer. Never raises.
    """
    body = json.dumps({"code": code, "status": status, "message": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        "Connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.settimeout(REFUSAL_TIMEOUT_S)
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REFUSAL_TIMEOUT_S
        drained = 0
        while drained < 65536 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(8192)
            if not chunk:
                break
            drained += len(chunk)


class ClientSocket:
    """A client connection whose reads keep the current phase's deadline, writes theirs.

    Phases: "head" (a request head is expected), "body" (its body), "idle" (between requests
    on a kept-alive connection; the first byte that arrives starts the next head's deadline).
    Everything else is the socket's own.
    """

    def __init__(self, sock: Any, settings: Settings) -> None:
        self._sock = sock
        self._settings = settings
        self.head_timeout = settings.http_head_timeout
        self.timed_out = False  # a body was late: the answer is 408 and the connection closes
        self._phase = "head"
        self._deadline = time.monotonic() + settings.http_head_timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def expect_body(self) -> None:
        self._phase, self._deadline = "body", time.monotonic() + self._settings.http_body_timeout

    def expect_next_request(self) -> None:
        self._phase, self._deadline = "idle", time.monotonic() + self._settings.http_idle_timeout

    def recv(self, size: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._late()
        self._sock.settimeout(remaining)
        try:
            data: bytes = self._sock.recv(size)
        except TimeoutError:
            raise self._late() from None
        if data and self._phase == "idle":
            self._phase = "head"
            self._deadline = time.monotonic() + self._settings.http_head_timeout
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._settings.http_send_timeout)
        self._sock.sendall(data)  # a client that does not read: TimeoutError, and it is dropped

    def _late(self) -> Exception:
        if self._phase == "head":
            return HeadTimeout()
        if self._phase == "idle":
            return IdleTimeout()
        self.timed_out = True
        return _body_timeout(self._settings.http_body_timeout)


class GeventWorker(_GunicornGeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, serving HTTP/1.1 with the bounds of the module docstring."""

    wsgi: Callable[..., Iterable[bytes]]
    settings: Settings
    open_connections: int

    def init_process(self) -> None:
        self.settings = Settings.from_env()
        self.open_connections = 0
        super().init_process()  # patches, then loads the app and runs

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            respiter: Iterable[bytes] = app(environ, start_response)
            conn = environ.get("gunicorn.socket")
            if isinstance(conn, ClientSocket) and conn.timed_out:
                # The app answered a late body (408): say the connection closes, then close it.
                start_response.__self__.force_close()  # type: ignore[attr-defined]
            return respiter

        self.wsgi = guarded

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if self.open_connections >= self.settings.http_max_connections:
            self.log.debug("refusing a connection: %d are open", self.open_connections)
            limit = self.settings.http_max_connections
            message = f"this API process holds its limit of {limit} open connections; retry later"
            answer(client, 503, "Service Unavailable", "too_many_connections", message,
                   Retry_After="1")  # fmt: skip
            util.close(client)
            return
        self.open_connections += 1
        try:
            client.setblocking(1)
            self._serve(listener, client, addr)
        finally:
            self.open_connections -= 1
            util.close(client)

    def _serve(self, listener: Any, client: Any, addr: Any) -> None:
        conn = ClientSocket(client, self.settings)
        parser = http.get_parser(self.cfg, conn, addr)
        listener_name = listener.getsockname()
        req = None
        try:
            while self.alive:
                req = None
                req = next(parser)
                conn.expect_body()
                # (gunicorn's gevent handle_request drops whether the request was handled.)
                if not AsyncWorker.handle_request(self, listener_name, req, conn, addr):
                    return  # the app took the socket over
                if conn.timed_out:
                    return
                # Whatever of the body the app left unread must still arrive in time.
                if not parser.finish_body():
                    return
                conn.expect_next_request()
        except HeadTimeout:
            message = f"the request head did not arrive within {conn.head_timeout:g} s"
            answer(client, 408, "Request Timeout", "request_timeout", message)
        except (StopIteration, IdleTimeout, NoMoreData, GreenletExit, SystemExit):
            return
        except OSError as e:
            if e.errno not in _QUIET_ERRNOS and not isinstance(e, TimeoutError):
                self.log.exception("Socket error processing request.")
        except Exception as e:  # noqa: BLE001 - gunicorn answers a bad request 400, others 500
            if getattr(e, "code", None) == 408:  # a late body the app never read
                return
            refusal = _refusal(e)
            if refusal is None:
                self.handle_error(req, client, addr, e)
                return
            status, reason, code = refusal
            self.log.warning("invalid request from %s: %s", addr[0] if addr else "?", e)
            answer(client, status, reason, code, f"{reason.lower()}: {str(e)[:200]}")
