"""Queued executions whose message the broker lost: found, and queued again.

A record is written before its message is published, and kombu takes a message off its list
(BRPOP) before it notes it as unacknowledged (a second command). Whatever Redis forgets in
between stays `queued` with no message that any worker will ever get:
- a Redis restored from a snapshot, or a replica promoted before it had the last writes;
- an API process that died between recording a submission and publishing it;
- a worker that died holding a delivered message it had not claimed yet (kombu would hand it
  out again only after the visibility timeout, many minutes later).

So the workers' heartbeats look, together at most once per RESCUE_EVERY_MS, at the executions
`queued` for longer than EXECUTOR_RESCUE_AFTER_S. One whose message waits in a queue is left
alone. One whose message sits unacknowledged (delivered that long ago, never claimed) is put
back at the head of its queue, as kombu restores a message. One whose message is nowhere is
published again when its request is stored with it (an API submission); a producer's message
carried its program, so that execution is finished as `internal_error` (`execution_lost`).
A message sent twice runs once: the claim answers a second delivery from the record.

A deep backlog (more than SCAN_MESSAGES messages or SCAN_BYTES of them) is not searched: its
executions are waiting their turn, and an orphan among them is found once it drains.
"""

from __future__ import annotations

import json
import logging
import time
from bisect import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kombu.transport.redis import PRIORITY_STEPS, Channel

from executor import metrics
from executor.names import (
    HISTORY_BY,
    PREFIX,
    QUEUE_KEYS,
    QUEUES,
    RECORD,
    TASK_NAME,
    queue_key,
)
from executor.store import MESSAGE_ID_LUA, Store

log = logging.getLogger(__name__)

RESCUING = PREFIX + "rescuing"  # held by the worker that looks for lost messages
RESCUE_EVERY_MS = 5000  # the workers' looks, together, at most once per this
STALE_LIMIT = 256  # queued executions one look considers, oldest first
SCAN_MESSAGES = 1000  # a look reads the queues only while they hold at most this many
SCAN_BYTES = 8 << 20  # and at most this much
MAX_PRIORITY = 9  # kombu's virtual transport: priorities are clamped to 0..9
LOST_MESSAGE = (
    "the broker lost this execution's message before any worker ran it (a Redis restart or "
    "failover); a producer's message carries its program, so it cannot be sent again"
)

# KEYS: the index of queued executions, the lock, kombu's unacked hash and its index, the
# queues' lists. ARGV: cutoff, limit, record prefix, lock ms, max messages, max bytes, task.
# Returns {'missing', id, language, has request} and {'unacked', id, tag, entry} items.
_ORPHANS = (
    MESSAGE_ID_LUA
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local wanted, n = {}, 0
for _, id in ipairs(stale) do
  if redis.call('HGET', ARGV[3] .. id, 'status') == 'queued' then
    wanted[id] = true
    n = n + 1
  end
end
if n == 0 then return {} end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then return {} end
local depth = 0
for k = 5, #KEYS do depth = depth + redis.call('LLEN', KEYS[k]) end
if depth > tonumber(ARGV[5]) then return {} end
local bytes = tonumber(ARGV[6])
for k = 5, #KEYS do
  for _, raw in ipairs(redis.call('LRANGE', KEYS[k], 0, -1)) do
    bytes = bytes - #raw
    if bytes < 0 then return {} end
    local id = message_id(raw, ARGV[7])
    if id then wanted[id] = nil end
  end
end
local found = {}
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do
  local id = message_id(entries[i + 1], ARGV[7])
  if id and wanted[id] then
    wanted[id] = nil
    local since = redis.call('ZSCORE', KEYS[4], entries[i])
    if since and tonumber(since) <= tonumber(ARGV[1]) then
      table.insert(found, {'unacked', id, entries[i], entries[i + 1]})
    end
  end
end
for _, id in ipairs(stale) do
  if wanted[id] then
    local rec = ARGV[3] .. id
    table.insert(found, {'missing', id, redis.call('HGET', rec, 'language') or '',
                         redis.call('HEXISTS', rec, 'request')})
  end
end
return found
"""
)

# Put an unacknowledged message back at the head of its queue (kombu's restore), unless it
# was acknowledged or restored meanwhile. KEYS: unacked, its index, the queue's list.
_REQUEUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Orphan:
    """A queued execution with no message waiting for it."""

    id: str
    kind: str  # "unacked" (delivered long ago, never claimed) or "missing" (no message)
    language: str = ""
    stored: bool = False  # a missing one: its request is stored with the record
    tag: str = ""  # an unacked one: kombu's delivery tag
    entry: str = ""  # and kombu's entry for it ([message, exchange, routing key])


Publish = Callable[[str, str, int], None]  # (execution id, language, characters of code)


class Rescuer:
    """Looks for orphans (one worker at a time) and queues them again. Thread-safe."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        incarnation: str,
        worker: str,
        after_s: float,
        events: Callable[[str, int], None] = lambda name, n: None,
    ) -> None:
        """`events`: counts what was done (metrics.RESCUED)."""
        self.store = store
        self.events = events
        self.publish = publish
        self.incarnation = incarnation
        self.worker = worker
        self.after_s = after_s
        self._orphans = store.redis.register_script(_ORPHANS)
        self._requeue = store.redis.register_script(_REQUEUE)

    def __call__(self, now: float | None = None) -> int:
        """One look (a heartbeat's); how many executions were queued again or finished."""
        rescued = 0
        for orphan in self.orphans(now):
            if orphan.kind == "unacked":
                action, done = "requeued", self._restore(orphan)
            elif orphan.stored:
                action, done = "republished", self._publish(orphan)
            else:
                action, done = "lost", self._lose(orphan)
            if done:
                self.events(metrics.RESCUED[action], 1)
            rescued += done
        return rescued

    def orphans(self, now: float | None = None) -> list[Orphan]:
        """The queued executions older than `after_s` whose message is in no queue (none when
        another worker looked within RESCUE_EVERY_MS)."""
        cutoff = (time.time() if now is None else now) - self.after_s
        keys = [HISTORY_BY + "status:queued", RESCUING]
        keys += [Channel.unacked_key, Channel.unacked_index_key, *QUEUE_KEYS]
        args: list[str | int | float] = [repr(cutoff), STALE_LIMIT, RECORD, RESCUE_EVERY_MS]
        args += [SCAN_MESSAGES, SCAN_BYTES, TASK_NAME.replace(".", "%.")]
        with self.store.translated("look for lost messages"):
            reply = cast(list[list[Any]], self._orphans(keys, args))
        found = []
        for kind, execution_id, *rest in reply:
            if kind == "unacked":
                found.append(Orphan(execution_id, kind, tag=rest[0], entry=rest[1]))
            else:
                found.append(Orphan(execution_id, kind, language=rest[0], stored=bool(rest[1])))
        return found

    def _restore(self, orphan: Orphan) -> int:
        message, _exchange, routing_key = json.loads(orphan.entry)
        queue = _queue_key(str(routing_key), message)
        if queue is None:  # not one of our queues: kombu restores it after the visibility timeout
            return 0
        if _held_until(message) > time.time() - self.after_s:
            return 0  # a producer's countdown: its worker holds it until then, as Celery does
        for part in (message.get("headers"), message.get("properties", {}).get("delivery_info")):
            if isinstance(part, dict):
                part["redelivered"] = True
        keys = [Channel.unacked_key, Channel.unacked_index_key, queue]
        with self.store.translated("queue a message again"):
            moved = self._requeue(keys, [orphan.tag, orphan.entry, json.dumps(message)])
        if moved:
            log.warning(
                "execution %s: its message was delivered but never claimed (its worker died "
                "or lost Redis); queued again",
                orphan.id,
            )
        return int(bool(moved))

    def _publish(self, orphan: Orphan) -> int:
        request = self.store.stored_request(orphan.id)
        if request is None:  # claimed or finished meanwhile
            return 0
        code = json.loads(request).get("code", "")
        self.publish(orphan.id, orphan.language, len(code) if isinstance(code, str) else 0)
        log.warning(
            "execution %s: the broker lost its message (a Redis restart or failover); queued again",
            orphan.id,
        )
        return 1

    def _lose(self, orphan: Orphan) -> int:
        claim = self.store.claim(orphan.id, orphan.language, self.incarnation, self.worker)
        if not claim.claimed:
            return 0
        body = {
            "id": orphan.id,
            "status": "internal_error",
            "code": "execution_lost",
            "message": LOST_MESSAGE,
        }
        self.store.finish(orphan.id, self.incarnation, body, worker=self.worker)
        log.warning("execution %s: the broker lost its producer's message", orphan.id)
        return 1


def _held_until(message: dict[str, Any]) -> float:
    """When a message with an ETA (a producer's countdown) is due, else 0."""
    headers = message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return 0.0
    try:
        due = datetime.fromisoformat(eta)
    except ValueError:
        return 0.0
    return (due if due.tzinfo else due.replace(tzinfo=UTC)).timestamp()


def _queue_key(routing_key: str, message: dict[str, Any]) -> str | None:
    """The list kombu keeps `message` in when it is published to the queue `routing_key` (our
    queues are bound by their own names), or None for a queue that is not ours."""
    if routing_key not in QUEUES:
        return None
    try:
        priority = int(message["properties"]["priority"])
    except (KeyError, TypeError, ValueError):
        priority = 0
    step = PRIORITY_STEPS[bisect(PRIORITY_STEPS, max(0, min(priority, MAX_PRIORITY))) - 1]
    return queue_key(routing_key, step)
