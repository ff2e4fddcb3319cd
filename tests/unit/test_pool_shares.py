"""How the warm pool's budget is shared among languages by recent demand."""

from __future__ import annotations

import pytest

from executor.pool import shares


def test_without_demand_the_default_gets_the_whole_budget():
    assert shares(4, {"py": 0, "js": 0, "go": 0}, "py") == {"py": 4, "js": 0, "go": 0}


def test_an_unused_language_shrinks_to_zero():
    assert shares(4, {"py": 0, "js": 5, "go": 0}, "py") == {"py": 0, "js": 4, "go": 0}


def test_the_budget_follows_demand_and_every_language_in_use_gets_one():
    assert shares(4, {"py": 30, "js": 10, "go": 1}, "py") == {"py": 2, "js": 1, "go": 1}
    assert shares(6, {"py": 1, "js": 1, "go": 1}, "py") == {"py": 2, "js": 2, "go": 2}


def test_more_languages_in_use_than_the_budget_serves_the_busiest():
    assert shares(2, {"py": 1, "js": 9, "go": 5}, "py") == {"py": 0, "js": 1, "go": 1}


@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 12])
@pytest.mark.parametrize(
    "demand", [{"a": 0, "b": 0}, {"a": 3, "b": 0}, {"a": 1, "b": 2, "c": 7}, {"a": 5, "b": 5}]
)
def test_the_shares_never_exceed_the_budget(size: int, demand: dict[str, int]):
    targets = shares(size, demand, "a")
    assert set(targets) == set(demand)
    assert sum(targets.values()) == (size if size > 0 else 0)
    assert all(targets[name] == 0 for name in demand if demand[name] == 0 and any(demand.values()))


def test_the_language_used_last_is_kept_warm_before_busier_ones():
    demand = {"py": 20, "js": 20, "go": 1}
    last_used = {"py": 10.0, "js": 11.0, "go": 12.0}
    assert shares(2, demand, "py", last_used) == {"py": 0, "js": 1, "go": 1}
