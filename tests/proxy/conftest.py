"""Fixtures of the proxy's tests (helpers are in proxy_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import proxy_helpers
import pytest

from executor.config import Settings
from executor.policy import Rules


@pytest.fixture(scope="session", autouse=True)
def proxy_secret(pytestconfig: pytest.Config) -> bytes:
    """The secret of the session's proxy, for the helpers' credentials.

    It is the PROXY_TOKEN of tests/conftest.py as pytest loaded it: `import tests.conftest`
    runs that file again as another module, with another random token.
    """
    root_conftest = Path(__file__).resolve().parent.parent / "conftest.py"
    for plugin in pytestconfig.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == str(root_conftest):
            proxy_helpers.SECRET = str(plugin.PROXY_TOKEN).encode()
            return proxy_helpers.SECRET
    raise RuntimeError(f"{root_conftest} is not loaded: no secret for the session's proxy")


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
    """docker-py's low-level client through the proxy, as the worker uses it (credential and
    all: the identity proxy_helpers.WORKER)."""
    client = proxy_helpers.client(proxy["docker_host"])
    yield client
    client.close()


@pytest.fixture
def other_api(proxy: dict[str, str]) -> Iterator[docker.APIClient]:
    """The same, as another worker (proxy_helpers.OTHER) of the same secret."""
    client = proxy_helpers.client(proxy["docker_host"], proxy_helpers.OTHER)
    yield client
    client.close()
