"""Live output: Server-Sent Events from the running stack, read by a real SSE client over HTTP.

The client here is written from the SSE specification (http.client, line by line as bytes
arrive), independently of the service's own code.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from celery import Celery

from executor.config import Settings
from executor.names import EVENTS, RECORD
from executor.store import Store
from tests.service.conftest import MAIN_DB, AppFactory, flushed, post, wait_until

pytestmark = [pytest.mark.service, pytest.mark.docker]


@dataclass(frozen=True)
class Sse:
    id: str
    event: str
    data: Any


class SseClient:
    """One HTTP request whose answer is read as an event stream, as it arrives."""

    def __init__(self, api: str, method: str, path: str, body: Any = None, **headers: str):
        address = urlsplit(api)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        payload = None if body is None else json.dumps(body).encode()
        heads = {"Accept": "text/event-stream", **headers}
        if payload is not None:
            heads["Content-Type"] = "application/json"
        self.connection.request(method, path, body=payload, headers=heads)
        self.response = self.connection.getresponse()

    def events(self) -> Iterator[Sse]:
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return  # the server ended the stream
            text = line.decode("utf-8").rstrip("\r\n")
            if not text:
                if "data" in fields:
                    yield Sse(fields.get("id", ""), fields.get("event", "message"),
                              json.loads(fields["data"]))  # fmt: skip
                fields = {}
            elif not text.startswith(":"):
                name, _, value = text.partition(":")
                fields[name] = value.removeprefix(" ")

    def close(self) -> None:
        self.connection.close()


@contextlib.contextmanager
def stream(api: str, path: str, **headers: str) -> Iterator[SseClient]:
    client = SseClient(api, "GET", path, **headers)
    try:
        yield client
    finally:
        client.close()


def read_all(api: str, execution_id: str, **headers: str) -> list[Sse]:
    with stream(api, f"/executions/{execution_id}/events", **headers) as client:
        assert client.response.status == 200
        return list(client.events())


def output(events: list[Sse], name: str = "stdout") -> str:
    return "".join(e.data["data"] for e in events if e.event == name)


def ordered_ids(events: list[Sse]) -> list[tuple[int, int]]:
    ids = [tuple(int(part) for part in e.id.split("-")) for e in events]
    assert all(len(i) == 2 for i in ids) and ids == sorted(set(ids)), ids
    return ids  # type: ignore[return-value]


def submit(api: str, code: str, **fields: Any) -> str:
    answer = post(f"{api}/executions", {"code": code, **fields})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


SLOW_PRINTER = """
import sys, time
print("first line", flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(4)
print("last line", flush=True)
"""


def test_output_arrives_in_order_while_the_program_runs(api: str):
    execution_id = submit(api, SLOW_PRINTER)
    seen: list[Sse] = []
    status_when_first_line_arrived = None
    with stream(api, f"/executions/{execution_id}/events") as client:
        assert client.response.status == 200
        assert client.response.getheader("Content-Type", "").startswith("text/event-stream")
        for event in client.events():
            seen.append(event)
            if event.event == "stdout" and status_when_first_line_arrived is None:
                state = requests.get(f"{api}/executions/{execution_id}", timeout=10)
                status_when_first_line_arrived = (state.status_code, state.json()["status"])
    assert status_when_first_line_arrived == (202, "running")
    names = [e.event for e in seen]
    assert names[:2] == ["status", "status"] and names[-1] == "result"
    assert [e.data for e in seen[:2]] == [{"status": "queued"}, {"status": "running"}]
    assert set(names[2:-1]) == {"stdout", "stderr"}
    ordered_ids(seen)
    assert output(seen) == "first line\nlast line\n"
    assert output(seen, "stderr") == "to stderr\n"
    result = seen[-1].data
    assert result["id"] == execution_id and result["status"] == "success"
    assert result["stdout"] == "first line\nlast line\n"
    assert result == requests.get(f"{api}/executions/{execution_id}", timeout=10).json()


TICKER = """
import time
for i in range(6):
    print(f"tick {i}", flush=True)
    time.sleep(0.4)
"""


def test_last_event_id_resumes_with_nothing_missed_or_repeated(api: str):
    execution_id = submit(api, TICKER)
    # Mid-run: leave after the first output event, come back with its id.
    with stream(api, f"/executions/{execution_id}/events") as client:
        first: list[Sse] = []
        for event in client.events():
            first.append(event)
            if event.event == "stdout":
                break
    assert first[-1].event == "stdout" and first[-1].data["data"].startswith("tick 0")
    rest = read_all(api, execution_id, **{"Last-Event-ID": first[-1].id})
    assert rest[-1].event == "result" and rest[-1].data["status"] == "success"
    whole = first + rest
    ordered_ids(whole)  # strictly increasing: nothing repeated
    assert output(whole) == "".join(f"tick {i}\n" for i in range(6))  # nothing missed

    # Once finished: the whole stream replays, and every cut resumes exactly after it.
    replay = read_all(api, execution_id)
    assert [e.id for e in replay] == [e.id for e in whole] and replay == whole
    for cut in range(len(replay) - 1):
        assert read_all(api, execution_id, **{"Last-Event-ID": replay[cut].id}) == replay[cut + 1 :]
    # After the result nothing follows: 204 stops an EventSource from reconnecting.
    with stream(api, f"/executions/{execution_id}/events", **{"Last-Event-ID": replay[-1].id}) as c:
        assert c.response.status == 204
    future = "99999999999999-0"  # an id never given: treated as the latest
    with stream(api, f"/executions/{execution_id}/events", **{"Last-Event-ID": future}) as c:
        assert c.response.status == 204


def test_post_execute_with_accept_event_stream_answers_the_stream(api: str):
    body = {"code": "print('streamed')\nraise SystemExit(3)"}
    client = SseClient(api, "POST", "/execute", body)
    try:
        assert client.response.status == 200
        assert client.response.getheader("Content-Type", "").startswith("text/event-stream")
        events = list(client.events())
    finally:
        client.close()
    assert [e.event for e in events[:2]] == ["status", "status"]
    assert events[-1].event == "result"
    result = events[-1].data
    assert result["status"] == "error" and result["exit_code"] == 3
    assert output(events) == result["stdout"] == "streamed\n"
    # The same request as JSON, and invalid input, are answered as before.
    assert post(f"{api}/execute", body).json()["exit_code"] == 3
    bad = requests.post(
        f"{api}/execute",
        json={"code": ""},
        headers={"Accept": "text/event-stream"},
        timeout=30,
    )
    assert bad.status_code == 422 and bad.json()["errors"].keys() == {"code"}


@pytest.fixture
def producer(main_redis: str) -> Iterator[Celery]:
    app = Celery(broker=main_redis, backend=main_redis)  # nothing of this project
    yield app
    app.close()


def test_an_execution_sent_through_celery_streams(producer: Celery, api: str):
    task_id = f"producer:{uuid.uuid4().hex}"  # a producer's own id, not a UUID
    code = "import time\nprint('from a producer', flush=True)\ntime.sleep(1)\nprint('bye')"
    result = producer.send_task(
        "executor.execute", args=[{"code": code}], queue="executor", task_id=task_id
    )

    def streaming() -> SseClient | None:
        client = SseClient(api, "GET", f"/executions/{task_id}/events")
        if client.response.status == 200:
            return client
        client.close()
        return None

    client = wait_until("the producer's execution to be claimed", streaming, 60)
    try:
        events = list(client.events())
    finally:
        client.close()
    assert {"status": "running"} in [e.data for e in events if e.event == "status"]
    assert output(events) == "from a producer\nbye\n"
    assert events[-1].event == "result" and events[-1].data == result.get(timeout=60)


def test_an_unknown_execution_is_404(api: str):
    for execution_id in (str(uuid.uuid4()), "no-such-task", "bad id!"):
        answer = requests.get(
            f"{api}/executions/{execution_id}/events",
            headers={"Accept": "text/event-stream"},
            timeout=10,
        )
        assert answer.status_code == 404
        assert answer.json()["code"] == "not_found"


def test_a_client_that_leaves_does_not_disturb_the_execution(api: str):
    code = "import time\nprint('hello', flush=True)\ntime.sleep(2)\nprint('still here')"
    execution_id = submit(api, code)
    with stream(api, f"/executions/{execution_id}/events") as client:
        for event in client.events():
            if event.event == "stdout":
                break  # and hang up mid-stream

    def finished() -> dict[str, Any] | None:
        answer = requests.get(f"{api}/executions/{execution_id}", timeout=10)
        return answer.json() if answer.status_code == 200 else None

    result = wait_until("the execution to finish", finished, 60)
    assert result["status"] == "success" and result["stdout"] == "hello\nstill here\n"


def test_a_flood_is_capped_on_the_stream_as_in_the_result(api: str):
    # 3 MiB to stdout in many writes; the cap (EXECUTOR_MAX_OUTPUT_BYTES) is 1 MiB.
    code = "import sys\nfor _ in range(3 * 1024):\n    sys.stdout.write('x' * 1023 + '\\n')\n"
    execution_id = submit(api, code, timeout=30)
    events = read_all(api, execution_id)
    stdout = [e.data for e in events if e.event == "stdout"]
    assert events[-1].event == "result"
    result = events[-1].data
    assert result["status"] == "success" and result["stdout_truncated"] is True
    assert "".join(d["data"] for d in stdout) == result["stdout"]
    assert len(result["stdout"]) == 1024 * 1024
    assert [d.get("truncated", False) for d in stdout] == [False] * (len(stdout) - 1) + [True]
    assert len(stdout) < 1024  # chunks were merged into a bounded number of events


def test_characters_split_between_writes_arrive_whole(api: str, main_logs: Callable[[], str]):
    code = (
        "import sys, time\n"
        "for part in (b'caf\\xc3', b'\\xa9 \\xe2\\x82', b'\\xac \\xf0\\x9f', b'\\x98\\x80\\n'):\n"
        "    sys.stdout.buffer.write(part); sys.stdout.flush(); time.sleep(0.2)\n"
        "sys.stdout.buffer.write(b'bad \\xff end\\n')\n"
    )
    execution_id = submit(api, code)
    events = read_all(api, execution_id)
    result = events[-1].data
    assert output(events) == result["stdout"] == "café € 😀\nbad \ufffd end\n"
    assert "café € 😀" not in main_logs()  # nor does the output reach any log


STREAM_DB = 7


@pytest.fixture
def quiet_api(serve_app: AppFactory, base_settings: Settings) -> Iterator[tuple[str, Store]]:
    """An in-process API with a short heartbeat on a database of its own (no worker)."""
    url = flushed(STREAM_DB)
    store = Store(url, ttl_s=60, history_size=10)
    yield serve_app(base_settings, redis_url=url, events_heartbeat_s=0.2), store
    store.close()


def test_a_lost_worker_ends_the_stream_with_its_internal_error(quiet_api: tuple[str, Store]):
    api, store = quiet_api
    execution_id = str(uuid.uuid4())
    # Claimed by a worker incarnation that never beats: it is lost as soon as anyone looks.
    assert store.claim(execution_id, "python", "gone:1:x", "gone").claimed
    with stream(api, f"/executions/{execution_id}/events") as client:
        events = list(client.events())
    assert [e.event for e in events] == ["status", "status", "result"]
    assert events[-1].data["status"] == "internal_error"
    assert events[-1].data["code"] == "execution_lost"


def test_an_idle_stream_beats_and_ends_when_its_record_expires(quiet_api: tuple[str, Store]):
    api, store = quiet_api
    execution_id = str(uuid.uuid4())
    store.beat("alive:1:x", {"instance": "alive"}, {})
    assert store.claim(execution_id, "python", "alive:1:x", "alive").claimed
    with stream(api, f"/executions/{execution_id}/events") as client:
        events = client.events()
        assert [next(events).data, next(events).data] == [
            {"status": "queued"},
            {"status": "running"},
        ]
        line = b""
        while not line.startswith(b": keep-alive"):  # the idle stream beats
            line = client.response.readline()
            assert line, "the stream ended early"
        store.redis.delete(RECORD + execution_id, EVENTS + execution_id)  # as if expired
        assert list(events) == []  # the stream ends, without a result


def test_open_streams_hold_no_redis_connection_each(api: str, main_redis: str):
    def blocked_readers() -> int:
        """Connections to the main stack's database blocked in XREAD."""
        client = redis.Redis.from_url(main_redis)
        try:
            return sum(
                1
                for c in client.client_list()
                if c.get("db") == str(MAIN_DB)
                and c.get("cmd") == "xread"
                and "b" in c.get("flags", "")
            )
        finally:
            client.close()

    before = blocked_readers()
    code = "import time\nprint('up', flush=True)\ntime.sleep(4)"
    execution_id = submit(api, code)
    clients = [SseClient(api, "GET", f"/executions/{execution_id}/events") for _ in range(40)]
    try:
        for client in clients:  # every stream is live: it has relayed the program's output
            assert any(e.event == "stdout" for e in _until_stdout(client))
        # At most one waker per API process (gunicorn runs two), not one per stream.
        assert 1 <= blocked_readers() <= before + 2
    finally:
        for client in clients:
            client.close()


def _until_stdout(client: SseClient) -> Iterator[Sse]:
    for event in client.events():
        yield event
        if event.event == "stdout":
            return
