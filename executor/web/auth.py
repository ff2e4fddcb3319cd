"""API keys, who is calling, which executions they may see, and per-key rate limits.

Off by default (an open service). With any key configured (EXECUTOR_API_KEYS,
EXECUTOR_OPERATOR_KEYS or their *_FILE), every request but OPEN_PATHS needs
`Authorization: Bearer <key>` (401 otherwise); OPERATOR_PATHS need an operator key (403 for
another valid key). A browser opens the operator's page with HTTP Basic instead (any user name,
the key as the password): that page's 401 asks for Basic, so the browser's own login prompt
appears. Keys are kept only as SHA-256 digests and compared with `hmac.compare_digest` against
every configured digest, so neither timing nor an early exit
tells how close a guess came.

An execution belongs to the key that submitted it: its record holds the key's id (KEY_ID_CHARS
hex characters of the key's SHA-256, never the key). `executor.web.executions.known()` is the
one check of every view of an execution (its result, events, files, cancel): another key gets
the same 404 as for an id never submitted; an operator key, or no keys at all, sees every
execution.

EXECUTOR_RATE_LIMIT limits each key (each client address without keys) with Flask-Limiter,
counting in Redis so the limit holds across every API process; past it, 429 `rate_limited`
with Retry-After. Under gunicorn's gevent worker the limiter's redis-py client is cooperative:
redis-py speaks through the socket module, which the worker patched before it loaded the app.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded

from executor.config import Settings, SettingsError
from executor.errors import Forbidden, RateLimited, Unauthorized
from executor.names import RATE_LIMITS
from executor.store import Record
from executor.web.errors import error_response

OPEN_PATHS = frozenset({"/health"})  # probes need no key
# The operator's endpoints: the service's state, its metrics and the operator's page.
OPERATOR_PATHS = frozenset({"/status", "/metrics", "/", "/dashboard"})
OPERATOR_PREFIXES = ("/dashboard/",)
KEY_ID_CHARS = 16
SECURITY_SCHEME = "apiKey"  # the OpenAPI document's name for the Bearer key
_BEARER = "bearer "
_BASIC = "basic "


def key_id(key: str) -> str:
    """The id an execution record holds for the key that submitted it."""
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_ID_CHARS]


@dataclass(frozen=True)
class Caller:
    """Who sent the request: `key_id` is None when keys are off (everyone sees everything)."""

    key_id: str | None
    operator: bool

    @property
    def sees_all(self) -> bool:
        return self.key_id is None or self.operator

    @property
    def owner(self) -> str:
        """What a record of this caller's submission holds: its key id, or ""."""
        return self.key_id or ""

    def sees(self, record: Record) -> bool:
        return self.sees_all or hmac.compare_digest(record.owner, self.owner)


OPEN = Caller(None, operator=True)  # keys off: everyone
ANONYMOUS = Caller("anonymous", operator=False)  # keys on, an open path: owns nothing, sees none


@dataclass(frozen=True)
class Keys:
    """The configured keys as (SHA-256 digest, is an operator key) pairs."""

    entries: tuple[tuple[bytes, bool], ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        """Keys from the settings and their files; raises SettingsError naming an unreadable
        file."""
        api = [*settings.api_keys, *_read(settings.api_keys_file, "EXECUTOR_API_KEYS_FILE")]
        operators = [
            *settings.operator_keys,
            *_read(settings.operator_keys_file, "EXECUTOR_OPERATOR_KEYS_FILE"),
        ]
        entries = {_digest(k): False for k in api}
        entries.update({_digest(k): True for k in operators})  # an operator key is a key too
        return cls(tuple(entries.items()))

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def identify(self, key: str) -> Caller | None:
        """The caller `key` stands for, or None for a key that is not configured."""
        digest = _digest(key)
        match: Caller | None = None
        for known, operator in self.entries:  # every entry, whatever matched before
            if hmac.compare_digest(known, digest):
                match = Caller(key_id(key), operator)
        return match


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _read(path: str, variable: str) -> list[str]:
    """The keys of a key file: one per line (or comma-separated); blanks and # comments skipped."""
    if not path:
        return []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SettingsError(f"{variable}: cannot read {path}: {e.strerror}") from None
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return [key.strip() for line in lines for key in line.split(",") if key.strip()]


def caller() -> Caller:
    """The caller of the current request (everyone is an operator with keys off)."""
    found = g.get("executor_caller")
    return found if isinstance(found, Caller) else OPEN


def history_owner() -> str | None:
    """The owner the caller's history is restricted to, or None for every execution."""
    current = caller()
    return None if current.sees_all else current.owner


def _operator_path(path: str) -> bool:
    return path in OPERATOR_PATHS or path.startswith(OPERATOR_PREFIXES)


def _presented_key() -> str | None:
    """The key of `Authorization: Bearer <key>`, or of `Basic` (the password: a browser's)."""
    header = request.headers.get("Authorization", "")
    scheme = header[:7].lower()
    if scheme.startswith(_BEARER):
        return header[len(_BEARER) :].strip() or None
    if scheme.startswith(_BASIC):
        try:
            decoded = base64.b64decode(header[len(_BASIC) :].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def install(app: Flask, settings: Settings) -> Limiter | None:
    """Require keys (when configured) and rate-limit (when EXECUTOR_RATE_LIMIT is set) on `app`.

    Must run before any other before_request hook that reads the caller.
    """
    keys = Keys.from_settings(settings)

    @app.before_request
    def authenticate() -> None:
        if not keys.enabled:
            return
        if request.path in OPEN_PATHS:
            g.executor_caller = ANONYMOUS
            return
        presented = _presented_key()
        if presented is None:
            raise Unauthorized("this endpoint needs an API key: Authorization: Bearer <key>")
        found = keys.identify(presented)
        if found is None:
            raise Unauthorized("the API key is not valid")
        if _operator_path(request.path) and not found.operator:
            raise Forbidden(f"{request.path} needs an operator key")
        g.executor_caller = found

    if not settings.rate_limit:
        return None
    return _limiter(app, settings)


def _limiter(app: Flask, settings: Settings) -> Limiter:
    def limited_by() -> str:
        current = caller()
        return f"key:{current.key_id}" if current.key_id else f"address:{request.remote_addr}"

    limiter = Limiter(
        limited_by,
        app=app,
        application_limits=[settings.rate_limit],  # one budget per key, over every endpoint
        storage_uri=settings.redis_url,
        # Fail fast like the store: a Redis that is down is the store's 503 to report.
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 3},
        strategy="moving-window",
        key_prefix=RATE_LIMITS,
        headers_enabled=True,
        swallow_errors=True,  # Redis down: the request goes on, and answers 503 if it needs it
    )
    limiter.request_filter(lambda: request.path in OPEN_PATHS)

    def refuse(error: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        wait = math.ceil(current.reset_at - time.time()) if current is not None else 1
        return error_response(
            RateLimited(f"more than {error.description} for this key", retry_after=wait)
        )

    app.register_error_handler(RateLimitExceeded, refuse)
    return limiter
