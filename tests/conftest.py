"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from jupyter_cma.sandboxes.cleanup import apply_cleanup, plan_cleanup

from tests.emulator_fixtures import emulator, short_lease_emulator  # noqa: F401  (fixtures used by many modules)


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory) -> Iterator[docker.DockerClient]:
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
    _remove_what_this_run_made(client, tmp_path_factory.getbasetemp())
    client.close()


def _remove_what_this_run_made(client: docker.DockerClient, basetemp: Path) -> None:
    """Sessions' volumes outlive their servers by design; the tests' ones (data directories under this run's
    temporary directory) go when the run ends, through the same code as `jupyter cma cleanup --all --volumes`."""
    plan = plan_cleanup(client, str(basetemp), all_data_dirs=True)
    mine = str(basetemp.absolute()) + os.sep
    for kind in ("containers", "volumes", "session_volumes", "directories"):
        setattr(plan, kind, [f for f in getattr(plan, kind) if f.data_dir.startswith(mine)])
    apply_cleanup(plan, volumes=True)


# In CI every tier and every test must really run: a skip there is a failure.
_ci_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and os.environ.get("CI") == "true":
        _ci_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _ci_skips:
        print(f"\nCI: {len(_ci_skips)} test(s) skipped; in CI that is a failure: " + ", ".join(_ci_skips))
        session.exitstatus = 1


def pytest_collection_modifyitems(session, config, items):
    """The browser tests run last: Playwright's sync API keeps its event loop running in this thread until the
    session ends, and pytest-jupyter's loop fixture of any test after them would find that loop and fail to close it."""
    items.sort(key=lambda item: "browser" in item.nodeid.split("::")[0].split("/")[:-1])
