"""`python -m executor.proxy`: read the settings, open the audit log, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys

from executor.config import Settings, SettingsError
from executor.proxy.audit import AuditLog
from executor.proxy.server import CLIENT_LIMIT, Proxy

log = logging.getLogger("executor.proxy")


def parse_listen(value: str) -> tuple[str, int]:
    """host:port, [v6]:port or :port (all addresses) from PROXY_LISTEN."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"PROXY_LISTEN must be host:port, got {value!r}")
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


async def serve(settings: Settings) -> None:
    host, port = parse_listen(settings.proxy_listen)
    raise_open_files(settings.proxy_max_connections)
    audit = AuditLog(settings.proxy_audit_log)
    try:
        proxy = Proxy(settings, audit)
        proxy.start()
        server = await asyncio.start_server(
            proxy.handle, host, port, limit=CLIENT_LIMIT, reuse_address=True
        )
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
        audit.close()


def main() -> int:
    try:
        settings = Settings.from_env()
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
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
