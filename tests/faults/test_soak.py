"""The soak's short version (bench/soak.py): steady load on a private stack leaks nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak
from tests.conftest import DOCKER_SOCKET
from tests.faults.conftest import RedisServer

pytestmark = [pytest.mark.service, pytest.mark.docker, pytest.mark.slow]

SECONDS = 30
# Generous bounds: the machine is shared and a run is short; a leak per execution (a
# container, an fd, a key, a few KiB each) over a few hundred executions still shows.
RSS_GROWTH_MB = 48
FD_GROWTH = 48
PERSISTENT_KEYS = 6


def test_a_short_soak_leaks_nothing(tmp_path: Path):
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        report = soak(SECONDS, 4, redis.url, DOCKER_SOCKET, every_s=10, wait_expiry=False)
    finally:
        redis.stop()
    assert report.requests > 10 and set(report.answers) == {"ok"}, report.answers
    assert report.containers_left == 0, report.samples[-1]
    for process, growth in report.growth_rss_mb.items():
        assert growth < RSS_GROWTH_MB, (process, report.samples)
    for process, growth in report.growth_fds.items():
        assert growth < FD_GROWTH, (process, report.samples)
    # Every record, result and wake-up expires: keys without a TTL do not grow with the load.
    assert report.keys_without_ttl_left - report.keys_without_ttl_idle <= PERSISTENT_KEYS, report
