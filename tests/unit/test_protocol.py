"""The worker's decoding of a runner's reply: strict, bounded, never raising."""

from __future__ import annotations

import json
import struct

import pytest

from executor.languages import REGISTRY
from executor.models import Limits, RunRequest
from executor.protocol import (
    RESULT_MAX,
    MalformedResult,
    Product,
    Reply,
    encode_prestart,
    encode_request,
    encode_stage,
    parse_final,
    parse_step,
    staging_collides,
)

STEP = {
    "exit_code": 0,
    "signal": None,
    "timed_out": False,
    "oom": False,
    "duration_ms": 12,
    "stdout_bytes": 3,
    "stderr_bytes": 0,
    "usage": {"cpu_ms": 5, "memory_bytes": 9000000},
}
FINAL = json.dumps({"files_truncated": False}).encode()


def result(**changes: object) -> bytes:
    """A case's step (b"T")."""
    body: dict[str, object] = {**STEP, **changes}
    return json.dumps(body).encode()


def run(*output: bytes, step: bytes | None = None, index: int = 0) -> bytes:
    """The frames of one whole run: its start, its output, its end."""
    return frame(b"c", b"%d" % index) + b"".join(output) + frame(b"T", step or result())


def docker(data: bytes, stream: int = 1) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def frame(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">cI", kind, len(data)) + data


def reply_of(*frames: bytes, cap: int = 1024) -> Reply:
    reply = Reply(cap)
    reply.feed(docker(b"".join(frames)))
    return reply


def test_the_runners_own_result_is_read():
    step = parse_step(result())
    assert (step.exit_code, step.duration_ms, step.usage.cpu_ms) == (0, 12, 5)
    assert step.usage.memory_bytes == 9000000
    assert not parse_final(FINAL).files_truncated
    assert parse_final(json.dumps({"files_truncated": True}).encode()).files_truncated


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
        result(usage=None),
        result(usage={"cpu_ms": 1}),
        result(usage={"cpu_ms": -1, "memory_bytes": 0}),
        result(usage={"cpu_ms": 1, "memory_bytes": 1.5}),
        result(usage={"cpu_ms": 1, "memory_bytes": 2, "extra": 3}),
        json.dumps({k: v for k, v in STEP.items() if k != "oom"}).encode(),
        b'{"exit_code": 0, "exit_code": 1}',
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
def test_a_malformed_step_is_refused_not_raised(payload):
    with pytest.raises(MalformedResult):
        parse_step(payload)
    reply = reply_of(frame(b"r"), frame(b"a"), frame(b"c", b"0"), frame(b"T", payload[:65536]))
    assert reply.final is None and reply.broken


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps({}).encode(),
        json.dumps({"files_truncated": 0}).encode(),
        json.dumps({"files_truncated": False, **STEP}).encode(),
        json.dumps({"compile": None, "files_truncated": False}).encode(),
        b'{"files_truncated": false, "files_truncated": false}',
        result(),
        b"null",
    ],
)
def test_a_malformed_result_is_refused_not_raised(payload):
    with pytest.raises(MalformedResult):
        parse_final(payload)
    reply = reply_of(frame(b"r"), frame(b"a"), run(), frame(b"R", payload))
    assert reply.final is None and reply.broken


def test_every_case_is_read_with_its_own_output():
    frames = [frame(b"r"), frame(b"a")]
    frames += [run(frame(b"O", b"out%d" % i), frame(b"E", b"err"), index=i) for i in range(3)]
    reply = Reply(1024, cases=3)
    reply.feed(docker(b"".join([*frames, frame(b"R", FINAL)])))
    assert reply.final is not None and not reply.broken
    assert [bytes(c.streams[b"O"]) for c in reply.cases] == [b"out0", b"out1", b"out2"]
    assert all(c.step is not None for c in reply.cases)


@pytest.mark.parametrize(
    "frames",
    [
        [run(index=1)],  # a case out of order
        [run(), run(index=1), run(index=2)],  # more cases than asked for
        [run(), run()],  # the same case twice
        [frame(b"c", b"0"), frame(b"c", b"1")],  # a case started before the last ended
        [frame(b"T", result())],  # a case ended that never started
        [run(), frame(b"O", b"between")],  # output outside a case
        [run(), frame(b"o", b"build output after a case")],
        [frame(b"c", b"00"), frame(b"T", result())],
        [frame(b"c", b"0"), frame(b"R", FINAL)],  # the result while a case runs
    ],
)
def test_cases_out_of_order_break_the_reply(frames):
    reply = Reply(1024, cases=2)
    reply.feed(docker(b"".join([frame(b"r"), frame(b"a"), *frames, frame(b"R", FINAL)])))
    assert reply.broken and reply.final is None


def test_a_result_needs_every_case_unless_the_build_failed():
    short = reply_of(frame(b"r"), frame(b"a"), frame(b"R", FINAL))
    assert short.broken and "0 runs of 1" in short.broken
    build = frame(b"B", result(exit_code=1))
    failed = reply_of(frame(b"r"), frame(b"a"), frame(b"o", b"x"), build, frame(b"R", FINAL))
    assert failed.final is not None and not failed.broken and failed.cases == []
    assert failed.build_step is not None and failed.build_step.exit_code == 1
    ran_anyway = reply_of(frame(b"r"), frame(b"a"), build, run(), frame(b"R", FINAL))
    assert ran_anyway.broken
    built = reply_of(frame(b"r"), frame(b"a"), frame(b"B", result()), run(), frame(b"R", FINAL))
    assert built.final is not None and not built.broken
    assert reply_of(frame(b"r"), frame(b"a"), run(), frame(b"B", result())).broken  # too late
    twice = reply_of(frame(b"r"), frame(b"a"), frame(b"B", result()), frame(b"B", result()))
    assert twice.broken
    late_output = reply_of(frame(b"r"), frame(b"a"), frame(b"B", result()), frame(b"o", b"x"))
    assert late_output.broken


def files_reply(*frames: bytes, max_files: int = 2, max_bytes: int = 100) -> Reply:
    reply = Reply(1024, max_files=max_files, max_files_bytes=max_bytes)
    reply.feed(docker(b"".join([frame(b"r"), frame(b"a"), run(), *frames, frame(b"R", FINAL)])))
    return reply


def test_files_are_read_within_their_caps():
    reply = files_reply(
        frame(b"F", b"5 out/a.bin"), frame(b"D", b"\x00\x01"), frame(b"D", b"\xff\xfe\n"),
        frame(b"F", b"0 empty"),
    )  # fmt: skip
    assert reply.final is not None and not reply.broken
    assert [(f.path, f.size, bytes(f.data)) for f in reply.files] == [
        ("out/a.bin", 5, b"\x00\x01\xff\xfe\n"),
        ("empty", 0, b""),
    ]


@pytest.mark.parametrize(
    "frames",
    [
        [frame(b"F", b"1 %s" % n) + frame(b"D", b"x") for n in (b"a", b"b", b"c")],  # 3 files
        [frame(b"F", b"101 big"), frame(b"D", b"x" * 101)],  # more bytes than allowed
        [frame(b"F", b"60 a"), frame(b"D", b"x" * 60), frame(b"F", b"60 b")],  # in total
        [frame(b"F", b"2 a"), frame(b"D", b"xyz")],  # more content than announced
        [frame(b"F", b"3 a"), frame(b"D", b"xy")],  # less (then the result)
        [frame(b"D", b"x")],  # content without a file
        [frame(b"F", b"1 a"), frame(b"D", b"")],
        [frame(b"F", b"1 /etc/passwd"), frame(b"D", b"x")],
        [frame(b"F", b"1 ../x"), frame(b"D", b"x")],
        [frame(b"F", b"1 a/../../x"), frame(b"D", b"x")],
        [frame(b"F", b"1 a//b"), frame(b"D", b"x")],
        [frame(b"F", b"1 ./a"), frame(b"D", b"x")],
        [frame(b"F", b"1 a\nb"), frame(b"D", b"x")],
        [frame(b"F", b"1 \xff"), frame(b"D", b"x")],
        [frame(b"F", b"1 "), frame(b"D", b"x")],
        [frame(b"F", b"x a")],
        [frame(b"F", b"-1 a")],
        [frame(b"F", b"1a")],
        [frame(b"F", b"0 a"), frame(b"F", b"0 a")],  # twice
        [frame(b"F", b"0 a"), run(index=0)],  # a case after the files
    ],
)
def test_files_beyond_their_caps_or_the_protocol_break_the_reply(frames):
    reply = files_reply(*frames)
    assert reply.broken and reply.final is None
    assert sum(len(f.data) for f in reply.files) <= 100


def test_files_nobody_asked_for_break_the_reply():
    reply = files_reply(frame(b"F", b"0 a"), max_files=0, max_bytes=0)
    assert reply.broken


def test_frames_out_of_order_break_the_reply():
    # Output before the request was accepted: the runner never sends that.
    assert reply_of(frame(b"r"), frame(b"O", b"hi")).broken
    assert reply_of(frame(b"a")).broken  # accepted before ready
    assert reply_of(frame(b"r"), frame(b"r")).broken
    assert reply_of(frame(b"r"), frame(b"a"), frame(b"a")).broken
    assert reply_of(frame(b"r"), frame(b"a"), frame(b"X")).broken
    assert reply_of(frame(b"r"), frame(b"a"), frame(b"O", b"outside a case")).broken
    # The ready frame names the runner's features: lowercase words, a few, short.
    for payload in (b"X", b"pre start!", b"a" * 17, b" prestart", b"prestart ", b"a " * 8 + b"a"):
        assert reply_of(frame(b"r", payload)).broken, payload


def test_the_ready_frame_says_what_the_runner_can_do():
    assert reply_of(frame(b"r")).features == frozenset()  # an older runner's: nothing more
    reply = reply_of(frame(b"r", b"prestart other"))
    assert reply.ready and not reply.broken
    assert reply.features == {b"prestart", b"other"}


def test_data_after_the_result_breaks_the_reply():
    reply = reply_of(frame(b"r"), frame(b"a"), run(), frame(b"R", FINAL))
    assert reply.final is not None and not reply.broken
    reply.feed(docker(frame(b"O", b"late")))
    assert reply.broken


def test_an_oversized_frame_is_refused_before_it_is_buffered():
    reply = Reply(1024)
    reply.feed(docker(frame(b"r") + frame(b"a") + struct.pack(">cI", b"O", 50 << 20)))
    assert reply.broken == "the sandbox sent an oversized frame"


def test_output_is_kept_up_to_the_cap_and_the_whole_reply_is_bounded():
    chunk = frame(b"O", b"x" * 60000)
    reply = reply_of(frame(b"r"), frame(b"a"), frame(b"c", b"0"), chunk, chunk, cap=1000)
    assert len(reply.cases[0].streams[b"O"]) == 1000 and not reply.broken
    flood = Reply(1000)
    flood.feed(docker(frame(b"r") + frame(b"a") + frame(b"c", b"0")))
    for _ in range(40):
        flood.feed(docker(chunk))
    assert flood.broken == "the sandbox sent more than its output limits allow"


def test_an_unknown_docker_stream_breaks_the_reply():
    reply = Reply(100)
    reply.feed(docker(b"x", stream=3))
    assert reply.broken


def test_a_ready_frame_split_across_reads_is_read():
    data = docker(frame(b"r") + frame(b"a") + run(frame(b"O", b"hello")) + frame(b"R", FINAL))
    reply = Reply(100)
    for i in range(len(data)):
        reply.feed(data[i : i + 1])
    assert reply.final is not None and bytes(reply.cases[0].streams[b"O"]) == b"hello"


def test_the_cases_output_is_kept_within_its_total():
    reply = Reply(100, cases=3, cases_output=150)
    data = frame(b"r") + frame(b"a")
    data += b"".join(run(frame(b"O", b"x" * 80), index=i) for i in range(3))
    reply.feed(docker(data + frame(b"R", FINAL)))
    assert reply.final is not None and not reply.broken
    assert [len(c.streams[b"O"]) for c in reply.cases] == [80, 70, 0]


def built_reply(*frames: bytes, products_max: int = 100, build: bytes | None = None) -> Reply:
    """A compiled program's reply: its build, `frames`, one run and the result."""
    reply = Reply(1024, products_max=products_max)
    head = [frame(b"r"), frame(b"a"), frame(b"B", build or result())]
    reply.feed(docker(b"".join([*head, *frames, run(), frame(b"R", FINAL)])))
    return reply


def test_build_products_asked_for_are_read_whole():
    reply = built_reply(
        frame(b"P", b"755 5 main"), frame(b"Q", b"\x7fEL"), frame(b"Q", b"F\n"),
        frame(b"P", b"644 0 .build/tmp/main.js"),
    )  # fmt: skip
    assert reply.final is not None and not reply.broken
    assert [(p.path, p.executable, p.data) for p in reply.products] == [
        ("main", True, b"\x7fELF\n"),
        (".build/tmp/main.js", False, b""),
    ]


@pytest.mark.parametrize(
    "frames",
    [
        [frame(b"Q", b"x")],  # content before any product
        [frame(b"P", b"755 1 ../main"), frame(b"Q", b"x")],  # out of the working directory
        [frame(b"P", b"755 1 /bin/sh"), frame(b"Q", b"x")],
        [frame(b"P", b"755 1 a//b"), frame(b"Q", b"x")],
        [frame(b"P", b"755 1 a\nb"), frame(b"Q", b"x")],
        [frame(b"P", b"755 1 \xff"), frame(b"Q", b"x")],
        [frame(b"P", b"777 1 main"), frame(b"Q", b"x")],  # a mode no product has
        [frame(b"P", b"4755 1 main"), frame(b"Q", b"x")],  # setuid
        [frame(b"P", b"755 -1 main")],
        [frame(b"P", b"755 1x main")],
        [frame(b"P", b"755 main")],
        [frame(b"P", b"755 1 ")],
        [frame(b"P", b"755 101 main"), frame(b"Q", b"x" * 101)],  # more than asked for
        [frame(b"P", b"755 60 a"), frame(b"Q", b"x" * 60), frame(b"P", b"755 60 b")],  # in all
        [frame(b"P", b"755 2 main"), frame(b"Q", b"xyz")],  # more content than announced
        [frame(b"P", b"755 3 main"), frame(b"Q", b"xy")],  # less (then a case)
        [frame(b"P", b"755 1 main"), frame(b"Q", b"")],
        [frame(b"P", b"755 0 main"), frame(b"P", b"644 0 main")],  # twice
    ],
)
def test_malformed_build_products_break_the_reply(frames):
    reply = built_reply(*frames)
    assert reply.broken and reply.final is None
    assert sum(len(p.data) for p in reply.built) <= 100


def test_build_products_come_only_when_asked_after_a_good_build_and_before_the_run():
    assert "out of order" in built_reply(frame(b"P", b"755 0 main"), products_max=0).broken
    failed = built_reply(frame(b"P", b"755 0 main"), build=result(exit_code=1))
    assert failed.broken and not failed.products
    timed_out = built_reply(
        frame(b"P", b"755 0 main"), build=result(exit_code=None, timed_out=True)
    )
    assert timed_out.broken
    late = Reply(1024, products_max=100)
    late.feed(docker(frame(b"r") + frame(b"a") + frame(b"B", result()) + run()))
    late.feed(docker(frame(b"P", b"755 0 main")))
    assert late.broken and not late.products
    without_build = reply_of(frame(b"r"), frame(b"a"), frame(b"P", b"755 0 main"))
    assert without_build.broken


def test_a_product_still_arriving_is_not_a_product():
    reply = Reply(1024, products_max=100)
    reply.feed(docker(frame(b"r") + frame(b"a") + frame(b"B", result()) + frame(b"P", b"755 4 m")))
    reply.feed(docker(frame(b"Q", b"xy")))
    assert not reply.broken and reply.products == ()
    reply.feed(docker(frame(b"Q", b"zw")))
    assert [p.data for p in reply.products] == [b"xyzw"]


def fields_of(message: bytes) -> dict[str, list[bytes]]:
    """The runner's reading of a request or pre-start message (executor.runner)."""
    length, _, body = message.partition(b"\n")
    assert int(length) == len(body)
    fields: dict[str, list[bytes]] = {}
    at = 0
    while at < len(body):
        eol = body.index(b"\n", at)
        name, _, size = body[at:eol].partition(b" ")
        end = eol + 1 + int(size)
        fields.setdefault(name.decode(), []).append(body[eol + 1 : end])
        at = end
    return fields


@pytest.mark.parametrize("memory_mb", [64, 512, 100])
@pytest.mark.parametrize("language", [lang for lang in REGISTRY if lang.prestart])
def test_a_prestarted_runtime_is_launched_as_its_run_with_only_the_hook_added(language, memory_mb):
    """The runner takes the pre-started runtime for a request whose run, env and nproc are the
    message's: what it launched must be that run command, with the hook before the program."""
    request = RunRequest(
        code="x", language=language.name, limits=Limits(10.0, memory_mb, 0.5, 64, 100)
    )
    asked = fields_of(encode_request(request, language, 1024))
    warm = fields_of(encode_prestart(language, memory_mb, 64))
    assert warm["run"] == asked["run"] and warm.get("env") == asked.get("env")
    assert warm["nproc"] == asked["nproc"]
    launch, run = warm["launch"], warm["run"]
    assert launch[:-3] + launch[-1:] == run  # the same command and program file
    assert launch[-3:-1] == [b"--require", b"/opt/executor/prestart.js"]
    assert "hold" not in warm
    held = fields_of(encode_prestart(language, memory_mb, 64, held=True))
    assert held.pop("hold") == [b"1"] and held == warm  # the same runtime, held earlier


def test_a_stage_message_carries_the_products_and_a_staged_request_only_says_so():
    products = (Product("main", True, b"\x7fELF"), Product("lib/x.so", False, b"so"))
    stage = fields_of(encode_stage(products))
    assert stage["stage"] == [b"1"]
    assert stage["built"] == [b"755 main", b"644 lib/x.so"]
    assert stage["built_content"] == [b"\x7fELF", b"so"]
    limits = Limits(10.0, 256, 0.5, 64, 100)
    request = RunRequest(code="int main(void) { return 0; }", language="c", limits=limits)
    c = next(lang for lang in REGISTRY if lang.name == "c")
    shipped = fields_of(encode_request(request, c, 1024, prebuilt=products))
    staged = fields_of(encode_request(request, c, 1024, prebuilt=products, staged=True))
    assert shipped["built_content"] == [b"\x7fELF", b"so"] and "staged" not in shipped
    assert staged["staged"] == [b"1"] and "built" not in staged and "built_content" not in staged
    assert "compile" not in staged and "compile" not in shipped  # the build does not run


@pytest.mark.parametrize(
    ("paths", "collides"),
    [
        (["main.c"], False),
        (["main.c", "data/in.txt"], False),
        (["lib/y.so"], False),  # beside a product, in a directory made for it
        (["main"], True),  # over a product
        (["./main"], True),
        (["lib"], True),  # a file where a product's directory is
        (["main/x"], True),  # a directory where a product is
        (["lib/x.so"], True),
    ],
)
def test_a_request_that_writes_where_staged_products_are_is_not_staged(paths, collides):
    products = (Product("main", True, b""), Product("lib/x.so", False, b""))
    assert staging_collides(paths, products) is collides
