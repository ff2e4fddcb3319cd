"""Who may talk to the Docker security proxy: only workers that hold the shared secret.

Proxy and workers share one secret (`EXECUTOR_PROXY_TOKEN`, or a file named by
`EXECUTOR_PROXY_TOKEN_FILE` that the proxy creates when it is absent). The secret itself never
crosses the wire: each worker has an identity (`instance:pid:random`, the value of its
containers' worker label) and sends, on every request,

    Authorization: Executor <identity> <hex HMAC-SHA256(secret, identity)>

The proxy recomputes the MAC (compared in constant time) and so knows which worker is asking:
the worker label of a create must be that identity, and only the creator may start or attach
the container. A process that reaches the proxy's port without the secret gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from executor.config import Settings, SettingsError
from executor.policy import WORKER_ID

HEADER = "Authorization"
SCHEME = "Executor"
_MAC = re.compile(r"[0-9a-f]{64}")


def worker_identity(instance: str) -> str:
    """A fresh identity for one worker process: instance, pid and 32 random bits."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", instance)[:80] or "executor"
    return f"{name}:{os.getpid()}:{secrets.token_hex(4)}"


def _mac(secret: bytes, identity: str) -> str:
    return hmac.new(secret, identity.encode("ascii"), hashlib.sha256).hexdigest()


def credential(secret: bytes, identity: str) -> str:
    """The Authorization header value with which `identity` proves it holds `secret`."""
    return f"{SCHEME} {identity} {_mac(secret, identity)}"


def verify(secret: bytes, value: str | None) -> str | None:
    """The identity that `value` (an Authorization header) proves, or None."""
    if not value:
        return None
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != SCHEME:
        return None
    _, identity, mac = parts
    if not WORKER_ID.fullmatch(identity) or not _MAC.fullmatch(mac):
        return None
    return identity if hmac.compare_digest(mac, _mac(secret, identity)) else None


def load_secret(settings: Settings) -> bytes | None:
    """The shared secret for a client (worker); None when none is configured.

    Raises SettingsError when a token file is named but cannot be read.
    """
    if settings.proxy_token:
        return settings.proxy_token.encode()
    if not settings.proxy_token_file:
        return None
    path = Path(settings.proxy_token_file)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise SettingsError(f"EXECUTOR_PROXY_TOKEN_FILE {path}: cannot read it: {e}") from None
    if not token:
        raise SettingsError(f"EXECUTOR_PROXY_TOKEN_FILE {path} is empty")
    return token.encode()


def ensure_secret(settings: Settings) -> bytes:
    """The proxy's secret: the token, or the token file's (created with a random token).

    The proxy never runs open: without either setting it refuses to start.
    """
    if settings.proxy_token or not settings.proxy_token_file:
        secret = load_secret(settings)
        if secret is None:
            raise SettingsError(
                "the proxy needs a shared secret: set EXECUTOR_PROXY_TOKEN, or "
                "EXECUTOR_PROXY_TOKEN_FILE (created with a random token when absent)"
            )
        return secret
    path = Path(settings.proxy_token_file)
    if not path.exists():
        # Written aside, then linked into place: a reader never sees a half-written file.
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        # Readable by the file's group too: in docker-compose.yml the proxy runs as root with
        # the workers' group, and only the proxy, workers and API mount the file's volume.
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another proxy made it first: use theirs
        finally:
            aside.unlink()
    secret = load_secret(settings)
    assert secret is not None  # a token file is configured
    return secret


def probe(url: str, timeout: float = 3.0) -> None:
    """An authenticated GET /_ping of the proxy at `url` (container healthchecks use it).

    Returns when the proxy accepted the credential and the engine answered; raises otherwise.
    """
    import urllib.request

    secret = load_secret(Settings.from_env())
    if secret is None:
        raise SettingsError("set EXECUTOR_PROXY_TOKEN or EXECUTOR_PROXY_TOKEN_FILE")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the proxy's URL must be http(s)://, got {url!r}")
    headers = {HEADER: credential(secret, worker_identity("probe"))}
    request = urllib.request.Request(f"{url}/_ping", headers=headers)  # noqa: S310 - checked
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - checked
        answer.read()
