"""Which containers are ours, who created each, and which host uids they hold.

An id is ours when the proxy saw it come back from an allowed create, or, for an id it has not
seen (the proxy restarted), when the engine says the container carries the sandbox label.

For every container it saw created, the proxy remembers the creator (the authenticated
identity that sent the create), the uid the container runs as, and whether it has been attached.
Only the creator may start a container or attach to it, and it may attach only once: nobody can
read another execution's output, or feed a warm container a program of their own. A container
the proxy did not see created (made before it started, or elsewhere) has no creator, so nobody
may ever start or attach to it; it can still be inspected, waited for, killed and removed.

A uid is held by every container of ours not yet removed: a create asks `holders(uid)` and
checks each with the engine (a container that removed itself frees its uid). At start, and
again whenever the map has grown well past what it held at the last pass, `sync()` reads the
engine's list of our labelled containers: ones it did not know are added (without a creator,
with the uid the engine reports), and known ones the engine no longer has are forgotten. A
remove through the proxy forgets at once. The map is bounded: past `capacity`, the oldest
entries go (which only ever takes rights away).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from executor.policy import LABEL_SANDBOX, sandbox_uid
from executor.proxy.upstream import UpstreamUnreachable

CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
SYNC_MIN = 1024  # entries before the first pass that prunes the map


class Verdict(Enum):
    OURS = "ours"
    NOT_OURS = "not ours"
    MISSING = "no such container"


Lookup = Callable[[str], Awaitable[tuple[int, Any]]]
Listing = Callable[[], Awaitable[tuple[int, Any]]]


@dataclass(slots=True)
class Sandbox:
    """What the proxy knows of one container of ours."""

    creator: str | None  # the identity that created it through this proxy; None: not seen
    uid: int | None  # the host uid its program runs as (None: unknown)
    attached: bool = False  # its one attach has been allowed
    seq: int = 0  # when it was recorded (a sync forgets only what it could have listed)


def _labelled(labels: Any) -> bool:
    return isinstance(labels, dict) and labels.get(LABEL_SANDBOX) == "1"


class Ownership:
    """The containers known to be ours (with creator, uid, attached), and engine lookups."""

    def __init__(
        self, lookup: Lookup, listing: Listing | None = None, capacity: int = 65536
    ) -> None:
        self._lookup = lookup  # id -> (status, inspect body) from the engine
        self._listing = listing  # -> (status, list of our labelled containers, any state)
        self._capacity = capacity
        self._entries: dict[str, Sandbox] = {}
        self._by_uid: dict[int, set[str]] = {}
        self._seq = 0
        self._synced = False
        self._sync_after = SYNC_MIN
        self._lock: asyncio.Lock | None = None

    # -- the map ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def created(self, container: str, creator: str, uid: int | None) -> None:
        """Remember a container the engine just created for `creator`'s allowed create."""
        if CONTAINER_ID.fullmatch(container) is None:
            return
        self.forget(container)
        self._put(container, Sandbox(creator, uid))

    def add(self, container: str, uid: int | None = None) -> None:
        """Remember a labelled container the proxy did not see created (no creator)."""
        if CONTAINER_ID.fullmatch(container) is None or container in self._entries:
            return
        self._put(container, Sandbox(None, uid))

    def _put(self, container: str, entry: Sandbox) -> None:
        self._seq += 1
        entry.seq = self._seq
        self._entries[container] = entry
        if entry.uid is not None:
            self._by_uid.setdefault(entry.uid, set()).add(container)
        while len(self._entries) > self._capacity:
            self.forget(next(iter(self._entries)))

    def forget(self, container: str) -> None:
        """The container is gone (removed through the proxy, or the engine says so)."""
        entry = self._entries.pop(container, None)
        if entry is not None and entry.uid is not None:
            holders = self._by_uid.get(entry.uid)
            if holders is not None:
                holders.discard(container)
                if not holders:
                    del self._by_uid[entry.uid]

    def known(self, container: str) -> bool:
        return container in self._entries

    def get(self, container: str) -> Sandbox | None:
        return self._entries.get(container)

    def holders(self, uid: int) -> list[str]:
        """The containers this map says run as `uid` (the engine may have removed some)."""
        return sorted(self._by_uid.get(uid, ()))

    def claim(self, container: str, identity: str, *, attach: bool) -> str:
        """Why `identity` may not start `container` (or attach to it), or "" when it may.

        An attach allowed here is the container's only one: it is marked at once, before the
        engine is asked, so two attaches racing each other cannot both pass.
        """
        entry = self._entries.get(container)
        action = "attach to" if attach else "start"
        if entry is None or entry.creator is None:
            return (
                f"container {container} was not created through this proxy (since it started): "
                f"nobody may {action} it"
            )
        if entry.creator != identity:
            return f"only the worker that created container {container} may {action} it"
        if attach:
            if entry.attached:
                return f"container {container} has been attached to once already"
            entry.attached = True
        return ""

    # -- the engine ------------------------------------------------------------------------

    async def check(self, container: str) -> Verdict:
        """Whether `container` (a full id) is one of ours; may ask the engine once."""
        if container in self._entries:
            return Verdict.OURS
        status, body = await self._lookup(container)
        if status == 404:
            return Verdict.MISSING
        if status != 200 or not isinstance(body, dict) or body.get("Id") != container:
            return Verdict.NOT_OURS
        config = body.get("Config")
        if not isinstance(config, dict) or not _labelled(config.get("Labels")):
            return Verdict.NOT_OURS
        self.add(container, sandbox_uid(config))
        return Verdict.OURS

    @property
    def synced(self) -> bool:
        """Whether the engine's list of our containers has been read once."""
        return self._synced

    def wants_sync(self) -> bool:
        """Whether the map has grown enough since the last pass to prune it again."""
        return len(self._entries) > self._sync_after

    async def ready(self) -> None:
        """Return once the engine's list has been read (reading it now if it never was)."""
        if not self._synced:
            await self.sync(first=True)

    async def sync(self, *, first: bool = False) -> None:
        """Read the engine's list of our containers into the map; one pass at a time.

        Raises UpstreamUnreachable when the engine cannot be asked (the map is then as it was).
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if first and self._synced:
                return
            await self._sync()

    async def _sync(self) -> None:
        if self._listing is None:
            self._synced = True
            return
        mark = self._seq
        status, body = await self._listing()
        if status != 200 or not isinstance(body, list):
            raise UpstreamUnreachable(f"the engine's container list answered {status}")
        listed = {
            item["Id"]
            for item in body
            if isinstance(item, dict)
            and isinstance(item.get("Id"), str)
            and CONTAINER_ID.fullmatch(item["Id"])
            and _labelled(item.get("Labels"))
        }
        for container, entry in list(self._entries.items()):
            if entry.seq <= mark and container not in listed:
                self.forget(container)
        for container in sorted(listed):
            if container in self._entries:
                continue
            status, info = await self._lookup(container)
            if status == 404:
                continue  # removed since it was listed
            if status != 200 or not isinstance(info, dict):
                raise UpstreamUnreachable(f"the engine's inspect of {container} answered {status}")
            config = info.get("Config")
            if isinstance(config, dict) and _labelled(config.get("Labels")):
                self.add(container, sandbox_uid(config))
        self._synced = True
        self._sync_after = max(SYNC_MIN, 2 * len(self._entries))
