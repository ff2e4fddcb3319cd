"""The proxy's client credential: who may talk to the Docker security proxy."""

from __future__ import annotations

import os
import stat

import pytest

from executor.config import Settings, SettingsError
from executor.proxyauth import credential, ensure_secret, load_secret, verify, worker_identity

SECRET = b"s3cret"


def test_a_credential_proves_its_identity():
    identity = worker_identity("host.example")
    assert identity.startswith(f"host.example:{os.getpid()}:")
    assert verify(SECRET, credential(SECRET, identity)) == identity


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        credential(b"other", "w:1:0123abcd"),  # another secret
        credential(SECRET, "w:1:0123abcd").replace("w:1:", "w:2:"),  # another identity, same MAC
        credential(SECRET, "w:1:0123abcd").replace("Executor", "Bearer"),
        credential(SECRET, "w:1:0123abcd") + " ",
        credential(SECRET, "w:1:0123abcd").upper(),
        "Executor w:1:0123abcd",
        "Executor w:1:0123abcd " + "0" * 64,
        credential(SECRET, "w:1:0123abcd\n"),  # not an identity
        credential(SECRET, "bad id:1:0123abcd"),
    ],
)
def test_anything_else_proves_nothing(value):
    assert verify(SECRET, value) is None


def test_the_proxy_creates_its_token_file_once(tmp_path):
    path = tmp_path / "secret" / "proxy.token"
    settings = Settings(proxy_token_file=str(path))
    first = ensure_secret(settings)
    assert len(first) >= 32 and ensure_secret(settings) == first
    assert load_secret(settings) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["proxy.token"]  # nothing left aside


def test_a_token_wins_over_a_file_and_nothing_configured_is_refused(tmp_path):
    assert (
        ensure_secret(Settings(proxy_token="abc", proxy_token_file=str(tmp_path / "x"))) == b"abc"
    )
    assert load_secret(Settings()) is None
    with pytest.raises(SettingsError, match="EXECUTOR_PROXY_TOKEN"):
        ensure_secret(Settings())
    with pytest.raises(SettingsError, match="cannot read"):
        load_secret(Settings(proxy_token_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        load_secret(Settings(proxy_token_file=str(tmp_path / "empty")))
