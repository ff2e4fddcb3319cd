"""Host uids for sandboxes: one per living container, never two at once.

Per-user kernel limits (inotify instances, pipe buffer pages, POSIX message-queue bytes, the
process count of RLIMIT_NPROC, locked memory...) are counted by uid. Sandboxes that shared one
uid would share them, so one execution could exhaust them for a neighbour. Each container gets
its own uid from a configured range instead.

A worker process never hands out a uid it still holds. Several workers on one engine draw at
random from the same range; the Docker security proxy refuses a create whose uid a living
sandbox already has (409), and the sandbox then draws again.
"""

from __future__ import annotations

import random
import threading


class UidsExhausted(RuntimeError):
    """Every uid of the range is held by this process."""


class UidAllocator:
    """Hands out uids of [first, last], each held until `release()`. Thread-safe."""

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._random = random.SystemRandom()

    def acquire(self) -> int:
        size = self.last - self.first + 1
        with self._lock:
            if len(self._held) >= size:
                raise UidsExhausted(f"all {size} sandbox uids are in use")
            while True:
                uid = self.first + self._random.randrange(size)
                if uid not in self._held:
                    self._held.add(uid)
                    return uid

    def release(self, uid: int) -> None:
        with self._lock:
            self._held.discard(uid)

    def held(self) -> int:
        with self._lock:
            return len(self._held)
