"""Workspaces through an S3-compatible object store: how a container session moves between hosts.

The store is a real S3-compatible service on loopback (moto's server, spoken
to over HTTP by boto3); the server, the container tier, the Docker engine and
the emulator are the real ones. "Another host" is a data directory and Docker
volume that do not have the session's workspace: its local volume removed, or
a second data directory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from jupyter_cma.sandboxes.cleanup import apply_cleanup, plan_cleanup
from jupyter_cma.sandboxes.container import SESSION_LABEL
from jupyter_cma.sandboxes.image import DEFAULT_IMAGE
from tests.test_container_extras import api_error, entry, tar_of
from tests.test_container_tier import (  # noqa: F401  (fixtures of the container tests)
    bash,
    container_agent,
    pool_size,
    reap_interval,
    session_containers,
    tool_results,
    wait_state,
)
from tests.test_container_tier import jp_server_config as container_server_config  # noqa: F401
from tests.test_dispatch import cma_emulator, cma_mode, harness, script  # noqa: F401
from tests.test_dispatch import jp_server_config as dispatch_server_config  # noqa: F401

# What the store is given as credentials; the test checks they appear in no answer.
ACCESS_KEY = "AKIATESTWORKSPACES01"
SECRET_KEY = "test-secret-key-for-the-object-store-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch) -> Iterator[dict[str, Any]]:
    """An S3-compatible service on loopback with a bucket `workspaces`; boto3's environment points at its credentials."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    # The service keeps its buckets in this process's memory, across servers: start from none.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="workspaces")
    try:
        yield {"endpoint": endpoint, "client": client, "url": "s3://workspaces/team-a"}
    finally:
        server.stop()


@pytest.fixture
def sync() -> bool:
    return True


@pytest.fixture
def store_endpoint(s3) -> str:
    return s3["endpoint"]


@pytest.fixture
def jp_server_config(container_server_config, s3, sync, store_endpoint):  # noqa: F811
    return {**container_server_config, "WorkspaceObjectStore": {"url": s3["url"], "endpoint_url": store_endpoint, "sync": sync}}


def objects(s3: dict[str, Any]) -> dict[str, int]:
    listing = s3["client"].list_objects_v2(Bucket="workspaces").get("Contents") or []
    return {o["Key"]: o["Size"] for o in listing}


def forget_workspace_here(h: Any) -> None:
    """What another host looks like to the session: no volume of it (removed with `jupyter cma cleanup --volumes`)."""
    import docker

    client = docker.from_env()
    try:
        errors = apply_cleanup(plan_cleanup(client, h.ext.data_dir), volumes=True)
    finally:
        client.close()
    assert errors == []


async def test_with_sync_a_session_continues_on_a_host_that_never_had_its_workspace(harness, docker_client, s3):
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("echo kept > notes.txt && mkdir -p d && echo deep > d/f && echo done")))
    await h.turn_ends(sid, timeout=120)
    await wait_state(h, sid, "sleeping")
    # The container ended: the workspace was pushed before the session let its sandbox go.
    assert list(objects(s3)) == [f"team-a/{sid}.tar.gz"]
    status = await h.api("GET", "status")
    assert status["tiers"]["container"]["object_store"] == {"url": s3["url"], "endpoint_url": s3["endpoint"], "sync": True}

    volume = h.ext.store.session(sid)["workspace_volume"]
    forget_workspace_here(h)
    assert h.ext.store.session(sid)["workspace_volume"] is None
    assert volume not in [v.name for v in docker_client.volumes.list()]

    await h.send(sid, script(bash("cat notes.txt d/f; stat -c %U notes.txt; echo second > second.txt")))
    events = await h.turn_ends(sid, turns=2, timeout=120)
    assert tool_results(events)[-1].split() == ["kept", "deep", "agent"]  # pulled before its container started
    volume = h.ext.store.session(sid)["workspace_volume"]
    await wait_state(h, sid, "sleeping")
    assert list(objects(s3)) == [f"team-a/{sid}.tar.gz"]  # pushed again, same object
    row = h.ext.store.session(sid)
    assert row["workspace_sync"]["action"] == "push" and "error" not in row["workspace_sync"]
    assert row["workspace_etag"] == s3["client"].head_object(Bucket="workspaces", Key=f"team-a/{sid}.tar.gz")["ETag"]

    # Another host ran the session since and pushed a newer version: this host's volume is outdated, and the
    # session's next container starts on the store's version (a fresh volume), not on the stale one.
    newer = tar_of(entry("notes.txt", data=b"from the other host\n"))
    s3["client"].put_object(Bucket="workspaces", Key=f"team-a/{sid}.tar.gz", Body=newer)
    await h.send(sid, script(bash("cat notes.txt; ls")))
    events = await h.turn_ends(sid, turns=3, timeout=120)
    assert tool_results(events)[-1].strip().split("\n") == ["from the other host", "notes.txt"]  # no stale second.txt mixed in
    assert h.ext.store.session(sid)["workspace_volume"] != volume
    assert volume not in [v.name for v in docker_client.volumes.list()]  # the outdated volume is gone


@pytest.mark.parametrize("sync", [False])
async def test_push_and_pull_by_hand_over_rest(harness, docker_client, s3):
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("echo by-hand > notes.txt")))
    await h.turn_ends(sid, timeout=120)
    await wait_state(h, sid, "sleeping")
    assert objects(s3) == {}  # sync off: nothing goes by itself

    pushed = await h.api("POST", f"sessions/{sid}/workspace/push", {})
    assert pushed["object"] == f"s3://workspaces/team-a/{sid}.tar.gz" and pushed["files"] == 1
    assert objects(s3)[f"team-a/{sid}.tar.gz"] > 0

    forget_workspace_here(h)
    pulled = await h.api("POST", f"sessions/{sid}/workspace/pull", {})
    assert pulled["files"] == 1 and pulled["object"] == pushed["object"]
    # Two pulls at once go one after the other: the session is left with one volume, the one recorded for it.
    await asyncio.gather(*(h.api("POST", f"sessions/{sid}/workspace/pull", {}) for _ in range(2)))
    volumes = docker_client.volumes.list(filters={"label": f"{SESSION_LABEL}={sid}"})
    assert [v.name for v in volumes] == [h.ext.store.session(sid)["workspace_volume"]]
    await h.send(sid, script(bash("cat notes.txt")))
    events = await h.turn_ends(sid, turns=2, timeout=120)
    assert tool_results(events)[-1].strip() == "by-hand"

    # What cannot be done is said, with what to do.
    assert "push it from the host it ran on" in await api_error(h, 404, "POST", "sessions/sesn_nowhere/workspace/pull", b"")
    assert "nothing to push" in await api_error(h, 404, "POST", "sessions/sesn_nowhere/workspace/push", b"")


@pytest.mark.parametrize("store_endpoint", ["http://127.0.0.1:9"])  # nothing listens there
async def test_an_unreachable_store_is_reported_without_credentials_and_fails_closed(harness, docker_client, s3):
    h = await harness.start()
    agent = await container_agent(h)
    # With sync on, a session with no workspace here may have one in the store (it ran on another host):
    # when the store cannot be asked, it is not started on an empty workspace.
    sid = await h.session(agent, script(bash("echo never-runs")))
    await wait_state(h, sid, "failed", timeout=120)
    reason = h.ext.store.session(sid)["reason"]
    assert "could not be pulled from the object store" in reason and f"s3://workspaces/team-a/{sid}.tar.gz" in reason, reason
    assert ACCESS_KEY not in reason and SECRET_KEY not in reason
    assert not session_containers(docker_client, sid)
    sync = (await h.api("GET", f"sessions/{sid}"))["workspace_sync"]  # shown with the session
    assert sync["action"] == "pull" and "could not be pulled" in sync["error"]
    # A push that cannot reach the store says so (502) and keeps the files here.
    archive = tar_of(entry("notes.txt", data=b"stays-here\n"))
    await h.fetch("cma", "api", "sessions", "sesn_local", "workspace", method="PUT", body=archive)
    message = await api_error(h, 502, "POST", "sessions/sesn_local/workspace/push", b"")
    assert "could not store s3://workspaces/team-a/sesn_local.tar.gz" in message and "EndpointConnectionError" in message
    assert ACCESS_KEY not in message and SECRET_KEY not in message
    assert h.ext.store.session("sesn_local")["workspace_volume"]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_cma", "workspace", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("sync", [False])
async def test_the_cli_moves_a_workspace_to_another_data_directory(harness, docker_client, s3, tmp_path):
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("mkdir -p src && echo 'print(1)' > src/main.py && echo ok")))
    await h.turn_ends(sid, timeout=120)
    await wait_state(h, sid, "sleeping")
    env = {**os.environ}
    store = ["--url", s3["url"], "--endpoint-url", s3["endpoint"]]
    pushed = cli("push", sid, "--data-dir", str(h.ext.data_dir), *store, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert f"to s3://workspaces/team-a/{sid}.tar.gz" in pushed.stdout

    other_host = tmp_path / "other-host"
    pulled = cli("pull", sid, "--data-dir", str(other_host), *store, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled 1 files" in pulled.stdout
    volume = pulled.stdout.split("into volume ")[1].split(";")[0]
    listing = docker_client.containers.run(DEFAULT_IMAGE, entrypoint=["cat", "/workspace/src/main.py"], remove=True,
                                           network_mode="none", volumes={volume: {"bind": "/workspace", "mode": "ro"}})
    assert listing.decode().strip() == "print(1)"

    nothing = cli("pull", "sesn_unknown", "--data-dir", str(other_host), *store, env=env)
    assert nothing.returncode == 1 and "has no workspace for session sesn_unknown" in nothing.stderr
    unset = cli("push", sid, "--data-dir", str(h.ext.data_dir), env=env)
    assert unset.returncode == 1 and "no object store is configured" in unset.stderr
    usage = cli("push", env=env)
    assert usage.returncode == 1 and "usage: jupyter cma workspace push SESSION" in usage.stderr
