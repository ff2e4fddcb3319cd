"""API keys without services: settings, key files, identification, and the gate on each path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from executor.config import Settings, SettingsError
from executor.store import Record, Store
from executor.web import create_app
from executor.web.auth import ANONYMOUS, Caller, Keys, key_id


def settings(**env: str) -> Settings:
    return Settings.from_env({"HOSTNAME": "unit", "REDIS_URL": "redis://127.0.0.1:1/0", **env})


def test_keys_are_off_by_default_and_never_in_the_settings_repr():
    assert not Keys.from_settings(settings()).enabled
    configured = settings(EXECUTOR_API_KEYS="k1, k2", EXECUTOR_OPERATOR_KEYS="op")
    assert configured.api_keys == ("k1", "k2") and configured.operator_keys == ("op",)
    assert "k1" not in repr(configured) and "'op'" not in repr(configured)


def test_key_files_add_keys_one_per_line(tmp_path: Path):
    api = tmp_path / "api"
    api.write_text("# team a\nfile-key-1\n\nfile-key-2  # rotated in May\n")
    ops = tmp_path / "ops"
    ops.write_text("operator-from-file\n")
    keys = Keys.from_settings(
        settings(
            EXECUTOR_API_KEYS="env-key",
            EXECUTOR_API_KEYS_FILE=str(api),
            EXECUTOR_OPERATOR_KEYS_FILE=str(ops),
        )
    )
    for key in ("env-key", "file-key-1", "file-key-2"):
        assert keys.identify(key) == Caller(key_id(key), operator=False)
    assert keys.identify("operator-from-file") == Caller(key_id("operator-from-file"), True)
    assert keys.identify("team a") is None and keys.identify("") is None


def test_an_unreadable_key_file_names_its_variable(tmp_path: Path):
    with pytest.raises(SettingsError, match="EXECUTOR_API_KEYS_FILE"):
        Keys.from_settings(settings(EXECUTOR_API_KEYS_FILE=str(tmp_path / "absent")))


@pytest.mark.parametrize("limit", ["120/minute", "10 per second", "10/second;1000/hour"])
def test_rate_limits_in_flask_limiters_notation(limit: str):
    assert settings(EXECUTOR_RATE_LIMIT=limit).rate_limit == limit


@pytest.mark.parametrize("limit", ["120", "fast", "10/fortnight", "/minute"])
def test_a_malformed_rate_limit_is_refused(limit: str):
    with pytest.raises(SettingsError, match="EXECUTOR_RATE_LIMIT"):
        settings(EXECUTOR_RATE_LIMIT=limit)


def test_a_caller_sees_its_own_records_and_an_operator_all():
    alice, bob = Caller(key_id("a"), False), Caller(key_id("b"), False)
    record = Record("id", "success", "python", 0.0, "w", None, owner=key_id("a"))
    producers = Record("id", "success", "python", 0.0, "w", None)
    assert alice.sees(record) and not bob.sees(record)
    assert not alice.sees(producers)  # a producer's execution: operators only
    assert Caller(key_id("op"), True).sees(producers)
    assert Caller(None, True).sees(record)  # keys off
    assert not ANONYMOUS.sees(record) and not ANONYMOUS.sees(producers)  # keys on, /health


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    configured = settings(EXECUTOR_API_KEYS="user-key", EXECUTOR_OPERATOR_KEYS="operator-key")
    store = Store(configured.redis_url, ttl_s=60, history_size=5)  # never reached here
    yield create_app(configured, store=store)
    store.close()


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [
        ("/languages", None, 401),
        ("/languages", "user-key", 200),
        ("/languages", "operator-key", 200),
        ("/openapi.json", None, 401),
        ("/docs", None, 401),
        ("/docs", "user-key", 200),
        ("/executions/00000000-0000-0000-0000-000000000000", "nope", 401),
        ("/status", "user-key", 403),
        ("/metrics", "user-key", 403),
        ("/dashboard", "user-key", 403),
        ("/", "user-key", 403),
    ],
)
def test_the_gate_of_each_path(app: Flask, path: str, key: str | None, status: int):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = app.test_client().get(path, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status in (401, 403):
        assert response.get_json()["code"] == {401: "unauthorized", 403: "forbidden"}[status]
