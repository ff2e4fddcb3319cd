"""The names producers, the API and the workers share: the task, its queue, Redis keys.

Both halves import this small module, so the API never imports the worker's code to learn a
name, and a name changes in one place.
"""

from __future__ import annotations

from kombu.transport.redis import PRIORITY_STEPS, Channel

from executor.languages import REGISTRY

TASK_NAME = "executor.execute"  # the contract's task name
QUEUE = "executor"  # the contract's queue

# kombu's Redis transport keeps a queue as one list per priority step (`PRIORITY_STEPS`): the
# queue's own name for step 0, else the name, `Channel.sep` and the step. The store counts
# these lists inside its Lua admission script (the check must be atomic), so it needs their
# keys. kombu's only API for them is `Channel._q_for_pri()`, a private method of a live
# channel; the steps and the separator are kombu's own public values, read here.
# With EXECUTOR_ROUTE_BY_LANGUAGE each execution goes to its language's queue instead
# (executor.<language>); the depth (and EXECUTOR_MAX_QUEUE) counts every queue together.
QUEUES = (QUEUE, *(f"{QUEUE}.{language.name}" for language in REGISTRY))


def queue_key(queue: str, step: int) -> str:
    """The list kombu keeps `queue`'s messages of priority step `step` in."""
    return f"{queue}{Channel.sep}{step}" if step else queue


QUEUE_KEYS = tuple(queue_key(queue, step) for queue in QUEUES for step in PRIORITY_STEPS)


def queue_for(language: str, by_language: bool) -> str:
    """The Celery queue an execution of `language` is published to."""
    return f"{QUEUE}.{language}" if by_language else QUEUE


# Redis keys of the store (see executor.store for what each holds).
PREFIX = "executor:"
RECORD = PREFIX + "execution:"  # + id
RECENT = PREFIX + "recent"
RUNNING = PREFIX + "running"
DONE = PREFIX + "done:"  # + id
IDEMPOTENCY = PREFIX + "idempotency:"  # + sha256 of an Idempotency-Key
FINISHED = PREFIX + "finished"  # pub/sub: "<id>", or "<id>\n<payload>" when small, per finish
COUNTERS = PREFIX + "counters"
CANCEL = PREFIX + "cancel:"  # + id: set while a running execution is to be cancelled
CANCELS = PREFIX + "cancels"  # pub/sub: the id of each running execution to be cancelled
ADOPTING = PREFIX + "adopting"  # held by the worker that looks for producers' messages
ADOPTING_ON_DEMAND = PREFIX + "adopting:on-demand"  # the same, for the API's looks
WORKER = PREFIX + "worker:"  # + incarnation
WORKERS = PREFIX + "workers"

# History (see executor.store): sorted sets of execution ids scored by their creation time,
# one for all executions and one per filter value, e.g. executor:history:status:success,
# executor:history:language:python, executor:history:worker:<HOSTNAME>,
# executor:history:owner:<key id>.
HISTORY = PREFIX + "history"
HISTORY_BY = PREFIX + "history:"  # + field + ":" + value
HISTORY_FIELDS = ("status", "language", "worker", "owner")
RATE_LIMITS = PREFIX + "ratelimit"  # Flask-Limiter's key prefix (its counters, per API key)

EVENTS = PREFIX + "events:"  # + id: the execution's live events, a Redis stream (executor.streams)
EVENTS_WAKE = PREFIX + "events-wake:"  # + a reader's id: wakes its blocked XREAD (executor.streams)
MINUTE = PREFIX + "minute:"  # + minute since the epoch: the last hour (see executor.timeline)
