"""What every view of one app shares: settings, the store, the Celery app, health checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from flask import current_app

from executor.config import Settings
from executor.request_schema import RequestSchema
from executor.store import Store
from executor.streams import EventStreams
from executor.web.health import Health

EXTENSION = "executor"


@dataclass
class Context:
    settings: Settings
    requests: RequestSchema  # loads and dumps the request body
    store: Store
    celery: Any
    health: Health
    streams: EventStreams  # live events (GET /executions/{id}/events)
    started: float = field(default_factory=time.monotonic)


def context() -> Context:
    """The current app's Context."""
    return cast(Context, current_app.extensions[EXTENSION])
