"""Fixtures of the proxy's tests (helpers are in proxy_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from executor.config import Settings
from executor.policy import Rules


@pytest.fixture(scope="session")
def proxy_settings() -> Settings:
    """The settings the session's proxy process reads (it inherits this environment)."""
    return Settings.from_env(os.environ)


@pytest.fixture(scope="session")
def rules(proxy_settings: Settings) -> Rules:
    return Rules.from_settings(proxy_settings)


@pytest.fixture(scope="session")
def image(proxy_settings: Settings, raw_docker: docker.DockerClient) -> str:
    """The sandbox image; the tests that create containers need it built."""
    try:
        raw_docker.images.get(proxy_settings.python_image)
    except docker.errors.ImageNotFound:
        why = f"sandbox image {proxy_settings.python_image} is missing: build it first"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    return proxy_settings.python_image


@pytest.fixture
def api(proxy: dict[str, str]) -> Iterator[docker.APIClient]:
    """docker-py's low-level client through the proxy, as the worker uses it."""
    client = docker.APIClient(base_url=proxy["docker_host"], version="1.41", timeout=30)
    yield client
    client.close()
