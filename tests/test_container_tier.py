"""The container tier end to end: the real server, the emulator, a real Docker engine, the real egress engine.

Sessions are created through the REST API for agents on the container tier;
the emulator's brain calls the standard toolset, which runs in the session's
container (the SDK worker inside it reaches the emulator through the egress
proxy with a placeholder token). Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import docker
import pytest

from jupyter_cma.sandboxes.container import MANAGED, SESSION_LABEL
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    Harness,
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config as dispatch_server_config,
    script,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pool_size() -> int:
    return 0


@pytest.fixture
def jp_server_config(dispatch_server_config, pool_size, docker_client):  # noqa: F811
    config = dict(dispatch_server_config)
    config["ContainerTier"] = {"pool_size": pool_size, "stop_timeout": 2.0}
    config["KernelTier"] = {"pool_size": 0}
    return config


def bash(command: str) -> dict[str, Any]:
    return {"tool": "bash", "input": {"command": command}}


async def container_agent(h: Harness) -> str:
    return (await h.api("POST", "agents", {"name": "box", "tier": "container"}))["id"]


def tool_results(events: list[Any]) -> list[str]:
    """The text of each builtin tool result, in order."""
    out = []
    for e in events:
        if e.type == "user.tool_result":
            out.append("".join(getattr(b, "text", "") for b in e.content or []))
    return out


def session_containers(client: docker.DockerClient, session_id: str | None = None) -> list[Any]:
    label = [f"{MANAGED}=1"] + ([f"{SESSION_LABEL}={session_id}"] if session_id else [])
    return client.containers.list(all=True, filters={"label": label})


async def wait_state(h: Harness, session_id: str, *states: str, timeout: float = 60) -> str:
    return await wait_until(lambda: h.state(session_id) in states and h.state(session_id), timeout,
                            what=f"session {session_id} in {states} (now {h.state(session_id)})")


async def test_the_readme_scenario_runs_inside_a_container(harness, docker_client):
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, "Write a Python script that prints the squares of 1..10, run it, and report the result.")
    events = await h.turn_ends(sid, timeout=120)
    outputs = tool_results(events)
    assert outputs[-1].split() == [str(n * n) for n in range(1, 11)], outputs
    assert "That is 1, 4, 9" in events[-2].content[0].text

    # Where it ran: the container's hostname, its non-root user, Debian's python3, no network but loopback.
    await h.send(sid, script(bash("hostname; id -u; python3 -c 'import sys; print(sys.version_info[:2])'; ls /sys/class/net; cat squares.py | head -1")))
    events = await h.turn_ends(sid, turns=2, timeout=120)
    lines = tool_results(events)[-1].split("\n")
    assert lines[0] == "sandbox" and lines[1] == "1000" and lines[2] == "(3, 11)" and lines[3] == "lo", lines
    assert lines[4].startswith("for n in range(1, 11)"), lines

    row = h.ext.store.session(sid)
    assert row["tier"] == "container" and row["cold_start_ms"] > 0
    assert row["workspace_volume"]
    # Idle past max_idle: the container exits, the session sleeps, nothing is left but the volume.
    await wait_state(h, sid, "sleeping")
    await wait_until(lambda: not session_containers(docker_client, sid), 30, what="the container removed")
    assert docker_client.volumes.get(row["workspace_volume"])
    assert not h.ext.egress_proxy.attachments
    log = (h.ext.sandbox_tiers["container"].log_path(sid)).read_text()
    assert '"cma": "tool"' in log and "container jupyter-cma-" in log
