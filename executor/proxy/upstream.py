"""The Docker engine the proxy forwards to: its address, connections to it, one-off lookups."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from executor.proxy.http import (
    RESPONSE_HEAD_MAX,
    BrokenResponse,
    Response,
    parse_response,
    read_body,
)

CONNECT_TIMEOUT = 10.0
LOOKUP_TIMEOUT = 30.0
LOOKUP_BODY_MAX = 4 * 1024 * 1024


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamUnreachable(Exception):
    """No connection to the engine could be made or kept; the message is the cause."""


@dataclass(frozen=True)
class Upstream:
    """Where the engine listens: unix:///path or tcp://host:port (PROXY_UPSTREAM)."""

    url: str
    unix_path: str | None = None
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme == "unix" and parts.path and not parts.netloc:
            return cls(url, unix_path=parts.path)
        if parts.scheme in ("tcp", "http") and parts.hostname and parts.path in ("", "/"):
            try:
                port = parts.port or 2375
            except ValueError:
                raise ValueError(f"PROXY_UPSTREAM {url!r} has a bad port") from None
            return cls(url, host=parts.hostname, port=port)
        raise ValueError(f"PROXY_UPSTREAM must be unix:///path or tcp://host:port, got {url!r}")

    @property
    def host_header(self) -> str:
        """The Host the engine is told; it ignores it on a socket."""
        if self.unix_path is not None:
            return "docker"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def connect(self) -> Connection:
        """A new connection to the engine, or UpstreamUnreachable naming the cause."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self.unix_path is not None:
                    return await asyncio.open_unix_connection(
                        self.unix_path, limit=RESPONSE_HEAD_MAX
                    )
                return await asyncio.open_connection(self.host, self.port, limit=RESPONSE_HEAD_MAX)
        except TimeoutError:
            raise UpstreamUnreachable(f"no connection within {CONNECT_TIMEOUT:g}s") from None
        except OSError as e:
            raise UpstreamUnreachable(e.strerror or str(e) or type(e).__name__) from None

    async def get_json(self, path: str) -> tuple[int, Any]:
        """GET `path` on a connection of its own; (status, decoded JSON body or None)."""
        reader, writer = await self.connect()
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                    "User-Agent: executor-proxy\r\nConnection: close\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                response: Response = parse_response(head, method="GET")
                _, body = await read_body(reader, response, LOOKUP_BODY_MAX)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            raise UpstreamUnreachable(f"lookup failed: {e or type(e).__name__}") from None
        except BrokenResponse as e:
            raise UpstreamUnreachable(str(e)) from None
        finally:
            writer.close()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None


class Spare:
    """One engine connection opened ahead of need, so a new client connection (every attach
    opens one) does not wait for a connect; replaced in the background once taken."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._ready: Connection | None = None
        self._opening: asyncio.Task[None] | None = None

    async def take(self) -> tuple[Connection, bool]:
        """A connection to the engine, and whether it was opened ahead (not just now)."""
        ready, self._ready = self._ready, None
        if self._opening is None or self._opening.done():
            self._opening = asyncio.get_running_loop().create_task(self._open())
        if ready is not None:
            if not ready[0].at_eof() and not ready[1].is_closing():
                return ready, True
            ready[1].close()  # the engine closed it while it waited
        return await self._upstream.connect(), False

    async def _open(self) -> None:
        try:
            connection = await self._upstream.connect()
        except UpstreamUnreachable:
            return
        if self._ready is None:
            self._ready = connection
        else:
            connection[1].close()
