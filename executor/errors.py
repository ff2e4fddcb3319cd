"""The one exception tree of the service.

Every error the service raises on purpose is an `ExecutorError`; each class carries the HTTP
status it is answered with and a stable machine-readable `code`. Every class rebuilds from its
message alone (``cls(str(exc))``), so errors cross the Celery boundary intact.

    ExecutorError                    500 internal_error   a fault of our own
    ├── InvalidRequest               422 invalid_request  input that breaks the contract;
    │                                                     `errors` names each bad field
    ├── PayloadTooLarge              413 payload_too_large
    ├── Unauthorized                 401 unauthorized     API keys are on and the request
    │                                                     has no valid `Authorization: Bearer`
    ├── Forbidden                    403 forbidden        a valid key that is not an operator
    │                                                     key, on an operator's endpoint
    ├── ExecutionNotFound            404 not_found        an id never submitted (or another
    │                                                     key's execution)
    ├── ExecutionFinished            409 already_finished a cancel came after the end
    ├── QueueFull                    429 queue_full       back-pressure, retry later
    ├── RateLimited                  429 rate_limited     this key's EXECUTOR_RATE_LIMIT is
    │                                                     spent; retry after Retry-After
    ├── ServiceUnavailable           503 unavailable      a dependency is down, retry later
    │   ├── DockerUnavailable        503 docker_unavailable    names the address it tried
    │   ├── RedisUnavailable         503 redis_unavailable
    │   ├── NoWorkers                503 no_workers
    │   └── ImageUnavailable         503 image_unavailable     names the image
    ├── SandboxError                 502 sandbox_error    a container misbehaved or could
    │   │                                                 not be made; names the step
    │   ├── PolicyRefused            502 policy_refused   the Docker proxy refused a request
    │   │   └── UidInUse             502 uid_in_use       the proxy refused a create: a living
    │   │                                                 sandbox has its uid (drawn again)
    │   └── ContainerLost            502 container_lost   a container ended before its program
    │                                                     arrived (the service retries once)
    └── ExecutionLost                502 execution_lost   the worker vanished mid-run

The program's own failures (non-zero exit, timeout, OOM) are never exceptions: they are data.
"""

from __future__ import annotations

from typing import Any


class ExecutorError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None

    def __init__(self, message: str = "", errors: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "status": self.status, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.errors))


class InvalidRequest(ExecutorError):
    """The request breaks the contract."""

    status = 422
    code = "invalid_request"


class PayloadTooLarge(ExecutorError):
    """The request body is larger than allowed."""

    status = 413
    code = "payload_too_large"


class Unauthorized(ExecutorError):
    """This endpoint needs an API key: send `Authorization: Bearer <key>`."""

    status = 401
    code = "unauthorized"


class Forbidden(ExecutorError):
    """This endpoint needs an operator key."""

    status = 403
    code = "forbidden"


class ExecutionNotFound(ExecutorError):
    """No execution with this id was ever submitted (or its record has expired)."""

    status = 404
    code = "not_found"


class ExecutionFinished(ExecutorError):
    """The execution has already finished: there is nothing left to cancel."""

    status = 409
    code = "already_finished"


class QueueFull(ExecutorError):
    """Too many executions are waiting; retry later."""

    status = 429
    code = "queue_full"
    retry_after = 5


class RateLimited(ExecutorError):
    """This key sent more requests than EXECUTOR_RATE_LIMIT allows; retry later."""

    status = 429
    code = "rate_limited"
    retry_after = 1

    def __init__(
        self, message: str = "", errors: dict[str, Any] | None = None, *, retry_after: int = 1
    ) -> None:
        super().__init__(message, errors)
        self.retry_after = max(1, retry_after)  # seconds until the limit's window resets


class ServiceUnavailable(ExecutorError):
    """A dependency of the service is down; retry later."""

    status = 503
    code = "unavailable"
    retry_after = 5


class DockerUnavailable(ServiceUnavailable):
    """The Docker engine (through the proxy) does not answer."""

    code = "docker_unavailable"


class RedisUnavailable(ServiceUnavailable):
    """Redis does not answer."""

    code = "redis_unavailable"


class NoWorkers(ServiceUnavailable):
    """No worker answers."""

    code = "no_workers"


class ImageUnavailable(ServiceUnavailable):
    """A sandbox image is missing and could not be pulled."""

    code = "image_unavailable"


class SandboxError(ExecutorError):
    """A sandbox container could not be made, or broke the runner's protocol."""

    status = 502
    code = "sandbox_error"


class PolicyRefused(SandboxError):
    """The Docker security proxy refused a request of ours."""

    code = "policy_refused"


class UidInUse(PolicyRefused):
    """The Docker proxy refused a create because a living sandbox already runs as its uid."""

    code = "uid_in_use"


class ContainerLost(SandboxError):
    """A sandbox container ended before it received its program; nothing of it ran."""

    code = "container_lost"


class ExecutionLost(ExecutorError):
    """The execution's worker vanished before it finished."""

    status = 502
    code = "execution_lost"


def all_error_classes() -> list[type[ExecutorError]]:
    """Every class of the tree, base first (used by tests and the API docs)."""
    seen: list[type[ExecutorError]] = []
    stack: list[type[ExecutorError]] = [ExecutorError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


def error_for(code: str, message: str, errors: dict[str, Any] | None = None) -> ExecutorError:
    """Rebuild the error whose `code` is `code` (the base class for an unknown code)."""
    by_code = {cls.code: cls for cls in reversed(all_error_classes())}
    return by_code.get(code, ExecutorError)(message, errors)
