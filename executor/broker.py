"""The Redis transport of the service's Celery apps: kombu's own, less one crash.

When the broker connection drops while a worker holds unacknowledged messages (always, with
late acks, while executions run), kombu closes the channel and puts those messages back on
the queue through the connection that has just dropped. In kombu 5.7 that path raises
AttributeError (the transport has already let go of its connection), which Celery takes for
an unrecoverable error: the worker shuts down, a Redis restart kills it. This channel does not
restore on close: the messages stay in kombu's unacknowledged set, the running executions
finish (executor.outbox), and whatever no live worker acknowledges is re-delivered after the
visibility timeout, where the claim answers it from its record without running it twice.
For the same reason, an acknowledgement on a channel whose connection dropped fails as a
connection error (logged by Celery), not as the AttributeError that stopped the worker.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = "executor.broker:Transport"  # Celery's broker_transport: redis:// URLs alike


class Channel(kombu_redis.Channel):
    do_restore = False

    def _connparams(self, asynchronous: bool = False) -> Any:
        # A message acknowledged after its channel's connection dropped reaches Redis through
        # that channel: kombu fails there with AttributeError, which stops the worker. A
        # connection error instead is what Celery expects: it logs that the ack failed.
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker channel's connection was closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):
    Channel = Channel
