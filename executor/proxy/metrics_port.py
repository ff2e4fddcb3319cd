"""The proxy's metrics port (PROXY_METRICS_LISTEN): `GET /metrics` and nothing else.

A listener of its own in the proxy's event loop, apart from the Docker port (which refuses
/metrics like any path it does not know). It needs no credential, so it shows nothing but the
counters: no request is forwarded anywhere, and every other path is 404, every other method
405. One request per connection; a head that is malformed or slow is answered 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib

from executor.metrics import CONTENT_TYPE, ProxyMetrics
from executor.proxy.http import HTTPError, error_response, parse_request, read_head

HEAD_TIMEOUT = 10.0  # seconds for a scrape's request head, from the connection


class MetricsPort:
    """Answers scrapes with the proxy's series."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self._answer(reader))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the scraper went away
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await read_head(reader, idle_timeout=HEAD_TIMEOUT, head_timeout=HEAD_TIMEOUT)
            if not head:
                return b""
            request = parse_request(head)
        except HTTPError as e:
            return error_response(e.status, f"executor-proxy metrics: {e.reason}", close=True)
        if request.path != "/metrics":
            return error_response(
                404, "executor-proxy metrics: only /metrics is served here", close=True
            )
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405,
                "executor-proxy metrics: only GET and HEAD",
                close=True,
                headers=("Allow: GET, HEAD",),
            )
        body = self.metrics.render()
        head_bytes = (
            "HTTP/1.1 200 OK\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        return head_bytes + (b"" if request.method == "HEAD" else body)
