"""The warm pool: containers started in advance, each used by exactly one execution."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from executor.models import RunRequest
from executor.policy import LABEL_WORKER
from executor.pool import REFILL_HOLD_S
from executor.sandbox import default_limits
from executor.service import ExecutionService
from tests.conftest import sandboxes, wait_gone

pytestmark = pytest.mark.docker


def wait_warm(svc: ExecutionService, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while svc.pool_stats()["warm"] < n:
        assert time.monotonic() < deadline, f"pool never reached {n}: {svc.pool_stats()}"
        time.sleep(0.05)


@pytest.fixture
def warm_service(settings, raw_docker):
    svc = ExecutionService(replace(settings, pool_size=2, pool_refill_concurrency=2))
    svc.start()
    yield svc
    svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []


def run(svc: ExecutionService, code: str, **limits: float):
    request = RunRequest(code=code, limits=replace(default_limits(svc.settings), **limits))
    return svc.run(request, "33333333-3333-4333-8333-333333333333")


def test_a_started_pool_is_already_filling(settings, raw_docker):
    # A worker reports ready right after it starts its pool: /readyz must see it filling.
    svc = ExecutionService(replace(settings, pool_size=1))
    svc.start()
    try:
        stats = svc.pool_stats()
        assert stats["starting"] + stats["warm"] == 1, stats
    finally:
        svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []


def test_pool_fills_to_its_size_and_hands_out_ready_containers(warm_service, raw_docker):
    wait_warm(warm_service, 2)
    assert len(sandboxes(raw_docker, **{LABEL_WORKER: warm_service.sandbox.owner})) == 2
    r = run(warm_service, "print('warm')")
    assert (r.status, r.stdout, r.warm) == ("success", "warm\n", True)
    wait_warm(warm_service, 2)  # refilled in the background


def test_a_refill_waits_for_the_execution_it_replaces_while_one_is_left(warm_service):
    wait_warm(warm_service, 2)
    python = warm_service.languages["python"]
    limits = default_limits(warm_service.settings)

    def take():
        container = warm_service.pool.take(python, limits.memory_mb, limits.cpus)
        assert container is not None
        return container

    first = take()
    time.sleep(REFILL_HOLD_S / 5)
    stats = warm_service.pool_stats()
    assert (stats["warm"], stats["starting"]) == (1, 0)  # its execution still runs
    warm_service.pool.released(first)
    wait_warm(warm_service, 2)  # refilled once it is over
    # One whose execution never says it is over is refilled all the same, a little later.
    second = take()
    wait_warm(warm_service, 2)
    # A take that empties the pool does not wait: under load nothing is held back.
    third, fourth = take(), take()
    time.sleep(REFILL_HOLD_S / 5)
    stats = warm_service.pool_stats()
    assert stats["warm"] + stats["starting"] >= 1
    wait_warm(warm_service, 2)
    for container in (first, second, third, fourth):
        warm_service.dispose(container)


def test_a_container_is_never_reused(warm_service):
    wait_warm(warm_service, 2)
    first = run(
        warm_service,
        "import os\nopen('/tmp/mark', 'w').write('x')\nprint(os.uname().nodename, os.path.exists('/tmp/mark'))",
    )
    wait_warm(warm_service, 2)
    second = run(warm_service, "import os\nprint(os.path.exists('/tmp/mark'))")
    assert first.stdout.endswith("True\n") and second.stdout == "False\n"
    assert first.warm and second.warm
    assert warm_service.pool_stats()["handed_out"] == 2


def test_other_limits_get_a_fresh_container(warm_service):
    wait_warm(warm_service, 2)
    r = run(warm_service, "print('cold')", memory_mb=64)
    assert (r.stdout, r.warm, r.limits.memory_mb) == ("cold\n", False, 64)
    assert warm_service.pool_stats()["warm"] == 2


def test_timeout_counts_from_code_delivery_not_container_start(warm_service):
    wait_warm(warm_service, 2)
    time.sleep(1.5)  # the warm containers have been up for a while
    r = run(warm_service, "import time\ntime.sleep(0.8)\nprint('in time')", timeout=1)
    assert (r.status, r.stdout) == ("success", "in time\n")


def test_dead_warm_container_is_not_handed_out(warm_service, raw_docker):
    wait_warm(warm_service, 2)
    for cid in sandboxes(raw_docker, **{LABEL_WORKER: warm_service.sandbox.owner}):
        raw_docker.api.kill(cid)
    time.sleep(0.5)
    r = run(warm_service, "print('still fine')")
    assert (r.status, r.stdout) == ("success", "still fine\n")


def test_idle_containers_are_recycled(settings, raw_docker):
    svc = ExecutionService(replace(settings, pool_size=1, pool_max_idle_s=1.0))
    svc.start()
    try:
        wait_warm(svc, 1)
        first = set(sandboxes(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = set(sandboxes(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}))
            if now and not now & first:
                break
            time.sleep(0.2)
        assert now and not now & first, "the idle container was never replaced"
    finally:
        svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []


def test_stop_drains_the_pool(settings, raw_docker):
    svc = ExecutionService(replace(settings, pool_size=2))
    svc.start()
    wait_warm(svc, 2)
    svc.stop()
    assert wait_gone(raw_docker, timeout=10, **{LABEL_WORKER: svc.sandbox.owner}) == []


def test_reaper_removes_containers_of_a_dead_worker(settings, raw_docker):
    from executor.policy import sandbox_config

    dead_owner = f"{settings.instance}:999999:dead"
    config = sandbox_config(
        image=settings.python_image,
        memory_mb=64,
        cpus=0.1,
        pids=16,
        tmpfs_mb=10,
        nofile=64,
        runtime="",
        uid=settings.sandbox_uids[0],
        worker=dead_owner,
        execution="",
        profile="orphan",
    )
    cid = raw_docker.api.create_container_from_config(config)["Id"]
    svc = ExecutionService(settings)
    try:
        assert svc.reaper.reap() >= 1
        assert cid not in sandboxes(raw_docker)
    finally:
        svc.stop()
        if cid in sandboxes(raw_docker):
            raw_docker.api.remove_container(cid, force=True)


def test_a_changed_image_recycles_the_pool(settings, raw_docker):
    svc = ExecutionService(replace(settings, pool_size=1))
    svc.start()
    try:
        wait_warm(svc, 1)
        first = set(sandboxes(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}))
        # What the engine reports after `docker build` re-tags the image: a new id.
        image = svc.languages["python"].image
        svc.engine._images[image] = ("sha256:" + "0" * 64, time.monotonic() + 3600)
        deadline = time.monotonic() + 20
        now = first
        while time.monotonic() < deadline:
            now = set(sandboxes(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}))
            if now and not now & first and svc.pool_stats()["warm"] == 1:
                break
            time.sleep(0.1)
        assert now and not now & first, "containers of the old image were handed on"
    finally:
        svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []


def test_a_warm_container_lost_before_delivery_falls_back_to_a_fresh_one(
    warm_service, raw_docker, monkeypatch
):
    wait_warm(warm_service, 2)
    lost = warm_service.pool.take(warm_service.languages["python"], 512, 0.5)
    assert lost is not None
    lost.sock.close()  # whatever ended it, the program can no longer be delivered
    monkeypatch.setattr(warm_service.pool, "take", lambda *args: lost)
    r = run(warm_service, "print('delivered elsewhere')")
    assert (r.status, r.stdout, r.warm) == ("success", "delivered elsewhere\n", False)


def wait_language_warm(
    svc: ExecutionService, expected: dict[str, int], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        languages = svc.pool_stats()["languages"]
        if all(languages[name]["warm"] == n for name, n in expected.items()):
            return
        assert time.monotonic() < deadline, f"pool never reached {expected}: {languages}"
        time.sleep(0.1)


def test_the_budget_follows_the_languages_in_use(settings, raw_docker):
    svc = ExecutionService(replace(settings, pool_size=2, pool_refill_concurrency=2))
    svc.start()
    try:
        wait_language_warm(svc, {"python": 2, "javascript": 0})  # no demand yet: the default
        js = RunRequest(
            code="console.log(6 * 7)", language="javascript", limits=default_limits(svc.settings)
        )
        first = svc.run(js, "44444444-4444-4444-8444-444444444444")
        assert (first.status, first.stdout, first.warm) == ("success", "42\n", False)
        # Only JavaScript is in use now: Python shrinks to zero, JavaScript takes the budget.
        wait_language_warm(svc, {"python": 0, "javascript": 2})
        second = svc.run(js, "44444444-4444-4444-8444-444444444445")
        assert (second.status, second.stdout, second.warm) == ("success", "42\n", True)
        cold = run(svc, "print('cold again')")
        assert (cold.stdout, cold.warm) == ("cold again\n", False)
        wait_language_warm(svc, {"python": 1, "javascript": 1})
        assert svc.pool_stats()["target"] == 2
    finally:
        svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []


def test_a_worker_serves_only_the_languages_whose_images_its_engine_has(settings, raw_docker):
    from tests.conftest import MISSING_IMAGE

    svc = ExecutionService(replace(settings, python_image=MISSING_IMAGE, pool_size=1))
    svc.start()
    try:
        assert "python" not in svc.served and "javascript" in svc.served
        languages = svc.pool_stats()["languages"]
        assert "python" not in languages and "javascript" in languages
        wait_language_warm(svc, {"javascript": 1})  # the budget goes to what it serves
    finally:
        svc.stop()
    assert wait_gone(raw_docker, **{LABEL_WORKER: svc.sandbox.owner}) == []
