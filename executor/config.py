"""Settings, read once from the environment and passed down.

Every setting is an environment variable; the README lists them all. Nothing here connects to
anything: `Settings.from_env()` only parses.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def _uid_range(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    first, sep, last = raw.partition("-")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        raise SettingsError(f"{name} must be a range first-last of uids, got {raw!r}") from None
    # Below 1000 live the host's system users; a range must hold a sandbox per execution slot.
    if not sep or lo < 1000 or hi < lo + 15 or hi > 2**31 - 2:
        raise SettingsError(f"{name} must be first-last with 1000 <= first, 16+ uids, got {raw!r}")
    return lo, hi


_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,250}")


def _images(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """`language=image,...` pairs: the operator-approved extra images."""
    pairs = []
    for item in _str(env, name, "").split(","):
        if not item.strip():
            continue
        language, sep, image = (part.strip() for part in item.partition("="))
        if not sep or not language or not _IMAGE.fullmatch(image):
            raise SettingsError(f"{name} must be language=image pairs, got {item.strip()!r}")
        pairs.append((language, image))
    return tuple(pairs)


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in _str(env, name, "").split(",") if n.strip())


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Field docs name the variable each comes from."""

    redis_url: str = "redis://localhost:6379/0"  # REDIS_URL
    docker_host: str = "tcp://docker-proxy:2375"  # DOCKER_HOST
    instance: str = "executor"  # HOSTNAME
    port: int = 8083  # PORT

    # Request bounds (the contract's defaults).
    max_code_bytes: int = MIB  # EXECUTOR_MAX_CODE_BYTES
    max_stdin_bytes: int = MIB  # EXECUTOR_MAX_STDIN_BYTES
    max_files_bytes: int = 4 * MIB  # EXECUTOR_MAX_FILES_BYTES (all extra files together)
    max_timeout: float = 60.0  # EXECUTOR_MAX_TIMEOUT
    max_memory_mb: int = 512  # EXECUTOR_MAX_MEMORY_MB
    max_cpus: float = 0.5  # EXECUTOR_MAX_CPUS
    max_output_bytes: int = MIB  # EXECUTOR_MAX_OUTPUT_BYTES
    default_timeout: float = 10.0  # EXECUTOR_DEFAULT_TIMEOUT
    default_memory_mb: int = 512  # EXECUTOR_DEFAULT_MEMORY_MB
    default_cpus: float = 0.5  # EXECUTOR_DEFAULT_CPUS

    # Sandbox hardening.
    pids_limit: int = 64  # EXECUTOR_PIDS_LIMIT
    tmpfs_mb: int = 100  # EXECUTOR_TMPFS_MB
    nofile_limit: int = 256  # EXECUTOR_NOFILE_LIMIT
    runtime: str = ""  # EXECUTOR_RUNTIME ("" = the engine's default, runc; or runsc for gVisor)
    python_image: str = "executor-python:3.11"  # EXECUTOR_PYTHON_IMAGE
    # Operator-approved extra images, (language, image) pairs, by tag or digest.
    images: tuple[tuple[str, str], ...] = ()  # EXECUTOR_IMAGES ("language=image,...")
    docker_api_version: str = "1.41"  # EXECUTOR_DOCKER_API_VERSION
    docker_timeout: float = 30.0  # EXECUTOR_DOCKER_TIMEOUT (seconds per Docker API call)
    # Host uids for sandboxes: each running sandbox gets its own, so per-user kernel limits
    # (inotify, pipe buffers, message queues...) are never shared between executions.
    sandbox_uids: tuple[int, int] = (200000, 265535)  # EXECUTOR_SANDBOX_UIDS ("first-last")

    # Worker.
    concurrency: int = 8  # EXECUTOR_CONCURRENCY (executions at once per worker)
    # The languages this worker serves (empty: all); it consumes their queues (see README).
    worker_languages: tuple[str, ...] = ()  # EXECUTOR_LANGUAGES ("c,cpp,...")
    # Publish each execution on its language's own queue, executor.<language> (see README).
    route_by_language: bool = False  # EXECUTOR_ROUTE_BY_LANGUAGE (0/1)
    pool_size: int = 4  # EXECUTOR_POOL_SIZE (warm containers per worker, 0 disables)
    pool_max_idle_s: float = 300.0  # EXECUTOR_POOL_MAX_IDLE (seconds a warm container may wait)
    pool_refill_concurrency: int = 2  # EXECUTOR_POOL_REFILL_CONCURRENCY
    max_starts: int = 4  # EXECUTOR_MAX_STARTS (containers being created+started at once)
    reap_interval_s: float = 30.0  # EXECUTOR_REAP_INTERVAL

    # Records and the HTTP wait.
    history_size: int = 100  # EXECUTOR_HISTORY_SIZE
    result_ttl_s: int = 86400  # EXECUTOR_RESULT_TTL
    queue_grace_s: float = 10.0  # EXECUTOR_QUEUE_GRACE (added to the timeout for POST /execute)
    max_queue: int = 1000  # EXECUTOR_MAX_QUEUE (queued executions before 429)

    # Docker security proxy.
    proxy_listen: str = "0.0.0.0:2375"  # PROXY_LISTEN
    proxy_upstream: str = "unix:///var/run/docker.sock"  # PROXY_UPSTREAM
    proxy_audit_log: str = "-"  # PROXY_AUDIT_LOG (a file path, or - for stderr)
    proxy_allowed_runtimes: tuple[str, ...] = ("", "runc", "runsc")  # PROXY_ALLOWED_RUNTIMES
    # The secret proxy and workers share: the proxy serves only clients that prove it.
    proxy_token: str = ""  # EXECUTOR_PROXY_TOKEN
    proxy_token_file: str = ""  # EXECUTOR_PROXY_TOKEN_FILE (read; the proxy creates it if absent)
    proxy_head_timeout: float = 10.0  # PROXY_HEAD_TIMEOUT (seconds for a request head, once begun)
    proxy_idle_timeout: float = 120.0  # PROXY_IDLE_TIMEOUT (seconds a connection may sit idle)
    proxy_max_connections: int = 1024  # PROXY_MAX_CONNECTIONS (client connections at once)

    log_level: str = "INFO"  # EXECUTOR_LOG_LEVEL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        d = cls()
        runtimes = _str(env, "PROXY_ALLOWED_RUNTIMES", ",".join(d.proxy_allowed_runtimes))
        settings = cls(
            redis_url=_str(env, "REDIS_URL", "redis://localhost:6379/0"),
            docker_host=_str(env, "DOCKER_HOST", d.docker_host),
            instance=_str(env, "HOSTNAME", socket.gethostname() or d.instance),
            port=_int(env, "PORT", d.port, 1),
            max_code_bytes=_int(env, "EXECUTOR_MAX_CODE_BYTES", d.max_code_bytes, 1),
            max_stdin_bytes=_int(env, "EXECUTOR_MAX_STDIN_BYTES", d.max_stdin_bytes, 0),
            max_files_bytes=_int(env, "EXECUTOR_MAX_FILES_BYTES", d.max_files_bytes, 0),
            max_timeout=_float(env, "EXECUTOR_MAX_TIMEOUT", d.max_timeout, 0.001),
            max_memory_mb=_int(env, "EXECUTOR_MAX_MEMORY_MB", d.max_memory_mb, 16),
            max_cpus=_float(env, "EXECUTOR_MAX_CPUS", d.max_cpus, 0.05),
            max_output_bytes=_int(env, "EXECUTOR_MAX_OUTPUT_BYTES", d.max_output_bytes, 1),
            default_timeout=_float(env, "EXECUTOR_DEFAULT_TIMEOUT", d.default_timeout, 0.001),
            default_memory_mb=_int(env, "EXECUTOR_DEFAULT_MEMORY_MB", d.default_memory_mb, 16),
            default_cpus=_float(env, "EXECUTOR_DEFAULT_CPUS", d.default_cpus, 0.05),
            pids_limit=_int(env, "EXECUTOR_PIDS_LIMIT", d.pids_limit, 8),
            tmpfs_mb=_int(env, "EXECUTOR_TMPFS_MB", d.tmpfs_mb, 1),
            nofile_limit=_int(env, "EXECUTOR_NOFILE_LIMIT", d.nofile_limit, 16),
            runtime=_str(env, "EXECUTOR_RUNTIME", d.runtime),
            python_image=_str(env, "EXECUTOR_PYTHON_IMAGE", d.python_image),
            images=_images(env, "EXECUTOR_IMAGES"),
            docker_api_version=_str(env, "EXECUTOR_DOCKER_API_VERSION", d.docker_api_version),
            docker_timeout=_float(env, "EXECUTOR_DOCKER_TIMEOUT", d.docker_timeout, 1.0),
            sandbox_uids=_uid_range(env, "EXECUTOR_SANDBOX_UIDS", d.sandbox_uids),
            concurrency=_int(env, "EXECUTOR_CONCURRENCY", d.concurrency, 1),
            worker_languages=_names(env, "EXECUTOR_LANGUAGES"),
            route_by_language=_int(env, "EXECUTOR_ROUTE_BY_LANGUAGE", 0, 0) == 1,
            pool_size=_int(env, "EXECUTOR_POOL_SIZE", d.pool_size, 0),
            pool_max_idle_s=_float(env, "EXECUTOR_POOL_MAX_IDLE", d.pool_max_idle_s, 1.0),
            pool_refill_concurrency=_int(
                env, "EXECUTOR_POOL_REFILL_CONCURRENCY", d.pool_refill_concurrency, 1
            ),
            max_starts=_int(env, "EXECUTOR_MAX_STARTS", d.max_starts, 1),
            reap_interval_s=_float(env, "EXECUTOR_REAP_INTERVAL", d.reap_interval_s, 1.0),
            history_size=_int(env, "EXECUTOR_HISTORY_SIZE", d.history_size, 1),
            result_ttl_s=_int(env, "EXECUTOR_RESULT_TTL", d.result_ttl_s, 60),
            queue_grace_s=_float(env, "EXECUTOR_QUEUE_GRACE", d.queue_grace_s, 0.0),
            max_queue=_int(env, "EXECUTOR_MAX_QUEUE", d.max_queue, 1),
            proxy_listen=_str(env, "PROXY_LISTEN", d.proxy_listen),
            proxy_upstream=_str(env, "PROXY_UPSTREAM", d.proxy_upstream),
            proxy_audit_log=_str(env, "PROXY_AUDIT_LOG", d.proxy_audit_log),
            proxy_allowed_runtimes=tuple(r.strip() for r in runtimes.split(",")),
            proxy_token=_str(env, "EXECUTOR_PROXY_TOKEN", d.proxy_token),
            proxy_token_file=_str(env, "EXECUTOR_PROXY_TOKEN_FILE", d.proxy_token_file),
            proxy_head_timeout=_float(env, "PROXY_HEAD_TIMEOUT", d.proxy_head_timeout, 0.1),
            proxy_idle_timeout=_float(env, "PROXY_IDLE_TIMEOUT", d.proxy_idle_timeout, 0.1),
            proxy_max_connections=_int(env, "PROXY_MAX_CONNECTIONS", d.proxy_max_connections, 1),
            log_level=_str(env, "EXECUTOR_LOG_LEVEL", d.log_level).upper(),
        )
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

    def public(self) -> dict[str, object]:
        """The settings without anything that could hold a credential (for /status)."""
        hidden = {"redis_url", "docker_host", "proxy_upstream", "proxy_token"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
