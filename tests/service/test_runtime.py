"""The worker's runtime on a real Redis, with a fake of the sandbox seam (ExecutionService)."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from executor.cancellation import CancelToken
from executor.config import Settings
from executor.errors import DockerUnavailable, ExecutionLost, InvalidRequest, SandboxError
from executor.models import RunRequest, RunResult
from executor.protocol import OutputSink
from executor.runtime import Events, WorkerRuntime
from tests.service.conftest import flushed, wait_until

pytestmark = [pytest.mark.service]

DB = 9


class FakeService:
    """Stands in for ExecutionService: records each run and answers with `behaviour`."""

    def __init__(self, events: Events, behaviour: Callable[[RunRequest], RunResult]) -> None:
        self.events = events
        self.behaviour = behaviour
        self.runs: list[tuple[RunRequest, str]] = []
        self.released: list[str] = []
        self.on_release: Callable[[str], None] | None = None
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def run(
        self,
        request: RunRequest,
        execution_id: str,
        cancel: CancelToken | None = None,
        output: OutputSink | None = None,
        later: list[Callable[[], None]] | None = None,
    ) -> RunResult:
        self.runs.append((request, execution_id))
        self.events("containers_created", 1)
        removed = functools.partial(self.release, execution_id)
        if later is None:
            removed()
        else:
            later.append(removed)
        return self.behaviour(request)

    def release(self, execution_id: str) -> None:
        self.released.append(execution_id)
        if self.on_release is not None:
            self.on_release(execution_id)
        self.events("containers_removed", 1)

    def pool_stats(self) -> dict[str, Any]:
        return {"warm": 2, "target": 3, "starting": 1, "languages": {"c": {"warm": 2}}}


def outcome(
    status: str = "success", exit_code: int | None = 0
) -> Callable[[RunRequest], RunResult]:
    def behave(request: RunRequest) -> RunResult:
        return RunResult(
            status=status,
            exit_code=exit_code,
            signal=None,
            stdout="out\n",
            stderr="",
            stdout_truncated=False,
            stderr_truncated=False,
            duration_ms=12,
            language=request.language,
            image="executor-python:3.11@sha256:abc",
            limits=request.limits,
            started_at="2026-01-01T00:00:00.000Z",
            finished_at="2026-01-01T00:00:00.012Z",
        )

    return behave


Harness = Callable[..., tuple[WorkerRuntime, FakeService]]


@pytest.fixture
def harness() -> Iterator[Harness]:
    url = flushed(DB)
    made: list[WorkerRuntime] = []

    def make(behaviour: Callable[[RunRequest], RunResult] | None = None, **overrides: Any):
        settings = replace(Settings.from_env({"REDIS_URL": url, "HOSTNAME": "fake"}), **overrides)
        fakes: list[FakeService] = []

        def factory(_: Settings, events: Events) -> FakeService:
            fakes.append(FakeService(events, behaviour or outcome()))
            return fakes[-1]

        runtime = WorkerRuntime(settings, service_factory=factory)
        runtime.start("fake@host")
        made.append(runtime)
        return runtime, fakes[0]

    yield make
    for runtime in made:
        runtime.stop()


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_run_becomes_the_contract_result(harness: Harness):
    runtime, service = harness()
    execution_id = new_id()
    body = runtime.execute({"code": "print(1)", "timeout": 3}, execution_id)
    assert list(body)[:2] == ["id", "status"]
    assert body["id"] == execution_id and body["status"] == "success"
    assert body["worker"] == "fake" and body["queued_ms"] >= 0 and body["created_at"]
    assert body["limits"]["timeout"] == 3.0 and body["limits"]["pids"] == 64
    assert service.runs[0][1] == execution_id
    record = runtime.store.get(execution_id)
    assert record and record.payload == body


def test_the_sandbox_is_released_once_the_result_is_stored(harness: Harness):
    runtime, service = harness()
    execution_id = new_id()
    seen: list[str | None] = []

    def on_release(released: str) -> None:
        record = runtime.store.get(released)
        seen.append(record.status if record else None)

    service.on_release = on_release
    runtime.execute({"code": "print(1)"}, execution_id)
    # Removal (and the pool's refill) come after the answer, never while it is stored.
    assert service.released == [execution_id] and seen == ["success"]


def test_the_programs_failure_is_a_result(harness: Harness):
    runtime, _ = harness(outcome("error", 1))
    assert runtime.execute({"code": "x"}, new_id())["status"] == "error"


def test_a_bad_payload_is_refused_without_running(harness: Harness):
    runtime, service = harness()
    execution_id = new_id()
    with pytest.raises(InvalidRequest) as refused:
        runtime.execute({"code": "", "timeout": -1}, execution_id)
    assert set(refused.value.errors or {}) == {"code", "timeout"}
    assert service.runs == []
    record = runtime.store.get(execution_id)
    assert record and record.payload and record.payload["code"] == "invalid_request"
    assert record.payload["errors"] == refused.value.errors
    assert runtime.store.snapshot()["counters"]["rejected"] == 1


def test_an_infrastructure_fault_fails_and_is_recorded(harness: Harness):
    def unreachable(_: RunRequest) -> RunResult:
        raise DockerUnavailable("Docker is unreachable at tcp://nowhere:2375")

    runtime, _ = harness(unreachable)
    execution_id = new_id()
    with pytest.raises(DockerUnavailable):
        runtime.execute({"code": "x"}, execution_id)
    record = runtime.store.get(execution_id)
    assert record and record.payload == {
        "id": execution_id,
        "status": "internal_error",
        "code": "docker_unavailable",
        "message": "Docker is unreachable at tcp://nowhere:2375",
    }


def test_a_redelivered_message_is_never_run_twice(harness: Harness):
    runtime, service = harness()
    execution_id = new_id()
    first = runtime.execute({"code": "x"}, execution_id)
    assert runtime.execute({"code": "x"}, execution_id) == first
    assert len(service.runs) == 1


def test_a_redelivery_after_a_lost_worker_is_an_execution_lost(harness: Harness):
    runtime, service = harness()
    execution_id = new_id()
    runtime.store.beat("gone:1:x", {"name": "gone"}, {})
    runtime.store.claim(execution_id, "python", "gone:1:x", "gone")  # it died mid-run...
    runtime.store.redis.delete("executor:worker:gone:1:x")  # ...and stopped beating
    with pytest.raises(ExecutionLost):
        runtime.execute({"code": "x"}, execution_id)
    assert service.runs == []
    record = runtime.store.get(execution_id)
    assert record and record.payload and record.payload["code"] == "execution_lost"


def test_heartbeats_carry_the_pool_and_the_counters(harness: Harness):
    runtime, _ = harness()
    runtime.execute({"code": "x"}, new_id())

    def beat_seen() -> dict[str, Any] | None:
        snapshot = runtime.store.snapshot()
        workers = [w for w in snapshot["workers"] if w["incarnation"] == runtime.incarnation]
        if (
            workers
            and workers[0]["processed"] == 1
            and snapshot["counters"].get("containers_created")
        ):
            return {"worker": workers[0], "counters": snapshot["counters"]}
        return None

    seen = wait_until("a heartbeat with the run", beat_seen, 5)
    assert seen["worker"]["pool"] == {
        "warm": 2, "starting": 1, "target": 3, "languages": {"c": {"warm": 2}}
    }  # fmt: skip
    assert seen["worker"]["name"] == "fake@host"
    assert seen["counters"]["containers_created"] == 1
    assert seen["counters"]["containers_removed"] == 1


def test_stop_says_goodbye_and_loses_what_still_runs(harness: Harness):
    release = threading.Event()

    def slow(request: RunRequest) -> RunResult:
        release.wait(10)
        return outcome()(request)

    runtime, service = harness(slow)
    execution_id = new_id()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            runtime.execute({"code": "x"}, execution_id)
        except ExecutionLost as e:
            raised.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    wait_until("running", lambda: service.runs, 5)
    runtime.stop()
    assert service.stopped
    record = runtime.store.get(execution_id)
    assert record and record.payload and record.payload["code"] == "execution_lost"
    assert runtime.store.live_workers() == []
    release.set()
    runner.join(5)
    assert len(raised) == 1  # the run that outlived its worker's goodbye fails, it does not win


def test_the_hard_time_limit_is_a_backstop(harness: Harness):
    def hangs(request: RunRequest) -> RunResult:
        time.sleep(2.5)
        return outcome()(request)

    runtime, _ = harness(hangs, max_timeout=0.1, docker_timeout=0.2)  # hard limit 0.7 s
    execution_id = new_id()
    started = time.monotonic()
    with pytest.raises(SandboxError) as cut:
        runtime.execute({"code": "x", "timeout": 0.1}, execution_id)
    assert "hard time limit" in cut.value.message
    record = runtime.store.get(execution_id)
    assert record and record.payload and record.payload["code"] == "sandbox_error"
    assert time.monotonic() - started >= 2.5
