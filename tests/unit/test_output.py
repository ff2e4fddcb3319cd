"""Live output's pure parts: the sandbox's frame hook, the worker's capping and decoding, SSE
reading. The Redis side is a fake of our own seam (EventStreams.publish); the real one is in
tests/service/test_live_output.py."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Sequence

from executor import sse
from executor.output import EVENT_MAX_CHARS, OutputPublisher, _merged
from executor.protocol import Reply


def frame(kind: bytes, data: bytes = b"") -> bytes:
    body = struct.pack(">cI", kind, len(data)) + data
    return struct.pack(">BxxxI", 1, len(body)) + body


def test_the_reply_hands_each_output_frame_whole_and_in_order():
    seen: list[tuple[bytes, bytes]] = []
    reply = Reply(4, on_output=lambda kind, data: seen.append((kind, data)))
    reply.feed(frame(b"r") + frame(b"a") + frame(b"o", b"build") + frame(b"c", b"0"))
    reply.feed(frame(b"O", b"hello") + frame(b"E", b"e") + frame(b"O", b"!"))
    # The program's output, in order; the build's stays in `compile`.
    assert seen == [(b"O", b"hello"), (b"E", b"e"), (b"O", b"!")]
    assert bytes(reply.cases[0].streams[b"O"]) == b"hell"  # the reply's own cap is unchanged


class RecordingStreams:
    """Stands in for EventStreams: records what would be published."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, object]]] = []
        self.lock = threading.Lock()

    def publish(self, entries: Sequence[tuple[str, str, str]]) -> None:
        with self.lock:
            self.entries += [(i, name, json.loads(data)) for i, name, data in entries]


def published(cap: int, *frames: tuple[bytes, bytes], cut: tuple[bool, bool] = (False, False)):
    """What the publisher published, then what `end()` handed to the finish, as the stream
    ends up holding them."""
    streams = RecordingStreams()
    publisher = OutputPublisher(streams, cap)  # type: ignore[arg-type]
    live = publisher.open("x1")
    for kind, data in frames:
        live.write(kind, data)
    live.truncated(*cut)
    rest = live.end()
    publisher.stop()
    return streams.entries + [("x1", name, json.loads(data)) for name, data in rest]


class SlowStreams(RecordingStreams):
    """Publishes only when let: what `end()` finds queued is then still queued."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def publish(self, entries: Sequence[tuple[str, str, str]]) -> None:
        self.go.wait(10)
        super().publish(entries)


def test_end_waits_for_what_is_being_published_and_takes_the_rest_in_order():
    streams = SlowStreams()
    publisher = OutputPublisher(streams, 1000)  # type: ignore[arg-type]
    live, other = publisher.open("x1"), publisher.open("x2")
    live.write(b"O", b"first")
    deadline = time.monotonic() + 10
    while not publisher._publishing and time.monotonic() < deadline:  # the thread has it
        time.sleep(0.001)
    live.write(b"O", b"second")  # queued behind the batch being published
    other.write(b"O", b"theirs")
    live.write(b"E", b"\xc3")  # half a character: U+FFFD at the end
    threading.Timer(0.2, streams.go.set).start()
    rest = live.end()
    # The first chunk was out before end() returned; the rest is handed over, in order.
    assert [(i, n, d["data"]) for i, n, d in streams.entries][:1] == [("x1", "stdout", "first")]
    assert [(n, json.loads(d)["data"]) for n, d in rest] == [
        ("stdout", "second"),
        ("stderr", "\ufffd"),
    ]
    live.write(b"O", b"late")  # after the end: dropped
    other.close()  # another execution's output is still published by the thread
    publisher.stop()
    assert ("x2", "stdout", "theirs") in [(i, n, d["data"]) for i, n, d in streams.entries]
    assert "late" not in text(streams.entries, "stdout") + "".join(d for _, d in rest)


def text(entries: list[tuple[str, str, dict[str, object]]], name: str) -> str:
    return "".join(str(d["data"]) for _, n, d in entries if n == name)


def test_characters_split_between_frames_arrive_whole():
    entries = published(
        100, (b"O", b"caf\xc3"), (b"O", b"\xa9 \xf0\x9f"), (b"O", b"\x98\x80"), (b"O", b"\xff\xc3")
    )
    assert text(entries, "stdout") == "café 😀\ufffd\ufffd"  # invalid and unfinished: U+FFFD
    assert all(i == "x1" for i, _, _ in entries)


def test_the_cap_holds_and_truncation_is_marked_once():
    entries = published(5, (b"O", b"abc"), (b"O", b"d\xc3\xa9f"), (b"O", b"more"), (b"E", b"err"))
    assert text(entries, "stdout") == "abcd"  # the half character at the cap is dropped
    stdout = [d for _, n, d in entries if n == "stdout"]
    assert stdout[-1].get("truncated") is True
    assert [d.get("truncated", False) for d in stdout].count(True) == 1
    assert text(entries, "stderr") == "err"


def test_the_runners_own_cap_is_marked_from_the_result():
    entries = published(100, (b"O", b"kept"), (b"E", b"e"), cut=(True, False))
    stdout = [d for _, n, d in entries if n == "stdout"]
    assert text(entries, "stdout") == "kept" and stdout[-1] == {"data": "", "truncated": True}
    assert all("truncated" not in d for _, n, d in entries if n == "stderr")


def test_adjacent_chunks_merge_but_keep_their_order_across_streams():
    many = [(b"O", b"x" * 1000) for _ in range(200)]
    entries = published(1 << 20, *many, (b"E", b"!"), (b"O", b"y"))
    names = [n for _, n, _ in entries]
    assert text(entries, "stdout") == "x" * 200_000 + "y"
    assert names[-2:] == ["stderr", "stdout"]
    assert all(len(str(d["data"])) <= EVENT_MAX_CHARS for _, _, d in entries)
    # What piled up between two round trips to Redis goes out as few events.
    done = threading.Event()
    queued = [("x1", "stdout", "x" * 1000, False)] * 200 + [done, ("x1", "stderr", "!", False)]
    merged, flushes = _merged(queued)  # type: ignore[arg-type]
    assert flushes == [done]
    assert [(n, len(json.loads(d)["data"])) for _, n, d in merged] == [
        ("stdout", 65000),
        ("stdout", 65000),
        ("stdout", 65000),
        ("stdout", 5000),
        ("stderr", 1),
    ]


def test_sse_reader_follows_the_specification():
    raw = (
        b'retry: 1000\n\n: a comment\nid: 1-0\nevent: stdout\ndata: {"data": "a"}\n\n'
        b"id: 2-0\ndata: one\ndata: two\r\n\r\nevent: ignored-without-data\n\n"
    )
    events = list(sse.events(io.BytesIO(raw).readline))
    assert events == [
        sse.Event("1-0", "stdout", '{"data": "a"}'),
        sse.Event("2-0", "message", "one\ntwo"),
    ]
