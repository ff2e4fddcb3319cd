"""The audit log: one JSON line per decision, to a file or to stderr (PROXY_AUDIT_LOG="-").

Each line holds: time (ISO 8601, UTC), client (its address), identity (the worker the request
authenticated as, or null before that), method, path (without the query), decision ("allowed"
or "refused"), rule, container (a full id or null), image (or null), status (the engine's
status when allowed, the proxy's own when refused), reason (why it was refused, or why the
engine could not be reached) and ms (time to the response head). Bodies, query values, header
values (the credential above all) and stream contents are never written: they carry users'
code and the workers' proof of the secret.

Each decision recorded here is counted too, when the log is given the proxy's series
(executor.metrics.ProxyMetrics): the audit line and the sample cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO

from executor.metrics import ProxyMetrics

PATH_MAX = 256
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class AuditLog:
    """Appends decisions as JSON lines; each line is flushed as it is written."""

    def __init__(self, target: str, metrics: ProxyMetrics | None = None) -> None:
        self.metrics = metrics
        self._own = target != "-"
        self._out: IO[str] = (
            open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
            if self._own
            else sys.stderr
        )

    def record(
        self,
        *,
        client: str,
        identity: str | None = None,
        method: str,
        path: str,
        allowed: bool,
        rule: str,
        status: int | None,
        container: str | None = None,
        image: str | None = None,
        reason: str = "",
        ms: float | None = None,
        unreachable: bool = False,
        missing: bool = False,
    ) -> None:
        """Write one decision (`unreachable`: allowed, but the engine could not answer;
        `missing`: refused because the container does not exist)."""
        if self.metrics is not None:
            self.metrics.decision(
                client=client,
                identity=identity,
                allowed=allowed,
                rule=rule,
                ms=ms,
                unreachable=unreachable,
                missing=missing,
            )
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "client": client,
            "identity": identity,
            "method": method,
            "path": path[:PATH_MAX],
            "decision": "allowed" if allowed else "refused",
            "rule": rule,
            "container": container,
            "image": image,
            "status": status,
            "reason": reason or None,
            "ms": None if ms is None else round(ms, 3),
        }
        self._out.write(_ENCODE(line) + "\n")
        if not self._own:
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()
