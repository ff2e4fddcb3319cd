"""The history of executions in Redis: indexes by time, and the walk that lists a page of it.

Part of the store (executor.store calls it inside its Redis error translation; nothing else
does). Keys (executor.names):

    history                          sorted set: every execution id, scored by its creation
                                     time (epoch seconds)
    history:<field>:<value>          the same for the executions whose record has that value:
                                     status:<status>, language:<name>, worker:<HOSTNAME>,
                                     owner:<API key id>

INDEX_LUA brings one record's memberships up to date from the record itself (idempotent,
whatever transition came before). Every script of the store that moves a record runs it in the
same step: submit, claim, finish, cancel, adoption, the lost-execution sweep; `index(id)` runs
it alone, for a change made elsewhere. A record leaves `status:queued` and `status:running`
as it moves on; the final status index keeps it.

Expiry without a scan: a record expires EXECUTOR_RESULT_TTL after its last change; each index
write also drops the members created more than that long ago (ZREMRANGEBYSCORE, amortised one
removal per insertion) and renews the index's own expiry, so an index nobody writes to any more
(a worker gone, a key retired) disappears with its last record. A member whose record is gone
anyway is skipped by a listing and removed then.

A page walks one index, newest first, with ZREVRANGEBYSCORE in chunks: the smallest of the
filters' indexes (ZCOUNT over the time window), checking the other filters against each record.
The cursor is the (score, id) of the last entry looked at; entries of equal score come in
reverse id order, so a walk resumes exactly after it. A page looks at most BUDGET entries: a
rare combination of filters answers a short page (maybe empty) with a `next` to go on from,
never a walk of the whole history.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from executor.names import HISTORY, HISTORY_BY, HISTORY_FIELDS, RECORD

# What a history item leaves out of a result: the captured output (GET /executions/{id} has it).
HIDDEN = ("stdout", "stderr", "files")
STEPS_WITH_OUTPUT = ("compile", "tests")  # a result's parts that carry output of their own
STEP_OUTPUT = ("stdout", "stderr")
BUDGET = 5000  # index entries one page may look at
CHUNK = 200  # entries a walk with several filters fetches first (doubling after)
PENDING = ("queued", "running")  # the statuses a record leaves
# A finished record keeps its item apart (`summary`) only when leaving the output out saves
# more than this many bytes per read; else an item is read from its result.
SUMMARY_SAVING = 1024

# The history's part of every script that moves a record (executor.store): a Lua function
# that brings one record's memberships up to date from the record itself (idempotent, whatever
# transition came before), inside the same script as the transition, so that indexing costs no
# round trip of its own. Its parameters are the last four values of the script's ARGV
# (`index_args()`); a script appends them after its own.
INDEX_LUA = """
local HISTORY_AT = #ARGV - 3
local function history_index(rec, id, summary)
  local f = redis.call('HMGET', rec, 'status', 'created', 'language', 'worker', 'owner')
  local status, created = f[1], f[2]
  if not status or not created then return 0 end
  if summary and summary ~= '' then redis.call('HSET', rec, 'summary', summary) end
  local all, prefix = ARGV[HISTORY_AT], ARGV[HISTORY_AT + 1]
  local cutoff, ttl = ARGV[HISTORY_AT + 2], ARGV[HISTORY_AT + 3]
  local function put(key)
    redis.call('ZADD', key, created, id)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. cutoff)
    redis.call('EXPIRE', key, ttl)
  end
  put(all)
  put(prefix .. 'status:' .. status)
  for _, pending in ipairs({PENDING_STATUSES}) do
    if pending ~= status then redis.call('ZREM', prefix .. 'status:' .. pending, id) end
  end
  if f[3] and f[3] ~= '' then put(prefix .. 'language:' .. f[3]) end
  if f[4] and f[4] ~= '' then put(prefix .. 'worker:' .. f[4]) end
  if f[5] and f[5] ~= '' then put(prefix .. 'owner:' .. f[5]) end
  return 1
end
""".replace("PENDING_STATUSES", ", ".join(f"'{status}'" for status in PENDING))

# KEYS[1]: the record; ARGV: its id, its item (or ''), then index_args().
_INDEX = INDEX_LUA + "return history_index(KEYS[1], ARGV[1], ARGV[2])\n"


def index_args(ttl_s: int, now: float | None = None) -> list[str | int | float]:
    """The parameters of INDEX_LUA, to append to the ARGV of a script that uses it."""
    cutoff = (time.time() if now is None else now) - ttl_s
    return [HISTORY, HISTORY_BY, repr(cutoff), ttl_s]


# For each id after the filters: 1 when its record has every filter's value, 0 when not, -1
# when the record is gone. Server-side, so a walk costs one round trip per chunk.
_MATCH = """
local prefix, nf = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3 + 2 * nf, #ARGV do
  local rec = prefix .. ARGV[i]
  local status = redis.call('HGET', rec, 'status')
  local verdict = 1
  if not status then verdict = -1 else
    for j = 0, nf - 1 do
      local name, value = ARGV[3 + 2 * j], ARGV[4 + 2 * j]
      local have = status
      if name ~= 'status' then have = redis.call('HGET', rec, name) end
      if have ~= value then verdict = 0; break end
    end
  end
  out[#out + 1] = verdict
end
return out
"""


def index_key(name: str, value: str) -> str:
    """The index of the executions whose record has `value` in its field `name`."""
    return f"{HISTORY_BY}{name}:{value}"


# Per id: status, language, worker, created_at, and the item's JSON: the summary where the
# record keeps one, else the result (nil while pending).
_ITEMS = """
local out = {}
for i = 2, #ARGV do
  local rec = ARGV[1] .. ARGV[i]
  local row = redis.call('HMGET', rec, 'status', 'language', 'worker', 'created_at', 'summary')
  if row[1] and not row[5] then row[5] = redis.call('HGET', rec, 'result') end
  out[#out + 1] = row
end
return out
"""


def item(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A finished execution's history item: its result without HIDDEN, and its build's and
    test cases' output left out as well."""
    kept = {k: v for k, v in payload.items() if k not in HIDDEN}
    for name in STEPS_WITH_OUTPUT:
        steps = kept.get(name)
        if isinstance(steps, dict):
            kept[name] = _without_output(steps)
        elif isinstance(steps, list):
            kept[name] = [_without_output(s) if isinstance(s, dict) else s for s in steps]
    return kept


def _without_output(step: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in step.items() if k not in STEP_OUTPUT}


def summary(payload: Mapping[str, Any], result: str) -> str:
    """What a record keeps as its item beside `result` (its payload's JSON): the item's JSON
    when that saves more than SUMMARY_SAVING bytes per read, else "" (read the result)."""
    text = json.dumps(item(payload))
    return text if len(result) - len(text) > SUMMARY_SAVING else ""


@dataclass(frozen=True)
class Position:
    """Where a walk stands: an entry of the index (its creation time and id)."""

    score: float
    id: str


@dataclass(frozen=True)
class HistoryQuery:
    """A page to list: `filters` maps fields of HISTORY_FIELDS to the value they must have;
    `since` and `until` bound the creation time (epoch seconds, inclusive); `after` is the
    previous page's `next`."""

    filters: Mapping[str, str] = field(default_factory=dict)
    since: float | None = None
    until: float | None = None
    limit: int = 50
    after: Position | None = None


@dataclass(frozen=True)
class HistoryPage:
    items: list[dict[str, Any]]
    next: Position | None  # None: nothing older matches


class History:
    """The history indexes of one Redis. Thread-safe; raises redis-py's errors (the store
    translates them)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self.ttl_s = ttl_s
        self._index = client.register_script(_INDEX)
        self._match = client.register_script(_MATCH)
        self._items = client.register_script(_ITEMS)

    def index(self, execution_id: str, summary: str = "") -> None:
        """Bring `execution_id`'s memberships up to date with its record (and store its
        history item `summary` once it finished); nothing for a record that is gone."""
        args = [execution_id, summary, *index_args(self.ttl_s)]
        self._index([RECORD + execution_id], args)

    def page(self, query: HistoryQuery) -> HistoryPage:
        """Up to `query.limit` executions matching `query`, newest first, and where to go on."""
        for name in query.filters:
            if name not in HISTORY_FIELDS:
                raise ValueError(f"no history index for {name!r}")
        low = time.time() - self.ttl_s
        if query.since is not None:
            low = max(low, query.since)
        high = math.inf if query.until is None else query.until
        after = query.after
        if after is not None:
            high = min(high, after.score)
        if high < low:
            return HistoryPage([], None)
        key = self._smallest(query.filters, low, high)
        if key is None:
            return HistoryPage([], None)
        return self._walk(key, query, low, high)

    def _smallest(self, filters: Mapping[str, str], low: float, high: float) -> str | None:
        """The index to walk: the one with the fewest entries in the window (None: empty)."""
        if not filters:
            return HISTORY
        keys = [index_key(name, value) for name, value in filters.items()]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zcount(key, _bound(low), _bound(high))
        counts = [int(n) for n in pipe.execute()]
        count, key = min(zip(counts, keys, strict=True))
        return key if count else None

    def _walk(self, key: str, query: HistoryQuery, low: float, high: float) -> HistoryPage:
        """Walk `key` newest first, checking each entry's record against every filter (the
        record is the truth: an index may still hold an entry that moved on)."""
        after, limit, filters = query.after, query.limit, query.filters
        pairs: list[str | int] = [part for item in filters.items() for part in item]
        found: list[Position] = []
        seen: set[str] = set()
        gone: list[str] = []
        last: Position | None = None
        offset = examined = 0
        # One filter or none: nearly every entry matches, so fetch just what the page needs.
        chunk = limit + 1 if len(filters) <= 1 else max(CHUNK, limit + 1)
        try:
            while True:
                entries = cast(
                    list[tuple[str, float]],
                    self._redis.zrevrangebyscore(
                        key, _bound(high), _bound(low), start=offset, num=chunk, withscores=True
                    ),
                )
                offset += len(entries)
                fresh = [
                    Position(score, member)
                    for member, score in entries
                    if member not in seen
                    and not (after and score == after.score and member >= after.id)
                ]
                args: list[str | int] = [RECORD, len(filters), *pairs, *(p.id for p in fresh)]
                verdicts = cast(list[int], self._match([], args)) if fresh else []
                for position, verdict in zip(fresh, verdicts, strict=True):
                    seen.add(position.id)
                    examined += 1
                    last = position
                    if verdict < 0:
                        gone.append(position.id)
                    elif verdict:
                        found.append(position)
                        if len(found) > limit:  # one more than the page: there is a next
                            return self._page(found[:limit], found[limit - 1])
                if len(entries) < chunk:
                    return self._page(found, None)
                if examined >= BUDGET:
                    return self._page(found, last)
                chunk = min(2 * chunk, 2000)
        finally:
            if gone:
                pipe = self._redis.pipeline(transaction=False)
                pipe.zrem(key, *gone)
                pipe.zrem(HISTORY, *gone)
                pipe.execute()

    def _page(self, found: list[Position], next_at: Position | None) -> HistoryPage:
        """The items of `found`: each finished record's result without HIDDEN (its summary when
        it keeps one), or its pending state."""
        rows = cast(list[list[str | None]], self._items([], [RECORD, *(p.id for p in found)]))
        items: list[dict[str, Any]] = []
        for position, row in zip(found, rows if found else [], strict=True):
            status, language, worker, created_at, text = (row + [None] * 5)[:5]
            if status is None:  # expired since the walk looked at it
                continue
            if text and status not in PENDING:
                items.append(item(json.loads(text)))
            else:
                pending = {"id": position.id, "status": status, "language": language}
                pending["created_at"] = created_at
                if worker:
                    pending["worker"] = worker
                items.append(pending)
        return HistoryPage(items, next_at)


def _bound(score: float) -> str:
    """A score as ZRANGEBYSCORE takes it, infinities included."""
    if math.isinf(score):
        return "+inf" if score > 0 else "-inf"
    return repr(score)
