"""The only module that talks to Redis: execution records, their history, counters, workers.

Everything here is shared by every API and worker process. Keys (all under ``executor:``):

    execution:<id>   hash: the record (status, language, created, worker, result JSON...),
                     expiring EXECUTOR_RESULT_TTL after its last change
    recent           list of ids, newest first, capped at EXECUTOR_HISTORY_SIZE
    running          hash: id -> the worker incarnation that runs it
    done:<id>        list holding the final payload once: what a waiting POST /execute pops
    counters         hash: executions by status, containers, durations
    worker:<inc>     string: a worker incarnation's heartbeat (JSON), expiring HEARTBEAT_TTL_S
    workers          sorted set of incarnations that have beaten

A record moves queued -> running -> finished (a status of the contract, or internal_error);
each step is one Lua script, so a record is never half written and a finish is applied only by
the incarnation that claimed the execution. A running execution whose incarnation stopped
beating is "lost": `sweep_lost()` finishes it as internal_error (any process may sweep).

Redis faults leave this module as RedisUnavailable naming the address (never its password).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from executor.errors import ExecutorError, NoWorkers, QueueFull, RedisUnavailable
from executor.languages import REGISTRY

PREFIX = "executor:"
QUEUE = "executor"  # the Celery queue; kombu keeps one Redis list per priority step
# With EXECUTOR_ROUTE_BY_LANGUAGE each execution goes to its language's queue instead; the
# depth (and EXECUTOR_MAX_QUEUE) counts every queue together.
QUEUES = (QUEUE, *(f"{QUEUE}.{lang.name}" for lang in REGISTRY))
_KOMBU_PRIORITY_KEYS = tuple(
    key for queue in QUEUES for key in (queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
)


def queue_for(language: str, by_language: bool) -> str:
    """The Celery queue an execution of `language` is published to."""
    return f"{QUEUE}.{language}" if by_language else QUEUE


HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 6  # a worker silent for this long is taken for dead
DONE_TTL_S = 30  # how long a finished payload waits for the POST /execute that asked for it
WAIT_SLICE_S = 2.0  # one BLPOP; between slices the waiter looks for a lost worker
LOST_MESSAGE = (
    "the worker {worker} was lost before this execution finished (it stopped or stopped "
    "answering); the program is not run again"
)

_SUBMIT = """
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
           'created', ARGV[3], 'created_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
redis.call('HINCRBY', KEYS[3], 'submitted', 1)
return {'ok', depth}
"""

_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'language', ARGV[8], 'created', ARGV[4],
             'created_at', ARGV[5])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
  redis.call('HINCRBY', KEYS[3], 'submitted', 1)
elseif status ~= 'queued' then
  return {status, redis.call('HGET', KEYS[1], 'incarnation') or '',
          redis.call('HGET', KEYS[1], 'result') or ''}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[3], 'incarnation', ARGV[2],
           'started', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
return {'claimed', redis.call('HGET', KEYS[1], 'created'),
        redis.call('HGET', KEYS[1], 'created_at')}
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running'
   or redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'duration_ms', ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'duration_ms_total', ARGV[5])
  redis.call('HINCRBY', KEYS[3], 'duration_count', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[8], 1)
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[7])
return 1
"""

_SWEEP = """
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
      redis.call('HINCRBY', KEYS[2], 'executions_internal_error', 1)
      redis.call('LPUSH', ARGV[3] .. id, body)
      redis.call('EXPIRE', ARGV[3] .. id, ARGV[5])
      table.insert(lost, id)
    end
  end
end
return lost
"""


def iso(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, as every timestamp of the service."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def safe_address(url: str) -> str:
    """`url` without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(url: str) -> redis.Redis:
    """A client with a thread-safe connection pool, that fails fast when Redis is down.

    One quick retry covers a pooled connection that a Redis restart closed; anything more would
    turn "Redis is down" into a wait. No connection is made until the first command.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=WAIT_SLICE_S + 3.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


@dataclass(frozen=True)
class Record:
    """An execution as stored: `payload` is the final answer once finished, else None."""

    id: str
    status: str
    language: str
    created: float
    worker: str
    payload: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.payload is not None


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

    def __init__(self, url: str, *, ttl_s: int, history_size: int) -> None:
        self.address = safe_address(url)
        self.ttl_s = ttl_s
        self.history_size = history_size
        self.redis = connect(url)
        self._submit = self.redis.register_script(_SUBMIT)
        self._claim = self.redis.register_script(_CLAIM)
        self._finish = self.redis.register_script(_FINISH)
        self._sweep = self.redis.register_script(_SWEEP)

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

    def close(self) -> None:
        self.redis.close()

    def ping(self) -> None:
        """Return when Redis answers; raise RedisUnavailable naming the address."""
        with self._translated("ping"):
            self.redis.ping()

    # -- submission and the wait (API) --------------------------------------------------

    def submit(self, execution_id: str, language: str, max_queue: int) -> int:
        """Record a new queued execution; return the queue depth it found.

        Raises QueueFull when `max_queue` executions are waiting and NoWorkers when no worker
        beats: then nothing is recorded.
        """
        now = time.time()
        keys = [
            _record(execution_id),
            PREFIX + "recent",
            PREFIX + "counters",
            PREFIX + "workers",
            *_KOMBU_PRIORITY_KEYS,
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
            outcome, depth = self._submit(keys, [*args, max_queue, PREFIX + "worker:"])
        if outcome == "full":
            raise QueueFull(f"{depth} executions are waiting (EXECUTOR_MAX_QUEUE is {max_queue})")
        if outcome == "no_workers":
            raise NoWorkers("no worker is alive to run executions (none sent a heartbeat)")
        if outcome == "exists":
            raise ExecutorError(f"execution id {execution_id} is already taken")
        return int(depth)

    def discard(self, execution_id: str) -> None:
        """Forget a submission that could not be queued (its id was never given out)."""
        with self._translated("discard a submission"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(_record(execution_id))
            pipe.lrem(PREFIX + "recent", 1, execution_id)
            pipe.hincrby(PREFIX + "counters", "submitted", -1)
            pipe.execute()

    def wait(self, execution_id: str, seconds: float) -> dict[str, Any] | None:
        """The final payload of `execution_id` once it finishes within `seconds`, else None."""
        timeout = max(0.01, min(seconds, WAIT_SLICE_S))
        with self._translated("wait for a result"):
            popped = self.redis.blpop([PREFIX + "done:" + execution_id], timeout=timeout)
        if popped is None:
            return None
        return cast(dict[str, Any], json.loads(popped[1]))

    def get(self, execution_id: str) -> Record | None:
        """The record of `execution_id`, or None for an id never submitted (or expired).

        A running record whose worker stopped beating is finished as lost first.
        """
        record = self._read(execution_id)
        if record and record.status == "running" and execution_id in self.sweep_lost():
            record = self._read(execution_id)
        return record

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
        )

    # -- the worker's side ---------------------------------------------------------------

    def claim(self, execution_id: str, language: str, incarnation: str, worker: str) -> Claim:
        """Mark `execution_id` running on `incarnation` unless a delivery already took it.

        A record that does not exist yet (a producer that bypassed HTTP) is created.
        """
        now = time.time()
        keys = [
            _record(execution_id),
            PREFIX + "recent",
            PREFIX + "counters",
            PREFIX + "running",
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
            reply = self._claim(keys, [*args, self.history_size, language])
        if reply[0] == "claimed":
            return Claim(True, "running", now, float(reply[1]), str(reply[2]), incarnation)
        payload = json.loads(reply[2]) if reply[2] else None
        return Claim(False, str(reply[0]), incarnation=str(reply[1]), payload=payload)

    def finish(
        self,
        execution_id: str,
        incarnation: str,
        payload: dict[str, Any],
        *,
        counter: str | None = None,
    ) -> bool:
        """Store the final `payload` and wake its waiter; False if the record was taken away.

        Only the incarnation that claimed the execution may finish it, once: a record already
        finished as lost (or by the time-limit watchdog) is left as it is.
        """
        status = str(payload["status"])
        duration = payload.get("duration_ms")
        keys = [
            _record(execution_id),
            PREFIX + "running",
            PREFIX + "counters",
            PREFIX + "done:" + execution_id,
        ]
        args: list[str | int | float] = [
            execution_id,
            incarnation,
            status,
            json.dumps(payload),
            str(int(duration)) if isinstance(duration, int | float) else "",
            self.ttl_s,
            DONE_TTL_S,
            counter or f"executions_{status}",
        ]
        with self._translated("store a result"):
            return bool(self._finish(keys, args))

    def sweep_lost(self) -> list[str]:
        """Finish as internal_error every running execution whose worker stopped beating."""
        keys = [PREFIX + "running", PREFIX + "counters"]
        args: list[str | int | float] = [
            PREFIX + "execution:",
            PREFIX + "worker:",
            PREFIX + "done:",
        ]
        with self._translated("look for lost executions"):
            return cast(list[str], self._sweep(keys, [*args, self.ttl_s, DONE_TTL_S, LOST_MESSAGE]))

    def beat(self, incarnation: str, info: Mapping[str, Any], counts: Mapping[str, int]) -> None:
        """Say that `incarnation` is alive (with `info` for /status) and add `counts`."""
        with self._translated("send a heartbeat"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(PREFIX + "worker:" + incarnation, json.dumps(info), ex=HEARTBEAT_TTL_S)
            pipe.zadd(PREFIX + "workers", {incarnation: time.time()})
            for name, n in counts.items():
                if n:
                    pipe.hincrby(PREFIX + "counters", name, n)
            pipe.execute()

    def forget_worker(self, incarnation: str) -> list[str]:
        """A worker's goodbye: its heartbeat goes, and whatever it still ran is lost."""
        with self._translated("remove a worker"):
            self.redis.delete(PREFIX + "worker:" + incarnation)
            self.redis.zrem(PREFIX + "workers", incarnation)
        return self.sweep_lost()

    # -- what operators see ------------------------------------------------------------------

    def queue_depth(self) -> int:
        with self._translated("measure the queue"):
            pipe = self.redis.pipeline(transaction=False)
            for key in _KOMBU_PRIORITY_KEYS:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def live_workers(self) -> list[dict[str, Any]]:
        """The heartbeats of the workers alive now."""
        return list(self.snapshot(recent=False)["workers"])

    def snapshot(self, *, recent: bool = True) -> dict[str, Any]:
        """Workers, queue depth, counters and recent executions, in two round trips."""
        with self._translated("read the service's state"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrange(PREFIX + "workers", 0, -1)
            for key in _KOMBU_PRIORITY_KEYS:
                pipe.llen(key)
            pipe.hgetall(PREFIX + "counters")
            if recent:
                pipe.lrange(PREFIX + "recent", 0, self.history_size - 1)
            incs, *rest = pipe.execute()
            depths = rest[: len(_KOMBU_PRIORITY_KEYS)]
            counters, *more = rest[len(_KOMBU_PRIORITY_KEYS) :]
            ids: list[str] = more[0] if recent else []
            pipe = self.redis.pipeline(transaction=False)
            for inc in incs:
                pipe.get(PREFIX + "worker:" + inc)
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
        "language": language,
        "duration_ms": int(duration) if duration else None,
        "created_at": created_at,
        "worker": worker or None,
    }


def _record(execution_id: str) -> str:
    return PREFIX + "execution:" + execution_id
