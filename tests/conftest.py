"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
import requests


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client for the local Docker engine, for tests that need containers.

    Without an engine such tests are skipped locally, but fail in CI (``CI=true``),
    where ``scripts/docker-engine.sh`` is expected to have started one.
    """
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        message = f"Docker engine not answering ({exc}); run `sudo scripts/docker-engine.sh`"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield client
    client.close()

from tests.emulator_fixtures import emulator, short_lease_emulator  # noqa: E402,F401  (fixtures)
