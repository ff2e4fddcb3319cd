"""The API's cached dependency checks: a failure is rechecked before work is refused on it."""

from __future__ import annotations

from executor.web.health import Check, _Cached


def test_a_cached_failure_is_rechecked_for_a_submission_and_a_success_is_kept():
    answers = [Check(False, "down", 0.0), Check(True, "up", 0.0), Check(False, "down", 0.0)]
    asked: list[Check] = []

    def compute() -> Check:
        asked.append(answers[len(asked)])
        return asked[-1]

    cached = _Cached(compute)
    assert not cached.get().ok  # first probe: down
    assert not cached.get().ok and len(asked) == 1  # /health: the cached answer
    assert cached.get(recheck_failure=True).ok and len(asked) == 2  # a submission asks again
    assert cached.get(recheck_failure=True).ok and len(asked) == 2  # a success is cached
