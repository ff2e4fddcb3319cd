"""`python -m executor.proxy`: read the settings, open the audit log, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys

from executor.config import Settings, SettingsError
from executor.logs import configure as configure_logging
from executor.metrics import ProxyMetrics
from executor.proxy.audit import AuditLog
from executor.proxy.metrics_port import MetricsPort
from executor.proxy.server import CLIENT_LIMIT, Proxy

log = logging.getLogger("executor.proxy")


def parse_listen(value: str, variable: str = "PROXY_LISTEN") -> tuple[str, int]:
    """host:port, [v6]:port or :port (all addresses) from PROXY_LISTEN (or `variable`)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{variable} must be host:port, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)  # noqa: S104 - the proxy serves the worker's network


def raise_open_files(connections: int) -> None:
    """Let the process hold a descriptor per client and per engine connection, and some more
    (the soft limit is often 1024, which PROXY_MAX_CONNECTIONS clients alone could reach)."""
    want = 2 * connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "open files limited to %d: fewer than PROXY_MAX_CONNECTIONS=%d connections "
                "(each needs two descriptors) may be served at once",
                new,
                connections,
            )


def metrics_address(settings: Settings) -> tuple[str, int] | None:
    """Where the proxy serves its /metrics (PROXY_METRICS_LISTEN), or None when it is off."""
    if not settings.proxy_metrics_listen:
        return None
    address = parse_listen(settings.proxy_metrics_listen, "PROXY_METRICS_LISTEN")
    if address[1] == parse_listen(settings.proxy_listen)[1]:
        raise SettingsError(
            "PROXY_METRICS_LISTEN must use another port than PROXY_LISTEN: "
            "the Docker port never serves /metrics"
        )
    return address


async def start_metrics(
    address: tuple[str, int] | None, metrics: ProxyMetrics
) -> asyncio.Server | None:
    """Listen for scrapes; a port that cannot be had is logged, and the proxy serves on
    without its series (Prometheus then reports the target down)."""
    if address is None:
        return None
    try:
        server = await asyncio.start_server(
            MetricsPort(metrics).handle, *address, reuse_address=True
        )
    except OSError as e:
        log.error("executor-proxy cannot serve /metrics on %s:%d: %s", *address, e)
        return None
    log.info("executor-proxy metrics on http://%s:%d/metrics", *address)
    return server


async def serve(settings: Settings) -> None:
    host, port = parse_listen(settings.proxy_listen)
    scrape_at = metrics_address(settings)
    raise_open_files(settings.proxy_max_connections)
    metrics = ProxyMetrics()
    audit = AuditLog(settings.proxy_audit_log, metrics)
    scrapes: asyncio.Server | None = None
    try:
        proxy = Proxy(settings, audit)
        proxy.start()
        server = await asyncio.start_server(
            proxy.handle, host, port, limit=CLIENT_LIMIT, reuse_address=True
        )
        scrapes = await start_metrics(scrape_at, metrics)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "executor-proxy listening on %s:%d, forwarding to %s, audit log %s",
            host,
            port,
            proxy.upstream.url,
            settings.proxy_audit_log,
        )
        async with server:
            await stop.wait()
        log.info("executor-proxy stopping")
    finally:
        if scrapes is not None:
            scrapes.close()
        audit.close()


def main() -> int:
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.log_level)
        asyncio.run(serve(settings))
    except (SettingsError, ValueError) as e:
        print(f"executor-proxy: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"executor-proxy: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
