"""The proxy's parts without a Docker engine: strict JSON, strict HTTP heads, the routing table,
ownership, and the exact requests docker-py 7.2.0 sends for each call the worker makes."""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any
from urllib.parse import quote_plus

import docker
import pytest
import requests

from executor.config import Settings
from executor.policy import LABEL_SANDBOX, SANDBOX_LABEL_FILTER, Rules, profile_name, sandbox_config
from executor.proxy import strictjson
from executor.proxy.http import (
    HTTPError,
    QueryError,
    error_response,
    parse_query,
    parse_request,
    read_head,
)
from executor.proxy.ownership import SYNC_MIN, Ownership, Verdict
from executor.proxy.rules import Router, normalize_image, path_problem
from executor.proxy.upstream import UpstreamUnreachable
from executor.proxyauth import credential, worker_identity

CID = "a" * 64
RULES = Rules.from_settings(Settings())  # images: executor-python:3.11
TOKEN = "unit-test-secret"
IDENTITY = worker_identity("proxy-unit")
AUTH = f"Authorization: {credential(TOKEN.encode(), IDENTITY)}"


def _body(uid: int = 200001) -> dict[str, Any]:
    """A create body the policy accepts from IDENTITY."""
    return sandbox_config(
        image="executor-python:3.11",
        memory_mb=64,
        cpus=0.25,
        pids=RULES.max_pids,
        tmpfs_mb=16,
        nofile=RULES.nofile,
        runtime="",
        uid=uid,
        worker=IDENTITY,
        execution="unit",
        profile=profile_name("python", 64, 0.25),
    )


# -- strict JSON ---------------------------------------------------------------------------


def test_strict_json_reads_plain_json() -> None:
    assert strictjson.loads(b'{"a": [1, 2.5, "x", null, true], "b": {"c": -3}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": -3},
    }


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": {"Privileged": false, "Privileged": true}}', "duplicate key 'Privileged'"),
        (b'{"x": [{"k": 1, "k": 1}]}', "duplicate key 'k'"),
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": Infinity}', "Infinity is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": 9223372036854775808}', "64-bit"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "byte order mark"),
        (b'{"a": 1} {"a": 2}', "Extra data"),
        (b'{"a": 1}x', "Extra data"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"a": "line\nbreak"}', "Invalid control character"),
        (b"[" * 40 + b"]" * 40, "nested deeper"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b"", "Expecting value"),
        (b"{'a': 1}", "not JSON"),
    ],
)
def test_strict_json_refuses(data: bytes, why: str) -> None:
    with pytest.raises(strictjson.StrictJSONError, match=why):
        strictjson.loads(data)


def test_strict_json_refuses_oversize_input() -> None:
    with pytest.raises(strictjson.StrictJSONError, match="larger than 10 bytes"):
        strictjson.loads(b'"' + b"x" * 20 + b'"', max_bytes=10)


# -- request heads ---------------------------------------------------------------------------

DOCKER_PY_HEAD = (
    b"POST /v1.41/containers/create HTTP/1.1\r\nHost: 127.0.0.1:2375\r\n"
    b"User-Agent: docker-sdk-python/7.2.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
    b"Connection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
)


def test_parse_request_reads_a_docker_py_head() -> None:
    request = parse_request(DOCKER_PY_HEAD)
    assert (request.method, request.path, request.query) == (
        "POST",
        "/v1.41/containers/create",
        None,
    )
    assert request.content_length == 12
    assert request.headers["content-type"] == "application/json"
    assert not request.close
    assert not request.upgrade


def test_parse_request_sees_upgrade_and_query() -> None:
    request = parse_request(
        b"POST /v1.41/containers/x/attach?stdin=1&stream=1 HTTP/1.1\r\nHost: docker\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    assert request.upgrade
    assert request.query == "stdin=1&stream=1"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"get /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /v1.41/_ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET http://x/v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET  /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n", 400),
        (
            b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            400,
        ),
        (b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
        (b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (
            b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST /v1.41/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", 417),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 33000 + b"\r\n\r\n", 431),
    ],
)
def test_parse_request_refuses(head: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as caught:
        parse_request(head)
    assert caught.value.status == status


async def _read_head_from(data: bytes) -> bytes:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(data)
    reader.feed_eof()
    return await read_head(reader)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /v1.41/_ping HTTP/1.1\nHost: x\n\n", 400),  # bare LF
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\n\r\n", 400),
        (b"\r\nGET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n", 400),  # ends inside the head
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + (b"X: " + b"y" * 8000 + b"\r\n") * 5 + b"\r\n", 431),
    ],
)
def test_read_head_refuses(data: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as caught:
        asyncio.run(_read_head_from(data))
    assert caught.value.status == status


def test_read_head_returns_nothing_at_a_clean_end() -> None:
    assert asyncio.run(_read_head_from(b"")) == b""
    head = b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n"
    assert asyncio.run(_read_head_from(head + b"GET /next")) == head


# -- query strings ---------------------------------------------------------------------------


def test_parse_query_decodes_values() -> None:
    assert parse_query("a=1&filters=%7B%22label%22%3A+%5B%22x%3D1%22%5D%7D&flag") == {
        "a": "1",
        "filters": '{"label": ["x=1"]}',
        "flag": "",
    }


@pytest.mark.parametrize(
    "raw",
    ["", "a=1&a=2", "a=1;b=2", "a=%zz", "a=%ff", "%61=1", "a=1&&b=2", "a b=1", "a=<"],
)
def test_parse_query_refuses(raw: str) -> None:
    with pytest.raises(QueryError):
        parse_query(raw)


# -- routing ---------------------------------------------------------------------------------

ALLOWED = [
    ("GET", "/v1.41/_ping", None, "ping"),
    ("HEAD", "/v1.41/_ping", None, "ping"),
    ("GET", "/_ping", None, "ping"),
    ("GET", "/version", None, "version"),
    ("GET", "/v1.41/version", None, "version"),
    ("POST", "/v1.41/containers/create", None, "container-create"),
    ("POST", "/v1.41/containers/create", "name=executor-abc-123", "container-create"),
    ("POST", f"/v1.41/containers/{CID}/start", None, "container-start"),
    (
        "POST",
        f"/v1.41/containers/{CID}/attach",
        "stdin=1&stdout=1&stderr=1&stream=1",
        "container-attach",
    ),
    ("POST", f"/v1.41/containers/{CID}/wait", None, "container-wait"),
    ("POST", f"/v1.41/containers/{CID}/wait", "condition=removed", "container-wait"),
    ("POST", f"/v1.41/containers/{CID}/kill", None, "container-kill"),
    ("POST", f"/v1.41/containers/{CID}/kill", "signal=SIGKILL", "container-kill"),
    ("GET", f"/v1.41/containers/{CID}/json", None, "container-inspect"),
    ("GET", f"/v1.41/containers/{CID}/stats", "stream=0", "container-stats"),
    ("GET", f"/v1.41/containers/{CID}/stats", "stream=False&one-shot=True", "container-stats"),
    ("DELETE", f"/v1.41/containers/{CID}", "v=False&link=False&force=True", "container-remove"),
    ("DELETE", f"/v1.41/containers/{CID}", "force=1", "container-remove"),
    ("DELETE", f"/v1.41/containers/{CID}", None, "container-remove"),
    (
        "GET",
        "/v1.41/containers/json",
        "all=1&filters=%7B%22label%22%3A+%5B%22io.executor.sandbox%3D1%22%5D%7D",
        "container-list",
    ),
    ("GET", "/v1.41/images/executor-python:3.11/json", None, "image-inspect"),
    ("POST", "/v1.41/images/create", "fromImage=executor-python&tag=3.11", "image-pull"),
    ("GET", "/v1.44/_ping", None, "ping"),
]


@pytest.mark.parametrize(("method", "path", "query", "rule"), ALLOWED)
def test_router_allows(method: str, path: str, query: str | None, rule: str) -> None:
    decision = Router(RULES).decide(method, path, query)
    assert (decision.allowed, decision.rule, decision.reason) == (True, rule, "")


def test_router_names_the_container_and_image() -> None:
    router = Router(RULES)
    assert router.decide("POST", f"/v1.41/containers/{CID}/start", None).container == CID
    pull = router.decide("POST", "/v1.41/images/create", "fromImage=executor-python&tag=3.11")
    assert pull.image == "executor-python:3.11"


def _filters(value: Any) -> str:
    return "filters=" + quote_plus(json.dumps(value))


REFUSED = [
    # path shape
    ("GET", "/v1.41/containers/%2e%2e/json", None, "path", "percent-encoded"),
    ("GET", "/v1.41/containers/%61%61/json", None, "path", "percent-encoded"),
    ("GET", "/v1.41//containers/json", None, "path", "doubled slash"),
    ("POST", f"/v1.41/containers/{CID}/../{CID}/start", None, "path", "dot segment"),
    ("POST", f"/v1.41/./containers/{CID}/start", None, "path", "dot segment"),
    ("GET", "/v1.41/_ping/", None, "path", "trailing slash"),
    ("GET", "/v1.41/_ping#x", None, "path", "characters"),
    ("GET", "/v1.41/containers/json", None, "container-list", "label io.executor.sandbox=1"),
    ("GET", "/containers/json", None, "api-version", "versioned"),
    ("POST", f"/containers/{CID}/start", None, "api-version", "versioned"),
    ("POST", f"/v1.23/containers/{CID}/start", None, "api-version", "before 1.40"),
    ("GET", "/V1.41/_ping", None, "api-version", "versioned"),
    # endpoints never allowed
    ("POST", f"/v1.41/containers/{CID}/exec", None, "endpoint", "exec"),
    ("POST", "/v1.41/exec/abc/start", None, "endpoint", "exec"),
    ("GET", f"/v1.41/containers/{CID}/archive", "path=/etc", "endpoint", "archive"),
    ("PUT", f"/v1.41/containers/{CID}/archive", "path=/tmp", "endpoint", "archive"),
    ("HEAD", f"/v1.41/containers/{CID}/archive", "path=/", "endpoint", "archive"),
    ("GET", f"/v1.41/containers/{CID}/export", None, "endpoint", "export"),
    ("POST", f"/v1.41/containers/{CID}/update", None, "endpoint", "update"),
    ("POST", "/v1.41/build", None, "endpoint", "build"),
    ("POST", "/v1.41/commit", f"container={CID}", "endpoint", "build"),
    ("GET", "/v1.41/volumes", None, "endpoint", "volumes"),
    ("POST", "/v1.41/volumes/create", None, "endpoint", "volumes"),
    ("GET", "/v1.41/networks", None, "endpoint", "networks"),
    ("POST", "/v1.41/networks/create", None, "endpoint", "networks"),
    ("POST", "/v1.41/swarm/init", None, "endpoint", "swarm"),
    ("GET", "/v1.41/services", None, "endpoint", "swarm"),
    ("GET", "/v1.41/plugins", None, "endpoint", "plugins"),
    ("GET", "/v1.41/info", None, "endpoint", "no rule"),
    ("GET", "/v1.41/events", None, "endpoint", "no rule"),
    ("GET", "/v1.41/images/json", None, "endpoint", "no rule"),
    ("DELETE", "/v1.41/images/executor-python:3.11", None, "endpoint", "no rule"),
    ("POST", "/v1.41/containers/prune", None, "endpoint", "no rule"),
    ("GET", f"/v1.41/containers/{CID}/logs", None, "endpoint", "no rule"),
    ("POST", f"/v1.41/containers/{CID}/restart", None, "endpoint", "no rule"),
    ("POST", f"/v1.41/containers/{CID}/rename", "name=x", "endpoint", "no rule"),
    ("GET", f"/v1.41/containers/{CID}/start", None, "endpoint", "no rule"),
    ("PUT", "/v1.41/containers/create", None, "endpoint", "no rule"),
    # containers by anything but a full id
    ("POST", f"/v1.41/containers/{CID[:12]}/start", None, "endpoint", "full 64-hex id"),
    ("DELETE", "/v1.41/containers/some-name", None, "endpoint", "full 64-hex id"),
    ("GET", f"/v1.41/containers/{CID.upper()}/json", None, "endpoint", "full 64-hex id"),
    # queries
    ("POST", "/v1.41/containers/create", "name=evil", "container-create", "name must match"),
    ("POST", "/v1.41/containers/create", "platform=linux", "container-create", "'platform'"),
    (
        "POST",
        "/v1.41/containers/create",
        "name=executor-a&name=executor-b",
        "container-create",
        "duplicate",
    ),
    ("POST", "/v1.41/containers/create", "", "container-create", "empty query"),
    ("POST", f"/v1.41/containers/{CID}/start", "detachKeys=ctrl-x", "container-start", "no query"),
    (
        "POST",
        f"/v1.41/containers/{CID}/attach",
        "detachKeys=ctrl-x",
        "container-attach",
        "detachKeys",
    ),
    ("POST", f"/v1.41/containers/{CID}/attach", "stdin=yes", "container-attach", "0 or 1"),
    ("POST", f"/v1.41/containers/{CID}/wait", "condition=forever", "container-wait", "condition"),
    (
        "POST",
        f"/v1.41/containers/{CID}/kill",
        "signal=KILL&signal=TERM",
        "container-kill",
        "duplicate",
    ),
    ("POST", f"/v1.41/containers/{CID}/kill", "signal=%3Bx", "container-kill", "signal"),
    ("GET", f"/v1.41/containers/{CID}/stats", None, "container-stats", "stream=0"),
    ("GET", f"/v1.41/containers/{CID}/stats", "stream=1", "container-stats", "stream=0"),
    ("GET", f"/v1.41/containers/{CID}/json", "size=1", "container-inspect", "no query"),
    ("DELETE", f"/v1.41/containers/{CID}", "link=True", "container-remove", "link"),
    ("DELETE", f"/v1.41/containers/{CID}", "force=1;v=1", "container-remove", "malformed"),
    ("GET", "/v1.41/containers/json", _filters({"label": ["other=1"]}), "container-list", "label"),
    (
        "GET",
        "/v1.41/containers/json",
        _filters({"label": [f"{LABEL_SANDBOX}=0"]}),
        "container-list",
        "label",
    ),
    (
        "GET",
        "/v1.41/containers/json",
        _filters({"label": {SANDBOX_LABEL_FILTER: True}}),
        "container-list",
        "lists of strings",
    ),
    (
        "GET",
        "/v1.41/containers/json",
        _filters({"label": [SANDBOX_LABEL_FILTER], "ancestor": ["x"]}),
        "container-list",
        "'ancestor'",
    ),
    (
        "GET",
        "/v1.41/containers/json",
        "filters=" + quote_plus('{"label":["x"],"label":["io.executor.sandbox=1"]}'),
        "container-list",
        "duplicate key",
    ),
    (
        "GET",
        "/v1.41/containers/json",
        _filters({"label": [SANDBOX_LABEL_FILTER]}) + "&size=1",
        "container-list",
        "size",
    ),
    (
        "GET",
        "/v1.41/containers/json",
        _filters({"label": [SANDBOX_LABEL_FILTER]}) + f"&since={CID}",
        "container-list",
        "'since'",
    ),
    # images
    ("GET", "/v1.41/images/alpine/json", None, "image-inspect", "'alpine:latest'"),
    ("GET", "/v1.41/images/executor-python/json", None, "image-inspect", "not an allowed"),
    (
        "POST",
        "/v1.41/images/create",
        "fromImage=alpine&tag=latest",
        "image-pull",
        "'alpine:latest'",
    ),
    ("POST", "/v1.41/images/create", "fromImage=executor-python", "image-pull", "tag="),
    ("POST", "/v1.41/images/create", "fromImage=executor-python:3.11", "image-pull", "tag="),
    (
        "POST",
        "/v1.41/images/create",
        "fromImage=executor-python:3.11&tag=latest",
        "image-pull",
        "tag=",
    ),
    ("POST", "/v1.41/images/create", "fromSrc=-&repo=x", "image-pull", "'fromSrc'"),
]


@pytest.mark.parametrize(("method", "path", "query", "rule", "why"), REFUSED)
def test_router_refuses(method: str, path: str, query: str | None, rule: str, why: str) -> None:
    decision = Router(RULES).decide(method, path, query)
    assert not decision.allowed
    assert decision.rule == rule
    assert why in decision.reason


def test_path_problem_accepts_canonical_paths() -> None:
    assert path_problem("/v1.41/images/registry.local:5000/ns/executor-python:3.11/json") == ""


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("executor-python:3.11", "executor-python:3.11"),
        ("executor-python", "executor-python:latest"),
        ("registry:5000/executor-python", "registry:5000/executor-python:latest"),
        ("registry:5000/executor-python:3.11", "registry:5000/executor-python:3.11"),
    ],
)
def test_normalize_image(name: str, normal: str) -> None:
    assert normalize_image(name) == normal


# -- ownership -------------------------------------------------------------------------------


class FakeLookup:
    """Our own seam: the engine's answer to an inspect of one id."""

    def __init__(self, status: int, body: Any) -> None:
        self.answer = (status, body)
        self.calls = 0

    async def __call__(self, container: str) -> tuple[int, Any]:
        self.calls += 1
        return self.answer


def _inspect(labels: dict[str, str] | None, container: str = CID) -> dict[str, Any]:
    return {"Id": container, "Config": {"Labels": labels}}


def test_ownership_knows_created_ids_without_asking() -> None:
    lookup = FakeLookup(500, None)
    ownership = Ownership(lookup)
    ownership.add(CID)
    assert asyncio.run(ownership.check(CID)) is Verdict.OURS
    assert lookup.calls == 0


def test_ownership_asks_once_and_remembers_a_labelled_container() -> None:
    lookup = FakeLookup(200, _inspect({LABEL_SANDBOX: "1"}))
    ownership = Ownership(lookup)
    assert asyncio.run(ownership.check(CID)) is Verdict.OURS
    assert asyncio.run(ownership.check(CID)) is Verdict.OURS
    assert lookup.calls == 1


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, _inspect({}), Verdict.NOT_OURS),
        (200, _inspect(None), Verdict.NOT_OURS),
        (200, _inspect({LABEL_SANDBOX: "0"}), Verdict.NOT_OURS),
        (200, _inspect({LABEL_SANDBOX: "1"}, "b" * 64), Verdict.NOT_OURS),  # a name, not the id
        (200, [], Verdict.NOT_OURS),
        (500, None, Verdict.NOT_OURS),
        (404, {"message": "No such container"}, Verdict.MISSING),
    ],
)
def test_ownership_refuses_and_asks_again(status: int, body: Any, verdict: Verdict) -> None:
    lookup = FakeLookup(status, body)
    ownership = Ownership(lookup)
    assert asyncio.run(ownership.check(CID)) is verdict
    assert asyncio.run(ownership.check(CID)) is verdict
    assert lookup.calls == 2


def test_ownership_forgets_the_oldest_past_its_capacity() -> None:
    ownership = Ownership(FakeLookup(404, None), capacity=2)
    for c in ("1" * 64, "2" * 64, "3" * 64):
        ownership.add(c)
    assert not ownership.known("1" * 64)
    assert ownership.known("2" * 64)
    assert ownership.known("3" * 64)


# -- what docker-py 7.2.0 actually sends -------------------------------------------------------


class Capture(requests.adapters.BaseAdapter):
    """A transport that records docker-py's requests and answers each with `answer`."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.answer: Any = {}

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(self.answer).encode()
        response.raw = types.SimpleNamespace(_fp=types.SimpleNamespace(chunked=False))
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass


WORKER_CALLS = [
    ("ping", lambda c: c.ping(), "OK", "ping"),
    ("version", lambda c: c.version(), {}, "version"),
    (
        "create",
        lambda c: c.create_container_from_config({"Image": "x"}),
        {"Id": CID},
        "container-create",
    ),
    ("start", lambda c: c.start(CID), None, "container-start"),
    (
        "attach",
        lambda c: c.attach_socket(CID, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}),
        None,
        "container-attach",
    ),
    ("wait", lambda c: c.wait(CID, timeout=5), {"StatusCode": 0}, "container-wait"),
    (
        "wait-removed",
        lambda c: c.wait(CID, condition="removed"),
        {"StatusCode": 0},
        "container-wait",
    ),
    ("kill", lambda c: c.kill(CID, signal="SIGKILL"), None, "container-kill"),
    ("kill-default", lambda c: c.kill(CID), None, "container-kill"),
    ("inspect", lambda c: c.inspect_container(CID), {}, "container-inspect"),
    ("remove", lambda c: c.remove_container(CID, force=True), None, "container-remove"),
    (
        "list",
        lambda c: c.containers(
            all=True, filters={"label": [SANDBOX_LABEL_FILTER, "io.executor.worker=w"]}
        ),
        [],
        "container-list",
    ),
    ("stats", lambda c: c.stats(CID, stream=False), {}, "container-stats"),
    ("stats-one-shot", lambda c: c.stats(CID, stream=False, one_shot=True), {}, "container-stats"),
    (
        "image-inspect",
        lambda c: c.inspect_image("executor-python:3.11"),
        {"Id": "x"},
        "image-inspect",
    ),
    (
        "image-pull",
        lambda c: list(c.pull("executor-python", tag="3.11", stream=True, decode=True)),
        {},
        "image-pull",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "answer", "rule"), WORKER_CALLS, ids=[w[0] for w in WORKER_CALLS]
)
def test_what_docker_py_sends_is_allowed(name: str, call: Any, answer: Any, rule: str) -> None:
    client = docker.APIClient(base_url="tcp://127.0.0.1:9", version="1.41")
    capture = Capture()
    capture.answer = answer
    client.mount("http://", capture)
    try:
        call(client)
    except AttributeError:
        assert name == "attach"  # it wants a real socket; the request is recorded all the same
    (sent,) = capture.sent
    path, _, query = (sent.path_url or "").partition("?")
    decision = Router(RULES).decide(sent.method or "", path, query or None)
    assert (decision.rule, decision.reason) == (rule, "")
    if name == "attach":
        assert sent.headers["Connection"] == "Upgrade"
        assert sent.headers["Upgrade"] == "tcp"


# -- a hijacked stream survives the garbage collector ------------------------------------------


async def _splice_after_gc(tmp_path: Any) -> bytes:
    """Half-close an attach through an in-process proxy, collect garbage, then let the fake
    engine answer: the answer must still arrive (asyncio keeps only weak references to a
    stream's reader, so a connection nobody holds on to can be collected mid-splice)."""
    import gc

    from executor.proxy.audit import AuditLog
    from executor.proxy.server import CLIENT_LIMIT, Proxy

    release = asyncio.Event()

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        if b"/attach" not in line:
            if b"/containers/create" in line:
                await reader.readexactly(parse_request(head).content_length)
                status, value = b"201 Created", {"Id": CID}
            elif b"/containers/json?" in line:
                status, value = b"200 OK", []  # no sandboxes of ours yet
            else:
                status, value = b"200 OK", {"Id": CID, "Config": {"Labels": {LABEL_SANDBOX: "1"}}}
            body = json.dumps(value).encode()
            writer.write(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        await reader.read()  # until the proxy passes on our client's half-close
        await release.wait()
        writer.write(b"late output")
        writer.close()

    engine_server = await asyncio.start_server(engine, "127.0.0.1", 0)
    engine_port = engine_server.sockets[0].getsockname()[1]
    settings = Settings(proxy_upstream=f"tcp://127.0.0.1:{engine_port}", proxy_token=TOKEN)
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    proxy = Proxy(settings, audit)
    proxy_server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=CLIENT_LIMIT)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        body = json.dumps(_body()).encode()
        writer.write(
            f"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 201 ")
        await reader.readuntil(b"}")
        writer.write(
            f"POST /v1.41/containers/{CID}/attach?stdin=1&stdout=1&stream=1 HTTP/1.1\r\n"
            f"Host: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n{AUTH}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        writer.write_eof()
        await asyncio.sleep(0.1)
        gc.collect()
        release.set()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        proxy_server.close()
        engine_server.close()
        audit.close()


def test_a_half_closed_attach_survives_garbage_collection(tmp_path: Any) -> None:
    assert asyncio.run(_splice_after_gc(tmp_path)) == b"late output"


async def _ping_through_stale_connections(tmp_path: Any) -> tuple[list[bytes], int]:
    """An engine that drops, unanswered, any connection first used after 100 ms idle (as if
    it had closed it while idle): the proxy must send the request again on a fresh one."""
    from executor.proxy.audit import AuditLog
    from executor.proxy.server import CLIENT_LIMIT, Proxy

    loop = asyncio.get_running_loop()
    dropped = 0

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dropped
        opened = loop.time()
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            if loop.time() - opened > 0.1:
                dropped += 1
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
            await writer.drain()
            opened = loop.time()
        writer.close()

    engine_server = await asyncio.start_server(engine, "127.0.0.1", 0)
    engine_port = engine_server.sockets[0].getsockname()[1]
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    settings = Settings(proxy_upstream=f"tcp://127.0.0.1:{engine_port}", proxy_token=TOKEN)
    proxy = Proxy(settings, audit)
    proxy_server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=CLIENT_LIMIT)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    ping = f"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n".encode()
    answers = []
    try:
        first = await asyncio.open_connection("127.0.0.1", proxy_port)
        for _ in range(2):  # the second reuses this client's engine connection, now stale
            first[1].write(ping)
            answers.append(await first[0].readuntil(b"\r\n\r\n"))
            await first[0].readexactly(2)
            await asyncio.sleep(0.2)
        second = await asyncio.open_connection("127.0.0.1", proxy_port)
        second[1].write(ping)  # takes the spare, opened long ago
        answers.append(await second[0].readuntil(b"\r\n\r\n"))
        first[1].close()
        second[1].close()
        return answers, dropped
    finally:
        proxy_server.close()
        engine_server.close()
        audit.close()


def test_a_request_on_a_connection_the_engine_dropped_goes_again(tmp_path: Any) -> None:
    answers, dropped = asyncio.run(_ping_through_stale_connections(tmp_path))
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert dropped == 2


# -- settings the proxy reads, and its audit lines ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "unix_path", "host", "port", "host_header"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock", "", 0, "docker"),
        ("tcp://10.0.0.5:2376", None, "10.0.0.5", 2376, "10.0.0.5:2376"),
        ("tcp://docker-engine", None, "docker-engine", 2375, "docker-engine:2375"),
        ("http://[::1]:2375", None, "::1", 2375, "[::1]:2375"),
    ],
)
def test_upstream_addresses(
    url: str, unix_path: str | None, host: str, port: int, host_header: str
) -> None:
    from executor.proxy.upstream import Upstream

    upstream = Upstream.parse(url)
    assert (upstream.unix_path, upstream.host, upstream.port) == (unix_path, host, port)
    assert upstream.host_header == host_header


@pytest.mark.parametrize(
    "url", ["", "docker.sock", "ssh://host", "tcp://", "tcp://h:x", "unix://host/x"]
)
def test_upstream_refuses_other_addresses(url: str) -> None:
    from executor.proxy.upstream import Upstream

    with pytest.raises(ValueError, match="PROXY_UPSTREAM"):
        Upstream.parse(url)


@pytest.mark.parametrize(
    ("value", "address"),
    [("0.0.0.0:2375", ("0.0.0.0", 2375)), (":2375", ("0.0.0.0", 2375)), ("[::1]:23", ("::1", 23))],
)
def test_listen_addresses(value: str, address: tuple[str, int]) -> None:
    from executor.proxy.__main__ import parse_listen

    assert parse_listen(value) == address


@pytest.mark.parametrize("value", ["2375", "host:", "host:99999", "host:http"])
def test_listen_refuses_other_values(value: str) -> None:
    from executor.config import SettingsError
    from executor.proxy.__main__ import parse_listen

    with pytest.raises(SettingsError, match="PROXY_LISTEN"):
        parse_listen(value)


def test_metrics_listen_is_on_by_default_and_empty_turns_it_off() -> None:
    from executor.config import Settings
    from executor.proxy.__main__ import metrics_address

    assert metrics_address(Settings.from_env({})) == ("0.0.0.0", 9102)
    assert metrics_address(Settings.from_env({"PROXY_METRICS_LISTEN": ""})) is None
    on = Settings.from_env({"PROXY_METRICS_LISTEN": "127.0.0.1:9200"})
    assert metrics_address(on) == ("127.0.0.1", 9200)


@pytest.mark.parametrize(
    "env",
    [
        {"PROXY_METRICS_LISTEN": "9102"},
        {"PROXY_METRICS_LISTEN": "127.0.0.1:2375"},  # the Docker port never serves /metrics
        {"PROXY_LISTEN": "127.0.0.1:9200", "PROXY_METRICS_LISTEN": "0.0.0.0:9200"},
    ],
)
def test_metrics_listen_refuses_bad_and_docker_addresses(env: dict[str, str]) -> None:
    from executor.config import Settings, SettingsError
    from executor.proxy.__main__ import metrics_address

    with pytest.raises(SettingsError, match="PROXY_METRICS_LISTEN"):
        metrics_address(Settings.from_env(env))


def test_audit_lines_are_json_with_every_field(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from executor.proxy.audit import AuditLog

    target = tmp_path / "audit.jsonl"
    for audit in (AuditLog(str(target)), AuditLog("-")):
        audit.record(
            client="127.0.0.1:1",
            method="POST",
            path="/v1.41/containers/" + "x" * 400,
            allowed=False,
            rule="endpoint",
            status=403,
            reason="exec is never allowed",
        )
        audit.close()
    (line,) = target.read_text().splitlines()
    record = json.loads(line)
    on_stderr = json.loads(capsys.readouterr().err)
    assert {**on_stderr, "time": None} == {**record, "time": None}
    assert set(record) == {
        "time", "client", "identity", "method", "path", "decision", "rule", "container", "image",
        "status", "reason", "ms",
    }  # fmt: skip
    assert record["decision"] == "refused"
    assert len(record["path"]) == 256
    assert record["time"].endswith("+00:00")


# -- the creator map and the uid index ---------------------------------------------------------

C1, C2, C3, C4 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)
OTHER_IDENTITY = worker_identity("proxy-unit-other")


def test_only_the_creator_may_start_and_attach_once() -> None:
    ownership = Ownership(FakeLookup(500, None))
    ownership.created(CID, IDENTITY, 200001)
    assert "only the worker that created" in ownership.claim(CID, OTHER_IDENTITY, attach=True)
    assert "only the worker that created" in ownership.claim(CID, OTHER_IDENTITY, attach=False)
    assert ownership.claim(CID, IDENTITY, attach=True) == ""  # the refusals used nothing up
    assert "attached to once already" in ownership.claim(CID, IDENTITY, attach=True)
    assert ownership.claim(CID, IDENTITY, attach=False) == ""  # start stays the creator's
    assert ownership.claim(CID, IDENTITY, attach=False) == ""


def test_containers_not_seen_created_have_no_creator() -> None:
    lookup = FakeLookup(200, {"Id": C2, "Config": {"Labels": {LABEL_SANDBOX: "1"}}})
    ownership = Ownership(lookup)
    ownership.add(C1, 200001)
    assert asyncio.run(ownership.check(C2)) is Verdict.OURS  # labelled, seen by a lookup
    for container in (C1, C2, C3):  # C3: not known at all
        for attach in (True, False):
            why = ownership.claim(container, IDENTITY, attach=attach)
            assert "was not created through this proxy" in why


def test_a_labelled_container_looked_up_holds_its_uid() -> None:
    body = {"Id": CID, "Config": {"Labels": {LABEL_SANDBOX: "1"}, "Cmd": ["200007"]}}
    ownership = Ownership(FakeLookup(200, body))
    assert asyncio.run(ownership.check(CID)) is Verdict.OURS
    assert ownership.holders(200007) == [CID]


def test_uid_holders_follow_creates_and_forgets() -> None:
    ownership = Ownership(FakeLookup(500, None))
    ownership.created(C1, IDENTITY, 200005)
    ownership.created(C2, OTHER_IDENTITY, 200005)  # (the server refuses this; the map keeps both)
    ownership.created(C3, IDENTITY, None)
    assert ownership.holders(200005) == [C1, C2]
    ownership.forget(C1)
    assert ownership.holders(200005) == [C2]
    ownership.forget(C2)
    ownership.forget(C2)  # twice is fine
    assert ownership.holders(200005) == []
    assert not ownership.known(C1)
    assert ownership.known(C3)


def test_the_map_is_bounded_and_forgets_the_oldest_with_its_uid() -> None:
    ownership = Ownership(FakeLookup(404, None), capacity=2)
    for i, container in enumerate((C1, C2, C3)):
        ownership.created(container, IDENTITY, 200000 + i)
    assert len(ownership) == 2
    assert not ownership.known(C1)
    assert ownership.holders(200000) == []
    assert ownership.holders(200002) == [C3]
    assert "was not created" in ownership.claim(C1, IDENTITY, attach=True)


def test_ownership_add_ignores_what_is_not_a_full_id() -> None:
    ownership = Ownership(FakeLookup(404, None))
    ownership.created("abc", IDENTITY, 200001)
    ownership.add("A" * 64, 200001)
    assert len(ownership) == 0
    assert ownership.holders(200001) == []


class FakeListing:
    """Our own seam: the engine's list of our labelled containers (and a hook while it runs)."""

    def __init__(self, status: int, body: Any, during: Any = None) -> None:
        self.answer = (status, body)
        self.during = during
        self.calls = 0

    async def __call__(self) -> tuple[int, Any]:
        self.calls += 1
        if self.during is not None:
            self.during()
        return self.answer


def _listed(*containers: str, labelled: bool = True) -> list[dict[str, Any]]:
    return [{"Id": c, "Labels": {LABEL_SANDBOX: "1"} if labelled else {}} for c in containers]


class Inspects:
    """Inspect answers by id: a uid each, 404 for the rest."""

    def __init__(self, uids: dict[str, int]) -> None:
        self.uids = uids

    async def __call__(self, container: str) -> tuple[int, Any]:
        if container not in self.uids:
            return 404, {"message": "No such container"}
        user = str(self.uids[container])
        return 200, {"Id": container, "Config": {"Labels": {LABEL_SANDBOX: "1"}, "Cmd": [user]}}


def test_sync_reads_the_engines_sandboxes_and_prunes_the_gone() -> None:
    inspects = Inspects({C1: 200001, C2: 200002})
    ownership: Ownership

    def meanwhile() -> None:
        ownership.created(C4, IDENTITY, 200004)  # created while the list was on its way

    listing = FakeListing(200, [*_listed(C1, C2), *_listed(C3, labelled=False)], meanwhile)
    ownership = Ownership(inspects, listing)
    ownership.created(C3, IDENTITY, 200003)  # known, but the engine no longer lists it
    assert not ownership.synced
    asyncio.run(ownership.ready())
    assert ownership.synced
    assert ownership.holders(200001) == [C1]
    assert ownership.holders(200002) == [C2]
    assert not ownership.known(C3)
    assert ownership.holders(200003) == []
    assert ownership.known(C4)  # not listed, but newer than the list
    assert "was not created" in ownership.claim(C1, IDENTITY, attach=False)
    asyncio.run(ownership.ready())
    assert listing.calls == 1  # read once; sync() reads again on demand


def test_sync_with_the_engine_down_is_tried_again() -> None:
    listing = FakeListing(500, {"message": "down"})
    ownership = Ownership(Inspects({}), listing)
    with pytest.raises(UpstreamUnreachable, match="500"):
        asyncio.run(ownership.ready())
    assert not ownership.synced
    listing.answer = (200, [])
    asyncio.run(ownership.ready())
    assert ownership.synced
    assert listing.calls == 2


def test_sync_is_wanted_once_the_map_has_grown() -> None:
    ownership = Ownership(Inspects({}), FakeListing(200, []))
    for i in range(SYNC_MIN):
        ownership.created(f"{i:064x}", IDENTITY, None)
    assert not ownership.wants_sync()
    ownership.created("f" * 64, IDENTITY, None)
    assert ownership.wants_sync()
    asyncio.run(ownership.sync())  # the engine has none of them
    assert len(ownership) == 0
    assert not ownership.wants_sync()


# -- credentials -------------------------------------------------------------------------------

_SECRET = TOKEN.encode()
_MAC_OF = credential(_SECRET, IDENTITY).rsplit(" ", 1)[1]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "no credential"),
        ("", "no credential"),
        ("Bearer " + TOKEN, "malformed credential: expected Authorization: Executor"),
        (f"Executor {IDENTITY}", "malformed credential: expected"),
        (f"executor {IDENTITY} {_MAC_OF}", "malformed credential: expected"),
        (f"Executor {IDENTITY} {_MAC_OF} more", "malformed credential: expected"),
        (f"Executor  {IDENTITY} {_MAC_OF}", "malformed credential: expected"),
        (f"Executor proxy-unit {_MAC_OF}", "the identity is not instance:pid:hex8"),
        (f"Executor {IDENTITY}x {_MAC_OF}", "the identity is not instance:pid:hex8"),
        (f"Executor {IDENTITY} {_MAC_OF.upper()}", "the MAC is not 64 lower-case hex"),
        (f"Executor {IDENTITY} {_MAC_OF[:-1]}", "the MAC is not 64 lower-case hex"),
        (credential(b"another secret", IDENTITY), "wrong credential"),
        (f"Executor {OTHER_IDENTITY} {_MAC_OF}", "wrong credential"),  # IDENTITY's MAC
    ],
)
def test_authenticate_says_why_without_echoing(value: str | None, why: str) -> None:
    from executor.proxy.server import authenticate

    identity, reason = authenticate(_SECRET, value)
    assert identity is None
    assert why in reason
    assert _MAC_OF not in reason
    assert TOKEN not in reason


def test_authenticate_accepts_a_worker_credential() -> None:
    from executor.proxy.server import authenticate

    assert authenticate(_SECRET, credential(_SECRET, IDENTITY)) == (IDENTITY, "")


def test_error_response_carries_extra_headers() -> None:
    answer = error_response(401, "no", close=True, headers=("WWW-Authenticate: Executor",))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nWWW-Authenticate: Executor\r\n" in head
    assert b"\r\nConnection: close" in head
    assert json.loads(body) == {"message": "no"}


# -- time limits on a request head -------------------------------------------------------------


async def _timed_head(
    chunks: list[tuple[float, bytes]], idle: float | None, head: float | None
) -> tuple[bytes | HTTPError, float]:
    """read_head over a stream fed `chunks` (delay, bytes); what it gave and how long it took."""
    reader = asyncio.StreamReader(limit=64 * 1024)

    async def feed() -> None:
        for delay, data in chunks:
            await asyncio.sleep(delay)
            reader.feed_data(data)

    feeder = asyncio.ensure_future(feed())
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result: bytes | HTTPError = await read_head(reader, idle_timeout=idle, head_timeout=head)
    except HTTPError as e:
        result = e
    finally:
        feeder.cancel()
    return result, loop.time() - started


PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n"


def test_an_idle_connection_ends_like_a_closed_one() -> None:
    result, took = asyncio.run(_timed_head([], idle=0.1, head=5))
    assert result == b""
    assert 0.09 <= took < 1


def test_a_half_sent_head_is_408_after_the_head_timeout() -> None:
    result, took = asyncio.run(_timed_head([(0, PING[:-2])], idle=5, head=0.1))
    assert isinstance(result, HTTPError)
    assert result.status == 408
    assert "within 0.1s" in result.reason
    assert result.line == b"GET /v1.41/_ping HTTP/1.1\r\n"  # the request line only
    assert 0.09 <= took < 1


def test_the_head_timer_runs_from_the_first_byte_not_the_last() -> None:
    drip = [(0.03, PING[i : i + 1]) for i in range(len(PING) - 2)]  # one byte every 30 ms
    result, took = asyncio.run(_timed_head(drip, idle=5, head=0.2))
    assert isinstance(result, HTTPError)
    assert result.status == 408
    assert took < 0.5


def test_a_head_on_time_is_read_after_a_long_idle() -> None:
    result, took = asyncio.run(_timed_head([(0.2, PING[:10]), (0.02, PING[10:])], 1.0, 0.1))
    assert result == PING
    assert 0.2 <= took < 1


def test_a_first_line_unfinished_shows_nothing() -> None:
    result, _ = asyncio.run(_timed_head([(0, b"GET /v1.41/_pi")], idle=5, head=0.05))
    assert isinstance(result, HTTPError)
    assert (result.status, result.line) == (408, b"")


# -- no `$` anchors: a trailing newline never passes --------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "why"),
    [
        ("GET", "/v1.41/_ping\n", None, "characters outside"),
        ("POST", "/v1.41/containers/create", "name=executor-a%0A", "name must match"),
        ("POST", f"/v1.41/containers/{CID}/kill", "signal=KILL%0A", "signal must be"),
        ("POST", f"/v1.41/containers/{CID}/kill", "signal=9%0A", "signal must be"),
        ("GET", "/v1.41/containers/json", "limit=1%0A&" + _filters({}), "limit must be"),
        ("DELETE", f"/v1.41/containers/{CID}", "force=1%0A", "0 or 1"),
        ("POST", f"/v1.41/containers/{CID}/wait", "condition=removed%0A", "condition must be"),
        ("POST", "/v1.41/images/create", "fromImage=executor-python&tag=3.11%0A", "not an allowed"),
    ],
)
def test_a_trailing_newline_is_refused(method: str, path: str, query: str | None, why: str) -> None:
    decision = Router(RULES).decide(method, path, query)
    assert not decision.allowed
    assert why in decision.reason


@pytest.mark.parametrize(
    ("limits", "set_to"),
    [
        ((1024, 1 << 20), (2 * 1024 + 64, 1 << 20)),  # raised to what the connections need
        ((1024, 1500), (1500, 1500)),  # as far as the hard limit allows
        ((1 << 16, 1 << 20), None),  # enough already
    ],
)
def test_the_proxy_raises_its_open_files_limit(
    limits: tuple[int, int], set_to: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resource

    from executor.proxy.__main__ import raise_open_files

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: calls.append(value))
    raise_open_files(1024)
    assert calls == ([] if set_to is None else [set_to])
