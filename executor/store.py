"""The only module that talks to Redis: execution records, their history, counters, workers.

Everything here is shared by every API and worker process. Keys (all under ``executor:``):

    execution:<id>   hash: the record (status, language, created, worker, result JSON...),
                     expiring EXECUTOR_RESULT_TTL after its last change; while queued, an
                     API submission's `request` (the body as JSON): its Celery message
                     carries only the id, and the worker takes the request at its claim
    recent           list of ids, newest first, capped at EXECUTOR_HISTORY_SIZE
    running          hash: id -> the worker incarnation that runs it
    done:<id>        list holding the final payload once: what a waiting POST /execute pops
    finished         pub/sub channel: the id of each execution as it finishes (wakes waiters)
    events:<id>      stream: the execution's live events (status, output, the result marker),
                     bounded by MAXLEN and expiring with the record (see executor.streams);
                     the status and result entries are added by the same scripts that move
                     the record, so the stream's order is the record's
    counters         hash: executions by status, containers, durations
    cancel:<id>      string: set while a running execution is to be cancelled; the worker
                     that runs it hears it on ``cancels`` (pub/sub) at once, or finds it at
                     its next heartbeat, and kills its container
    adopting         string: held for a second by the worker that looks for producers'
                     messages in the queue (`adopt()`); `adopting:on-demand` the same for
                     the API, held for ADOPT_ON_DEMAND_MS
    worker:<inc>     string: a worker incarnation's heartbeat (JSON), expiring HEARTBEAT_TTL_S
    workers          sorted set of incarnations that have beaten
    history, history:<field>:<value>
                     sorted sets of ids by creation time: the history's indexes
                     (executor.history; every transition below re-indexes its record)
    minute:<m>       hash: executions finished in minute m by status and latency bucket, for
                     the operator's page (executor.timeline); an hour of them at most

A record's `owner` field is the id of the API key that submitted it (executor.web.auth), never
the key; `summary` is its history item once finished (the result without its output), kept
only when the output is large enough for that to matter (executor.history.summary).

A record moves queued -> running -> finished (a status of the contract, or internal_error), or
queued -> cancelled; each step is one Lua script, so a record is never half written and a
finish is applied only by the incarnation that claimed the execution. A running execution
whose incarnation stopped beating is "lost": `sweep_lost()` finishes it as internal_error (any
process may sweep).

Waiting for a result costs no Redis connection per waiter: each process subscribes once to
``finished`` (a listener thread, a greenlet under gevent) and wakes the waiters of the ids it
hears; a waiter then pops ``done:<id>``. A publish missed (Redis restarting) only delays a
waiter to the end of its slice, where it reads the record.

Redis faults leave this module as RedisUnavailable naming the address (never its password).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from executor import metrics, timeline
from executor.cancellation import cancelled_before_start
from executor.errors import ExecutorError, NoWorkers, QueueFull, RedisUnavailable
from executor.history import INDEX_LUA, History, HistoryPage, HistoryQuery, index_args, summary
from executor.models import iso
from executor.names import (
    ADOPTING,
    ADOPTING_ON_DEMAND,
    CANCEL,
    CANCELS,
    COUNTERS,
    DONE,
    EVENTS,
    FINISHED,
    IDEMPOTENCY,
    MINUTE,
    QUEUE_KEYS,
    RECENT,
    RECORD,
    RUNNING,
    TASK_NAME,
    WORKER,
    WORKERS,
)

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 6  # a worker silent for this long is taken for dead
ADOPT_LIMIT = 1000  # messages a look for producers' messages reads, newest first
ADOPT_BYTES = 8 << 20  # and at most this much of them (a producer's message holds its code)
ADOPT_EVERY_MS = 1000  # the workers' looks, together, at most once per this
ADOPT_ON_DEMAND_MS = 200  # the API's looks (an unknown id asked for), at most once per this
DONE_TTL_S = 30  # how long a finished payload waits for the POST /execute that asked for it
# A finished payload up to this size rides on its FINISHED message, so that its waiters have
# it at once; a larger one is only LPUSHed (a waiter pops it), not sent to every API process.
INLINE_PAYLOAD_MAX = 64 << 10
WAIT_SLICE_S = 2.0  # one wait; between slices the waiter looks for a lost worker
POOL_SIZE = 64  # Redis connections per process
EVENTS_MAX_LEN = 10000  # entries kept of an execution's event stream (EXECUTOR_EVENTS_MAX_LEN)
POOL_WAIT_S = 5.0  # how long a caller waits for a free one before Redis counts as unavailable
LOST_MESSAGE = (
    "the worker {worker} was lost before this execution finished (it stopped or stopped "
    "answering); the program is not run again"
)

# The operator page's timeline (executor.timeline): one finished execution added to its
# minute, inside the script that finishes it. `fields`: the hash fields to count, space-separated.
MINUTE_LUA = """
local function count_minute(key, fields, ttl)
  for field in string.gmatch(fields, '%S+') do redis.call('HINCRBY', key, field, 1) end
  redis.call('EXPIRE', key, ttl)
end
"""

_SUBMIT = (
    INDEX_LUA
    + """
local depth = 0
for i = 5, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
if depth >= tonumber(ARGV[7]) then return {'full', depth} end
local live = 0
for _, inc in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if redis.call('EXISTS', ARGV[8] .. inc) == 1 then live = live + 1
  else redis.call('ZREM', KEYS[4], inc) end
end
if live == 0 then return {'no_workers', depth} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', depth} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', 'queued', 'language', ARGV[2],
           'created', ARGV[3], 'created_at', ARGV[4], 'request', ARGV[11])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[10]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
redis.call('HINCRBY', KEYS[3], ARGV[9], 1)
redis.call('XADD', ARGV[12], 'MAXLEN', '~', ARGV[13], '*', 'e', 'status', 'd', ARGV[14])
redis.call('EXPIRE', ARGV[12], ARGV[5])
history_index(KEYS[1], ARGV[1], '')
return {'ok', depth}
"""
)

_CLAIM = (
    INDEX_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'language', ARGV[8], 'created', ARGV[4],
             'created_at', ARGV[5])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
  redis.call('HINCRBY', KEYS[3], ARGV[9], 1)
  redis.call('XADD', ARGV[10], 'MAXLEN', '~', ARGV[11], '*', 'e', 'status', 'd', ARGV[12])
elseif status ~= 'queued' then
  return {status, redis.call('HGET', KEYS[1], 'incarnation') or '',
          redis.call('HGET', KEYS[1], 'result') or '', ''}
end
if ARGV[8] ~= '' and (redis.call('HGET', KEYS[1], 'language') or '') == '' then
  redis.call('HSET', KEYS[1], 'language', ARGV[8])  -- a producer's message, adopted unread
end
local request = redis.call('HGET', KEYS[1], 'request') or ''
redis.call('HDEL', KEYS[1], 'request')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'incarnation', ARGV[2],
           'started', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('XADD', ARGV[10], 'MAXLEN', '~', ARGV[11], '*', 'e', 'status', 'd', ARGV[13])
redis.call('EXPIRE', ARGV[10], ARGV[6])
history_index(KEYS[1], ARGV[1], '')
return {'claimed', redis.call('HGET', KEYS[1], 'created'),
        redis.call('HGET', KEYS[1], 'created_at'), request}
"""
)

_FINISH = (
    INDEX_LUA
    + MINUTE_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  -- Our claim is gone: a Redis that came back from a snapshot, or a replica promoted before
  -- it had the claim. Nobody else took the execution since (that would be a claim), so the
  -- run that did happen finishes it.
  redis.call('HDEL', KEYS[1], 'request')
  redis.call('HSET', KEYS[1], 'incarnation', ARGV[2], 'worker', ARGV[20])
elseif status ~= 'running' or redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'duration_ms', ARGV[5])
  redis.call('HINCRBY', KEYS[3], ARGV[9], ARGV[5])
  redis.call('HINCRBY', KEYS[3], ARGV[10], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[8], 1)
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
redis.call('DEL', KEYS[5])
if ARGV[18] ~= '' then  -- the live output not published yet: before the result entry
  for _, entry in ipairs(cjson.decode(ARGV[18])) do
    redis.call('XADD', ARGV[12], 'MAXLEN', '~', ARGV[13], '*', 'e', entry[1], 'd', entry[2])
  end
end
redis.call('XADD', ARGV[12], 'MAXLEN', '~', ARGV[13], '*', 'e', 'result', 'd', '')
redis.call('EXPIRE', ARGV[12], ARGV[6])
if #ARGV[4] <= tonumber(ARGV[19]) then  -- a waiter needs no second round trip for it
  redis.call('PUBLISH', ARGV[11], ARGV[1] .. '\\n' .. ARGV[4])
else
  redis.call('PUBLISH', ARGV[11], ARGV[1])
end
history_index(KEYS[1], ARGV[1], ARGV[14])
count_minute(ARGV[15], ARGV[16], ARGV[17])
return 1
"""
)

_CANCEL = (
    INDEX_LUA
    + MINUTE_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown', ''} end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'result', ARGV[1])
  redis.call('HDEL', KEYS[1], 'request')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('XADD', ARGV[8], 'MAXLEN', '~', ARGV[9], '*', 'e', 'result', 'd', '')
  redis.call('EXPIRE', ARGV[8], ARGV[2])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  history_index(KEYS[1], ARGV[6], '')
  count_minute(ARGV[10], ARGV[11], ARGV[12])
  return {'queued', ARGV[1]}
end
if status == 'running' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[2])
  redis.call('PUBLISH', ARGV[7], ARGV[6])
  return {'running', ''}
end
return {status, redis.call('HGET', KEYS[1], 'result') or ''}
"""
)

# A message waits in kombu's lists (LPUSHed, so the newest first), or in its unacked hash
# inside [message, exchange, routing key], as JSON whose `headers` carry the task name and id.
# This finds the id of one of `task`'s messages (its name with Lua's pattern escapes) without
# decoding the body (base64, up to megabytes): after "headers", the key "id" follows a `{` or
# `,` outside any string (a quote inside a JSON string is escaped). Only ids of the allowed
# charset are taken.
MESSAGE_ID_LUA = """
local function message_id(raw, task)
  local h = string.find(raw, '"headers"', 1, true)
  if not h or not string.find(raw, '"task"%s*:%s*"' .. task .. '"', h) then return nil end
  local id = string.match(raw, '[{,]%s*"id"%s*:%s*"([%w%._:%-]+)"', h)
  if id and #id <= 128 then return id end
  return nil
end
"""

# Producers' messages with no record yet get one (see Store.adopt).
_ADOPT = (
    INDEX_LUA
    + MESSAGE_ID_LUA
    + """
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[8]) then return false end
local budget, bytes = tonumber(ARGV[7]), tonumber(ARGV[10])
local adopted = {}
for k = 4, #KEYS do
  local n = redis.call('LLEN', KEYS[k])
  local i = 0
  while i < n and budget > 0 and bytes > 0 do
    for _, raw in ipairs(redis.call('LRANGE', KEYS[k], i, i + 15)) do
      budget, bytes = budget - 1, bytes - #raw
      local id = message_id(raw, ARGV[9])
      if id and redis.call('EXISTS', ARGV[1] .. id) == 0 then
        redis.call('HSET', ARGV[1] .. id, 'id', id, 'status', 'queued', 'language', '',
                   'created', ARGV[2], 'created_at', ARGV[3])
        redis.call('EXPIRE', ARGV[1] .. id, ARGV[4])
        redis.call('LPUSH', KEYS[1], id)
        redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[5]) - 1)
        redis.call('HINCRBY', KEYS[2], ARGV[6], 1)
        redis.call('XADD', ARGV[11] .. id, 'MAXLEN', '~', ARGV[12], '*', 'e', 'status',
                   'd', ARGV[13])
        redis.call('EXPIRE', ARGV[11] .. id, ARGV[4])
        history_index(ARGV[1] .. id, id, '')
        adopted[#adopted + 1] = id
      end
    end
    i = i + 16
  end
end
return adopted
"""
)

_SWEEP = (
    INDEX_LUA
    + MINUTE_LUA
    + """
local lost = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local id, inc = entries[i], entries[i + 1]
  if redis.call('EXISTS', ARGV[2] .. inc) == 0 then
    redis.call('HDEL', KEYS[1], id)
    local rec = ARGV[1] .. id
    if redis.call('HGET', rec, 'status') == 'running'
       and redis.call('HGET', rec, 'incarnation') == inc then
      local worker = redis.call('HGET', rec, 'worker') or 'unknown'
      local message = string.gsub(ARGV[6], '{worker}', function() return worker end)
      local body = cjson.encode({id = id, status = 'internal_error', code = 'execution_lost',
                                 message = message})
      redis.call('HSET', rec, 'status', 'internal_error', 'result', body)
      redis.call('EXPIRE', rec, ARGV[4])
      redis.call('HINCRBY', KEYS[2], ARGV[7], 1)
      redis.call('LPUSH', ARGV[3] .. id, body)
      redis.call('EXPIRE', ARGV[3] .. id, ARGV[5])
      redis.call('XADD', ARGV[9] .. id, 'MAXLEN', '~', ARGV[10], '*', 'e', 'result', 'd', '')
      redis.call('EXPIRE', ARGV[9] .. id, ARGV[4])
      redis.call('PUBLISH', ARGV[8], id)
      history_index(rec, id, '')
      count_minute(ARGV[11], ARGV[12], ARGV[13])
      table.insert(lost, id)
    end
  end
end
return lost
"""
)


def safe_address(url: str) -> str:
    """`url` without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(url: str, *, blocking_s: float | None = None) -> redis.Redis:
    """A client with a thread-safe connection pool, that fails fast when Redis is down.

    The pool holds at most POOL_SIZE connections; past that a caller (thread or greenlet)
    waits for one up to POOL_WAIT_S, so thousands of concurrent requests share a few dozen
    connections instead of failing with "too many connections".

    One quick retry covers a pooled connection that a Redis restart closed; anything more would
    turn "Redis is down" into a wait. No connection is made until the first command.

    With `blocking_s`, a client of one connection of its own instead, for a caller that
    blocks in Redis (XREAD BLOCK) for up to that long.
    """
    if blocking_s is not None:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=blocking_s + 5.0,
            single_connection_client=True,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=WAIT_SLICE_S + 3.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


@dataclass(frozen=True)
class Record:
    """An execution as stored: `payload` is the final answer once finished, else None."""

    id: str
    status: str
    language: str
    created: float
    worker: str
    payload: dict[str, Any] | None
    owner: str = ""  # the id of the API key that submitted it ("" without keys, or a producer)


@dataclass(frozen=True)
class Claim:
    """What a worker found when it came to run an execution.

    `claimed` is True when this worker now runs it; otherwise `status` is what another delivery
    of the same message already made of it (running elsewhere, or finished with `payload`).
    """

    claimed: bool
    status: str
    started: float = 0.0
    created: float = 0.0
    created_at: str = ""
    incarnation: str = ""
    payload: dict[str, Any] | None = None
    request: str = ""  # an API submission's stored request (JSON), taken with the claim


# Error prefixes of a Redis that is up but unusable (protected mode, auth, replica, loading,
# out of memory): the dependency is down for us, so the answer is 503, not a fault of ours.
_REFUSALS = frozenset(
    {"DENIED", "NOAUTH", "WRONGPASS", "NOPERM", "READONLY", "LOADING", "MASTERDOWN", "OOM", "BUSY"}
)
_REFUSAL_TYPES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.OutOfMemoryError,
)


def _refused(error: redis.ResponseError) -> bool:
    if isinstance(error, _REFUSAL_TYPES):
        return True
    message = str(error).rpartition("caused error: ")[2]  # a pipeline names the command first
    return message.split(" ", 1)[0] in _REFUSALS


class Store:
    """Records, history, counters and worker heartbeats in one Redis. Thread-safe."""

    def __init__(
        self, url: str, *, ttl_s: int, history_size: int, events_max_len: int = EVENTS_MAX_LEN
    ) -> None:
        self.url = url
        self.address = safe_address(url)
        self.ttl_s = ttl_s
        self.history_size = history_size
        self.events_max_len = events_max_len
        self.redis = connect(url)
        self._submit = self.redis.register_script(_SUBMIT)
        self._claim = self.redis.register_script(_CLAIM)
        self._finish = self.redis.register_script(_FINISH)
        self._sweep = self.redis.register_script(_SWEEP)
        self._cancel = self.redis.register_script(_CANCEL)
        self._adopt = self.redis.register_script(_ADOPT)
        self._finishes = _Finishes(self.redis)
        self._history = History(self.redis, ttl_s)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailable(
                f"Redis is unreachable at {self.address} ({what}): {type(e).__name__}: {e}"
            ) from None
        except redis.ResponseError as e:
            if _refused(e):  # Redis answers but will not serve us
                raise RedisUnavailable(
                    f"Redis at {self.address} refuses to {what}: {str(e)[:200]}"
                ) from None
            raise ExecutorError(f"Redis failed to {what}: {type(e).__name__}: {e}") from None
        except redis.RedisError as e:
            raise ExecutorError(f"Redis failed to {what}: {type(e).__name__}: {e}") from None

    # For the modules that share this client (executor.streams): the same translation.
    translated = _translated

    def close(self) -> None:
        self._finishes.close()
        self.redis.close()

    def ping(self) -> None:
        """Return when Redis answers; raise RedisUnavailable naming the address."""
        with self._translated("ping"):
            self.redis.ping()

    # -- submission and the wait (API) --------------------------------------------------

    def submit(
        self, execution_id: str, language: str, max_queue: int, *, request: str, owner: str = ""
    ) -> int:
        """Record a new queued execution with its `request` (JSON, kept until a worker claims
        it), of the API key whose id is `owner` if any; return the queue depth it found.

        Raises QueueFull when `max_queue` executions are waiting and NoWorkers when no worker
        beats: then nothing is recorded.
        """
        now = time.time()
        keys = [
            _record(execution_id),
            RECENT,
            COUNTERS,
            WORKERS,
            *QUEUE_KEYS,
        ]
        args: list[str | int | float] = [
            execution_id,
            language,
            repr(now),
            iso(now),
            self.ttl_s,
            self.history_size,
        ]
        with self._translated("record a submission"):
            outcome, depth = self._submit(
                keys,
                [
                    *args,
                    max_queue,
                    WORKER,
                    metrics.SUBMITTED,
                    owner,
                    request,
                    EVENTS + execution_id,
                    self.events_max_len,
                    _status_event("queued"),
                    *index_args(self.ttl_s, now),
                ],
            )
        if outcome == "full":
            raise QueueFull(f"{depth} executions are waiting (EXECUTOR_MAX_QUEUE is {max_queue})")
        if outcome == "no_workers":
            raise NoWorkers("no worker is alive to run executions (none sent a heartbeat)")
        if outcome == "exists":
            raise ExecutorError(f"execution id {execution_id} is already taken")
        return int(depth)

    def remember_key(self, key: str, fingerprint: str, execution_id: str) -> tuple[str, str]:
        """Tie an Idempotency-Key to `execution_id` for a body with `fingerprint`, unless it is
        tied already: then (its execution id, its body's fingerprint). One atomic SET NX, so
        of concurrent retries exactly one submits."""
        name = IDEMPOTENCY + hashlib.sha256(key.encode()).hexdigest()
        value = f"{fingerprint} {execution_id}"
        with self._translated("remember an Idempotency-Key"):
            if self.redis.set(name, value, nx=True, ex=self.ttl_s):
                return execution_id, fingerprint
            stored = cast(str | None, self.redis.get(name))
        if stored is None:  # expired between the two calls: a fresh claim
            return self.remember_key(key, fingerprint, execution_id)
        known_fingerprint, _, known_id = stored.partition(" ")
        return known_id, known_fingerprint

    def forget_key(self, key: str) -> None:
        """Untie a key whose submission failed (nothing ran), so a retry may submit."""
        with self._translated("forget an Idempotency-Key"):
            self.redis.delete(IDEMPOTENCY + hashlib.sha256(key.encode()).hexdigest())

    def discard(self, execution_id: str) -> None:
        """Forget a submission that could not be queued (its id was never given out)."""
        with self._translated("discard a submission"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(_record(execution_id), EVENTS + execution_id)
            pipe.lrem(RECENT, 1, execution_id)
            pipe.hincrby(COUNTERS, metrics.SUBMITTED, -1)
            pipe.execute()

    def wait(self, execution_id: str, seconds: float) -> dict[str, Any] | None:
        """The final payload of `execution_id` once it finishes within `seconds`, else None.

        Waits at most WAIT_SLICE_S, holding no Redis connection meanwhile.
        """
        timeout = max(0.01, min(seconds, WAIT_SLICE_S))
        waiter = self._finishes.watch(execution_id)
        try:
            payload = self._pop_done(execution_id)
            if payload is None and waiter.wait(timeout):
                if waiter.payload is not None:  # it came with the message
                    return cast(dict[str, Any], json.loads(waiter.payload))
                payload = self._pop_done(execution_id)
            return payload
        finally:
            self._finishes.unwatch(execution_id, waiter)

    def _pop_done(self, execution_id: str) -> dict[str, Any] | None:
        with self._translated("wait for a result"):
            popped = cast(str | None, self.redis.lpop(DONE + execution_id))
        return None if popped is None else cast(dict[str, Any], json.loads(popped))

    def get(self, execution_id: str) -> Record | None:
        """The record of `execution_id`, or None for an id never submitted (or expired).

        A running record whose worker stopped beating is finished as lost first.
        """
        record = self._read(execution_id)
        if record and record.status == "running" and execution_id in self.sweep_lost():
            record = self._read(execution_id)
        return record

    def server_id(self) -> str:
        """The run id of the Redis server answering (another after a restart or failover)."""
        with self._translated("identify the server"):
            return str(self.redis.info("server")["run_id"])

    def stored_request(self, execution_id: str) -> str | None:
        """The request stored with `execution_id` while it is queued (an API submission's;
        the claim takes it), else None."""
        with self._translated("read a stored request"):
            status, request = self.redis.hmget(_record(execution_id), "status", "request")
        return str(request) if status == "queued" and request is not None else None

    def _read(self, execution_id: str) -> Record | None:
        with self._translated("read an execution"):
            fields = self.redis.hgetall(_record(execution_id))
        if not fields or "status" not in fields:
            return None
        result = fields.get("result")
        return Record(
            id=execution_id,
            status=str(fields["status"]),
            language=str(fields.get("language", "")),
            created=float(fields.get("created") or 0.0),
            worker=str(fields.get("worker", "")),
            payload=json.loads(result) if result else None,
            owner=str(fields.get("owner", "")),
        )

    # -- the worker's side ---------------------------------------------------------------

    def claim(self, execution_id: str, language: str, incarnation: str, worker: str) -> Claim:
        """Mark `execution_id` running on `incarnation` unless a delivery already took it.

        A record that does not exist yet (a producer's message nobody adopted) is created.
        The claim takes the stored request of an API submission (`Claim.request`) off the
        record. `language` ('' when unknown) fills in the language of an adopted record.
        """
        now = time.time()
        keys = [
            _record(execution_id),
            RECENT,
            COUNTERS,
            RUNNING,
        ]
        args: list[str | int | float] = [
            execution_id,
            incarnation,
            worker,
            repr(now),
            iso(now),
            self.ttl_s,
        ]
        with self._translated("claim an execution"):
            reply = self._claim(
                keys,
                [
                    *args,
                    self.history_size,
                    language,
                    metrics.SUBMITTED,
                    EVENTS + execution_id,
                    self.events_max_len,
                    _status_event("queued"),
                    _status_event("running"),
                    *index_args(self.ttl_s, now),
                ],
            )
        if reply[0] == "claimed":
            return Claim(
                True, "running", now, float(reply[1]), str(reply[2]), incarnation, None, reply[3]
            )
        payload = json.loads(reply[2]) if reply[2] else None
        return Claim(False, str(reply[0]), incarnation=str(reply[1]), payload=payload)

    def finish(
        self,
        execution_id: str,
        incarnation: str,
        payload: dict[str, Any],
        *,
        counter: str | None = None,
        output: Sequence[tuple[str, str]] = (),
        worker: str = "",
        encoded: str | None = None,
    ) -> bool:
        """Store the final `payload` and wake its waiter; False if the record was taken away.

        Only the incarnation that claimed the execution may finish it, once: a record already
        finished as lost (or by the time-limit watchdog) is left as it is. A record that is
        `queued` again (Redis lost the claim: restored from a snapshot, or a failover) is
        finished too, as run by `worker`: the run did happen and nobody else has claimed it.
        `output`: the live output events (name, JSON data) not published yet, added to the
        execution's stream ahead of its result entry, in the same step. `encoded`: the payload
        as JSON already (json.dumps(payload)), for a caller that keeps it.
        """
        status = str(payload["status"])
        duration = payload.get("duration_ms")
        keys = [
            _record(execution_id),
            RUNNING,
            COUNTERS,
            DONE + execution_id,
            CANCEL + execution_id,
        ]
        args: list[str | int | float] = [
            execution_id,
            incarnation,
            status,
            json.dumps(payload) if encoded is None else encoded,
            str(int(duration)) if isinstance(duration, int | float) else "",
            self.ttl_s,
            DONE_TTL_S,
            counter or metrics.executions(status),
            metrics.DURATION_MS_TOTAL,
            metrics.DURATION_COUNT,
            FINISHED,
            EVENTS + execution_id,
            self.events_max_len,
        ]
        args += [summary(payload, str(args[3])), *_minute_args(status, _latency_ms(payload))]
        args += [json.dumps(output) if output else "", INLINE_PAYLOAD_MAX, worker]
        args += index_args(self.ttl_s)
        with self._translated("store a result"):
            return bool(self._finish(keys, args))

    # -- cancelling --------------------------------------------------------------------------

    def cancel(self, execution_id: str) -> tuple[str, dict[str, Any] | None]:
        """Cancel `execution_id`: (what it was, its final payload if it has one).

        A queued execution is finished as `cancelled` at once (its waiter wakes; a worker
        that later gets its message finds it finished and does not run it): ("queued",
        payload). A running one is flagged for its worker, which kills its container and
        finishes it: ("running", None). A finished one is left alone: ("finished", payload).
        ("unknown", None) for an id never submitted. Idempotent.
        """
        with self._translated("cancel an execution"):
            fields = self.redis.hmget(_record(execution_id), "language", "created", "created_at")
        language, created, created_at = (str(f) if f is not None else None for f in fields)
        now = time.time()
        body = cancelled_before_start(
            execution_id, language or "", float(created or now), created_at or iso(now), now
        )
        keys = [_record(execution_id), COUNTERS, DONE + execution_id, CANCEL + execution_id]
        args: list[str | int | float] = [json.dumps(body), self.ttl_s, DONE_TTL_S]
        with self._translated("cancel an execution"):
            args += [metrics.executions("cancelled"), FINISHED, execution_id, CANCELS]
            args += [EVENTS + execution_id, self.events_max_len]
            args += [*_minute_args("cancelled", None), *index_args(self.ttl_s, now)]
            outcome, result = self._cancel(keys, args)
        payload = json.loads(result) if result else None
        if outcome == "queued":
            return "queued", payload
        if outcome in ("unknown", "running"):
            return str(outcome), None
        return "finished", payload

    def listen_cancels(self, cancel: Callable[[str], object]) -> Callable[[], None]:
        """Call `cancel(id)` for each running execution whose cancel is asked for from now on,
        from a thread of its own (resubscribing after a Redis fault); returns what stops it.
        A cancel it misses (Redis restarting) is found by `cancel_requested()`."""
        stopping = threading.Event()

        def listen() -> None:
            while not stopping.is_set():
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                try:
                    pubsub.subscribe(CANCELS)
                    while not stopping.is_set():
                        message = pubsub.get_message(timeout=_Finishes.POLL_S)
                        if message is not None and message.get("type") == "message":
                            cancel(str(message["data"]))
                except redis.RedisError:
                    stopping.wait(_Finishes.RETRY_S)
                finally:
                    pubsub.close()

        thread = threading.Thread(target=listen, name="executor-cancels", daemon=True)
        thread.start()

        def stop() -> None:
            stopping.set()
            thread.join(_Finishes.POLL_S + 1.0)

        return stop

    def cancel_requested(self, execution_ids: list[str]) -> list[str]:
        """Those of `execution_ids` (running here) whose cancel was asked for."""
        if not execution_ids:
            return []
        with self._translated("look for cancel requests"):
            pipe = self.redis.pipeline(transaction=False)
            for execution_id in execution_ids:
                pipe.exists(CANCEL + execution_id)
            flags = pipe.execute()
        return [i for i, flag in zip(execution_ids, flags, strict=True) if flag]

    def wait_finished(self, execution_id: str, seconds: float) -> Record | None:
        """The record of `execution_id`, once finished or after `seconds` (at most a slice),
        whichever comes first; without taking its payload from a POST /execute waiter."""
        waiter = self._finishes.watch(execution_id)
        try:
            record = self.get(execution_id)
            if record is not None and record.payload is None and seconds > 0:
                waiter.wait(min(seconds, WAIT_SLICE_S))
                record = self.get(execution_id)
            return record
        finally:
            self._finishes.unwatch(execution_id, waiter)

    # -- producers' messages -----------------------------------------------------------------

    def adopt(self, *, on_demand: bool = False) -> int:
        """Record producers' queued messages that have no record yet; how many were new.

        Looks at the newest messages of the queues (ADOPT_LIMIT, ADOPT_BYTES); their
        executions become `queued`, created now (a Celery message carries no time it was
        sent). The workers' heartbeats look together at most once a second; the API looks
        `on_demand` (an id it does not know), at most every ADOPT_ON_DEMAND_MS across all its
        processes, waiting that long for its turn once, so a flood of unknown ids costs Redis
        little.
        """
        lock, every = (ADOPTING, ADOPT_EVERY_MS)
        if on_demand:
            lock, every = (ADOPTING_ON_DEMAND, ADOPT_ON_DEMAND_MS)
        for attempt in range(2 if on_demand else 1):
            if attempt:
                time.sleep(every / 1000)
            now = time.time()
            keys = [RECENT, COUNTERS, lock, *QUEUE_KEYS]
            args: list[str | int | float] = [RECORD, repr(now), iso(now), self.ttl_s]
            args += [self.history_size, metrics.SUBMITTED, ADOPT_LIMIT, every]
            args += [TASK_NAME.replace(".", "%."), ADOPT_BYTES]
            args += [EVENTS, self.events_max_len, _status_event("queued")]
            args += index_args(self.ttl_s, now)
            with self._translated("look for producers' messages"):
                adopted = self._adopt(keys, args)  # None: another process looks right now
            if adopted is not None:
                return len(adopted)
        return 0

    def last_hour(self, now: float | None = None) -> list[timeline.Minute]:
        """The last hour, minute by minute, oldest first (executor.timeline)."""
        minutes = timeline.span(time.time() if now is None else now)
        with self._translated("read the timeline"):
            pipe = self.redis.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(MINUTE + str(minute))
            rows = pipe.execute()
        return [
            timeline.Minute.from_hash(m * 60, row) for m, row in zip(minutes, rows, strict=True)
        ]

    def sweep_lost(self) -> list[str]:
        """Finish as internal_error every running execution whose worker stopped beating."""
        keys = [RUNNING, COUNTERS]
        args: list[str | int | float] = [
            RECORD,
            WORKER,
            DONE,
        ]
        with self._translated("look for lost executions"):
            args += [self.ttl_s, DONE_TTL_S, LOST_MESSAGE, metrics.executions("internal_error")]
            args += [FINISHED, EVENTS, self.events_max_len]
            args += [*_minute_args("internal_error", None), *index_args(self.ttl_s)]
            return cast(list[str], self._sweep(keys, args))

    # -- history ---------------------------------------------------------------------------

    def index_history(self, execution_id: str) -> None:
        """Re-index `execution_id` in the history after a change of its record's status,
        worker or owner made outside this class's transitions (each of those does it)."""
        with self._translated("index an execution"):
            self._history.index(execution_id)

    def history(self, query: HistoryQuery) -> HistoryPage:
        """A page of the history, newest first (see executor.history)."""
        with self._translated("list the history"):
            return self._history.page(query)

    def beat(self, incarnation: str, info: Mapping[str, Any], counts: Mapping[str, int]) -> None:
        """Say that `incarnation` is alive (with `info` for /status) and add `counts`."""
        with self._translated("send a heartbeat"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(WORKER + incarnation, json.dumps(info), ex=HEARTBEAT_TTL_S)
            pipe.zadd(WORKERS, {incarnation: time.time()})
            for name, n in counts.items():
                if n:
                    pipe.hincrby(COUNTERS, name, n)
            pipe.execute()

    def forget_worker(self, incarnation: str) -> list[str]:
        """A worker's goodbye: its heartbeat goes, and whatever it still ran is lost."""
        with self._translated("remove a worker"):
            self.redis.delete(WORKER + incarnation)
            self.redis.zrem(WORKERS, incarnation)
        return self.sweep_lost()

    # -- what operators see ------------------------------------------------------------------

    def queue_depth(self) -> int:
        with self._translated("measure the queue"):
            pipe = self.redis.pipeline(transaction=False)
            for key in QUEUE_KEYS:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def live_workers(self) -> list[dict[str, Any]]:
        """The heartbeats of the workers alive now."""
        return list(self.snapshot(recent=False)["workers"])

    def snapshot(self, *, recent: bool = True) -> dict[str, Any]:
        """Workers, queue depth, counters and recent executions, in two round trips."""
        with self._translated("read the service's state"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrange(WORKERS, 0, -1)
            for key in QUEUE_KEYS:
                pipe.llen(key)
            pipe.hgetall(COUNTERS)
            if recent:
                pipe.lrange(RECENT, 0, self.history_size - 1)
            incs, *rest = pipe.execute()
            depths = rest[: len(QUEUE_KEYS)]
            counters, *more = rest[len(QUEUE_KEYS) :]
            ids: list[str] = more[0] if recent else []
            pipe = self.redis.pipeline(transaction=False)
            for inc in incs:
                pipe.get(WORKER + inc)
            for execution_id in ids:
                pipe.hmget(_record(execution_id), *_RECENT_FIELDS)
            replies = pipe.execute() if incs or ids else []
        beats, rows = replies[: len(incs)], replies[len(incs) :]
        workers = [json.loads(b) for b in beats if b]
        executions = [
            _recent_entry(execution_id, row)
            for execution_id, row in zip(ids, rows, strict=True)
            if row[1] is not None
        ]
        return {
            "workers": sorted(workers, key=lambda w: str(w.get("name", ""))),
            "queue": sum(int(n) for n in depths),
            "counters": {k: int(v) for k, v in counters.items()},
            "recent": executions,
        }


_RECENT_FIELDS = ("language", "status", "duration_ms", "created_at", "worker")


def _recent_entry(execution_id: str, row: list[str | None]) -> dict[str, Any]:
    language, status, duration, created_at, worker = row
    return {
        "id": execution_id,
        "status": status,
        "language": language or None,  # a producer's message not picked up yet
        "duration_ms": int(duration) if duration else None,
        "created_at": created_at,
        "worker": worker or None,
    }


def _latency_ms(payload: Mapping[str, Any]) -> float | None:
    """Submission to the program's end (queue wait plus run time), when the payload has it."""
    duration, queued = payload.get("duration_ms"), payload.get("queued_ms")
    if not isinstance(duration, int | float):
        return None
    return float(duration) + (float(queued) if isinstance(queued, int | float) else 0.0)


def _minute_args(status: str, latency_ms: float | None) -> list[str | int | float]:
    """MINUTE_LUA's parameters: one execution that ended as `status` after `latency_ms`,
    in this minute of the timeline (executor.timeline)."""
    key = MINUTE + str(timeline.minute_of(time.time()))
    return [key, " ".join(timeline.fields_for(status, latency_ms)), timeline.KEY_TTL_S]


def _record(execution_id: str) -> str:
    return RECORD + execution_id


def _status_event(status: str) -> str:
    """The data of a `status` event of the live stream (see executor.streams)."""
    return json.dumps({"status": status})


class _Waiter:
    """Set when its execution finishes; `payload` is the final payload's JSON when the
    FINISHED message carried it (see INLINE_PAYLOAD_MAX), else None (pop it from DONE)."""

    def __init__(self) -> None:
        self._event = threading.Event()  # made now: gevent's, once the API is patched
        self.payload: str | None = None

    def set(self, payload: str | None) -> None:
        self.payload = payload
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class _Finishes:
    """This process's one subscription to FINISHED, and the waiters it wakes.

    The listener starts with the first waiter and runs until close(); it resubscribes after a
    Redis fault. Thread-safe; under gevent its thread is a greenlet.
    """

    SUBSCRIBE_WAIT_S = 1.0  # how long a first waiter waits for the subscription to be active
    POLL_S = 1.0  # how often the listener looks at its stop flag
    RETRY_S = 0.5

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    def watch(self, execution_id: str) -> _Waiter:
        """An event set when `execution_id` finishes from now on (unwatch it after)."""
        event = _Waiter()
        with self._lock:
            self._waiters.setdefault(execution_id, set()).add(event)
            if self._listener is None or not self._listener.is_alive():
                self._stopping.clear()
                self._listener = threading.Thread(
                    target=self._listen, name="executor-finishes", daemon=True
                )
                self._listener.start()
        self._subscribed.wait(self.SUBSCRIBE_WAIT_S)
        return event

    def unwatch(self, execution_id: str, event: _Waiter) -> None:
        with self._lock:
            events = self._waiters.get(execution_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[execution_id]

    def close(self) -> None:
        self._stopping.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(self.POLL_S + 1.0)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(FINISHED)
                self._subscribed.set()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=self.POLL_S)
                    if message is not None and message.get("type") == "message":
                        execution_id, _, payload = str(message["data"]).partition("\n")
                        self._wake(execution_id, payload or None)
            except redis.RedisError:
                self._stopping.wait(self.RETRY_S)  # waiters fall back on their slices
            finally:
                self._subscribed.clear()
                pubsub.close()

    def _wake(self, execution_id: str, payload: str | None) -> None:
        with self._lock:
            events = list(self._waiters.get(execution_id, ()))
        for event in events:
            event.set(payload)
