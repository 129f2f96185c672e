"""The container tier end to end: the real server, the emulator, a real Docker engine, the real egress engine.

Sessions are created through the REST API for agents on the container tier;
the emulator's brain calls the standard toolset, which runs in the session's
container (the SDK worker inside it reaches the emulator through the egress
proxy with a placeholder token). Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import json
import secrets
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
def reap_interval() -> float:
    return 300.0


@pytest.fixture
def jp_server_config(dispatch_server_config, pool_size, reap_interval, docker_client):  # noqa: F811
    config = dict(dispatch_server_config)
    config["CMAApp"] = {**config["CMAApp"], "reap_interval": reap_interval}
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
    """The tier's containers (of one session), inspected; one removed between the listing and its inspection is
    gone, so it is not listed (docker's list-then-inspect would raise NotFound for it)."""
    label = [f"{MANAGED}=1"] + ([f"{SESSION_LABEL}={session_id}"] if session_id else [])
    found = []
    for container in client.containers.list(all=True, filters={"label": label}, sparse=True):
        try:
            container.reload()
        except docker.errors.NotFound:
            continue
        found.append(container)
    return found


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
    # Every request the worker made left through the egress proxy and is in the log, for this session.
    rows = h.ext.egress_log.query(session_id=sid)
    # (the placeholder swapped for the real token on the way: "injected" by the system rule for the API host)
    assert any(r["path"].startswith("/v1/environments/") and r["decision"] == "injected" and r["rule"] == "system:api-host" for r in rows), rows


def container_runs(log: str) -> list[str]:
    """The header line of each container that served the session, from its log."""
    return [line for line in log.splitlines() if line.startswith("--- container ")]


@pytest.mark.parametrize("pool_size", [1])
async def test_sleep_then_resume_keeps_the_workspace_on_a_new_container(harness, docker_client, pool_size):
    h = await harness.start()
    tier = h.ext.sandbox_tiers["container"]
    assert await tier.wait_pool(120)
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("echo kept > notes.txt && mkdir -p d && echo deep > d/f && ls")))
    events = await h.turn_ends(sid, timeout=120)
    assert tool_results(events)[-1].split() == ["d", "notes.txt"]
    volume = h.ext.store.session(sid)["workspace_volume"]
    await wait_state(h, sid, "sleeping")
    await wait_until(lambda: not session_containers(docker_client, sid), 30, what="the first container removed")

    await h.send(sid, script(bash("cat notes.txt d/f; stat -c %U notes.txt")))
    events = await h.turn_ends(sid, turns=2, timeout=120)
    assert tool_results(events)[-1].split() == ["kept", "deep", "agent"]
    assert h.ext.store.session(sid)["workspace_volume"] == volume
    runs = container_runs(tier.log_path(sid).read_text())
    assert len(runs) == 2, runs
    assert "from the pool" in runs[0] and "started for this item" in runs[1], runs  # a new session takes a pooled one
    assert runs[0].split()[2] != runs[1].split()[2]  # two containers, one volume
    assert all(f"volume {volume}" in run for run in runs)
    transitions = [t["to_state"] for t in h.ext.store.transitions(sid)]
    assert transitions.count("sleeping") >= 1 and "resumed" in transitions


def running(client: docker.DockerClient, session_id: str) -> list[Any]:
    return [c for c in session_containers(client, session_id) if c.status == "running"]


async def test_a_sleeping_session_resumes_on_its_standby_container(harness, docker_client):
    """With standby_seconds, a container waits on the volume of a session that went to sleep, for its next turn."""
    h = await harness.start()
    tier = h.ext.sandbox_tiers["container"]
    tier.standby_seconds = 60.0
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("echo kept > notes.txt")))
    await h.turn_ends(sid, timeout=120)
    volume = h.ext.store.session(sid)["workspace_volume"]
    await wait_state(h, sid, "sleeping")
    # The container that served the turn is gone; another waits on the session's volume, serving nobody yet.
    await wait_until(lambda: tier.standby_status()["ready"] == 1, 60, what="a standby container")
    (standby,) = running(docker_client, sid)
    assert [m["Name"] for m in standby.attrs["Mounts"] if m["Destination"] == "/workspace"] == [volume]
    assert not tier.serves(sid) and not h.ext.egress_proxy.attachments
    assert (await h.api("GET", "status"))["tiers"]["container"]["standby"]["ready"] == 1

    tier.standby_seconds = 1.0  # the one kept after the next turn is let go a second later
    await h.send(sid, script(bash("cat notes.txt; hostname")))
    events = await h.turn_ends(sid, turns=2, timeout=120)
    assert tool_results(events)[-1].split() == ["kept", "sandbox"]
    runs = container_runs(tier.log_path(sid).read_text())
    assert "started for this item" in runs[0] and "on standby since the last turn" in runs[1], runs
    assert standby.name in runs[1]
    await wait_state(h, sid, "sleeping")
    # Expired: no container left for the session; its volume stays.
    await wait_until(lambda: not session_containers(docker_client, sid) and tier.standby_status()["starting"] == 0
                     and tier.standby_status()["ready"] == 0, 60, what="the standby container let go")
    assert docker_client.volumes.get(volume)

    tier.standby_seconds = 60.0
    await h.send(sid, script(bash("cat notes.txt")))
    events = await h.turn_ends(sid, turns=3, timeout=120)
    assert tool_results(events)[-1].strip() == "kept"
    assert "started for this item" in container_runs(tier.log_path(sid).read_text())[2]
    await wait_state(h, sid, "sleeping")
    await wait_until(lambda: len(running(docker_client, sid)) == 1 and tier.standby_status()["ready"] == 1, 60,
                     what="a standby container again")
    # The session ends: its standby container goes with its volume (which it held).
    assert await tier.remove_workspace(sid)
    assert session_containers(docker_client, sid) == []
    assert volume not in [v.name for v in docker_client.volumes.list()]


async def test_two_sessions_cannot_see_each_other(harness, docker_client):
    h = await harness.start()
    agent = await container_agent(h)
    # A writes a file and leaves a process running, then stays in its turn while B looks around.
    a = await h.session(agent, script(bash("echo secret-a > a.txt; (exec -a marker-of-a sleep 300 &) ; echo ok"), {"sleep": 12}))
    await wait_until(lambda: any(h.ext.sessions.describe(a) or {} for _ in [0]) and
                     (h.ext.sessions.describe(a) or {}).get("tool_calls", 0) >= 1, 120, what="A's first call done")
    b = await h.session(agent, script(bash(
        "ls -A /workspace; echo ---; ls -A /run/cma; echo ---; ps -eo args; echo ---; "
        "cat /proc/net/unix | wc -l; ls /sys/class/net; cat /workspace/../workspace/a.txt 2>&1 | head -1")))
    events = await h.turn_ends(b, timeout=120)
    assert (h.ext.sessions.describe(a) or {}).get("state") == "serving", "A must still be running while B looks"
    listing, sockets, processes, rest = tool_results(events)[-1].split("---\n")
    assert "a.txt" not in listing
    assert sorted(sockets.split()) == ["assignment", "egress.sock"]  # only its own socket and assignment FIFO
    assert "marker-of-a" not in processes and "sleep 300" not in processes
    assert "No such file" in rest
    await h.turn_ends(a, timeout=120)
    log_a = h.ext.sandbox_tiers["container"].log_path(a).read_text()
    log_b = h.ext.sandbox_tiers["container"].log_path(b).read_text()
    assert container_runs(log_a)[0].split()[2] != container_runs(log_b)[0].split()[2]


async def test_a_container_killed_mid_tool_call_fails_the_session_cleanly(harness, docker_client):
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("sleep 120")))
    status = await wait_until(lambda: (h.ext.sessions.describe(sid) or {}).get("in_tool") == "bash" and h.ext.sessions.describe(sid),
                              120, what="the bash call running")
    name = status["container"]["name"]
    work_id = status["work_id"]
    docker_client.containers.get(name).kill()

    await wait_state(h, sid, "failed")
    reason = h.ext.store.session(sid)["reason"]
    assert "during a `bash` call" in reason and "killed by SIGKILL" in reason and "force-stopped" in reason, reason
    # No orphan: no container, no socket directory, no egress attachment; the item is stopped upstream.
    await wait_until(lambda: not session_containers(docker_client, sid), 30, what="the container removed")
    assert not list((h.ext.sandbox_tiers["container"].containers_dir).iterdir())
    assert not h.ext.egress_proxy.attachments
    client = h.emulator.client()
    async with client:
        work = await client.beta.environments.work.retrieve(work_id, environment_id=h.ext.environment_id)
    assert work.state == "stopped", work.state
    # The volume stays: the session's files are not lost with its container.
    assert docker_client.volumes.get(h.ext.store.session(sid)["workspace_volume"])


def _exec_with_stdin(client: docker.DockerClient, container: str, argv: list[str], stdin: bytes) -> str:
    """Run argv in the container with `stdin` fed through the exec's socket (never on a command line or in a file)."""
    exec_id = client.api.exec_create(container, argv, stdin=True, stdout=True, stderr=True, user="0")["Id"]
    sock = client.api.exec_start(exec_id, socket=True)
    raw = sock._sock
    raw.sendall(stdin)
    raw.shutdown(1)  # SHUT_WR: end of the patterns
    out = b""
    while True:
        header = b""
        while len(header) < 8:
            chunk = raw.recv(8 - len(header))
            if not chunk:
                break
            header += chunk
        if len(header) < 8:
            break
        size = int.from_bytes(header[4:], "big")
        body = b""
        while len(body) < size:
            body += raw.recv(size - len(body))
        out += body
    raw.close()
    return out.decode(errors="replace")


async def test_the_container_holds_no_real_credential(harness, docker_client):
    h = await harness.start()
    agent = await container_agent(h)
    decoy = f"cma-scan-decoy-{secrets.token_hex(8)}"  # planted by the agent: the scan must find it (a positive control)
    sid = await h.session(agent, script(bash(f"echo {decoy} > /tmp/planted; echo started"), bash("sleep 20")))
    status = await wait_until(lambda: (h.ext.sessions.describe(sid) or {}).get("in_tool") == "bash"
                              and (h.ext.sessions.describe(sid) or {}).get("tool_calls", 0) >= 1 and h.ext.sessions.describe(sid),
                              120, what="the second call running")
    name = status["container"]["name"]
    item_secret = h.ext.sessions.live[sid].sandbox.item.secret
    token = json.loads(base64.urlsafe_b64decode(item_secret + "=" * (-len(item_secret) % 4)))["sessions_token"]
    info = h.emulator.info
    real = {"api key": info["api_key"], "environment key": info["environment_key"], "webhook secret": info["webhook_secret"],
            "sessions token": token, "work item secret": item_secret}

    # 1. What the engine knows about the container: its configuration, environment, labels, mounts.
    inspected = json.dumps(docker_client.api.inspect_container(name))
    assert [k for k, v in real.items() if v in inspected] == []
    # 2. Every process: environment and command line (the worker's, the bridge's, bash's, sleep's).
    container = docker_client.containers.get(name)
    procs = container.exec_run(["sh", "-c", "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; echo; done"], user="0").output.decode(errors="replace")
    assert "sleep 20" in procs.replace("\0", " ")  # the scan sees the agent's processes
    assert [k for k, v in real.items() if v in procs] == []
    # 3. Every file (root filesystem, tmpfs, workspace, socket directory), searched with patterns fed on stdin.
    patterns = "\n".join([*real.values(), decoy]).encode() + b"\n"
    found = _exec_with_stdin(docker_client, name, ["grep", "-rlF", "-D", "skip", "-f", "/dev/stdin", "/", "--exclude-dir=proc", "--exclude-dir=sys",
                                                   "--exclude-dir=dev"], patterns)
    files = found.split()
    assert "/tmp/planted" in files, files  # the scan finds what is present
    for path in files:
        content = container.exec_run(["cat", path], user="0").output.decode(errors="replace")
        assert [k for k, v in real.items() if v in content] == [], path
    await h.turn_ends(sid, timeout=120)


@pytest.mark.parametrize(("cma_mode", "reap_interval"), [("webhook", 300.0), ("poll", 0.5)])
async def test_a_session_ended_upstream_loses_its_volume(harness, docker_client, cma_mode, reap_interval):
    # Webhook mode reaps on the session.archived delivery; poll mode has no webhooks, and the reaper asks the API.
    h = await harness.start()
    agent = await container_agent(h)
    sid = await h.session(agent, script(bash("echo x > f")))
    await h.turn_ends(sid, timeout=120)
    await wait_state(h, sid, "sleeping")
    volume = h.ext.store.session(sid)["workspace_volume"]
    assert docker_client.volumes.get(volume)
    client = h.emulator.client()
    async with client:
        await client.beta.sessions.archive(sid)
    await wait_state(h, sid, "ended")
    assert "workspace were removed" in h.ext.store.session(sid)["reason"]
    assert not docker_client.volumes.list(filters={"name": volume})
    assert h.ext.store.session(sid)["workspace_volume"] is None


async def test_a_custom_tool_called_in_the_container_runs_on_the_server_for_that_session(harness):
    h = await harness.start()
    seen: list[tuple[str, dict[str, Any]]] = []

    def whoami(session_id: str, tool_input: dict[str, Any]) -> str:
        seen.append((session_id, tool_input))
        return f"you are {session_id}"

    schema = {"type": "object", "properties": {"claim": {"type": "string"}}}
    h.ext.tools.register("whoami", whoami, description="Say which session is calling.", input_schema=schema)
    agent = (await h.api("POST", "agents", {"name": "tooled", "tier": "container", "tools": [
        {"type": "custom", "name": "whoami", "description": "Say which session is calling.", "input_schema": schema}]}))["id"]
    sid = await h.session(agent, script({"tool": "whoami", "input": {"claim": "sesn_someone_else"}}))
    events = await h.turn_ends(sid, timeout=120)
    answers = ["".join(b.text for b in e.content or [] if b.type == "text") for e in events if e.type == "user.custom_tool_result"]
    # The call went container → its egress socket → the engine's internal route → the registry, which knows
    # the caller by the socket, whatever the input claims.
    assert answers == [f"you are {sid}"]
    assert seen == [(sid, {"claim": "sesn_someone_else"})]
    rows = h.ext.egress_log.query(session_id=sid)
    assert any(r["host"] == "cma.internal" and r["path"] == "/v1/tools/whoami" for r in rows)
