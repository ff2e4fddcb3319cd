"""Which containers are ours: the ones this service created as sandboxes.

An id is ours when the proxy saw it come back from an allowed create, or, for an id it has not
seen (the proxy restarted, or another proxy instance created it), when the engine says the
container carries the sandbox label. Positive answers are remembered (a bounded number, oldest
forgotten first); negative ones are not, so a refused id is looked up again next time.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from executor.policy import LABEL_SANDBOX

CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class Verdict(Enum):
    OURS = "ours"
    NOT_OURS = "not ours"
    MISSING = "no such container"


Lookup = Callable[[str], Awaitable[tuple[int, Any]]]


class Ownership:
    """The ids known to be ours, and the upstream lookup for the others."""

    def __init__(self, lookup: Lookup, capacity: int = 65536) -> None:
        self._lookup = lookup  # id -> (status, inspect body) from the engine
        self._capacity = capacity
        self._known: dict[str, None] = {}

    def add(self, container: str) -> None:
        """Remember an id the engine just created for an allowed sandbox create."""
        if CONTAINER_ID.fullmatch(container) is None:
            return
        self._known[container] = None
        if len(self._known) > self._capacity:
            del self._known[next(iter(self._known))]

    def known(self, container: str) -> bool:
        return container in self._known

    async def check(self, container: str) -> Verdict:
        """Whether `container` (a full id) is one of ours; may ask the engine once."""
        if container in self._known:
            return Verdict.OURS
        status, body = await self._lookup(container)
        if status == 404:
            return Verdict.MISSING
        if status != 200 or not isinstance(body, dict) or body.get("Id") != container:
            return Verdict.NOT_OURS
        config = body.get("Config")
        labels = config.get("Labels") if isinstance(config, dict) else None
        if not isinstance(labels, dict) or labels.get(LABEL_SANDBOX) != "1":
            return Verdict.NOT_OURS
        self.add(container)
        return Verdict.OURS
