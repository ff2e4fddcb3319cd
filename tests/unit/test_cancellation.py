"""The worker's cancel tokens: a cancel stops what runs, once, whenever it comes."""

from __future__ import annotations

from executor.cancellation import Cancellations, CancelToken, cancelled_before_start


def test_a_cancel_during_the_run_stops_it_once():
    token, stops = CancelToken(), []
    with token.stopping_with(lambda: stops.append(1)):
        assert stops == []
        token.set()
        token.set()
    assert stops == [1] and token.is_set()


def test_a_cancel_before_the_run_stops_it_as_it_starts():
    token, stops = CancelToken(), []
    token.set()
    with token.stopping_with(lambda: stops.append(1)):
        assert stops == [1]


def test_a_cancel_after_the_run_stops_nothing():
    token, stops = CancelToken(), []
    with token.stopping_with(lambda: stops.append(1)):
        pass
    token.set()
    assert stops == []


def test_a_failing_stop_does_not_reach_the_canceller():
    token = CancelToken()

    def broken() -> None:
        raise OSError("the proxy is down")

    with token.stopping_with(broken):
        token.set()
    assert token.is_set()


def test_cancellations_reach_only_what_runs_here():
    cancellations, stops = Cancellations(), []
    with cancellations.running("a") as token, token.stopping_with(lambda: stops.append("a")):
        assert cancellations.ids() == ["a"]
        assert not cancellations.cancel("b")
        assert cancellations.cancel("a") and stops == ["a"]
    assert cancellations.ids() == [] and not cancellations.cancel("a")


def test_an_execution_cancelled_before_it_started_has_no_run():
    body = cancelled_before_start("job-1", "", 100.0, "1970-01-01T00:01:40.000Z", 101.5)
    assert body["status"] == "cancelled" and body["queued_ms"] == 1500
    assert body["language"] is None and body["started_at"] is None and body["stdout"] == ""
