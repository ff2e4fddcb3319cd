"""Client connections: authenticate, decide, forward, relay the answer; splice attaches.

Every request is decided on its own, in this order:

1. http: the head is read strictly (http.py); one that is malformed, oversize or not whole
   within PROXY_HEAD_TIMEOUT seconds of its first byte is answered 4xx (408 for the timer)
   and the connection closed. Nothing of such a request is forwarded.
2. auth: the request must carry `Authorization: Executor <identity> <mac>` proving the shared
   secret (executor.proxyauth), on every path, pings included. Without a valid one the answer
   is 401 (saying whether the credential was missing, malformed or wrong), the connection is
   closed and nothing else about the request is looked at. The credential is never forwarded
   and never written to the audit log, whose lines name the authenticated identity instead.
3. the route, its query and, for a create, the body (rules.py, executor.policy.check_create:
   among much else the worker label must be the client's own identity).
4. ownership: a container named in the path must be one of ours (ownership.py).
5. creator: only the identity whose create the proxy saw return a container may start it or
   attach to it, and it may attach only once (a second attach, its own too, is 403). A
   container the proxy did not see created can never be started or attached. Wait, kill,
   inspect, stats and remove stay open to every authenticated worker (reapers remove the
   containers of workers that died).
6. uid: a create whose uid a living sandbox of ours already runs as, or another create in
   flight asks for, is refused with 409 naming the uid; the worker then draws another.

A connection idle for PROXY_IDLE_TIMEOUT seconds between requests is closed, and past
PROXY_MAX_CONNECTIONS client connections a new one is answered 503 and closed. A spliced
attach has no idle limit: a program may run silently for its whole timeout.

Each client connection gets at most one engine connection: on its first allowed request it takes
the spare one opened ahead (or opens one), and reuses it for the requests that follow on the same
kept-alive connection. Only a head of the proxy's own making goes to the engine: the method,
the checked target, Host, User-Agent and the few headers an allowed endpoint needs. Answers go
back as they arrive, never held whole, except the small answer to a create, read first so the
new id (and its creator) is known before the client can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from executor.config import Settings
from executor.policy import SANDBOX_LABEL_FILTER, WORKER_ID, Rules, check_create, sandbox_uid
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
from executor.proxyauth import SCHEME, ensure_secret, verify

log = logging.getLogger("executor.proxy")

CLIENT_LIMIT = 64 * 1024  # stream buffer of a client connection (bounds a request head too)
CREATE_BODY_MAX = 64 * 1024
CREATE_RESPONSE_MAX = 64 * 1024
BODY_TIMEOUT = 30.0  # seconds for a create body to arrive once its head has
SPLICE_GRACE = 60.0  # seconds the client may keep sending after the engine ended its side
VIOLATIONS_SHOWN = 8
SEED_RETRY = 5.0  # seconds between attempts to read the engine's containers at start
LINGER = 1.0  # seconds a turned-away connection may still send before it is closed
LINGER_BYTES = 64 * 1024
TURNED_AWAY_EVERY = 1.0  # seconds between audit lines about turned-away connections
CREATOR_RULES = frozenset({"container-start", "container-attach"})
_MAC = re.compile(r"[0-9a-f]{64}")


class Proxy:
    """The proxy's shared state: engine address, policy, router, ownership and audit log."""

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.upstream = Upstream.parse(settings.proxy_upstream)
        self.spare = Spare(self.upstream)
        self.policy = Rules.from_settings(settings)
        self.secret = ensure_secret(settings)
        self.router = Router(self.policy)
        self.ownership = Ownership(self._lookup, self._list_ours)
        self.audit = audit
        self.api_version = settings.docker_api_version
        self.head_timeout = settings.proxy_head_timeout
        self.idle_timeout = settings.proxy_idle_timeout
        self.max_connections = settings.proxy_max_connections
        self.creating: set[int] = set()  # the uids of creates sent to the engine, not answered
        # asyncio holds a stream's reader only weakly: once a client half-closes, nothing but
        # this set keeps its connection (and a splice waiting on the engine) from the collector.
        self._connections: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._syncing: asyncio.Task[None] | None = None
        self._lingering = 0
        self._turned_away = 0  # since the last audit line about it
        self._turned_away_logged = -math.inf

    async def _lookup(self, container: str) -> tuple[int, object]:
        return await self.upstream.get_json(f"/v{self.api_version}/containers/{container}/json")

    async def _list_ours(self) -> tuple[int, object]:
        filters = quote(json.dumps({"label": [SANDBOX_LABEL_FILTER]}, separators=(",", ":")))
        return await self.upstream.get_json(
            f"/v{self.api_version}/containers/json?all=1&filters={filters}"
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def start(self) -> None:
        """Read the engine's list of our containers in the background (call in the loop).

        An engine that is down at start is asked again every SEED_RETRY seconds; a create
        that comes first reads the list itself (or answers 502).
        """
        self._spawn(self._seed())

    async def _seed(self) -> None:
        while not self.ownership.synced:
            try:
                await self.ownership.sync(first=True)
            except Exception as e:  # noqa: BLE001 - the engine may be down or odd: ask again
                log.warning(
                    "cannot read the engine's sandboxes yet (%s); trying again in %gs",
                    e,
                    SEED_RETRY,
                )
                await asyncio.sleep(SEED_RETRY)
        log.info("the engine holds %d sandboxes of ours", len(self.ownership))

    def sync_later(self) -> None:
        """Prune the map against the engine's list, in the background, one pass at a time."""
        if self._syncing is None or self._syncing.done():
            self._syncing = self._spawn(self._sync_quietly())

    async def _sync_quietly(self) -> None:
        try:
            await self.ownership.sync()
        except Exception as e:  # noqa: BLE001 - the next create that grows the map tries again
            log.warning("cannot prune the sandbox map: %s", e)

    async def uid_holder(self, uid: int) -> str | None:
        """A container of ours not yet removed that runs as `uid`, or None.

        The map names the candidates; each is checked with the engine, since a container that
        removed itself (AutoRemove) is still in the map. Raises UpstreamUnreachable.
        """
        for container in self.ownership.holders(uid):
            status, _ = await self._lookup(container)
            if status == 404:
                self.ownership.forget(container)
                continue
            return container  # anything but "no such container" counts as held
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it closes or a request ends it."""
        if len(self._connections) >= self.max_connections:
            await self._turn_away(reader, writer)
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass  # the proxy is stopping (asyncio would log a cancelled handler as an error)
        finally:
            self._connections.discard(task)

    async def _turn_away(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503 to a connection past the limit; then a moment to read it, so the client is not
        sent a reset (which could destroy the answer) for a request already on its way."""
        message = (
            f"executor-proxy refused the connection: connections: {self.max_connections} "
            "client connections are open already (PROXY_MAX_CONNECTIONS)"
        )
        self._turned_away += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= TURNED_AWAY_EVERY:
            peer = writer.get_extra_info("peername")
            self.audit.record(
                client=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix",
                method="",
                path="",
                allowed=False,
                rule="connections",
                status=503,
                reason=f"{self.max_connections} client connections open already; "
                f"{self._turned_away} connection(s) turned away since the last such line",
            )
            self._turned_away, self._turned_away_logged = 0, now
        linger = self._lingering < self.max_connections
        self._lingering += linger
        try:
            writer.write(error_response(503, message, close=True))
            if linger:
                with contextlib.suppress(OSError, TimeoutError):
                    await writer.drain()
                    if writer.can_write_eof():
                        writer.write_eof()
                    async with asyncio.timeout(LINGER):
                        left = LINGER_BYTES
                        while left > 0 and (data := await reader.read(min(left, CHUNK))):
                            left -= len(data)
        finally:
            self._lingering -= linger
            writer.close()


class _Connection:
    def __init__(
        self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.up: Connection | None = None
        self.identity = ""  # the authenticated worker of the request being served
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
        self.identity = ""
        try:
            head = await read_head(
                self.reader,
                idle_timeout=self.proxy.idle_timeout,
                head_timeout=self.proxy.head_timeout,
            )
        except HTTPError as e:
            return await self._malformed(e, e.line)
        if not head:
            return False
        started = time.perf_counter()
        try:
            request = parse_request(head)
        except HTTPError as e:
            return await self._malformed(e, head)

        identity, why = authenticate(self.proxy.secret, request.headers.get("authorization"))
        if identity is None:
            return await self._refuse(
                request,
                Decision("auth", why),
                status=401,
                close=True,
                headers=(f"WWW-Authenticate: {SCHEME}",),
            )
        self.identity = identity
        decision = self.proxy.router.decide(request.method, request.path, request.query)
        if not decision.allowed:
            return await self._refuse(request, decision)
        assert decision.route is not None
        body = b""
        uid: int | None = None
        if decision.route.body:
            checked = await self._read_create_body(request, decision)
            if isinstance(checked, bool):
                return checked
            body, uid = checked
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
            if decision.rule in CREATOR_RULES:
                attach = decision.rule == "container-attach"
                why = self.proxy.ownership.claim(decision.container, identity, attach=attach)
                if why:
                    return await self._refuse(request, replace(decision, reason=f"creator: {why}"))
        if uid is not None:
            return await self._create(request, decision, body, uid, started)
        return await self._forward(request, decision, body, started)

    async def _create(
        self, request: Request, decision: Decision, body: bytes, uid: int, started: float
    ) -> bool:
        """Forward a checked create unless a living sandbox (or a create in flight) has its uid."""
        proxy = self.proxy
        try:
            await proxy.ownership.ready()
        except UpstreamUnreachable as e:
            cause = f"cannot list its sandboxes: {e}"
            return await self._unreachable(request, decision, cause, started)
        if uid in proxy.creating:
            why = f"uid: uid {uid} is being given to a sandbox by another create; draw another"
            return await self._refuse(request, replace(decision, reason=why), status=409, read=True)
        proxy.creating.add(uid)
        try:
            try:
                holder = await proxy.uid_holder(uid)
            except UpstreamUnreachable as e:
                return await self._unreachable(request, decision, str(e), started)
            if holder is not None:
                why = (
                    f"uid: uid {uid} is held by a living sandbox (container {holder[:12]}); "
                    "draw another"
                )
                refusal = replace(decision, reason=why)
                return await self._refuse(request, refusal, status=409, read=True)
            return await self._forward(request, decision, body, started, uid=uid)
        finally:
            proxy.creating.discard(uid)

    async def _read_create_body(
        self, request: Request, decision: Decision
    ) -> tuple[bytes, int] | bool:
        """The create body and its uid once strict JSON and a proper sandbox of this client;
        else the refusal's outcome."""
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
        problems = check_create(value, self.proxy.policy, self.identity)
        if problems:
            shown = "; ".join(problems[:VIOLATIONS_SHOWN])
            if len(problems) > VIOLATIONS_SHOWN:
                shown += f"; and {len(problems) - VIOLATIONS_SHOWN} more"
            why = f"policy: {shown}"
            return await self._refuse(request, replace(decision, reason=why), read=True)
        # check_create accepted it, so its Cmd names a uid inside the range.
        uid = sandbox_uid(value)
        assert uid is not None
        return body, uid

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
        self,
        request: Request,
        decision: Decision,
        body: bytes,
        started: float,
        *,
        uid: int | None = None,
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
        if decision.container is not None and (
            response.status == 404
            or (decision.rule == "container-remove" and 200 <= response.status < 300)
        ):
            self.proxy.ownership.forget(decision.container)  # gone: its uid is free

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
            if created is not None:  # known, with its creator, before the client can use it
                self.proxy.ownership.created(created, self.identity, uid)
                if self.proxy.ownership.wants_sync():
                    self.proxy.sync_later()
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
        unreachable: bool = False,
        missing: bool = False,
    ) -> None:
        """One audit line for a decision about `request`."""
        self.proxy.audit.record(
            client=self.client,
            identity=self.identity or None,
            method=request.method,
            path=request.path,
            allowed=allowed,
            rule=decision.rule,
            status=status,
            container=container or decision.container,
            image=decision.image,
            reason=reason,
            ms=ms,
            unreachable=unreachable,
            missing=missing,
        )

    async def _refuse(
        self,
        request: Request,
        decision: Decision,
        *,
        status: int = 403,
        read: bool = False,
        close: bool = False,
        headers: tuple[str, ...] = (),
    ) -> bool:
        """Answer a refusal; the connection stays open only when no unread body is left (and
        the caller did not ask to close it). An answer to HEAD has a body all the same (it
        carries the reason), so the connection closes after it: nothing can be misframed."""
        keep = (
            not close
            and not request.close
            and request.method != "HEAD"
            and (read or request.content_length == 0)
        )
        message = (
            f"executor-proxy refused {request.method} {request.path}: "
            f"{decision.rule}: {decision.reason}"
        )
        self._audit(request, decision, allowed=False, status=status, reason=decision.reason)
        self.writer.write(error_response(status, message, close=not keep, headers=headers))
        await self.writer.drain()
        return keep

    async def _missing(self, request: Request, decision: Decision) -> bool:
        """An id that is nobody's because it does not exist: the engine's own 404."""
        reason = f"No such container: {decision.container}"
        self._audit(
            request,
            decision,
            allowed=False,
            status=404,
            reason="ownership: no such container",
            missing=True,
        )
        keep = not request.close and request.method != "HEAD"
        self.writer.write(error_response(404, reason, close=not keep))
        await self.writer.drain()
        return keep

    async def _unreachable(
        self, request: Request, decision: Decision, cause: str, started: float
    ) -> bool:
        message = f"Docker engine unreachable at {self.proxy.upstream.url}: {cause}"
        ms = (time.perf_counter() - started) * 1000
        self._audit(
            request, decision, allowed=True, status=502, reason=message, ms=ms, unreachable=True
        )
        self.writer.write(error_response(502, message, close=True))
        await self.writer.drain()
        return False

    async def _malformed(self, error: HTTPError, head: bytes) -> bool:
        """Answer a head that cannot be read (only its request line is looked at) and close."""
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


def authenticate(secret: bytes, value: str | None) -> tuple[str | None, str]:
    """(the identity `value` proves, "") or (None, why not, without echoing any of it)."""
    identity = verify(secret, value)
    if identity is not None:
        return identity, ""
    expected = f"Authorization: {SCHEME} <identity> <hex HMAC-SHA256(secret, identity)>"
    if not value:
        return None, f"no credential: every request must carry {expected}"
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != SCHEME:
        return None, f"malformed credential: expected {expected}"
    if WORKER_ID.fullmatch(parts[1]) is None:
        return None, "malformed credential: the identity is not instance:pid:hex8"
    if _MAC.fullmatch(parts[2]) is None:
        return None, "malformed credential: the MAC is not 64 lower-case hex digits"
    return None, (
        "wrong credential: its MAC does not prove the shared secret for its identity "
        "(EXECUTOR_PROXY_TOKEN differs from the proxy's?)"
    )


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
