"""The only module that talks to Docker.

It speaks the Docker Engine API (through the security proxy at DOCKER_HOST) with the docker
SDK's low-level client, plus a raw hijacked socket for attach. Every Docker failure leaves this
module as one of our own errors (see executor.errors), never as docker-py's:
unreachable -> DockerUnavailable (naming the address), a proxy refusal -> PolicyRefused,
an image that is missing and cannot be pulled -> ImageUnavailable (naming the image),
anything else -> SandboxError (naming the step).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import requests
import requests.adapters

from executor.config import Settings, SettingsError
from executor.errors import (
    DockerUnavailable,
    ExecutorError,
    ImageUnavailable,
    PolicyRefused,
    SandboxError,
    UidInUse,
)
from executor.proxyauth import HEADER, credential, load_secret, worker_identity

IMAGE_RECHECK_S = 10.0  # how long an image's id is trusted before it is inspected again
REMOVE_ATTEMPTS = 3  # force-removals of one container before its error is the caller's


@dataclass
class Attached:
    """A hijacked attach connection: raw bytes both ways, `pending` already read past the head."""

    sock: socket.socket
    pending: bytes


class Engine:
    """A Docker engine reached at `settings.docker_host`. Connects lazily; thread-safe.

    Every request carries this worker's credential for the security proxy (see
    executor.proxyauth); `identity` is also the worker label of every container it creates.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity = worker_identity(settings.instance)
        self._credential: str | None = None
        self.address = settings.docker_host
        self._version = settings.docker_api_version
        self._timeout = settings.docker_timeout
        self._pool_size = settings.concurrency + settings.pool_refill_concurrency + 4
        self._client: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._images: dict[str, tuple[str, float]] = {}
        self._pulls: dict[str, threading.Lock] = {}

    def _auth(self) -> str | None:
        """The Authorization value for the proxy (None without a configured secret)."""
        if self._credential is None:
            try:
                secret = load_secret(self.settings)
            except SettingsError as e:
                raise DockerUnavailable(f"no credential for the Docker proxy: {e}") from None
            self._credential = credential(secret, self.identity) if secret else ""
        return self._credential or None

    @property
    def api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                auth = self._auth()
                client = docker.APIClient(
                    base_url=self.address,
                    version=self._version,
                    timeout=self._timeout,
                    max_pool_size=self._pool_size,
                )
                if self.address.startswith(("tcp://", "http://")):
                    # docker-py sizes its pool only for unix sockets; every worker thread and
                    # the pool's builders may talk to the proxy at once.
                    adapter = requests.adapters.HTTPAdapter(
                        pool_connections=1, pool_maxsize=self._pool_size
                    )
                    client.mount("http://", adapter)
                if auth:
                    client.headers[HEADER] = auth
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @contextlib.contextmanager
    def _translated(self, step: str, target: str = "") -> Iterator[None]:
        """Turn whatever docker-py or the network raises into our own errors."""
        what = f"{step} {target}".strip()
        try:
            yield
        except ExecutorError:
            raise
        except docker.errors.APIError as e:
            status = e.status_code or 0
            explanation = str(e.explanation or e)
            if status == 401:
                raise PolicyRefused(
                    f"the Docker proxy did not accept this worker's credential ({what}); "
                    f"check EXECUTOR_PROXY_TOKEN / EXECUTOR_PROXY_TOKEN_FILE: {explanation}"
                ) from None
            if status == 403:
                raise PolicyRefused(f"the Docker proxy refused to {what}: {explanation}") from None
            if status == 409 and step == "create a container from":
                raise UidInUse(f"the Docker proxy refused to {what}: {explanation}") from None
            if status in (502, 503, 504):
                raise DockerUnavailable(
                    f"Docker is unreachable at {self.address} ({what}): {explanation}"
                ) from None
            raise SandboxError(f"Docker failed to {what}: {explanation}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, OSError) as e:
            raise DockerUnavailable(
                f"Docker is unreachable at {self.address} ({what}): {type(e).__name__}: {e}"
            ) from None
        except docker.errors.DockerException as e:
            raise SandboxError(f"Docker failed to {what}: {e}") from None

    def ping(self) -> None:
        """Return when the engine answers; raise DockerUnavailable naming the address."""
        with self._translated("ping"):
            self.api.ping()

    def image_id(self, image: str) -> str:
        """The id (sha256 digest) of `image`, pulling it once when it is missing."""
        cached = self._images.get(image)
        now = time.monotonic()
        if cached is not None and now - cached[1] < IMAGE_RECHECK_S:
            return cached[0]
        with self._lock:
            pull_lock = self._pulls.setdefault(image, threading.Lock())
        with pull_lock:
            with self._translated("inspect image", image):
                try:
                    image_id = str(self.api.inspect_image(image)["Id"])
                except docker.errors.NotFound:
                    image_id = ""
            if not image_id:
                image_id = self._pull(image)
        self._images[image] = (image_id, time.monotonic())
        return image_id

    def has_image(self, image: str) -> bool | None:
        """Whether the engine has `image` (never pulls); None when it cannot tell."""
        try:
            with self._translated("inspect image", image):
                try:
                    self.api.inspect_image(image)
                except docker.errors.NotFound:
                    return False
        except Exception:  # noqa: BLE001 - unknown: the caller keeps the language
            return None
        return True

    def cached_image_id(self, image: str) -> str | None:
        """The id last seen for `image`, without asking Docker."""
        cached = self._images.get(image)
        return cached[0] if cached else None

    def _pull(self, image: str) -> str:
        if "@" in image:  # by digest: the engine takes the digest as the tag
            repository, _, tag = image.partition("@")
        else:
            repository, _, tag = image.rpartition(":")
            if not repository or "/" in tag:
                repository, tag = image, "latest"
        try:
            with self._translated("pull image", image):
                for event in self.api.pull(repository, tag=tag, stream=True, decode=True):
                    if isinstance(event, dict) and event.get("error"):
                        raise ImageUnavailable(
                            f"sandbox image {image} cannot be pulled: {event['error']}"
                        )
                return str(self.api.inspect_image(image)["Id"])
        except (SandboxError, PolicyRefused) as e:
            raise ImageUnavailable(
                f"sandbox image {image} is missing and cannot be pulled: {e}"
            ) from None

    def create(self, config: dict[str, Any]) -> str:
        with self._translated("create a container from", str(config.get("Image"))):
            return str(self.api.create_container_from_config(config)["Id"])

    def start(self, container_id: str) -> None:
        with self._translated("start container", container_id[:12]):
            self.api.start(container_id)

    def attach(self, container_id: str) -> Attached:
        """Hijack an attach connection (stdin, stdout, stderr, stream) to the container."""
        with self._translated("attach to container", container_id[:12]):
            auth = self._auth()
            sock = self._connect()
            try:
                request = (
                    f"POST /v{self._version}/containers/{container_id}/attach"
                    "?stdin=1&stdout=1&stderr=1&stream=1 HTTP/1.1\r\n"
                    "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                    + (f"{HEADER}: {auth}\r\n" if auth else "")
                    + "Content-Length: 0\r\n\r\n"
                )
                sock.sendall(request.encode())
                head, pending = _read_head(sock)
                status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = status_line.split(" ", 2)
                if len(parts) < 2 or parts[1] not in ("101", "200"):
                    body = pending[:500].decode("utf-8", "replace")
                    code = parts[1] if len(parts) > 1 else "?"
                    if code in ("401", "403"):
                        raise PolicyRefused(f"the Docker proxy refused to attach: {body}")
                    if code in ("502", "503"):
                        raise DockerUnavailable(f"Docker is unreachable at {self.address}: {body}")
                    raise SandboxError(f"Docker failed to attach ({status_line}): {body}")
            except BaseException:
                sock.close()
                raise
            return Attached(sock=sock, pending=pending)

    def _connect(self) -> socket.socket:
        url = urlsplit(self.address)
        if url.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(url.path)
        elif url.scheme in ("tcp", "http"):
            sock = socket.create_connection(
                (url.hostname or "localhost", url.port or 2375), self._timeout
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            raise DockerUnavailable(f"DOCKER_HOST {self.address} is neither unix:// nor tcp://")
        return sock

    def kill(self, container_id: str) -> None:
        """SIGKILL the container; a container that is already gone is fine."""
        with self._translated("kill container", container_id[:12]):
            try:
                self.api.kill(container_id, signal="SIGKILL")
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                if e.status_code != 409:  # not running any more
                    raise

    def remove(self, container_id: str) -> bool:
        """Force-remove the container and return once it is gone; True when it was there.

        Gone already is fine. When the engine is removing it already (AutoRemove after the
        runner exited), this waits for that removal to finish: a caller may count the
        container as removed once this returns.
        """
        with self._translated("remove container", container_id[:12]):
            for attempt in range(REMOVE_ATTEMPTS):
                try:
                    self.api.remove_container(container_id, force=True)
                except docker.errors.NotFound:
                    return False
                except docker.errors.APIError as e:
                    if e.status_code == 409:  # a removal is already in progress
                        self._wait_removed(container_id)
                        return False
                    # The container stopped between the engine's look and its kill ("Could
                    # not kill running container ...: is not running"): a race of the
                    # engine's, gone on the next try.
                    if "is not running" not in str(e.explanation) or attempt + 1 == REMOVE_ATTEMPTS:
                        raise
                    time.sleep(0.1)
                else:
                    return True
        return True

    def _wait_removed(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):  # gone before the wait began
            self.api.wait(container_id, timeout=self._timeout, condition="removed")

    def wait(self, container_id: str, timeout: float) -> int | None:
        """The container's exit code once it stops, or None when it is gone or slow."""
        with self._translated("wait for container", container_id[:12]):
            try:
                return int(self.api.wait(container_id, timeout=timeout)["StatusCode"])
            except (docker.errors.NotFound, requests.exceptions.ReadTimeout):
                return None

    def oom_killed(self, container_id: str) -> bool:
        """Whether the engine saw the container killed for memory (False once it is gone).

        Under gVisor an out-of-memory kill ends the whole sandbox, runner included, so only
        the engine can tell.
        """
        with self._translated("inspect container", container_id[:12]):
            try:
                state = self.api.inspect_container(container_id).get("State") or {}
            except docker.errors.NotFound:
                return False
        return state.get("OOMKilled") is True

    def sandboxes(self, *labels: str) -> list[dict[str, Any]]:
        """Every container (any state) carrying all of `labels` ("key=value")."""
        with self._translated("list containers"):
            found = self.api.containers(all=True, filters={"label": list(labels)})
        return list(found)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SandboxError("the Docker engine closed the attach connection")
        data += chunk
        if len(data) > 65536:
            raise SandboxError("the attach answer has an oversized head")
    head, _, pending = data.partition(b"\r\n\r\n")
    return head, pending
