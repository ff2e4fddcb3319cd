"""The compose stack keeps the history across Redis restarts: AOF on a volume."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def test_compose_redis_writes_an_append_only_file_to_a_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data = command[command.index("--dir") + 1]
    mounts = {m.split(":", 1)[1]: m.split(":", 1)[0] for m in redis["volumes"]}
    assert mounts[data] in compose["volumes"]  # a named volume, not the read-only root
