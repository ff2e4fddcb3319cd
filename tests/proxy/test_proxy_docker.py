"""The proxy against the real engine: what the worker needs goes through, nothing else does.

Every refusal is checked twice: the client gets a 403 naming the rule, and the engine is
unchanged (containers, networks, volumes, and the target container's own state).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from proxy_helpers import (
    API,
    CID,
    OTHER,
    WORKER,
    FakeEngine,
    Wire,
    address,
    attach_request,
    audit_lines,
    audit_size,
    client,
    daemon_state,
    demux,
    exchange,
    force_remove,
    gone,
    own_proxy,
    read_until,
    refused,
    remove_via,
    request,
    runner_request,
    sandbox_body,
)

from executor.config import MIB
from executor.policy import (
    LABEL_EXECUTION,
    LABEL_PROFILE,
    LABEL_SANDBOX,
    LABEL_WORKER,
    SANDBOX_LABEL_FILTER,
    Rules,
    profile_name,
)

pytestmark = pytest.mark.docker

Body = dict[str, Any]
PROFILE = profile_name("python", 64, 0.25)  # sandbox_body's


@pytest.fixture(scope="module")
def ours(
    proxy: dict[str, str], rules: Rules, image: str, raw_docker: docker.DockerClient
) -> Iterator[dict[str, str]]:
    """A sandbox created through the proxy and left in the created state: {"id", "execution"}."""
    execution = str(uuid.uuid4())
    worker = client(proxy["docker_host"])
    created = worker.create_container_from_config(sandbox_body(rules, image, execution=execution))
    worker.close()
    try:
        yield {"id": created["Id"], "execution": execution}
    finally:
        force_remove(raw_docker, created["Id"])


@pytest.fixture(scope="module")
def others(image: str, raw_docker: docker.DockerClient) -> Iterator[str]:
    """Somebody else's container, made on the engine's own socket without our label."""
    container = raw_docker.containers.create(
        image, command=["python3", "-c", "pass"], labels={"owner": "someone-else"}
    )
    try:
        yield str(container.id)
    finally:
        container.remove(force=True)


# -- the allowed flow ------------------------------------------------------------------------


def test_sandbox_lifecycle_through_the_proxy(
    api: docker.APIClient,
    proxy: dict[str, str],
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    execution = str(uuid.uuid4())
    container = api.create_container_from_config(sandbox_body(rules, image, execution=execution))[
        "Id"
    ]
    try:
        assert len(container) == 64
        seen = raw_docker.api.inspect_container(container)
        assert seen["Config"]["Labels"][LABEL_SANDBOX] == "1"
        assert seen["HostConfig"]["Privileged"] is False
        assert seen["HostConfig"]["ReadonlyRootfs"] is True
        assert api.inspect_container(container)["Id"] == container

        with socket.create_connection(address(proxy["url"])) as sock:
            sock.sendall(attach_request(container))
            head = read_until(sock, lambda d: b"\r\n\r\n" in d, 10)
            assert head.startswith(b"HTTP/1.1 101 "), head
            output = head.split(b"\r\n\r\n", 1)[1]

            api.start(container)
            assert api.inspect_container(container)["State"]["Running"] is True
            listed = api.containers(
                all=True,
                filters={"label": [SANDBOX_LABEL_FILTER, f"{LABEL_EXECUTION}={execution}"]},
            )
            assert [c["Id"] for c in listed] == [container]
            assert "memory_stats" in api.stats(container, stream=False, one_shot=True)

            # stdin in, output back; then our half-close must reach the container as EOF, and
            # its end must come back to us as EOF.
            sock.sendall(runner_request("print(1)"))
            output += read_until(sock, lambda d: b"1\n" in demux(output + d)[1], 15)
            assert b"1\n" in demux(output)[1]
            sock.shutdown(socket.SHUT_WR)
            read_until(sock, lambda d: False, 15)  # returns only at end of stream

        assert isinstance(api.wait(container, timeout=30)["StatusCode"], int)
        assert remove_via(api, container) in (204, 404, 409)  # AutoRemove may be first
        assert gone(raw_docker, container)
    finally:
        force_remove(raw_docker, container)

    expected = {
        "container-create",
        "container-attach",
        "container-start",
        "container-inspect",
        "container-stats",
        "container-wait",
        "container-remove",
    }

    def seen(lines: list[dict[str, Any]]) -> set[str]:
        return {
            line["rule"]
            for line in lines
            if line["container"] == container and line["decision"] == "allowed"
        }

    assert expected <= seen(audit_lines(proxy, lambda lines: expected <= seen(lines)))


def test_wait_then_kill_then_remove(
    api: docker.APIClient,
    proxy: dict[str, str],
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    container = api.create_container_from_config(sandbox_body(rules, image))["Id"]
    try:
        api.start(container)  # the runner waits on its open stdin
        with socket.create_connection(address(proxy["url"]), timeout=30) as waiter:
            # The engine answers the wait's head once it is waiting: then kill.
            waiter.sendall(request("POST", f"{API}/containers/{container}/wait"))
            head = read_until(waiter, lambda d: b"\r\n\r\n" in d, 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            api.kill(container, signal="SIGKILL")
            answer = head + read_until(waiter, lambda d: b"}" in d, 30)
        assert b'"StatusCode":137' in answer
        assert remove_via(api, container) in (204, 404, 409)  # AutoRemove may be first
        assert gone(raw_docker, container)
    finally:
        force_remove(raw_docker, container)


def test_ping_version_and_image_inspect(
    api: docker.APIClient, proxy: dict[str, str], image: str
) -> None:
    assert api.ping() is True
    assert api.version()["ApiVersion"]
    assert api.inspect_image(image)["Id"].startswith("sha256:")
    assert exchange(proxy["url"], request("GET", "/_ping")).status == 200  # unversioned: harmless
    assert exchange(proxy["url"], request("GET", "/version")).status == 200


def test_unknown_id_is_no_such_container(api: docker.APIClient) -> None:
    with pytest.raises(docker.errors.NotFound):
        api.inspect_container(uuid.uuid4().hex * 2)


# -- creates that are not a proper sandbox ---------------------------------------------------


def _set(*path: str, value: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        for key in path[:-1]:
            body = body[key]
        body[path[-1]] = value

    return mutate


def _drop(*path: str) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        for key in path[:-1]:
            body = body[key]
        del body[path[-1]]

    return mutate


def _too_much_memory(body: Body) -> None:
    body["HostConfig"]["Memory"] = body["HostConfig"]["MemorySwap"] = 4096 * MIB


HC = "HostConfig"
CREATE_VIOLATIONS: list[tuple[str, Callable[[Body], None], str]] = [
    ("privileged", _set(HC, "Privileged", value=True), "HostConfig.Privileged"),
    ("cap-add", _set(HC, "CapAdd", value=["SYS_ADMIN"]), "HostConfig.CapAdd"),
    ("cap-drop-none", _set(HC, "CapDrop", value=[]), "HostConfig.CapDrop"),
    ("pid-host", _set(HC, "PidMode", value="host"), "HostConfig.PidMode"),
    ("ipc-host", _set(HC, "IpcMode", value="host"), "HostConfig.IpcMode"),
    ("uts-host", _set(HC, "UTSMode", value="host"), "HostConfig.UTSMode"),
    ("userns-host", _set(HC, "UsernsMode", value="host"), "HostConfig.UsernsMode"),
    ("cgroupns-host", _set(HC, "CgroupnsMode", value="host"), "HostConfig.CgroupnsMode"),
    ("network-host", _set(HC, "NetworkMode", value="host"), "HostConfig.NetworkMode"),
    ("network-bridge", _set(HC, "NetworkMode", value="bridge"), "HostConfig.NetworkMode"),
    ("network-container", _set(HC, "NetworkMode", value="container:x"), "HostConfig.NetworkMode"),
    ("network-enabled", _set("NetworkDisabled", value=False), "body.NetworkDisabled"),
    (
        "networking-config",
        _set("NetworkingConfig", value={"EndpointsConfig": {"host": {}}}),
        "body.NetworkingConfig",
    ),
    ("binds", _set(HC, "Binds", value=["/:/host"]), "HostConfig.Binds"),
    (
        "mounts",
        _set(HC, "Mounts", value=[{"Type": "bind", "Source": "/", "Target": "/host"}]),
        "HostConfig.Mounts",
    ),
    ("volumes", _set("Volumes", value={"/data": {}}), "body.Volumes"),
    ("volumes-from", _set(HC, "VolumesFrom", value=["x"]), "HostConfig.VolumesFrom"),
    (
        "devices",
        _set(
            HC,
            "Devices",
            value=[
                {
                    "PathOnHost": "/dev/mem",
                    "PathInContainer": "/dev/mem",
                    "CgroupPermissions": "rwm",
                }
            ],
        ),
        "HostConfig.Devices",
    ),
    (
        "device-requests",
        _set(
            HC,
            "DeviceRequests",
            value=[{"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]]}],
        ),
        "HostConfig.DeviceRequests",
    ),
    (
        "device-cgroup-rules",
        _set(HC, "DeviceCgroupRules", value=["a *:* rwm"]),
        "DeviceCgroupRules",
    ),
    (
        "seccomp-unconfined",
        _set(HC, "SecurityOpt", value=["no-new-privileges", "seccomp=unconfined"]),
        "HostConfig.SecurityOpt",
    ),
    (
        "apparmor-unconfined",
        _set(HC, "SecurityOpt", value=["no-new-privileges", "apparmor=unconfined"]),
        "HostConfig.SecurityOpt",
    ),
    ("no-new-privileges-missing", _set(HC, "SecurityOpt", value=[]), "HostConfig.SecurityOpt"),
    (
        "no-new-privileges-false",
        _set(HC, "SecurityOpt", value=["no-new-privileges=false"]),
        "HostConfig.SecurityOpt",
    ),
    ("runtime", _set(HC, "Runtime", value="kata"), "runtime 'kata' is not allowed"),
    # The runner starts as root with three capabilities, never as anything else.
    ("user-root-name", _set("User", value="root"), "body.User"),
    ("user-0", _set("User", value="0"), "body.User"),
    ("user-sandbox", _set("User", value="10001:10001"), "body.User"),
    ("user-empty", _set("User", value=""), "body.User"),
    ("user-absent", _drop("User"), "body.User"),
    (
        "cap-add-more",
        _set(HC, "CapAdd", value=["CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SYS_ADMIN"]),
        "HostConfig.CapAdd",
    ),
    ("cap-add-all", _set(HC, "CapAdd", value=["ALL"]), "HostConfig.CapAdd"),
    ("cap-add-absent", _drop(HC, "CapAdd"), "HostConfig.CapAdd"),
    ("memory-0", _set(HC, "Memory", value=0), "memory must be"),
    ("memory-over-max", _too_much_memory, "memory must be"),
    ("memory-swap-unlimited", _set(HC, "MemorySwap", value=-1), "HostConfig.MemorySwap"),
    ("pids-0", _set(HC, "PidsLimit", value=0), "PidsLimit must stand for"),
    ("pids-unlimited", _set(HC, "PidsLimit", value=-1), "PidsLimit must stand for"),
    ("pids-absent", _drop(HC, "PidsLimit"), "PidsLimit must stand for"),
    ("pids-over-max", _set(HC, "PidsLimit", value=100000), "PidsLimit must stand for"),
    (
        "log-json-file",
        _set(HC, "LogConfig", value={"Type": "json-file", "Config": {}}),
        "HostConfig.LogConfig",
    ),
    ("workdir-root", _set("WorkingDir", value="/"), "body.WorkingDir"),
    ("workdir-etc", _set("WorkingDir", value="/etc"), "body.WorkingDir"),
    (
        "restart-policy",
        _set(HC, "RestartPolicy", value={"Name": "always"}),
        "HostConfig.RestartPolicy",
    ),
    ("sysctls", _set(HC, "Sysctls", value={"kernel.shm_rmid_forced": "1"}), "HostConfig.Sysctls"),
    ("labels-not-ours", _set("Labels", value={"owner": "someone"}), "own identity"),
    ("labels-no-sandbox", _drop("Labels", LABEL_SANDBOX), "body.Labels"),
    ("labels-sandbox-0", _set("Labels", LABEL_SANDBOX, value="0"), "body.Labels"),
    ("labels-extra", _set("Labels", "com.example.extra", value="1"), "body.Labels"),
    ("labels-list", _set("Labels", value=[SANDBOX_LABEL_FILTER]), "Labels must be"),
    # Label values: the worker label is the client's own identity; every value whole (a `$`
    # anchor would let a trailing newline through).
    ("worker-label-another", _set("Labels", LABEL_WORKER, value=OTHER), "own identity"),
    ("worker-label-not-an-identity", _set("Labels", LABEL_WORKER, value="proxy-test"), "own"),
    ("worker-label-newline", _set("Labels", LABEL_WORKER, value=WORKER + "\n"), "own identity"),
    ("worker-label-absent", _drop("Labels", LABEL_WORKER), "own identity"),
    ("execution-label-newline", _set("Labels", LABEL_EXECUTION, value="x\n"), "must match"),
    ("execution-label-space", _set("Labels", LABEL_EXECUTION, value="a b"), "must match"),
    ("profile-label-newline", _set("Labels", LABEL_PROFILE, value=PROFILE + "\n"), "profile"),
    ("profile-label-other", _set("Labels", LABEL_PROFILE, value="python-1m-1cpu"), "profile"),
    # The program's uid (the runner's one argument): its own per sandbox, within the range.
    ("uid-below-range", _set("Cmd", value=["10001"]), "Cmd must be [uid]"),
    ("uid-above-range", _set("Cmd", value=["4000000000"]), "Cmd must be [uid]"),
    ("uid-root", _set("Cmd", value=["0"]), "Cmd must be [uid]"),
    ("uid-two", _set("Cmd", value=["200001", "200002"]), "Cmd must be [uid]"),
    ("uid-newline", _set("Cmd", value=["200001\n"]), "Cmd must be [uid]"),
    ("uid-name", _set("Cmd", value=["nobody"]), "Cmd must be [uid]"),
    ("uid-absent", _drop("Cmd"), "Cmd must be [uid]"),
    ("uid-shell", _set("Cmd", value=["sh", "-c", "id"]), "Cmd must be [uid]"),
    ("readonly-off", _set(HC, "ReadonlyRootfs", value=False), "HostConfig.ReadonlyRootfs"),
    ("tmpfs-extra", _set(HC, "Tmpfs", "/run", value="rw"), "HostConfig.Tmpfs"),
    (
        "tmpfs-exec",
        _set(HC, "Tmpfs", "/tmp", value="rw,exec,size=16m,mode=1777"),
        "HostConfig.Tmpfs",
    ),
    ("image-other", _set("Image", value="alpine:latest"), "image 'alpine:latest'"),
    ("entrypoint", _set("Entrypoint", value=["/bin/sh"]), "body.Entrypoint"),
    ("cmd", _set("Cmd", value=["-c", "id"]), "Cmd must be [uid]"),
    ("env-ld-preload", _set("Env", value=["LD_PRELOAD=/tmp/x.so"]), "body.Env"),
    ("oom-kill-disable", _set(HC, "OomKillDisable", value=True), "HostConfig.OomKillDisable"),
    ("oom-score-adj", _set(HC, "OomScoreAdj", value=-1000), "HostConfig.OomScoreAdj"),
    ("cpus-over-max", _set(HC, "NanoCpus", value=4_000_000_000), "cpus must be"),
    ("ulimits", _set(HC, "Ulimits", value=[]), "HostConfig.Ulimits"),
    ("init-on", _set(HC, "Init", value=True), "HostConfig.Init"),
    ("auto-remove-off", _set(HC, "AutoRemove", value=False), "HostConfig.AutoRemove"),
    ("shm-size", _set(HC, "ShmSize", value=8 * 1024 * MIB), "HostConfig.ShmSize"),
    ("cgroup-parent", _set(HC, "CgroupParent", value="/"), "HostConfig.CgroupParent"),
    ("group-add", _set(HC, "GroupAdd", value=["0"]), "HostConfig.GroupAdd"),
    ("publish-all", _set(HC, "PublishAllPorts", value=True), "HostConfig.PublishAllPorts"),
    ("masked-paths-none", _set(HC, "MaskedPaths", value=[]), "HostConfig.MaskedPaths"),
    ("readonly-paths-none", _set(HC, "ReadonlyPaths", value=[]), "HostConfig.ReadonlyPaths"),
    ("tty", _set("Tty", value=True), "body.Tty"),
    ("case-variant-privileged", _set(HC, "privileged", value=True), "HostConfig.privileged"),
    ("case-variant-hostconfig", _set("hostconfig", value={"Privileged": True}), "body.hostconfig"),
    # Top-level host settings: the engine still reads some (API versions before HostConfig).
    ("top-level-privileged", _set("Privileged", value=True), "body.Privileged"),
    ("top-level-binds", _set("Binds", value=["/:/host"]), "body.Binds"),
    ("top-level-memory", _set("Memory", value=0), "body.Memory"),
    ("top-level-cpuset", _set("Cpuset", value="0"), "body.Cpuset"),
    # Go matches keys case-insensitively, folding U+017F to s and U+212A to k.
    ("unicode-folded-key", _set(HC, "\u017fecurityOpt", value=["seccomp=unconfined"]), "differs"),
    ("memory-as-string", _set(HC, "Memory", value=str(64 * MIB)), "Memory must be"),
    ("pids-as-bool", _set(HC, "PidsLimit", value=True), "PidsLimit must stand for"),
    ("cap-drop-as-string", _set(HC, "CapDrop", value="ALL"), "HostConfig.CapDrop"),
    ("no-host-config", _drop(HC), "must be"),
]


@pytest.mark.parametrize(
    ("mutate", "why"), [c[1:] for c in CREATE_VIOLATIONS], ids=[c[0] for c in CREATE_VIOLATIONS]
)
def test_create_refuses_what_is_not_a_sandbox(
    mutate: Callable[[Body], None],
    why: str,
    proxy: dict[str, str],
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    execution = str(uuid.uuid4())
    body = sandbox_body(rules, image, execution=execution)
    mutated = copy.deepcopy(body)
    mutate(mutated)
    assert mutated != body
    before = daemon_state(raw_docker)
    answer = exchange(
        proxy["url"], request("POST", f"{API}/containers/create", json.dumps(mutated).encode())
    )
    refused(answer, "container-create", why)
    assert daemon_state(raw_docker) == before
    assert not raw_docker.api.containers(
        all=True, filters={"label": f"{LABEL_EXECUTION}={execution}"}
    )


def _raw(body: Body) -> str:
    return json.dumps(body)


def _dup_privileged(body: Body) -> bytes:
    text = _raw(body).replace(
        '"HostConfig": {', '"HostConfig": {"Privileged": false, "Privileged": true, '
    )
    return text.encode()


def _dup_image(body: Body) -> bytes:
    return ('{"Image": "alpine:latest", ' + _raw(body)[1:]).encode()


def _dup_label(body: Body) -> bytes:
    return _raw(body).replace('"Labels": {', f'"Labels": {{"{LABEL_SANDBOX}": "0", ').encode()


def _escaped_key(body: Body) -> bytes:
    return (
        _raw(body).replace('"HostConfig": {', '"HostConfig": {"Privil\\u0065ged": true, ').encode()
    )


def _memory(token: str) -> Callable[[Body], bytes]:
    def build(body: Body) -> bytes:
        return _raw(body).replace(f'"Memory": {64 * MIB}', f'"Memory": {token}').encode()

    return build


RAW_BODIES: list[tuple[str, Callable[[Body], bytes], str]] = [
    ("duplicate-privileged", _dup_privileged, "duplicate key 'Privileged'"),
    ("duplicate-image", _dup_image, "duplicate key 'Image'"),
    ("duplicate-label", _dup_label, f"duplicate key '{LABEL_SANDBOX}'"),
    ("escaped-key", _escaped_key, "HostConfig.Privileged"),
    ("nan", _memory("NaN"), "NaN is not JSON"),
    ("infinity", _memory("Infinity"), "Infinity is not JSON"),
    ("float-memory", _memory(f"{64 * MIB}.0"), "Memory must be"),
    ("exponent-memory", _memory("6.7108864e7"), "Memory must be"),
    ("huge-memory", _memory("1e400"), "out of range"),
    ("non-utf8", lambda b: _raw(b).encode().replace(b"proxy-test", b"proxy-\xfftest"), "not UTF-8"),
    ("bom", lambda b: b"\xef\xbb\xbf" + _raw(b).encode(), "byte order mark"),
    (
        "trailing-data",
        lambda b: _raw(b).encode() + b'{"HostConfig": {"Privileged": true}}',
        "Extra data",
    ),
    ("array", lambda b: b"[" + _raw(b).encode() + b"]", "not a JSON object"),
    ("empty", lambda b: b"", "Expecting value"),
    ("deep", lambda b: b"[" * 1000 + b"]" * 1000, "nested"),
]


@pytest.mark.parametrize(
    ("build", "why"), [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES]
)
def test_create_refuses_bodies_the_engine_would_read_differently(
    build: Callable[[Body], bytes],
    why: str,
    proxy: dict[str, str],
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    before = daemon_state(raw_docker)
    data = build(sandbox_body(rules, image))
    with Wire(proxy["url"]) as wire:
        wire.send(request("POST", f"{API}/containers/create", data))
        refused(wire.answer(), "container-create", why)
        wire.send(request("GET", f"{API}/_ping"))  # the body was read: the connection goes on
        assert wire.answer().status == 200
    assert daemon_state(raw_docker) == before


def test_create_needs_json_content_type(
    proxy: dict[str, str], rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    data = json.dumps(sandbox_body(rules, image)).encode()
    answer = exchange(
        proxy["url"],
        request("POST", f"{API}/containers/create", data, {"Content-Type": "text/plain"}),
    )
    refused(answer, "container-create", "Content-Type must be application/json")
    assert daemon_state(raw_docker) == before


def test_create_refuses_an_oversize_body(
    proxy: dict[str, str], raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    with Wire(proxy["url"]) as wire:
        wire.send(request("POST", f"{API}/containers/create", b"{" + b" " * 70000 + b"}"))
        answer = wire.answer()
        assert answer.status == 413
        assert "larger than 65536 bytes" in answer.message
        assert wire.closed()
    assert daemon_state(raw_docker) == before


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("name=evil", "name must match"),
        ("name=executor-a&name=executor-b", "duplicate"),
        ("platform=linux", "'platform'"),
    ],
)
def test_create_refuses_a_query_beyond_our_name(
    query: str,
    why: str,
    proxy: dict[str, str],
    rules: Rules,
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    before = daemon_state(raw_docker)
    data = json.dumps(sandbox_body(rules, image)).encode()
    refused(
        exchange(proxy["url"], request("POST", f"{API}/containers/create?{query}", data)),
        "container-create",
        why,
    )
    assert daemon_state(raw_docker) == before


def test_create_with_our_name_is_allowed(
    api: docker.APIClient, rules: Rules, image: str, raw_docker: docker.DockerClient
) -> None:
    name = f"executor-proxy-test-{uuid.uuid4().hex[:8]}"
    created = api.create_container_from_config(sandbox_body(rules, image), name=name)
    try:
        assert raw_docker.api.inspect_container(created["Id"])["Name"] == f"/{name}"
    finally:
        force_remove(raw_docker, created["Id"])


# -- endpoints that are never allowed --------------------------------------------------------

ENDPOINTS: list[tuple[str, str, bytes | None, str]] = [
    ("POST", "/containers/{id}/exec", b'{"Cmd": ["id"], "AttachStdout": true}', "exec"),
    ("GET", "/containers/{id}/archive?path=/etc", None, "archive"),
    ("PUT", "/containers/{id}/archive?path=/tmp", b"", "archive"),
    ("HEAD", "/containers/{id}/archive?path=/", None, "archive"),
    ("GET", "/containers/{id}/export", None, "export"),
    ("POST", "/containers/{id}/update", b'{"Memory": 0, "PidsLimit": -1}', "update"),
    ("POST", "/build?t=x", b"", "build"),
    ("POST", "/commit?container={id}&repo=stolen", None, "build"),
    ("GET", "/volumes", None, "volumes"),
    ("POST", "/volumes/create", b'{"Name": "proxy-test-volume"}', "volumes"),
    ("GET", "/networks", None, "networks"),
    ("POST", "/networks/create", b'{"Name": "proxy-test-network"}', "networks"),
    ("GET", "/swarm", None, "swarm"),
    ("POST", "/swarm/init", b'{"ListenAddr": "127.0.0.1"}', "swarm"),
    ("GET", "/plugins", None, "plugins"),
    ("POST", "/plugins/pull?remote=x", b"[]", "plugins"),
    ("GET", "/info", None, "no rule"),
    ("GET", "/events", None, "no rule"),
    ("GET", "/images/json", None, "no rule"),
    ("GET", "/system/df", None, "no rule"),
    ("POST", "/containers/prune", None, "no rule"),
    ("GET", "/containers/{id}/logs?stdout=1", None, "no rule"),
    ("GET", "/containers/{id}/top", None, "no rule"),
    ("POST", "/containers/{id}/restart", None, "no rule"),
    ("POST", "/containers/{id}/pause", None, "no rule"),
    ("POST", "/containers/{id}/rename?name=executor-renamed", None, "no rule"),
    ("POST", "/containers/{id}/resize?h=1&w=1", None, "no rule"),
    ("DELETE", "/images/{image}?force=1", None, "no rule"),
    ("POST", "/images/{image}/tag?repo=x", None, "no rule"),
    ("GET", "/containers/{short}/json", None, "full 64-hex id"),
    ("POST", "/containers/{short}/start", None, "full 64-hex id"),
    ("GET", "/containers/{id}/start", None, "no rule"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "why"), ENDPOINTS, ids=[f"{e[0]} {e[1]}" for e in ENDPOINTS]
)
def test_endpoints_never_allowed(
    method: str,
    path: str,
    body: bytes | None,
    why: str,
    proxy: dict[str, str],
    ours: dict[str, str],
    image: str,
    raw_docker: docker.DockerClient,
) -> None:
    target = API + path.format(id=ours["id"], short=ours["id"][:12], image=image)
    before = daemon_state(raw_docker)
    state_before = raw_docker.api.inspect_container(ours["id"])
    with Wire(proxy["url"]) as wire:
        wire.send(request(method, target, body))
        refused(wire.answer(), "endpoint", why)
    after = raw_docker.api.inspect_container(ours["id"])
    assert daemon_state(raw_docker) == before
    assert after["State"] == state_before["State"]
    assert after["ExecIDs"] is None
    assert after["Name"] == state_before["Name"]


@pytest.mark.parametrize(
    ("method", "path", "body", "rule", "why"),
    [
        (
            "POST",
            "/containers/{id}/start",
            b'{"Privileged": true}',
            "container-start",
            "no request body",
        ),
        ("POST", "/containers/{id}/start?detachKeys=a", None, "container-start", "no query"),
        (
            "POST",
            "/containers/{id}/kill?signal=KILL&signal=HUP",
            None,
            "container-kill",
            "duplicate",
        ),
        (
            "POST",
            "/containers/{id}/attach?stdin=1&detachKeys=a",
            None,
            "container-attach",
            "detachKeys",
        ),
        ("POST", "/containers/{id}/wait?condition=forever", None, "container-wait", "condition"),
        ("GET", "/containers/{id}/stats", None, "container-stats", "stream=0"),
        ("GET", "/containers/{id}/stats?stream=1", None, "container-stats", "stream=0"),
        ("DELETE", "/containers/{id}?link=1", None, "container-remove", "link must be false"),
        ("DELETE", "/containers/{id}?force=1;v=1", None, "container-remove", "malformed"),
        ("GET", "/containers/json", None, "container-list", SANDBOX_LABEL_FILTER),
        (
            "GET",
            "/containers/json?all=1&filters=%7B%7D",
            None,
            "container-list",
            SANDBOX_LABEL_FILTER,
        ),
        (
            "GET",
            "/containers/json?filters=%7B%22label%22%3A%5B%22io.executor.sandbox%3D1%22%5D%7D&size=1",
            None,
            "container-list",
            "size",
        ),
        ("GET", "/images/alpine:latest/json", None, "image-inspect", "not an allowed"),
        (
            "POST",
            "/images/create?fromImage=alpine&tag=latest",
            None,
            "image-pull",
            "not an allowed",
        ),
        ("POST", "/images/create?fromImage=executor-python", None, "image-pull", "tag="),
    ],
)
def test_allowed_endpoints_refuse_what_loosens_them(
    method: str,
    path: str,
    body: bytes | None,
    rule: str,
    why: str,
    proxy: dict[str, str],
    ours: dict[str, str],
    raw_docker: docker.DockerClient,
) -> None:
    before = daemon_state(raw_docker)
    answer = exchange(proxy["url"], request(method, API + path.format(id=ours["id"]), body))
    refused(answer, rule, why)
    assert daemon_state(raw_docker) == before
    assert raw_docker.api.inspect_container(ours["id"])["State"]["Status"] == "created"


def test_docker_py_sees_refusals_as_api_errors(
    api: docker.APIClient, raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    with pytest.raises(docker.errors.APIError) as caught:
        api.containers(all=True)
    assert caught.value.status_code == 403
    assert "executor-proxy refused" in str(caught.value.explanation)
    with pytest.raises(docker.errors.APIError) as caught:
        api.create_volume("proxy-test-volume")
    assert caught.value.status_code == 403
    with pytest.raises(docker.errors.APIError) as caught:
        api.pull("alpine", tag="latest")
    assert caught.value.status_code == 403
    assert daemon_state(raw_docker) == before
    assert not raw_docker.api.images(name="alpine")


# -- other people's containers ---------------------------------------------------------------

OTHERS_ACTIONS = [
    ("POST", "/containers/{id}/start", "container-start"),
    ("POST", "/containers/{id}/attach?stdin=1&stdout=1&stderr=1&stream=1", "container-attach"),
    ("POST", "/containers/{id}/wait", "container-wait"),
    ("POST", "/containers/{id}/kill?signal=SIGKILL", "container-kill"),
    ("GET", "/containers/{id}/json", "container-inspect"),
    ("GET", "/containers/{id}/stats?stream=0", "container-stats"),
    ("DELETE", "/containers/{id}?v=False&link=False&force=True", "container-remove"),
]


@pytest.mark.parametrize(
    ("method", "path", "rule"), OTHERS_ACTIONS, ids=[a[2] for a in OTHERS_ACTIONS]
)
def test_other_peoples_containers_are_refused(
    method: str,
    path: str,
    rule: str,
    proxy: dict[str, str],
    others: str,
    raw_docker: docker.DockerClient,
) -> None:
    before = daemon_state(raw_docker)
    answer = exchange(proxy["url"], request(method, API + path.format(id=others)))
    refused(answer, rule, f"container {others} is not an executor sandbox")
    assert daemon_state(raw_docker) == before
    seen = raw_docker.api.inspect_container(others)
    assert seen["State"]["Status"] == "created"
    assert seen["ExecIDs"] is None


def test_other_peoples_containers_refuse_exec_and_docker_py(
    api: docker.APIClient, proxy: dict[str, str], others: str, raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    answer = exchange(
        proxy["url"], request("POST", f"{API}/containers/{others}/exec", b'{"Cmd": ["id"]}')
    )
    refused(answer, "endpoint", "exec")
    for call in (api.start, api.inspect_container, api.kill, api.remove_container):
        with pytest.raises(docker.errors.APIError) as caught:
            call(others)
        assert caught.value.status_code == 403
    assert daemon_state(raw_docker) == before
    assert raw_docker.api.inspect_container(others)["ExecIDs"] is None


# -- strict HTTP -----------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, int]] = [
    ("bad-request-line", b"HELLO\r\n\r\n", 400),
    ("lowercase-method", b"get /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("http-1.0", b"GET /v1.41/_ping HTTP/1.0\r\nHost: x\r\n\r\n", 505),
    ("absolute-form", b"GET http://docker/v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (
        "content-length-and-transfer-encoding",
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunked-body",
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        400,
    ),
    ("bare-lf", b"GET /v1.41/_ping HTTP/1.1\nHost: x\n\n", 400),
    ("folded-header", b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", 400),
    ("duplicate-host", b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (
        "duplicate-content-length",
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        400,
    ),
    ("no-host", b"GET /v1.41/_ping HTTP/1.1\r\n\r\n", 400),
    ("nul-in-header", b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400),
    (
        "expect",
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
        417,
    ),
    ("oversize-request-line", b"GET /v1.41/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (
        "oversize-headers",
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n",
        431,
    ),
    (
        "too-many-headers",
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n",
        431,
    ),
]


@pytest.mark.parametrize(
    ("data", "status"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_http_is_refused_and_closed(
    data: bytes, status: int, proxy: dict[str, str], raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    with Wire(proxy["url"]) as wire:
        wire.send(data)
        answer = wire.answer()
        assert answer.status == status
        assert answer.message.startswith("executor-proxy refused ")
        assert answer.headers["connection"] == "close"
        assert wire.closed()
    assert daemon_state(raw_docker) == before


NOT_CANONICAL: list[tuple[str, str, str]] = [
    ("percent-encoded", "/containers/{id}/%65xec", "percent-encoded"),
    ("percent-encoded-id", "/containers/%61{rest}/start", "percent-encoded"),
    ("dot-segment", "/containers/{id}/../{id}/start", "dot segments"),
    ("dot", "/./containers/{id}/start", "dot segments"),
    ("double-slash", "//containers/{id}/start", "doubled slashes"),
    ("trailing-slash", "/containers/{id}/start/", "trailing slash"),
]


@pytest.mark.parametrize(
    ("path", "why"), [n[1:] for n in NOT_CANONICAL], ids=[n[0] for n in NOT_CANONICAL]
)
def test_paths_must_be_canonical(
    path: str,
    why: str,
    proxy: dict[str, str],
    ours: dict[str, str],
    raw_docker: docker.DockerClient,
) -> None:
    before = daemon_state(raw_docker)
    target = API + path.format(id=ours["id"], rest=ours["id"][1:])
    refused(exchange(proxy["url"], request("POST", target, b"")), "path", why)
    assert daemon_state(raw_docker) == before
    assert raw_docker.api.inspect_container(ours["id"])["State"]["Status"] == "created"


@pytest.mark.parametrize(
    "path", ["/containers/json", "/containers/{id}/start", "/v1.23/containers/{id}/start"]
)
def test_paths_must_be_versioned(
    path: str, proxy: dict[str, str], ours: dict[str, str], raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    method = "GET" if path.endswith("json") else "POST"
    refused(exchange(proxy["url"], request(method, path.format(id=ours["id"]))), "api-version")
    assert daemon_state(raw_docker) == before


def test_each_kept_alive_request_is_checked_on_its_own(
    proxy: dict[str, str], ours: dict[str, str], others: str, raw_docker: docker.DockerClient
) -> None:
    before = daemon_state(raw_docker)
    with Wire(proxy["url"]) as wire:
        # pipelined in one write: allowed, forbidden, allowed, someone else's, allowed
        wire.send(
            request("GET", f"{API}/_ping")
            + request("POST", f"{API}/containers/{ours['id']}/exec", b"")
            + request("GET", f"{API}/containers/{ours['id']}/json")
            + request("POST", f"{API}/containers/{others}/start")
            + request("GET", f"{API}/_ping")
        )
        assert [wire.answer().status for _ in range(5)] == [200, 403, 200, 403, 200]
        # an allowed request, then a malformed one in the same write
        wire.send(request("GET", f"{API}/_ping") + b"NONSENSE\r\n\r\n")
        assert wire.answer().status == 200
        assert wire.answer().status == 400
        assert wire.closed()
    assert daemon_state(raw_docker) == before
    assert raw_docker.api.inspect_container(others)["State"]["Status"] == "created"


# -- the audit log ---------------------------------------------------------------------------


def test_audit_log_has_one_line_per_decision(proxy: dict[str, str], ours: dict[str, str]) -> None:
    since = audit_size(proxy)
    with Wire(proxy["url"]) as wire:
        client = f"127.0.0.1:{wire.sock.getsockname()[1]}"
        wire.send(request("GET", f"{API}/_ping"))
        assert wire.answer().status == 200
        wire.send(
            request("POST", f"{API}/containers/{ours['id']}/exec", b'{"Cmd": ["secret-cmd"]}')
        )
        assert wire.answer().status == 403
    with Wire(proxy["url"]) as wire:
        second = f"127.0.0.1:{wire.sock.getsockname()[1]}"
        wire.send(request("GET", f"{API}/containers/{ours['id']}/json?size=1"))
        assert wire.answer().status == 403
        wire.send(request("GET", f"{API}/containers/{ours['id']}/json"))
        assert wire.answer().status == 200

    lines = audit_lines(
        proxy, lambda ls: sum(x["client"] in (client, second) for x in ls) >= 4, since
    )
    for line in lines:
        assert {"time", "method", "path", "decision", "rule", "container", "status"} <= set(line)
    mine = [line for line in lines if line["client"] in (client, second)]
    assert [(m["method"], m["decision"], m["rule"], m["status"]) for m in mine] == [
        ("GET", "allowed", "ping", 200),
        ("POST", "refused", "endpoint", 403),
        ("GET", "refused", "container-inspect", 403),
        ("GET", "allowed", "container-inspect", 200),
    ]
    assert mine[0]["path"] == f"{API}/_ping"
    assert mine[1]["reason"] == "exec is never allowed"
    assert mine[3]["container"] == ours["id"]
    assert "T" in mine[0]["time"]
    text = Path(proxy["audit"]).read_text()
    assert "secret-cmd" not in text  # bodies never logged
    assert ours["execution"] not in text  # nor the create body's labels
    assert "size=1" not in text  # nor queries


# -- the engine out of reach -----------------------------------------------------------------


@pytest.mark.parametrize("upstream", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:9"])
def test_unreachable_engine_is_502(upstream: str, tmp_path: Path) -> None:
    with own_proxy(upstream, tmp_path / "audit.jsonl") as url:
        answer = exchange(url, request("GET", f"{API}/_ping"))
        assert answer.status == 502
        assert answer.message.startswith(f"Docker engine unreachable at {upstream}: ")
        worker = client(url.replace("http", "tcp"))
        with pytest.raises(docker.errors.APIError) as caught:
            worker.ping()
        assert caught.value.status_code == 502
        refused(exchange(url, request("GET", f"{API}/info")), "endpoint")  # still decided first
    (line, *_) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (line["decision"], line["rule"], line["status"]) == ("allowed", "ping", 502)


# -- hijacked streams, against a fake engine of our own ---------------------------------------


def create_fake(url: str, rules: Rules) -> None:
    """Create CID through the proxy (on a FakeEngine), so this test worker may attach to it."""
    body = json.dumps(sandbox_body(rules, next(iter(rules.images)))).encode()
    answer = exchange(url, request("POST", f"{API}/containers/create", body))
    assert answer.status == 201, answer
    assert json.loads(answer.body)["Id"] == CID


def _attached(url: str, rules: Rules) -> tuple[socket.socket, bytes]:
    create_fake(url, rules)
    sock = socket.create_connection(address(url), timeout=10)
    sock.sendall(attach_request(CID))
    head = read_until(sock, lambda d: b"\r\n\r\n" in d, 10)
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n")
    return sock, head.split(b"\r\n\r\n", 1)[1]


def test_attach_streams_both_ways_with_half_close(tmp_path: Path, rules: Rules) -> None:
    engine = FakeEngine("echo")
    payload = os.urandom(16 * MIB)
    try:
        with own_proxy(f"tcp://127.0.0.1:{engine.port}", tmp_path / "audit.jsonl") as url:
            sock, received = _attached(url, rules)
            with sock:

                def send() -> None:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)  # must reach the engine as EOF

                started = time.perf_counter()
                sender = threading.Thread(target=send)
                sender.start()
                received += read_until(sock, lambda d: False, 30)  # to the engine's EOF
                elapsed = time.perf_counter() - started
                sender.join()
        assert len(received) == len(payload) + len(b"<EOF SEEN>")
        assert received == payload + b"<EOF SEEN>"
        assert elapsed < 10, f"16 MiB each way took {elapsed:.1f}s"
    finally:
        engine.close()


def test_attach_passes_on_the_engines_half_close(tmp_path: Path, rules: Rules) -> None:
    engine = FakeEngine("close-first")
    try:
        with own_proxy(f"tcp://127.0.0.1:{engine.port}", tmp_path / "audit.jsonl") as url:
            sock, received = _attached(url, rules)
            with sock:
                received += read_until(sock, lambda d: False, 10)  # the engine's EOF reaches us
                assert received == b"hello"
                sock.sendall(b"still talking")  # while our side stays open
                sock.shutdown(socket.SHUT_WR)
                assert read_until(sock, lambda d: False, 10) == b""
        deadline = time.monotonic() + 5
        while engine.received != b"still talking" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.received == b"still talking"
    finally:
        engine.close()


def test_attach_on_an_unknown_id_is_no_such_container(proxy: dict[str, str]) -> None:
    """An attach on an id the engine does not know is the engine's 404, not a hang."""
    with Wire(proxy["url"]) as wire:
        wire.send(attach_request(uuid.uuid4().hex * 2))
        assert wire.answer().status == 404


def test_listing_by_our_label_is_allowed(api: docker.APIClient, ours: dict[str, str]) -> None:
    listed = api.containers(
        all=True,
        filters={"label": [SANDBOX_LABEL_FILTER, f"{LABEL_EXECUTION}={ours['execution']}"]},
    )
    assert [c["Id"] for c in listed] == [ours["id"]]
    assert WORKER in listed[0]["Labels"].values()


def test_the_proxy_enforces_the_image_allowlist(
    api: docker.APIClient, rules: Rules, raw_docker: docker.DockerClient
) -> None:
    from tests.conftest import APPROVED_IMAGE, UNAPPROVED_IMAGE

    # An operator-approved extra image (EXECUTOR_IMAGES) is a sandbox image like the others.
    body = sandbox_body(rules, APPROVED_IMAGE)
    container = api.create_container_from_config(body)["Id"]
    force_remove(raw_docker, container)
    # Any other image, sent straight to the proxy, is refused before the engine sees it.
    refused_body = {**body, "Image": UNAPPROVED_IMAGE}
    with pytest.raises(docker.errors.APIError) as refused:
        api.create_container_from_config(refused_body)
    assert refused.value.status_code == 403
    assert "not an allowed sandbox image" in str(refused.value.explanation)
    with pytest.raises(docker.errors.APIError) as inspect:
        api.inspect_image(UNAPPROVED_IMAGE)
    assert inspect.value.status_code == 403
