"""Client connections: read a request, decide, forward it, relay the answer; splice attaches.

Each client connection gets at most one engine connection: on its first allowed request it takes
the spare one opened ahead (or opens one), and reuses it for the requests that follow on the same
kept-alive connection. Every request is
decided on its own, and only a head of the proxy's own making goes to the engine: the method,
the checked target, Host, User-Agent and the few headers an allowed endpoint needs. Answers go
back as they arrive, never held whole, except the small answer to a create, read first so the
new id is known before the client can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from dataclasses import replace

from executor.config import Settings
from executor.policy import Rules, check_create
from executor.proxy import strictjson
from executor.proxy.audit import AuditLog
from executor.proxy.http import (
    CHUNK,
    RESPONSE_HEAD_MAX,
    BrokenResponse,
    Framing,
    HTTPError,
    Request,
    error_response,
    parse_request,
    parse_response,
    read_body,
    read_head,
    relay,
)
from executor.proxy.ownership import Ownership, Verdict
from executor.proxy.rules import Decision, Router
from executor.proxy.upstream import Connection, Spare, Upstream, UpstreamUnreachable

log = logging.getLogger("executor.proxy")

CLIENT_LIMIT = 64 * 1024  # stream buffer of a client connection (bounds a request head too)
CREATE_BODY_MAX = 64 * 1024
CREATE_RESPONSE_MAX = 64 * 1024
BODY_TIMEOUT = 30.0  # seconds for a create body to arrive once its head has
SPLICE_GRACE = 60.0  # seconds the client may keep sending after the engine ended its side
VIOLATIONS_SHOWN = 8


class Proxy:
    """The proxy's shared state: engine address, policy, router, ownership and audit log."""

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.upstream = Upstream.parse(settings.proxy_upstream)
        self.spare = Spare(self.upstream)
        self.policy = Rules.from_settings(settings)
        self.router = Router(self.policy)
        self.ownership = Ownership(self._lookup)
        self.audit = audit
        self.api_version = settings.docker_api_version
        # asyncio holds a stream's reader only weakly: once a client half-closes, nothing but
        # this set keeps its connection (and a splice waiting on the engine) from the collector.
        self._connections: set[asyncio.Task[None]] = set()

    async def _lookup(self, container: str) -> tuple[int, object]:
        return await self.upstream.get_json(f"/v{self.api_version}/containers/{container}/json")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it closes or a request ends it."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await _Connection(self, reader, writer).run()
        finally:
            self._connections.discard(task)


class _Connection:
    def __init__(
        self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.up: Connection | None = None
        peer = writer.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            _keepalive(sock)

    async def run(self) -> None:
        try:
            while await self._serve_one():
                pass
        except (ConnectionError, OSError, BrokenResponse, asyncio.IncompleteReadError):
            pass  # either side went away mid-answer: nothing left to tell anyone
        except Exception:
            log.exception("proxy connection from %s failed", self.client)
        finally:
            self._drop_upstream()
            self.writer.close()

    # -- one request -----------------------------------------------------------------------

    async def _serve_one(self) -> bool:
        """Serve one request; whether the connection stays open for another."""
        try:
            head = await read_head(self.reader)
        except HTTPError as e:
            return await self._malformed(e, b"")
        if not head:
            return False
        started = time.perf_counter()
        try:
            request = parse_request(head)
        except HTTPError as e:
            return await self._malformed(e, head)

        decision = self.proxy.router.decide(request.method, request.path, request.query)
        if not decision.allowed:
            return await self._refuse(request, decision)
        assert decision.route is not None
        body = b""
        if decision.route.body:
            checked = await self._read_create_body(request, decision)
            if isinstance(checked, bool):
                return checked
            body = checked
        elif request.content_length:
            why = "this endpoint takes no request body"
            return await self._refuse(request, replace(decision, reason=why))
        if decision.container is not None:
            try:
                verdict = await self.proxy.ownership.check(decision.container)
            except UpstreamUnreachable as e:
                return await self._unreachable(request, decision, str(e), started)
            if verdict is Verdict.NOT_OURS:
                why = f"container {decision.container} is not an executor sandbox"
                return await self._refuse(request, replace(decision, reason=f"ownership: {why}"))
            if verdict is Verdict.MISSING:
                return await self._missing(request, decision)
        return await self._forward(request, decision, body, started)

    async def _read_create_body(self, request: Request, decision: Decision) -> bytes | bool:
        """The create body once strict JSON and a proper sandbox; else the refusal's outcome."""
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            why = "body: Content-Type must be application/json"
            return await self._refuse(request, replace(decision, reason=why))
        if "content-length" not in request.headers:
            why = "body: a Content-Length is required"
            return await self._refuse(request, replace(decision, reason=why), status=411)
        if request.content_length > CREATE_BODY_MAX:
            why = f"body: larger than {CREATE_BODY_MAX} bytes"
            return await self._refuse(request, replace(decision, reason=why), status=413)
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                body = await self.reader.readexactly(request.content_length)
        except (TimeoutError, asyncio.IncompleteReadError):
            return False  # the client stalled or left inside its body: nothing to answer
        try:
            value = strictjson.loads(body, max_bytes=CREATE_BODY_MAX)
        except strictjson.StrictJSONError as e:
            return await self._refuse(request, replace(decision, reason=f"body: {e}"), read=True)
        problems = check_create(value, self.proxy.policy)
        if problems:
            shown = "; ".join(problems[:VIOLATIONS_SHOWN])
            if len(problems) > VIOLATIONS_SHOWN:
                shown += f"; and {len(problems) - VIOLATIONS_SHOWN} more"
            why = f"policy: {shown}"
            return await self._refuse(request, replace(decision, reason=why), read=True)
        return body

    # -- forwarding ------------------------------------------------------------------------

    def _upstream_head(self, request: Request, decision: Decision, body: bytes) -> bytes:
        assert decision.route is not None
        lines = [
            f"{request.method} {request.target} HTTP/1.1",
            f"Host: {self.proxy.upstream.host_header}",
        ]
        if agent := request.headers.get("user-agent"):
            lines.append(f"User-Agent: {agent}")
        if decision.route.body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        elif request.method == "POST":
            lines.append("Content-Length: 0")
        if decision.route.upgrade and request.upgrade:
            lines += ["Connection: Upgrade", "Upgrade: tcp"]
        if decision.rule == "image-pull" and (auth := request.headers.get("x-registry-auth")):
            lines.append(f"X-Registry-Auth: {auth}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    async def _connect(self) -> tuple[Connection, bool]:
        """This client's engine connection, and whether it was opened before this request."""
        if self.up is not None and (self.up[0].at_eof() or self.up[1].is_closing()):
            self._drop_upstream()  # the engine closed it while idle: open a fresh one
        if self.up is not None:
            return self.up, True
        self.up, ahead = await self.proxy.spare.take()
        return self.up, ahead

    async def _fresh(self) -> tuple[Connection, bool]:
        self.up = await self.proxy.upstream.connect()
        return self.up, False

    def _drop_upstream(self) -> None:
        if self.up is not None:
            self.up[1].close()
            self.up = None

    async def _forward(
        self, request: Request, decision: Decision, body: bytes, started: float
    ) -> bool:
        assert decision.route is not None
        head = self._upstream_head(request, decision, body) + body
        for attempt in (1, 2):
            try:
                (up_reader, up_writer), reused = await (
                    self._connect() if attempt == 1 else self._fresh()
                )
            except UpstreamUnreachable as e:
                return await self._unreachable(request, decision, str(e), started)
            try:
                up_writer.write(head)
                raw = await up_reader.readuntil(b"\r\n\r\n")
                response = parse_response(raw, method=request.method)
                break
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                BrokenResponse,
            ) as e:
                self._drop_upstream()
                # A connection opened earlier may have been closed by the engine before it
                # read anything of ours: then, and only then, the request goes once more.
                unread = isinstance(e, ConnectionResetError | BrokenPipeError) or (
                    isinstance(e, asyncio.IncompleteReadError) and not e.partial
                )
                if reused and unread and attempt == 1:
                    continue
                if isinstance(e, asyncio.IncompleteReadError):
                    cause = "the connection closed before an answer"
                elif isinstance(e, asyncio.LimitOverrunError):
                    cause = f"an answer head larger than {RESPONSE_HEAD_MAX} bytes"
                else:
                    cause = str(e) or type(e).__name__
                return await self._unreachable(request, decision, cause, started)

        ms = (time.perf_counter() - started) * 1000  # to the engine's answer head

        if decision.route.upgrade and (
            response.framing is Framing.UPGRADE
            or (response.status == 200 and response.framing is Framing.CLOSE)
        ):
            self.writer.write(response.head)
            self._audit(request, decision, allowed=True, status=response.status, ms=ms)
            await self.writer.drain()
            up, self.up = self.up, None
            assert up is not None
            await _splice(self.reader, self.writer, *up)
            return False
        if response.framing is Framing.UPGRADE:
            self._drop_upstream()
            return await self._unreachable(request, decision, "unexpected upgrade", started)

        if decision.rule == "container-create" and response.status == 201:
            wire, payload = await read_body(up_reader, response, CREATE_RESPONSE_MAX)
            created = _created_id(payload)
            if created is not None:
                self.proxy.ownership.add(created)  # known before the client can use it
            self.writer.write(response.head + wire)
            self._audit(
                request, decision, allowed=True, status=response.status, ms=ms, container=created
            )
            await self.writer.drain()
        elif response.framing is Framing.NONE or (
            response.framing is Framing.LENGTH and response.length <= CHUNK
        ):
            # A small whole answer goes out first; its audit line is written right after.
            await relay(up_reader, self.writer, response)
            self._audit(request, decision, allowed=True, status=response.status, ms=ms)
        else:
            # A stream (wait, pull, a large answer): its line now, not when it ends.
            self._audit(request, decision, allowed=True, status=response.status, ms=ms)
            await relay(up_reader, self.writer, response)
        if response.close:
            self._drop_upstream()
        return not request.close and response.framing is not Framing.CLOSE

    # -- answers of the proxy's own ----------------------------------------------------------

    def _audit(
        self,
        request: Request,
        decision: Decision,
        *,
        allowed: bool,
        status: int,
        reason: str = "",
        ms: float | None = None,
        container: str | None = None,
    ) -> None:
        """One audit line for a decision about `request`."""
        self.proxy.audit.record(
            client=self.client,
            method=request.method,
            path=request.path,
            allowed=allowed,
            rule=decision.rule,
            status=status,
            container=container or decision.container,
            image=decision.image,
            reason=reason,
            ms=ms,
        )

    async def _refuse(
        self, request: Request, decision: Decision, *, status: int = 403, read: bool = False
    ) -> bool:
        """Answer a refusal; the connection stays open only when no unread body is left."""
        keep = not request.close and (read or request.content_length == 0)
        message = (
            f"executor-proxy refused {request.method} {request.path}: "
            f"{decision.rule}: {decision.reason}"
        )
        self._audit(request, decision, allowed=False, status=status, reason=decision.reason)
        self.writer.write(error_response(status, message, close=not keep))
        await self.writer.drain()
        return keep

    async def _missing(self, request: Request, decision: Decision) -> bool:
        """An id that is nobody's because it does not exist: the engine's own 404."""
        reason = f"No such container: {decision.container}"
        self._audit(
            request, decision, allowed=False, status=404, reason="ownership: no such container"
        )
        self.writer.write(error_response(404, reason, close=request.close))
        await self.writer.drain()
        return not request.close

    async def _unreachable(
        self, request: Request, decision: Decision, cause: str, started: float
    ) -> bool:
        message = f"Docker engine unreachable at {self.proxy.upstream.url}: {cause}"
        ms = (time.perf_counter() - started) * 1000
        self._audit(request, decision, allowed=True, status=502, reason=message, ms=ms)
        self.writer.write(error_response(502, message, close=True))
        await self.writer.drain()
        return False

    async def _malformed(self, error: HTTPError, head: bytes) -> bool:
        method, _, rest = head.partition(b"\r\n")[0].decode("ascii", "replace").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0][:200]
        shown = f"{method[:16] or '-'} {path or '-'}"
        message = f"executor-proxy refused {shown}: http: {error.reason}"
        self.proxy.audit.record(
            client=self.client,
            method=method[:16],
            path=path,
            allowed=False,
            rule="http",
            status=error.status,
            reason=error.reason,
        )
        self.writer.write(error_response(error.status, message, close=True))
        await self.writer.drain()
        return False


def _keepalive(sock: socket.socket) -> None:
    """TCP keep-alive: a client that vanished without a word is found within ~2 minutes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _created_id(payload: bytes) -> str | None:
    """The new container's id from the engine's answer to a create."""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    created = value.get("Id") if isinstance(value, dict) else None
    return created if isinstance(created, str) else None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until `src` ends, then end `dst`'s write side (a half-close, passed on)."""
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()
    if not dst.is_closing() and dst.can_write_eof():
        dst.write_eof()


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Carry raw bytes both ways until both sides have ended theirs, or either breaks."""
    inbound = asyncio.ensure_future(_pipe(client_reader, up_writer))
    outbound = asyncio.ensure_future(_pipe(up_reader, client_writer))
    try:
        done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        first.result()  # a broken side ends the whole splice
        other = outbound if first is inbound else inbound
        # The client may still send after the engine ended its side, but not forever.
        timeout = SPLICE_GRACE if first is outbound else None
        await asyncio.wait_for(other, timeout)
    except (ConnectionError, OSError, TimeoutError):
        pass
    finally:
        for task in (inbound, outbound):
            task.cancel()
        for task in (inbound, outbound):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task
        up_writer.close()
