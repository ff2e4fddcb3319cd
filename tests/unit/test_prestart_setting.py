"""EXECUTOR_PRESTART: how far a warm container starts its runtime in advance."""

from __future__ import annotations

import pytest

from executor.config import Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("held", "held"), ("BOOTED", "booted"), ("off", "off"), ("1", "held"), ("0", "off")],
)
def test_the_modes_and_the_old_flag_values(raw: str, mode: str) -> None:
    assert Settings.from_env({"EXECUTOR_PRESTART": raw}).prestart == mode


def test_held_is_the_default() -> None:
    assert Settings.from_env({}).prestart == "held"


def test_another_value_names_the_setting_and_its_choices() -> None:
    with pytest.raises(SettingsError, match="EXECUTOR_PRESTART must be one of held, booted, off"):
        Settings.from_env({"EXECUTOR_PRESTART": "yes"})
