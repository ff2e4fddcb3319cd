"""gunicorn's own logs (its error log and the access log) in EXECUTOR_LOG_FORMAT.

gunicorn's master imports this class by name (executor.server sets `logger_class`); it keeps
gunicorn's handlers and levels and only gives them the service's formatter, so an access line
is a JSON line too, carrying the execution id its request was about (executor.logs).
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from executor.config import Settings
from executor.logs import formatter


class GunicornLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        kind = Settings.from_env().log_format
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter(kind))
