"""Who the proxy serves, and for how long: credentials, creators, uids, time limits, the cap.

The findings behind these: any process that reached the proxy's port could attach to a running
sandbox and read another execution's output, or attach stdin to a warm container and feed it a
program; a foreign attach that simply disconnected left a dead container in the pool; a create
could carry any worker or execution label; and a half-sent request head was never timed out.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import proxy_helpers
import pytest
from proxy_helpers import (
    API,
    CID,
    OTHER,
    VALID,
    WORKER,
    Auth,
    FakeEngine,
    Wire,
    address,
    attach_request,
    audit_lines,
    audit_size,
    auth_value,
    client,
    daemon_state,
    demux,
    exchange,
    force_remove,
    gone,
    own_proxy,
    random_uid,
    read_until,
    refused,
    remove_via,
    request,
    runner_request,
    sandbox_body,
)

from executor.config import Settings
from executor.engine import Engine
from executor.errors import PolicyRefused, UidInUse
from executor.policy import SANDBOX_LABEL_FILTER, Rules
from tests.conftest import DOCKER_SOCKET, free_port

pytestmark = pytest.mark.docker

CREATE = f"{API}/containers/create"


def ping() -> bytes:
    """A ping with this test worker's credential (made when called: the secret is set late)."""
    return request("GET", f"{API}/_ping")


def _mac(identity: str) -> str:
    return auth_value(identity).rsplit(" ", 1)[1]


def create_body(rules: Rules, image: str, **kwargs: Any) -> bytes:
    return json.dumps(sandbox_body(rules, image, **kwargs)).encode()


def attached(url: str, container: str, auth: Auth = VALID) -> tuple[socket.socket, bytes]:
    """An attach the proxy upgraded: the socket and what came after the answer's head."""
    sock = socket.create_connection(address(url), timeout=15)
    sock.sendall(attach_request(container, auth))
    head = read_until(sock, lambda d: b"\r\n\r\n" in d, 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, head.split(b"\r\n\r\n", 1)[1]


def attach_answer(url: str, container: str, auth: Auth = VALID) -> Any:
    with Wire(url) as wire:
        wire.send(attach_request(container, auth))
        return wire.answer()


def state(raw_docker: docker.DockerClient, container: str) -> str:
    return str(raw_docker.api.inspect_container(container)["State"]["Status"])


@pytest.fixture(scope="module")
def mine(
    proxy: dict[str, str], rules: Rules, image: str, raw_docker: docker.DockerClient
) -> Iterator[str]:
    """A sandbox this test worker created through the proxy, left in the created state."""
    worker = client(proxy["docker_host"])
    container = str(worker.create_container_from_config(sandbox_body(rules, image))["Id"])
    worker.close()
    try:
        yield container
    finally:
        force_remove(raw_docker, container)


# -- authentication on every route -------------------------------------------------------------

_LIST = "all=1&filters=" + quote(json.dumps({"label": [SANDBOX_LABEL_FILTER]}))
_UPGRADE = {"Connection": "Upgrade", "Upgrade": "tcp"}
AUTH_ROUTES: list[tuple[str, str, str, bytes | str | None, dict[str, str]]] = [
    ("ping-unversioned", "GET", "/_ping", None, {}),
    ("ping-head", "HEAD", f"{API}/_ping", None, {}),
    ("version", "GET", "/version", None, {}),
    ("create", "POST", CREATE, "sandbox", {}),
    ("list", "GET", f"{API}/containers/json?{_LIST}", None, {}),
    ("start", "POST", f"{API}/containers/{{id}}/start", None, {}),
    ("attach", "POST", f"{API}/containers/{{id}}/attach?stdin=1&stdout=1&stream=1", b"", _UPGRADE),
    ("wait", "POST", f"{API}/containers/{{id}}/wait", None, {}),
    ("kill", "POST", f"{API}/containers/{{id}}/kill?signal=SIGKILL", None, {}),
    ("inspect", "GET", f"{API}/containers/{{id}}/json", None, {}),
    ("stats", "GET", f"{API}/containers/{{id}}/stats?stream=0", None, {}),
    ("remove", "DELETE", f"{API}/containers/{{id}}?force=1", None, {}),
    ("image-inspect", "GET", f"{API}/images/{{image}}/json", None, {}),
    ("image-pull", "POST", f"{API}/images/create?fromImage=executor-python&tag=3.11", None, {}),
    ("exec", "POST", f"{API}/containers/{{id}}/exec", b'{"Cmd": ["id"]}', {}),
    ("info", "GET", f"{API}/info", None, {}),
    ("unversioned", "GET", "/containers/json", None, {}),
    ("not-canonical", "GET", f"{API}/containers/%2e%2e/json", None, {}),
]
# name -> (the Authorization value, or None for none; what the 401 says)
CREDENTIALS: dict[str, tuple[Callable[[], str | None], str]] = {
    "none": (lambda: None, "no credential"),
    "empty": (lambda: "", "no credential"),
    "wrong-secret": (lambda: auth_value(WORKER, b"not the secret"), "wrong credential"),
    "mac-of-another-identity": (lambda: f"Executor {OTHER} {_mac(WORKER)}", "wrong credential"),
    "bearer-secret": (lambda: f"Bearer {proxy_helpers.SECRET.decode()}", "malformed credential"),
    "no-mac": (lambda: f"Executor {WORKER}", "malformed credential"),
    "scheme-lower-case": (lambda: "executor" + auth_value()[8:], "malformed credential"),
    "mac-upper-case": (lambda: f"Executor {WORKER} {_mac(WORKER).upper()}", "malformed"),
    "not-an-identity": (lambda: f"Executor proxy-test {_mac(WORKER)}", "malformed credential"),
    "extra-field": (lambda: f"{auth_value()} {WORKER}", "malformed credential"),
    "raw-secret": (lambda: f"Executor {proxy_helpers.SECRET.decode()}", "malformed credential"),
}


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [r[1:] for r in AUTH_ROUTES],
    ids=[r[0] for r in AUTH_ROUTES],
)
def test_every_route_needs_a_valid_credential(
    method: str,
    path: str,
    body: bytes | str | None,
    headers: dict[str, str],
    credential: str,
    proxy: dict[str, str],
    mine: str,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    value, why = CREDENTIALS[credential]
    data = create_body(rules, image) if body == "sandbox" else body
    assert not isinstance(data, str)
    target = path.format(id=mine, image=image)
    before = daemon_state(raw_docker)
    with Wire(proxy["url"]) as wire:
        wire.send(request(method, target, data, headers, auth=value()))
        answer = wire.answer()
        assert answer.status == 401, answer
        shown = target.partition("?")[0]
        assert answer.message.startswith(f"executor-proxy refused {method} {shown}: auth: ")
        assert why in answer.message, answer.message
        assert answer.headers["www-authenticate"] == "Executor"
        assert answer.headers["connection"] == "close"
        assert wire.closed()
    assert daemon_state(raw_docker) == before
    assert state(raw_docker, mine) == "created"


def test_a_refused_credential_is_audited_but_never_written(
    proxy: dict[str, str], mine: str
) -> None:
    secret = proxy_helpers.SECRET.decode()
    wrong = auth_value(WORKER, b"not the secret")
    since = audit_size(proxy)
    with Wire(proxy["url"]) as wire:
        port = wire.sock.getsockname()[1]
        wire.send(request("GET", f"{API}/containers/{mine}/json", auth=f"Bearer {secret}"))
        assert wire.answer().status == 401
    with Wire(proxy["url"]) as wire:
        second = wire.sock.getsockname()[1]
        wire.send(request("GET", f"{API}/containers/{mine}/json", auth=wrong))
        assert wire.answer().status == 401
    with Wire(proxy["url"]) as wire:
        third = wire.sock.getsockname()[1]
        wire.send(request("GET", f"{API}/containers/{mine}/json"))
        assert wire.answer().status == 200
    clients = {f"127.0.0.1:{p}" for p in (port, second, third)}

    def ours(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [line for line in lines if line["client"] in clients]

    lines = ours(audit_lines(proxy, lambda ls: len(ours(ls)) >= 3, since))
    assert [(x["rule"], x["status"], x["identity"]) for x in lines] == [
        ("auth", 401, None),
        ("auth", 401, None),
        ("container-inspect", 200, WORKER),
    ]
    assert lines[0]["reason"].startswith("malformed credential")
    assert lines[1]["reason"].startswith("wrong credential")
    written = (
        Path(proxy["audit"]).read_text() + Path(proxy["audit"]).with_suffix(".log").read_text()
    )
    for value in (secret, _mac(WORKER), wrong.rsplit(" ", 1)[1], "Bearer"):
        assert value not in written


def test_the_credential_never_reaches_the_engine(tmp_path: Path, rules: Rules) -> None:
    engine = FakeEngine("echo")
    try:
        with own_proxy(f"tcp://127.0.0.1:{engine.port}", tmp_path / "audit.jsonl") as url:
            for data in (
                ping(),
                request("GET", "/version"),
                request("POST", CREATE, create_body(rules, next(iter(rules.images)))),
                request("GET", f"{API}/containers/{CID}/json"),
                request("POST", f"{API}/containers/{CID}/start"),
            ):
                assert exchange(url, data).status in (200, 201), data
            sock, _ = attached(url, CID)
            sock.close()
        lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    finally:
        engine.close()
    requests = [h.split(b"\r\n", 1)[0] for h in engine.heads]
    assert any(b"/containers/create" in r for r in requests)
    assert any(b"/attach?" in r for r in requests)
    for head in engine.heads:
        assert b"authorization" not in head.lower()
        assert _mac(WORKER).encode() not in head
        assert proxy_helpers.SECRET not in head
    assert {line["identity"] for line in lines} == {WORKER}


# -- the creator: attach once, start, and everything else --------------------------------------


def test_attach_is_the_creators_and_only_once(
    proxy: dict[str, str],
    api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    container = api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        answer = attach_answer(proxy["url"], container, auth_value(OTHER))
        refused(answer, "container-attach", "creator: only the worker that created")
        sock, output = attached(proxy["url"], container)  # the refusal used nothing up
        with sock:
            # While it is attached: nobody may attach again, its creator included.
            refused(attach_answer(proxy["url"], container), "container-attach", "once already")
            refused(attach_answer(proxy["url"], container, auth_value(OTHER)), "container-attach")
            api.start(container)
            sock.sendall(runner_request("print(1)"))
            output += read_until(sock, lambda d: b"1\n" in demux(output + d)[1], 30)
            assert b"1\n" in demux(output)[1]
            sock.shutdown(socket.SHUT_WR)
            read_until(sock, lambda d: False, 30)
        # Nor after it ended (the container may be gone by now: the answer is the same).
        refused(attach_answer(proxy["url"], container), "container-attach", "once already")
    finally:
        force_remove(raw_docker, container)


def test_a_foreign_attach_cannot_end_a_warm_container(
    proxy: dict[str, str],
    api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    """A warm container: created, attached, started, waiting for a program. Another worker's
    attach that hangs up at once (its stdin closing) must not reach it."""
    container = api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        sock, output = attached(proxy["url"], container)
        with sock:
            api.start(container)
            with Wire(proxy["url"]) as foreign:  # attaches, then hangs up at once
                foreign.send(attach_request(container, auth_value(OTHER)))
                refused(foreign.answer(), "container-attach", "creator:")
            time.sleep(0.5)
            assert state(raw_docker, container) == "running"
            sock.sendall(runner_request("print(2)"))
            output += read_until(sock, lambda d: b"2\n" in demux(output + d)[1], 30)
            assert b"2\n" in demux(output)[1]
    finally:
        force_remove(raw_docker, container)


def test_start_is_the_creators(
    api: docker.APIClient,
    other_api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    container = api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        with pytest.raises(docker.errors.APIError) as caught:
            other_api.start(container)
        assert caught.value.status_code == 403
        assert "creator: only the worker that created" in str(caught.value.explanation)
        assert state(raw_docker, container) == "created"
        api.start(container)  # the runner then waits on its stdin
        assert state(raw_docker, container) == "running"
    finally:
        force_remove(raw_docker, container)


def test_other_workers_may_inspect_wait_kill_and_remove(
    proxy: dict[str, str],
    api: docker.APIClient,
    other_api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    """What a reaper needs on a dead worker's containers stays open to every worker."""
    container = api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        api.start(container)
        assert other_api.inspect_container(container)["Id"] == container
        assert "memory_stats" in other_api.stats(container, stream=False, one_shot=True)
        with socket.create_connection(address(proxy["url"]), timeout=30) as waiter:
            waiter.sendall(
                request("POST", f"{API}/containers/{container}/wait", auth=auth_value(OTHER))
            )
            head = read_until(waiter, lambda d: b"\r\n\r\n" in d, 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            other_api.kill(container, signal="SIGKILL")
            assert b'"StatusCode":137' in head + read_until(waiter, lambda d: b"}" in d, 30)
        assert remove_via(other_api, container) in (204, 404, 409)  # AutoRemove may be first
        assert gone(raw_docker, container)
    finally:
        force_remove(raw_docker, container)


def test_containers_not_created_through_the_proxy_are_never_attached_or_started(
    proxy: dict[str, str],
    other_api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    """Our labels, even this worker's own identity as its worker label: but the proxy did not
    see it created (as after a restart of the proxy), so it has no creator."""
    container = raw_docker.api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        for auth in (VALID, auth_value(OTHER)):
            answer = attach_answer(proxy["url"], container, auth)
            refused(answer, "container-attach", "was not created through this proxy")
            answer = exchange(
                proxy["url"], request("POST", f"{API}/containers/{container}/start", auth=auth)
            )
            refused(answer, "container-start", "was not created through this proxy")
        assert state(raw_docker, container) == "created"
        assert other_api.inspect_container(container)["Id"] == container
        assert remove_via(other_api, container) == 204
        assert gone(raw_docker, container)
    finally:
        force_remove(raw_docker, container)


def test_create_for_another_worker_is_refused(
    proxy: dict[str, str], rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    for worker, auth in ((OTHER, VALID), (WORKER, auth_value(OTHER)), ("proxy-test", VALID)):
        answer = exchange(
            proxy["url"],
            request("POST", CREATE, create_body(rules, image, worker=worker), auth=auth),
        )
        refused(answer, "container-create", "io.executor.worker must be the client's own")
    assert daemon_state(raw_docker) == before


# -- one uid per living sandbox ----------------------------------------------------------------


def test_a_uid_held_by_a_living_sandbox_is_409_until_it_is_removed(
    api: docker.APIClient,
    other_api: docker.APIClient,
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    uid = random_uid(rules)
    first = api.create_container_from_config(sandbox_body(rules, image, uid=uid))["Id"]
    second = ""
    try:
        before = daemon_state(raw_docker)
        for worker, identity in ((api, WORKER), (other_api, OTHER)):
            body = sandbox_body(rules, image, uid=uid, worker=identity)
            with pytest.raises(docker.errors.APIError) as caught:
                worker.create_container_from_config(body)
            assert caught.value.status_code == 409
            explanation = str(caught.value.explanation)
            assert f"uid {uid} is held by a living sandbox (container {first[:12]})" in explanation
        assert daemon_state(raw_docker) == before
        assert remove_via(api, first) == 204
        body = sandbox_body(rules, image, uid=uid, worker=OTHER)
        second = other_api.create_container_from_config(body)["Id"]
        assert raw_docker.api.inspect_container(second)["Config"]["Cmd"] == [str(uid)]
    finally:
        force_remove(raw_docker, first)
        if second:
            force_remove(raw_docker, second)


def test_a_uid_is_free_once_the_engine_has_removed_its_container(
    api: docker.APIClient, rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    """As when a container removed itself (AutoRemove): the proxy saw no remove, and asks."""
    uid = random_uid(rules)
    first = api.create_container_from_config(sandbox_body(rules, image, uid=uid))["Id"]
    second = ""
    try:
        raw_docker.api.remove_container(first, force=True)
        second = api.create_container_from_config(sandbox_body(rules, image, uid=uid))["Id"]
    finally:
        force_remove(raw_docker, first)
        if second:
            force_remove(raw_docker, second)


def test_sandboxes_made_before_the_proxy_started_hold_their_uids(
    tmp_path: Path, rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    uid = random_uid(rules)
    early = raw_docker.api.create_container_from_config(sandbox_body(rules, image, uid=uid))["Id"]
    late = ""
    try:
        with own_proxy(DOCKER_SOCKET, tmp_path / "audit.jsonl") as url:
            worker = client(url.replace("http://", "tcp://"))
            with pytest.raises(docker.errors.APIError) as caught:
                worker.create_container_from_config(sandbox_body(rules, image, uid=uid))
            assert caught.value.status_code == 409
            assert f"uid {uid} is held" in str(caught.value.explanation)
            refused(attach_answer(url, early), "container-attach", "not created through this")
            assert remove_via(worker, early) == 204
            late = worker.create_container_from_config(sandbox_body(rules, image, uid=uid))["Id"]
            assert remove_via(worker, late) == 204
            worker.close()
    finally:
        force_remove(raw_docker, early)
        if late:
            force_remove(raw_docker, late)


def test_a_create_in_flight_holds_its_uid(tmp_path: Path, rules: Rules) -> None:
    engine = FakeEngine()
    engine.release.clear()  # creates wait in the engine until released
    image = next(iter(rules.images))
    uid = rules.uids[0] + 7
    try:
        with own_proxy(f"tcp://127.0.0.1:{engine.port}", tmp_path / "audit.jsonl") as url:
            with Wire(url) as first:
                first.send(request("POST", CREATE, create_body(rules, image, uid=uid)))
                deadline = time.monotonic() + 10
                while not any(b"/containers/create" in h for h in engine.heads):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                answer = exchange(url, request("POST", CREATE, create_body(rules, image, uid=uid)))
                assert answer.status == 409
                assert f"uid {uid} is being given to a sandbox by another create" in answer.message
                engine.release.set()
                assert first.answer().status == 201
            # Now the engine's container holds it (the fake engine says CID exists).
            answer = exchange(url, request("POST", CREATE, create_body(rules, image, uid=uid)))
            assert answer.status == 409
            assert f"uid {uid} is held by a living sandbox (container {CID[:12]})" in answer.message
            other = exchange(url, request("POST", CREATE, create_body(rules, image, uid=uid + 1)))
            assert other.status == 201
    finally:
        engine.release.set()
        engine.close()


def test_an_engine_down_at_start_is_read_once_it_is_up(tmp_path: Path, rules: Rules) -> None:
    port = free_port()
    body = create_body(rules, next(iter(rules.images)))
    with own_proxy(f"tcp://127.0.0.1:{port}", tmp_path / "audit.jsonl") as url:
        answer = exchange(url, request("POST", CREATE, body))
        assert answer.status == 502
        assert "cannot list its sandboxes" in answer.message
        engine = FakeEngine(port=port)
        try:
            assert exchange(url, request("POST", CREATE, body)).status == 201
            attached(url, CID)[0].close()
        finally:
            engine.close()


# -- the worker's own Engine through the proxy --------------------------------------------------


def test_the_workers_engine_runs_a_sandbox_through_the_proxy(
    settings: Settings, rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    engine, other = Engine(settings), Engine(settings)  # two worker processes, one secret
    assert engine.identity != other.identity
    engine.ping()
    container = engine.create(
        sandbox_body(rules, image, uid=random_uid(rules), worker=engine.identity)
    )
    try:
        with pytest.raises(PolicyRefused, match="only the worker that created"):
            other.attach(container)
        with pytest.raises(PolicyRefused, match="only the worker that created"):
            other.start(container)
        attachment = engine.attach(container)
        with attachment.sock as sock:
            with pytest.raises(PolicyRefused, match="once already"):
                engine.attach(container)
            engine.start(container)
            sock.sendall(runner_request("print(3)"))
            output = attachment.pending
            output += read_until(sock, lambda d: b"3\n" in demux(output + d)[1], 30)
            assert b"3\n" in demux(output)[1]
            sock.shutdown(socket.SHUT_WR)
            read_until(sock, lambda d: False, 30)
        engine.wait(container, 30)
        engine.remove(container)
        assert gone(raw_docker, container)
    finally:
        force_remove(raw_docker, container)
        engine.close()
        other.close()


def test_the_workers_engine_draws_again_on_a_held_uid(
    settings: Settings, rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    engine, other = Engine(settings), Engine(settings)
    uid = random_uid(rules)
    first = engine.create(sandbox_body(rules, image, uid=uid, worker=engine.identity))
    second = ""
    try:
        with pytest.raises(UidInUse, match=f"uid {uid} is held"):
            other.create(sandbox_body(rules, image, uid=uid, worker=other.identity))
        engine.remove(first)
        second = other.create(sandbox_body(rules, image, uid=uid, worker=other.identity))
        other.remove(second)
    finally:
        force_remove(raw_docker, first)
        if second:
            force_remove(raw_docker, second)
        engine.close()
        other.close()


@pytest.mark.parametrize("token", ["not-the-token", ""])
def test_a_worker_without_the_secret_is_refused(
    token: str,
    settings: Settings,
    rules: Rules,
    image: str,
    mine: str,
    raw_docker: docker.DockerClient,
) -> None:
    engine = Engine(replace(settings, proxy_token=token))
    before = daemon_state(raw_docker)
    try:
        with pytest.raises(PolicyRefused, match="did not accept this worker's credential"):
            engine.ping()
        with pytest.raises(PolicyRefused, match="credential"):
            engine.create(sandbox_body(rules, image, uid=random_uid(rules), worker=engine.identity))
        with pytest.raises(PolicyRefused, match="refused to attach"):
            engine.attach(mine)
        with pytest.raises(PolicyRefused, match="credential"):
            engine.remove(mine)
    finally:
        engine.close()
    assert daemon_state(raw_docker) == before
    assert state(raw_docker, mine) == "created"


# -- time limits and the connection cap ----------------------------------------------------------


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, raw_docker: docker.DockerClient
) -> Iterator[dict[str, str]]:
    """A proxy with short limits: a head within 1 s, an idle connection for 2 s."""
    audit = tmp_path_factory.mktemp("strict") / "audit.jsonl"
    env = {"PROXY_HEAD_TIMEOUT": "1", "PROXY_IDLE_TIMEOUT": "2", "PROXY_MAX_CONNECTIONS": "300"}
    with own_proxy(DOCKER_SOCKET, audit, **env) as url:
        yield {"url": url, "audit": str(audit)}


def _await_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the proxy sends until it closes (fails if it does not within `timeout`)."""
    return read_until(sock, lambda d: False, timeout)


def test_a_half_sent_head_gets_408_and_is_closed(strict: dict[str, str]) -> None:
    since = audit_size(strict)
    with socket.create_connection(address(strict["url"]), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(ping()[:-2])  # all but the blank line that ends the head
        answer = _await_close(sock, 10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close\r\n" in answer
    assert b"the request head did not arrive whole within 1s" in answer
    assert 0.9 <= took < 3, took
    lines = audit_lines(strict, lambda ls: any(x["status"] == 408 for x in ls), since)
    (line, *_) = [x for x in lines if x["status"] == 408]
    assert (line["rule"], line["method"], line["path"]) == ("http", "GET", f"{API}/_ping")


def test_a_head_dripped_a_byte_at_a_time_still_times_out(strict: dict[str, str]) -> None:
    with socket.create_connection(address(strict["url"]), timeout=10) as sock:

        def drip() -> None:
            try:
                for i in range(len(ping()) - 2):
                    sock.sendall(ping()[i : i + 1])
                    time.sleep(0.1)
            except OSError:
                pass  # closed by the proxy, as it should

        started = time.monotonic()
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        answer = _await_close(sock, 10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert took < 3, took


def test_100_half_sent_heads_do_not_stop_a_real_client(strict: dict[str, str]) -> None:
    stalled = [socket.create_connection(address(strict["url"]), timeout=10) for _ in range(100)]
    try:
        for sock in stalled:
            sock.sendall(ping()[:-2])
        started = time.monotonic()
        assert exchange(strict["url"], ping()).status == 200
        assert time.monotonic() - started < 0.8  # served before any of them timed out
        for sock in stalled:
            assert _await_close(sock, 5).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()


def test_an_idle_connection_is_closed(strict: dict[str, str]) -> None:
    with Wire(strict["url"]) as wire:
        wire.send(ping())
        assert wire.answer().status == 200
        started = time.monotonic()
        assert wire.closed()  # blocks until the proxy closes it
        assert 1.8 <= time.monotonic() - started < 4
    with socket.create_connection(address(strict["url"]), timeout=10) as silent:
        started = time.monotonic()
        assert _await_close(silent, 10) == b""  # never a word: closed without one
        assert 1.8 <= time.monotonic() - started < 4


def test_a_busy_connection_is_not_idle(strict: dict[str, str]) -> None:
    with Wire(strict["url"]) as wire:
        for _ in range(8):  # 4 s in all, twice the idle limit
            wire.send(ping())
            assert wire.answer().status == 200
            time.sleep(0.5)


def test_a_spliced_attach_has_no_idle_limit(tmp_path: Path, rules: Rules) -> None:
    engine = FakeEngine("echo")
    env = {"PROXY_IDLE_TIMEOUT": "1", "PROXY_HEAD_TIMEOUT": "1"}
    try:
        with own_proxy(f"tcp://127.0.0.1:{engine.port}", tmp_path / "audit.jsonl", **env) as url:
            body = create_body(rules, next(iter(rules.images)))
            assert exchange(url, request("POST", CREATE, body)).status == 201
            sock, received = attached(url, CID)
            with sock:
                time.sleep(2.5)  # a program that runs silently
                sock.sendall(b"still here")
                received += read_until(sock, lambda d: b"still here" in received + d, 10)
                sock.shutdown(socket.SHUT_WR)
                received += _await_close(sock, 10)
        assert received == b"still here<EOF SEEN>"
    finally:
        engine.close()


def test_connections_past_the_cap_get_503(tmp_path: Path, raw_docker: docker.DockerClient) -> None:
    audit = tmp_path / "audit.jsonl"
    with own_proxy(DOCKER_SOCKET, audit, PROXY_MAX_CONNECTIONS="3") as url:
        time.sleep(0.3)  # the probe that saw the proxy listen is gone by now
        held = [Wire(url) for _ in range(3)]
        try:
            for wire in held:
                wire.send(ping())
                assert wire.answer().status == 200
            with Wire(url) as extra:
                extra.send(ping())  # a request already on its way must not hide the answer
                answer = extra.answer()
                assert answer.status == 503
                assert "PROXY_MAX_CONNECTIONS" in answer.message
                assert answer.headers["connection"] == "close"
                assert extra.closed()
            held[1].send(ping())  # the ones in are served as before
            assert held[1].answer().status == 200
            held.pop(0).sock.close()
            deadline = time.monotonic() + 5
            while True:  # once the proxy has seen the close, a new connection is served
                with Wire(url) as again:
                    again.send(ping())
                    if again.answer().status == 200:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            for wire in held:
                wire.sock.close()
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert any(x["rule"] == "connections" and x["status"] == 503 for x in lines)
