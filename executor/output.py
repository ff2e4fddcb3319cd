"""The worker's half of live output: a program's stdout and stderr, published as it writes.

The sandbox hands every output frame it reads to a `LiveOutput` (see executor.protocol's
`OutputSink`); the LiveOutput caps each stream at EXECUTOR_MAX_OUTPUT_BYTES of what the
program wrote (once more arrives, one last event says `"truncated": true` and nothing more
of that stream is published), decodes it with an incremental UTF-8 decoder (a character
split between two frames is never broken; invalid bytes become U+FFFD, as in the result)
and queues the text. It never waits for Redis: one `OutputPublisher` thread per worker process
writes what is queued, merging adjacent chunks of one stream into one event, so a program
that floods costs a few XADDs per round trip and the read loop is never slowed.

Closing a LiveOutput takes back its events that the thread has not started to publish (and
waits, bounded, for those it has): the store adds them to the stream in the same script that
finishes the execution, ahead of the result entry (executor.store), so the end of a program's
output costs no round trip and no thread switch of its own. Live output is best effort: a
Redis fault here is logged (never the output itself) and leaves the execution and its stored
result untouched.
"""

from __future__ import annotations

import codecs
import json
import logging
import threading

from executor.errors import ExecutorError
from executor.streams import EventStreams

log = logging.getLogger(__name__)

STREAMS = {b"O": "stdout", b"E": "stderr"}  # the program's own output frames (executor.protocol)
EVENT_MAX_CHARS = 65536  # adjacent chunks are merged into events up to this size
FLUSH_TIMEOUT_S = 5.0  # how long closing an execution's output waits for its events to be out

# A queued item: (execution id, event name, text, truncated), or a flush marker.
_Item = tuple[str, str, str, bool] | threading.Event


class OutputPublisher:
    """Publishes the queued output of every execution of this process, in order. Thread-safe."""

    def __init__(self, streams: EventStreams, cap: int) -> None:
        self.streams = streams
        self.cap = cap
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._publishing: set[str] = set()  # executions of the batch being published

    def open(self, execution_id: str) -> LiveOutput:
        """The output of one execution: end it with `LiveOutput.end()` (its unpublished events,
        for the finish) or `LiveOutput.close()` (publish them first)."""
        return LiveOutput(self, execution_id)

    def put(self, item: _Item) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="executor-output", daemon=True
                )
                self._thread.start()
            self._queue.append(item)
            self._cond.notify()

    def take(
        self, execution_id: str, rest: list[_Item], timeout: float = FLUSH_TIMEOUT_S
    ) -> list[tuple[str, str]]:
        """The (event, JSON data) entries of `execution_id` still queued, then `rest`, in
        order, taken off the queue; once the thread has published its earlier ones (bounded)."""
        with self._cond:
            mine: list[_Item] = [
                i
                for i in self._queue
                if not isinstance(i, threading.Event) and i[0] == execution_id
            ]
            if mine:
                self._queue = [
                    i for i in self._queue if isinstance(i, threading.Event) or i[0] != execution_id
                ]
            if not self._cond.wait_for(lambda: execution_id not in self._publishing, timeout):
                log.warning(
                    "execution %s: live output still not published after %g s",
                    execution_id,
                    timeout,
                )
        entries, _ = _merged(mine + rest)
        return [(name, data) for _, name, data in entries]

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until everything queued so far is published (or failed); False on timeout."""
        done = threading.Event()
        self.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(FLUSH_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                items, self._queue = self._queue, []
                self._publishing = {i[0] for i in items if not isinstance(i, threading.Event)}
            entries, flushes = _merged(items)
            try:
                self.streams.publish(entries)
            except ExecutorError as e:
                log.warning("live output of %d events not published: %s", len(entries), e)
            except Exception:
                log.exception("live output not published")
            with self._cond:
                self._publishing = set()
                self._cond.notify_all()
            for done in flushes:
                done.set()


def _merged(items: list[_Item]) -> tuple[list[tuple[str, str, str]], list[threading.Event]]:
    """The stream entries of `items` (adjacent chunks of one stream merged) and the flushes."""
    chunks: list[tuple[str, str, str, bool]] = []
    flushes: list[threading.Event] = []
    for item in items:
        if isinstance(item, threading.Event):
            flushes.append(item)
            continue
        execution_id, name, text, truncated = item
        if chunks:
            last_id, last_name, last_text, last_truncated = chunks[-1]
            mergeable = (last_id, last_name) == (execution_id, name) and not last_truncated
            if mergeable and len(last_text) + len(text) <= EVENT_MAX_CHARS:
                chunks[-1] = (execution_id, name, last_text + text, truncated)
                continue
        chunks.append(item)
    entries = [
        (
            execution_id,
            name,
            json.dumps({"data": text, "truncated": True} if cut else {"data": text}),
        )
        for execution_id, name, text, cut in chunks
    ]
    return entries, flushes


class LiveOutput:
    """One execution's output on its way to its event stream. `write` never blocks."""

    def __init__(self, publisher: OutputPublisher, execution_id: str) -> None:
        self._publisher = publisher
        self._id = execution_id
        self._decoders = {
            kind: codecs.getincrementaldecoder("utf-8")("replace") for kind in STREAMS
        }
        self._written = dict.fromkeys(STREAMS, 0)
        self._truncated: set[bytes] = set()
        self._ended = False
        self._lock = threading.Lock()

    def write(self, kind: bytes, data: bytes) -> None:
        """One output frame of the program (other frames are ignored)."""
        name = STREAMS.get(kind)
        if name is None or not data:
            return
        with self._lock:
            if kind in self._truncated or self._ended:
                return
            room = self._publisher.cap - self._written[kind]
            kept = data[:room]
            self._written[kind] += len(kept)
            text = self._decoders[kind].decode(kept)
            cut = len(data) > room
            if cut:  # the half character the cap split (if any) is dropped, as in the result
                self._truncated.add(kind)
            if text or cut:
                self._publisher.put((self._id, name, text, cut))

    def truncated(self, stdout: bool, stderr: bool) -> None:
        """Mark the streams the result says were cut (the runner caps them at the source, so
        only its count of what was written tells)."""
        for kind, cut in ((b"O", stdout), (b"E", stderr)):
            with self._lock:
                if not cut or kind in self._truncated:
                    continue
                self._truncated.add(kind)  # a half character at the cap is dropped
            self._publisher.put((self._id, STREAMS[kind], "", True))

    def end(self) -> list[tuple[str, str]]:
        """The events not published yet, for the store's finish to add ahead of the result
        entry (an incomplete last character becomes U+FFFD). Nothing is published after."""
        return self._publisher.take(self._id, self._rest())

    def close(self) -> None:
        """End it and publish the rest, waiting (bounded) until it is in Redis: for an
        execution whose finish carries no output (it failed)."""
        for item in self._rest():
            self._publisher.put(item)
        if not self._publisher.flush():
            log.warning("execution %s: live output still not published after %g s",
                        self._id, FLUSH_TIMEOUT_S)  # fmt: skip

    def _rest(self) -> list[_Item]:
        """What the decoders still hold; from now on, writes are dropped."""
        rest: list[_Item] = []
        with self._lock:
            self._ended = True
            for kind, name in STREAMS.items():
                if kind not in self._truncated:
                    text = self._decoders[kind].decode(b"", final=True)
                    if text:
                        rest.append((self._id, name, text, False))
        return rest
