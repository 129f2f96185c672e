"""Conformance: the UNMODIFIED `anthropic` SDK (pinned 2.10.0) runs against the emulator.

Each test drives the SDK's own worker, poller, tool runner and webhook
verifier — nothing of the SDK is patched — and checks the wire traffic the
emulator recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

import anthropic
import pytest
from anthropic.lib.environments import EnvironmentWorker
from anthropic.lib.tools import beta_async_tool
from anthropic.lib.tools.agent_toolset import beta_agent_toolset_20260401

from tests.emulator_fixtures import EmulatorProcess, start_emulator
from tests.helpers import wait_until

TOOLSET = [{"type": "agent_toolset_20260401"}]


def script_message(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": json.dumps({"cma_script": list(steps)})}]}





async def events_of(client: anthropic.AsyncAnthropic, session_id: str) -> list[Any]:
    return [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]


async def turn_ended(client: anthropic.AsyncAnthropic, session_id: str) -> list[Any] | None:
    events = await events_of(client, session_id)
    if events and events[-1].type == "session.status_idle" and events[-1].stop_reason.type != "requires_action":
        return events
    return None


def work_calls(emu: EmulatorProcess, work_id: str, action: str) -> list[dict[str, Any]]:
    return [r for r in emu.requests() if r["path"].endswith(f"/work/{work_id}/{action}")]


async def new_session(client, environment_id: str, *, tools=TOOLSET, first=None, **agent_kw) -> tuple[Any, Any]:
    agent = await client.beta.agents.create(name="conformance", model="claude-sonnet-4-5", tools=tools, **agent_kw)
    session = await client.beta.sessions.create(agent=agent.id, environment_id=environment_id)
    if first is not None:
        await client.beta.sessions.events.send(session.id, events=[first])
    return agent, session


async def test_worker_run_serves_a_scripted_session_end_to_end(emulator, tmp_path):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    _, session = await new_session(client, env_id, first=script_message(
        {"tool": "bash", "input": {"command": "echo conformance > proof.txt && cat proof.txt && pwd"}},
        {"tool": "read", "input": {"file_path": "proof.txt"}},
        {"say": "read back: {result}"},
    ))
    worker = EnvironmentWorker(client, environment_id=env_id, environment_key=env_key, workdir=tmp_path, max_idle=0.5)
    task = asyncio.create_task(worker.run())
    try:
        events = await wait_until(lambda: turn_ended(client, session.id))
        (work,) = await emulator.work_items(env_id)
        await wait_until(lambda: len(work_calls(emulator, work.id, "stop")) == 1)
    finally:
        task.cancel()
    # A real bash call ran in the workdir and its result was posted back.
    assert (tmp_path / "proof.txt").read_text() == "conformance\n"
    results = [e for e in events if e.type == "user.tool_result"]
    assert [r.is_error for r in results] == [False, False]
    assert results[0].content[0].text == f"conformance\n{tmp_path}"
    assert events[-2].type == "agent.message" and events[-2].content[0].text == "read back: conformance\n"
    assert events[-1].stop_reason.type == "end_turn"
    # The item was force-stopped exactly once, by the worker, with the per-item sessions token.
    (stop,) = work_calls(emulator, work.id, "stop")
    assert stop["body"] == {"force": True}
    assert stop["credential"] == "sessions_token" and stop["helper"] == "environments-worker"
    (ack,) = work_calls(emulator, work.id, "ack")
    assert ack["credential"] == "environment_key" and ack["helper"] == "environments-work-poller"
    assert work_calls(emulator, work.id, "heartbeat")[0]["query"] == "expected_last_heartbeat=NO_HEARTBEAT"
    item = await client.beta.environments.work.retrieve(work.id, environment_id=env_id)
    assert item.state == "stopped"


async def test_poller_drain_claims_every_queued_item(emulator):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    agent = await client.beta.agents.create(name="drain", model="claude-sonnet-4-5", tools=TOOLSET)
    sessions = {(await client.beta.sessions.create(agent=agent.id, environment_id=env_id)).id for _ in range(7)}
    claimed = []
    async for item in client.beta.environments.work.poller(
        environment_id=env_id, environment_key=env_key, drain=True, auto_stop=False, block_ms=None
    ):
        claimed.append(item)
    assert {item.data.id for item in claimed} == sessions
    assert all(item.secret for item in claimed)
    stats = await client.with_options(api_key=env_key).beta.environments.work.stats(env_id)
    assert (stats.depth, stats.pending) == (0, 0)
    for item in claimed:
        assert (await client.beta.environments.work.retrieve(item.id, environment_id=env_id)).state == "starting"


async def test_poller_auto_stop_stops_gracefully(emulator):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    await new_session(client, env_id)
    async for item in client.beta.environments.work.poller(environment_id=env_id, environment_key=env_key, drain=True, block_ms=None):
        claimed = item
    (stop,) = work_calls(emulator, claimed.id, "stop")
    assert stop["body"] == {}
    # Nobody heartbeated, so the graceful stop leaves it stopping until its holder confirms or the lease ends.
    assert (await client.beta.environments.work.retrieve(claimed.id, environment_id=env_id)).state == "stopping"


@contextlib.asynccontextmanager
async def worker_holding_a_busy_session(emu: EmulatorProcess, workdir):
    """An SDK worker that has claimed a session whose turn sleeps, and heartbeats its lease.

    Yields (client, environment_id, work item) once the lease is active; cancels the worker after.
    """
    env_id, env_key = emu.new_environment()
    client = emu.client()
    await new_session(client, env_id, first=script_message({"sleep": 60}))
    worker = EnvironmentWorker(client, environment_id=env_id, environment_key=env_key, workdir=workdir)
    task = asyncio.create_task(worker.run())
    try:
        work = await wait_until(lambda: _active_item(emu, env_id))
        yield client, env_id, work
    finally:
        task.cancel()


async def _active_item(emu: EmulatorProcess, env_id: str):
    return next((w for w in await emu.work_items(env_id) if w.state == "active"), None)


async def test_lost_lease_ends_the_run_without_a_stop(short_lease_emulator, tmp_path, caplog):
    emu = short_lease_emulator
    async with worker_holding_a_busy_session(emu, tmp_path) as (_, _, work):
        with emu.http() as http:
            assert http.post(f"/_emulator/work/{work.id}/expire").status_code == 200
        # The worker's next heartbeat meets 412 and gives the item up; it then polls again
        # and re-claims the re-queued item (a fresh lease), which is what a real queue does.
        await wait_until(lambda: any(r["status"] == 412 for r in work_calls(emu, work.id, "heartbeat")))
        await wait_until(lambda: len(work_calls(emu, work.id, "ack")) == 2)
    assert work_calls(emu, work.id, "stop") == [], "a lost lease must never be stopped"
    assert "lease lost: heartbeat precondition failed" in caplog.text


async def test_heartbeat_answered_stopping_ends_the_run_with_a_force_stop(short_lease_emulator, tmp_path):
    emu = short_lease_emulator
    async with worker_holding_a_busy_session(emu, tmp_path) as (client, env_id, work):
        # An operator stops the work gracefully with the API key.
        stopped = await client.beta.environments.work.stop(work.id, environment_id=env_id)
        assert stopped.state == "stopping"
        await wait_until(lambda: len(work_calls(emu, work.id, "stop")) == 2)
    operator, worker_stop = work_calls(emu, work.id, "stop")
    assert operator["credential"] == "api_key" and operator["body"] == {}
    assert worker_stop["credential"] == "sessions_token" and worker_stop["body"] == {"force": True}
    assert (await client.beta.environments.work.retrieve(work.id, environment_id=env_id)).state == "stopped"


async def test_custom_tool_call_is_answered_by_the_worker(emulator, tmp_path):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [*TOOLSET, {"type": "custom", "name": "weather", "description": "Weather for a city.", "input_schema": schema}]
    _, session = await new_session(client, env_id, tools=tools, first=script_message(
        {"tool": "weather", "input": {"city": "Oslo"}}, {"say": "{result}"},
    ))

    @beta_async_tool
    async def weather(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    worker = EnvironmentWorker(
        client, environment_id=env_id, environment_key=env_key, workdir=tmp_path, max_idle=0.5,
        tools=lambda ctx: [*beta_agent_toolset_20260401(ctx), weather],
    )
    task = asyncio.create_task(worker.run())
    try:
        events = await wait_until(lambda: turn_ended(client, session.id))
    finally:
        task.cancel()
    (call,) = [e for e in events if e.type == "agent.custom_tool_use"]
    (result,) = [e for e in events if e.type == "user.custom_tool_result"]
    assert result.custom_tool_use_id == call.id
    assert events[-2].content[0].text == "sunny in Oslo"


async def test_worker_downloads_the_agents_skills(emulator, tmp_path):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    skill_md = b"---\nname: greeter\ndescription: Says hello.\n---\nSay hello.\n"
    skill = await client.beta.skills.create(files=[("greeter/SKILL.md", skill_md), ("greeter/hello.sh", b"echo hello\n")])
    _, session = await new_session(
        client, env_id, skills=[{"type": "custom", "skill_id": skill.id, "version": "latest"}],
        first=script_message({"tool": "bash", "input": {"command": "cat skills/greeter/SKILL.md"}}, {"say": "{result}"}),
    )
    worker = EnvironmentWorker(client, environment_id=env_id, environment_key=env_key, workdir=tmp_path, max_idle=0.5)
    task = asyncio.create_task(worker.run())
    try:
        events = await wait_until(lambda: turn_ended(client, session.id))
    finally:
        task.cancel()
    assert events[-2].content[0].text == skill_md.decode().rstrip("\n")
    paths = [r["path"] for r in emulator.requests() if r["path"].startswith(f"/v1/skills/{skill.id}/versions/")]
    assert paths[0].endswith("/versions/latest") and paths[1].endswith("/content")


async def test_terminated_session_is_force_stopped_without_running(emulator, tmp_path):
    env_id, env_key = emulator.new_environment()
    client = emulator.client()
    _, session = await new_session(client, env_id)
    await client.beta.sessions.archive(session.id)
    claimed = []
    async for item in client.beta.environments.work.poller(environment_id=env_id, environment_key=env_key, drain=True, auto_stop=False, block_ms=None):
        claimed.append(item)
        worker = EnvironmentWorker(client, environment_key=env_key, workdir=tmp_path)
        await worker.handle_item(work_id=item.id, environment_id=env_id, session_id=session.id, work_secret=item.secret)
    (item,) = claimed
    assert (await client.beta.environments.work.retrieve(item.id, environment_id=env_id)).state == "stopped"
    assert not [r for r in emulator.requests() if r["path"].endswith(f"/sessions/{session.id}/events/stream")]


async def test_healthcheck_items_are_stopped_without_a_session_fetch(emulator, tmp_path):
    env_id, env_key = emulator.new_environment()
    with emulator.http() as http:
        hc = http.post(f"/_emulator/environments/{env_id}/healthcheck").json()
    client = emulator.client()
    worker = EnvironmentWorker(client, environment_id=env_id, environment_key=env_key, workdir=tmp_path)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: len(work_calls(emulator, hc["id"], "stop")) == 1)
    finally:
        task.cancel()
    assert (await client.beta.environments.work.retrieve(hc["id"], environment_id=env_id)).state == "stopped"


def test_webhooks_unwrap_verifies_deliveries_and_rejects_tampering(tmp_path):
    import http.server
    import threading

    received: list[tuple[bytes, dict[str, str]]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emu = start_emulator("--webhook-url", f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        secret = emu.info["webhook_secret"]
        assert secret.startswith("whsec_")
        client = anthropic.Anthropic(api_key=emu.api_key, base_url=emu.base_url)
        agent = client.beta.agents.create(name="hooks", model="claude-sonnet-4-5", tools=TOOLSET)
        session = client.beta.sessions.create(agent=agent.id, environment_id=emu.info["environment_id"])
        client.beta.sessions.events.send(session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hello"}]}])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(b"session.status_idled" in b for b, _ in received):
            time.sleep(0.05)
        types = []
        for body, headers in received:
            event = client.beta.webhooks.unwrap(body.decode(), headers=headers, key=secret)
            assert event.id == headers["webhook-id"]
            types.append(event.data.type)
        assert {"agent.created", "session.created", "session.status_run_started", "session.status_idled"} <= set(types)
        body, headers = next((b, h) for b, h in received if b"session.status_run_started" in b)
        tampered = body.replace(b"session.status_run_started", b"session.status_terminated")
        with pytest.raises(Exception, match="(?i)signature"):
            client.beta.webhooks.unwrap(tampered.decode(), headers=headers, key=secret)
        with pytest.raises(Exception):
            client.beta.webhooks.unwrap(body.decode(), headers={**headers, "webhook-id": "msg_other"}, key=secret)
        with pytest.raises(Exception):
            client.beta.webhooks.unwrap(body.decode(), headers=headers, key="whsec_" + base64.b64encode(b"another secret").decode())
    finally:
        emu.stop()
        server.shutdown()
