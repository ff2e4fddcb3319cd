"""The worker's decoding of a runner's reply: strict, bounded, never raising."""

from __future__ import annotations

import json
import struct

import pytest

from executor.protocol import RESULT_MAX, MalformedResult, Reply, parse_final

STEP = {
    "exit_code": 0,
    "signal": None,
    "timed_out": False,
    "oom": False,
    "duration_ms": 12,
    "stdout_bytes": 3,
    "stderr_bytes": 0,
}


def result(**changes: object) -> bytes:
    body: dict[str, object] = {"compile": None, **STEP, **changes}
    return json.dumps(body).encode()


def docker(data: bytes, stream: int = 1) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def frame(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">cI", kind, len(data)) + data


def reply_of(*frames: bytes, cap: int = 1024) -> Reply:
    reply = Reply(cap)
    reply.feed(docker(b"".join(frames)))
    return reply


def test_the_runners_own_result_is_read():
    final = parse_final(result())
    assert final.compile is None and final.run is not None
    assert (final.run.exit_code, final.run.duration_ms) == (0, 12)
    build = {**STEP, "exit_code": 1, "stdout_bytes": 0}
    failed = parse_final(json.dumps({"compile": build}).encode())
    assert failed.run is None and failed.compile is not None


@pytest.mark.parametrize(
    "payload",
    [
        result(duration_ms="12"),
        result(duration_ms=float("nan")),
        b'{"compile": null, "exit_code": 0, "signal": null, "timed_out": false, "oom": false,'
        b' "duration_ms": NaN, "stdout_bytes": 0, "stderr_bytes": 0}',
        b'{"compile": null, "exit_code": 0, "signal": null, "timed_out": false, "oom": false,'
        b' "duration_ms": Infinity, "stdout_bytes": 0, "stderr_bytes": 0}',
        result(duration_ms=-1),
        result(duration_ms=1.5),
        result(duration_ms=10**30),
        result(exit_code=False),
        result(exit_code=True),
        result(exit_code=256),
        result(exit_code=-1),
        result(exit_code="0"),
        result(exit_code=None),  # neither an exit code nor a signal
        result(signal="SIGKILL"),  # both
        result(exit_code=None, signal="kill"),
        result(exit_code=None, signal="SIGKILL\n"),
        result(timed_out=0),
        result(oom="false"),
        result(stdout_bytes=None),
        result(extra=1),
        json.dumps({k: v for k, v in STEP.items() if k != "oom"} | {"compile": None}).encode(),
        json.dumps(STEP).encode(),  # no compile key
        json.dumps({"compile": {**STEP, "exit_code": 1}, **STEP}).encode(),  # ran after failing
        json.dumps({"compile": "x", **STEP}).encode(),
        b'{"compile": null, "exit_code": 0, "exit_code": 1}',
        b"[" * 3000 + b"]" * 3000,
        b"[" * 100000,
        b'{"compile": ' * 500,
        result(stdout="x" * RESULT_MAX),
        b"\xff\xfe",
        b"null",
        b"[]",
        b"",
        result() + b" trailing",
    ],
)
def test_a_malformed_result_is_refused_not_raised(payload):
    with pytest.raises(MalformedResult):
        parse_final(payload)
    reply = reply_of(frame(b"r"), frame(b"a"), frame(b"R", payload[:65536]))
    assert reply.final is None and reply.broken


def test_frames_out_of_order_break_the_reply():
    # Output before the request was accepted: the runner never sends that.
    assert reply_of(frame(b"r"), frame(b"O", b"hi")).broken
    assert reply_of(frame(b"a")).broken  # accepted before ready
    assert reply_of(frame(b"r"), frame(b"r")).broken
    assert reply_of(frame(b"r"), frame(b"a"), frame(b"a")).broken
    assert reply_of(frame(b"r"), frame(b"a"), frame(b"X")).broken
    assert reply_of(frame(b"r", b"x")).broken  # the ready frame is empty


def test_data_after_the_result_breaks_the_reply():
    reply = reply_of(frame(b"r"), frame(b"a"), frame(b"R", result()))
    assert reply.final is not None and not reply.broken
    reply.feed(docker(frame(b"O", b"late")))
    assert reply.broken


def test_an_oversized_frame_is_refused_before_it_is_buffered():
    reply = Reply(1024)
    reply.feed(docker(frame(b"r") + frame(b"a") + struct.pack(">cI", b"O", 50 << 20)))
    assert reply.broken == "the sandbox sent an oversized frame"


def test_output_is_kept_up_to_the_cap_and_the_whole_reply_is_bounded():
    chunk = frame(b"O", b"x" * 60000)
    reply = reply_of(frame(b"r"), frame(b"a"), chunk, chunk, cap=1000)
    assert len(reply.streams[b"O"]) == 1000 and not reply.broken
    flood = Reply(1000)
    flood.feed(docker(frame(b"r") + frame(b"a")))
    for _ in range(40):
        flood.feed(docker(chunk))
    assert flood.broken == "the sandbox sent more than its output limits allow"


def test_an_unknown_docker_stream_breaks_the_reply():
    reply = Reply(100)
    reply.feed(docker(b"x", stream=3))
    assert reply.broken


def test_a_ready_frame_split_across_reads_is_read():
    data = docker(frame(b"r") + frame(b"a") + frame(b"O", b"hello") + frame(b"R", result()))
    reply = Reply(100)
    for i in range(len(data)):
        reply.feed(data[i : i + 1])
    assert reply.final is not None and bytes(reply.streams[b"O"]) == b"hello"
