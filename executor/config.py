"""Settings, read once from the environment and passed down.

Every setting is an environment variable, declared once in `Settings`: one row per setting
with its variable, default and parser; the README lists them all. Nothing here connects to
anything: `Settings.from_env()` only parses.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


Parser = Callable[[str, str], Any]  # (variable, its non-empty value) -> the setting


def _number(kind: Callable[[str], Any], what: str, minimum: float) -> Parser:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return value

    return parse


def _int(minimum: int) -> Parser:
    return _number(int, "an integer", minimum)


def _float(minimum: float) -> Parser:
    return _number(float, "a number", minimum)


def _str(name: str, raw: str) -> str:
    return raw


def _upper(name: str, raw: str) -> str:
    return raw.upper()


def _choice(*choices: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(","))


_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,250}")


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _tag(name: str, raw: str) -> str:
    """An image tag (Docker's rule), or empty."""
    if raw and not _TAG.fullmatch(raw):
        raise SettingsError(f"{name} must be an image tag, got {raw!r}")
    return raw


def _images(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`language=image,...` pairs: the operator-approved extra images."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        language, sep, image = (part.strip() for part in item.partition("="))
        if not sep or not language or not _IMAGE.fullmatch(image):
            raise SettingsError(f"{name} must be language=image pairs, got {item.strip()!r}")
        pairs.append((language, image))
    return tuple(pairs)


def _names(name: str, raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


def _secrets(name: str, raw: str) -> tuple[str, ...]:
    """Comma- or newline-separated secrets (API keys); blanks are ignored."""
    return tuple(k.strip() for k in re.split(r"[,\n]", raw) if k.strip())


# Flask-Limiter's notation (its `limits` package's grammar), e.g. `120/minute`, `10 per second`,
# several separated by `;` `,` or `|`. Checked here without importing it: gunicorn's master reads
# the settings before gevent patches its workers.
_ONE_LIMIT = r"\s*[0-9]+\s*(/|\s*per\s*)\s*[0-9]*\s*(second|minute|hour|day|month|year)s?\s*"
_LIMITS = re.compile(rf"{_ONE_LIMIT}([,;|]{_ONE_LIMIT})*", re.IGNORECASE)


def _rate_limit(name: str, raw: str) -> str:
    """A rate limit as Flask-Limiter writes it, e.g. `120/minute` or `10/second;1000/hour`."""
    if not _LIMITS.fullmatch(raw):
        raise SettingsError(f"{name} must be a rate limit like 120/minute, got {raw!r}")
    return raw.strip()


def _flag(name: str, raw: str) -> bool:
    if raw not in ("0", "1"):
        raise SettingsError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


PRESTART_MODES = ("held", "booted", "off")


def _prestart(name: str, raw: str) -> str:
    """How far a warm container starts its runtime in advance (see Settings.prestart)."""
    mode: str = _choice(*PRESTART_MODES)(name, {"1": "held", "0": "off"}.get(raw.strip(), raw))
    return mode


def _uid_range(name: str, raw: str) -> tuple[int, int]:
    first, sep, last = raw.partition("-")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        raise SettingsError(f"{name} must be a range first-last of uids, got {raw!r}") from None
    # Below 1000 live the host's system users; a range must hold a sandbox per execution slot.
    if not sep or lo < 1000 or hi < lo + 15 or hi > 2**31 - 2:
        raise SettingsError(f"{name} must be first-last with 1000 <= first, 16+ uids, got {raw!r}")
    return lo, hi


_UNSET = object()


def _setting(
    variable: str,
    default: Any,
    parse: Parser,
    env_default: Callable[[], Any] | None = None,
    empty: Any = _UNSET,
    *,
    secret: bool = False,
) -> Any:
    """One row of the table: a field read from `variable` with `parse`; unset or empty gives
    `default` (or, from the environment, `env_default()`), except that with `empty` a variable
    set to the empty string gives `empty` (a setting that empty turns off). A `secret` is left
    out of the settings' repr."""
    return field(
        default=default,
        repr=not secret,
        metadata={
            "variable": variable,
            "parse": parse,
            "env_default": env_default,
            "empty": empty,
        },
    )


def _hostname() -> str:
    return socket.gethostname() or "executor"


@dataclass(frozen=True)
class Settings:
    """The service's configuration: one row per setting (field, variable, default, parser)."""

    redis_url: str = _setting("REDIS_URL", "redis://localhost:6379/0", _str)
    docker_host: str = _setting("DOCKER_HOST", "tcp://docker-proxy:2375", _str)
    instance: str = _setting("HOSTNAME", "executor", _str, _hostname)
    port: int = _setting("PORT", 8083, _int(1))

    # Request bounds (the contract's defaults).
    max_code_bytes: int = _setting("EXECUTOR_MAX_CODE_BYTES", MIB, _int(1))
    max_stdin_bytes: int = _setting("EXECUTOR_MAX_STDIN_BYTES", MIB, _int(0))
    # All extra files together.
    max_files_bytes: int = _setting("EXECUTOR_MAX_FILES_BYTES", 4 * MIB, _int(0))
    max_timeout: float = _setting("EXECUTOR_MAX_TIMEOUT", 60.0, _float(0.001))
    max_memory_mb: int = _setting("EXECUTOR_MAX_MEMORY_MB", 512, _int(16))
    max_cpus: float = _setting("EXECUTOR_MAX_CPUS", 0.5, _float(0.05))
    max_output_bytes: int = _setting("EXECUTOR_MAX_OUTPUT_BYTES", MIB, _int(1))
    # Test cases: their stdin, args and expected stdout together (each stdin alone is bounded
    # by EXECUTOR_MAX_STDIN_BYTES).
    max_tests_bytes: int = _setting("EXECUTOR_MAX_TESTS_BYTES", 8 * MIB, _int(0))
    # What is kept of all test cases' stdout and stderr together (each stream of each case is
    # also capped by EXECUTOR_MAX_OUTPUT_BYTES).
    max_tests_output_bytes: int = _setting("EXECUTOR_MAX_TESTS_OUTPUT_BYTES", 8 * MIB, _int(0))
    # Files back (`outputs`): how many, and their contents together.
    max_output_files: int = _setting("EXECUTOR_MAX_OUTPUT_FILES", 16, _int(0))
    max_output_files_bytes: int = _setting("EXECUTOR_MAX_OUTPUT_FILES_BYTES", 4 * MIB, _int(0))
    default_timeout: float = _setting("EXECUTOR_DEFAULT_TIMEOUT", 10.0, _float(0.001))
    default_memory_mb: int = _setting("EXECUTOR_DEFAULT_MEMORY_MB", 512, _int(16))
    default_cpus: float = _setting("EXECUTOR_DEFAULT_CPUS", 0.5, _float(0.05))

    # Sandbox hardening.
    pids_limit: int = _setting("EXECUTOR_PIDS_LIMIT", 64, _int(8))
    tmpfs_mb: int = _setting("EXECUTOR_TMPFS_MB", 100, _int(1))
    nofile_limit: int = _setting("EXECUTOR_NOFILE_LIMIT", 256, _int(16))
    # "" = the engine's default (runc), or runsc for gVisor.
    runtime: str = _setting("EXECUTOR_RUNTIME", "", _str)
    python_image: str = _setting("EXECUTOR_PYTHON_IMAGE", "executor-python:3.11", _str)
    # Operator-approved extra images, (language, image) pairs, by tag or digest.
    images: tuple[tuple[str, str], ...] = _setting("EXECUTOR_IMAGES", (), _images)
    # Every language's image under this tag instead of the registry's (Python's is
    # python_image): the images `IMAGE_TAG=<tag> scripts/build-images.sh languages` builds.
    image_tag: str = _setting("EXECUTOR_IMAGE_TAG", "", _tag)
    # The worker's cache of build products (compiled languages), in MiB; 0 turns it off.
    build_cache_mb: int = _setting("EXECUTOR_BUILD_CACHE_MB", 256, _int(0))
    # A build's products are asked for (and kept) from the N-th identical request on: the
    # earlier ones cost the worker only the key, and the transfer of products nobody reuses.
    build_cache_admit: int = _setting("EXECUTOR_BUILD_CACHE_ADMIT", 2, _int(1))
    docker_api_version: str = _setting("EXECUTOR_DOCKER_API_VERSION", "1.41", _str)
    # Seconds per Docker API call.
    docker_timeout: float = _setting("EXECUTOR_DOCKER_TIMEOUT", 30.0, _float(1.0))
    # Host uids for sandboxes ("first-last"): each running sandbox gets its own, so per-user
    # kernel limits (inotify, pipe buffers, message queues...) are never shared between them.
    sandbox_uids: tuple[int, int] = _setting("EXECUTOR_SANDBOX_UIDS", (200000, 265535), _uid_range)

    # Worker.
    concurrency: int = _setting("EXECUTOR_CONCURRENCY", 8, _int(1))  # executions at once
    # The languages this worker serves (empty: all); it consumes their queues (see README).
    worker_languages: tuple[str, ...] = _setting("EXECUTOR_LANGUAGES", (), _names)
    # Publish each execution on its language's own queue, executor.<language> (see README).
    route_by_language: bool = _setting("EXECUTOR_ROUTE_BY_LANGUAGE", False, _flag)
    pool_size: int = _setting("EXECUTOR_POOL_SIZE", 4, _int(0))  # warm containers; 0 disables
    pool_max_idle_s: float = _setting("EXECUTOR_POOL_MAX_IDLE", 300.0, _float(1.0))
    pool_refill_concurrency: int = _setting("EXECUTOR_POOL_REFILL_CONCURRENCY", 2, _int(1))
    # Warm containers start their language's runtime in advance where the registry says how
    # (Node.js). `held`: its process is started and linked, and held before the runtime makes
    # anything (about 2 MiB idle; its own start, about 50 ms under half a CPU, stays on the
    # execution's path). `booted`: the runtime is started and waits just before the program
    # (its whole start off the path, for its heap: about 13 MiB per warm container). `off`:
    # a warm container holds the runner only. 1 and 0 mean held and off.
    prestart: str = _setting("EXECUTOR_PRESTART", "held", _prestart)
    # Warm containers of a compiled language take its last cached build in advance.
    stage_builds: bool = _setting("EXECUTOR_STAGE_BUILDS", True, _flag)
    # Containers being created and started at once, pool and cold runs together.
    max_starts: int = _setting("EXECUTOR_MAX_STARTS", 4, _int(1))
    reap_interval_s: float = _setting("EXECUTOR_REAP_INTERVAL", 30.0, _float(1.0))

    # Records and the HTTP wait.
    history_size: int = _setting("EXECUTOR_HISTORY_SIZE", 100, _int(1))
    result_ttl_s: int = _setting("EXECUTOR_RESULT_TTL", 86400, _int(60))
    # Added to the timeout for POST /execute.
    queue_grace_s: float = _setting("EXECUTOR_QUEUE_GRACE", 10.0, _float(0.0))
    max_queue: int = _setting("EXECUTOR_MAX_QUEUE", 1000, _int(1))  # queued before 429
    # A queued execution whose message is in no queue this long is queued again
    # (executor.rescue); longer than a submission takes to publish or a delivery to claim.
    rescue_after_s: float = _setting("EXECUTOR_RESCUE_AFTER", 30.0, _float(1.0))
    # Live output (GET /executions/{id}/events): entries kept per execution's event stream,
    # and seconds between the keep-alive comments of an idle stream.
    events_max_len: int = _setting("EXECUTOR_EVENTS_MAX_LEN", 10000, _int(16))
    events_heartbeat_s: float = _setting("EXECUTOR_EVENTS_HEARTBEAT", 15.0, _float(0.1))
    # Each worker's own /healthz, /readyz and /metrics (executor.monitor); 0 turns it off.
    monitor_port: int = _setting("EXECUTOR_MONITOR_PORT", 8084, _int(0))

    # The API's HTTP connections (enforced by the gevent worker, executor.http_worker).
    http_head_timeout: float = _setting("EXECUTOR_HTTP_HEAD_TIMEOUT", 10.0, _float(0.1))
    http_body_timeout: float = _setting("EXECUTOR_HTTP_BODY_TIMEOUT", 30.0, _float(0.1))
    # Seconds per response write; a kept-alive connection's idle time.
    http_send_timeout: float = _setting("EXECUTOR_HTTP_SEND_TIMEOUT", 30.0, _float(0.1))
    http_idle_timeout: float = _setting("EXECUTOR_HTTP_IDLE_TIMEOUT", 75.0, _float(0.1))
    # Per API process; 503 + Retry-After past it.
    http_max_connections: int = _setting("EXECUTOR_HTTP_MAX_CONNECTIONS", 4096, _int(1))

    # Docker security proxy.
    proxy_listen: str = _setting("PROXY_LISTEN", "0.0.0.0:2375", _str)
    proxy_upstream: str = _setting("PROXY_UPSTREAM", "unix:///var/run/docker.sock", _str)
    proxy_audit_log: str = _setting("PROXY_AUDIT_LOG", "-", _str)  # a path, or - for stderr
    proxy_allowed_runtimes: tuple[str, ...] = _setting(
        "PROXY_ALLOWED_RUNTIMES", ("", "runc", "runsc"), _list
    )
    # The secret proxy and workers share: the proxy serves only clients that prove it.
    proxy_token: str = _setting("EXECUTOR_PROXY_TOKEN", "", _str)
    # Read; the proxy creates it if absent.
    proxy_token_file: str = _setting("EXECUTOR_PROXY_TOKEN_FILE", "", _str)
    # Seconds for a request head, once begun; seconds a connection may sit idle.
    proxy_head_timeout: float = _setting("PROXY_HEAD_TIMEOUT", 10.0, _float(0.1))
    proxy_idle_timeout: float = _setting("PROXY_IDLE_TIMEOUT", 120.0, _float(0.1))
    proxy_max_connections: int = _setting("PROXY_MAX_CONNECTIONS", 1024, _int(1))
    # The proxy's own /metrics (never on the Docker port); set to empty to turn it off.
    proxy_metrics_listen: str = _setting("PROXY_METRICS_LISTEN", "0.0.0.0:9102", _str, empty="")

    # API keys (executor.web.auth): with any key set, every endpoint but /health needs one.
    # A key is given in the variable or, one per line, in the file its *_FILE names.
    api_keys: tuple[str, ...] = _setting("EXECUTOR_API_KEYS", (), _secrets, secret=True)
    api_keys_file: str = _setting("EXECUTOR_API_KEYS_FILE", "", _str)
    # Keys that may also read /status, /metrics, the operator's page and every execution.
    operator_keys: tuple[str, ...] = _setting("EXECUTOR_OPERATOR_KEYS", (), _secrets, secret=True)
    operator_keys_file: str = _setting("EXECUTOR_OPERATOR_KEYS_FILE", "", _str)
    # Requests per key (per client address without keys), e.g. 120/minute; empty: no limit.
    rate_limit: str = _setting("EXECUTOR_RATE_LIMIT", "", _rate_limit)

    log_level: str = _setting("EXECUTOR_LOG_LEVEL", "INFO", _upper)
    # JSON lines (executor.logs) for shipping; "text" for people, in development.
    log_format: str = _setting("EXECUTOR_LOG_FORMAT", "json", _choice("json", "text"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable, parse = f.metadata["variable"], f.metadata["parse"]
            raw = env.get(variable)
            if raw:
                values[f.name] = parse(variable, raw)
            elif raw is not None and f.metadata["empty"] is not _UNSET:
                values[f.name] = f.metadata["empty"]
            elif f.metadata["env_default"] is not None:
                values[f.name] = f.metadata["env_default"]()
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SettingsError when settings contradict each other."""
        if self.default_timeout > self.max_timeout:
            raise SettingsError("EXECUTOR_DEFAULT_TIMEOUT exceeds EXECUTOR_MAX_TIMEOUT")
        if self.default_memory_mb > self.max_memory_mb:
            raise SettingsError("EXECUTOR_DEFAULT_MEMORY_MB exceeds EXECUTOR_MAX_MEMORY_MB")
        if self.default_cpus > self.max_cpus:
            raise SettingsError("EXECUTOR_DEFAULT_CPUS exceeds EXECUTOR_MAX_CPUS")
        if self.runtime not in self.proxy_allowed_runtimes:
            raise SettingsError(f"EXECUTOR_RUNTIME {self.runtime!r} is not an allowed runtime")
