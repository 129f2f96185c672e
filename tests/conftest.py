"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
import requests

from tests.emulator_fixtures import emulator, short_lease_emulator  # noqa: F401  (fixtures used by many modules)


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


# In CI every tier and every test must really run: a skip there is a failure.
_ci_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI") == "true":
        _ci_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _ci_skips:
        print(f"\nCI: {len(_ci_skips)} test(s) skipped; in CI that is a failure: " + ", ".join(_ci_skips))
        session.exitstatus = 1
