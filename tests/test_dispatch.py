"""End to end through the real server (pytest-jupyter): emulator → webhook or poll → dispatch → kernel sandbox.

The emulator runs as its own process and delivers signed webhooks to the
test server's real HTTP port; sessions are served on the kernel tier with
real kernels. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

import nbformat
import pytest
from standardwebhooks import Webhook

from tests.emulator_fixtures import EmulatorProcess, start_emulator
from tests.helpers import wait_until


def script(*steps: dict[str, Any]) -> str:
    return json.dumps({"cma_script": list(steps)})


def python(code: str) -> dict[str, Any]:
    return {"tool": "python", "input": {"code": code}}




@pytest.fixture
def cma_emulator(jp_http_port, jp_base_url):
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}cma/webhooks"
    emu = start_emulator("--webhook-url", url, "--EmulatorApp.webhook_retry_delays=[0.2,0.5,1,2,4]")
    yield emu
    emu.stop()


@pytest.fixture
def cma_mode():
    return "webhook"


@pytest.fixture
def jp_server_config(cma_emulator, cma_mode, tmp_path, monkeypatch):
    info = cma_emulator.info
    monkeypatch.setenv("ANTHROPIC_API_KEY", info["api_key"])
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", info["environment_key"])
    if cma_mode == "webhook":
        monkeypatch.setenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", info["webhook_secret"])
    else:  # a laptop: no webhook secret, so the default mode is poll
        monkeypatch.delenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", raising=False)
    return {
        # jupyter_server_terminals' websocket lacks the auth decorators this strict mode demands; it is not ours.
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False}, "allow_unauthenticated_access": False},
        "CMAApp": {
            "data_dir": str(tmp_path / "cma"),
            "api_base_url": info["base_url"],
            "environment_id": info["environment_id"],
            "mode": "auto",
            "idle_release_seconds": 1.0,
            "safety_drain_interval": 3.0,
        },
        "KernelTier": {"pool_size": 1},
        "ContainerTier": {"pool_size": 0},  # the container tier's own tests turn its pool on
    }


class Harness:
    """The started extension, its REST API and the emulator, for one test."""

    def __init__(self, serverapp: Any, fetch: Any, emulator: EmulatorProcess) -> None:
        self.serverapp = serverapp
        self.fetch = fetch
        self.emulator = emulator
        (self.ext,) = serverapp.extension_manager.extension_apps["jupyter_cma"]

    async def start(self) -> Harness:
        await self.serverapp.extension_manager.start_all_extensions()
        return self

    async def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        kw: dict[str, Any] = {"method": method}
        if body is not None:
            kw["body"] = json.dumps(body)
        response = await self.fetch("cma", "api", *path.strip("/").split("/"), **kw)
        return json.loads(response.body)

    async def agent(self) -> str:
        return (await self.api("POST", "agents", {"name": "e2e", "tier": "kernel"}))["id"]

    async def session(self, agent_id: str, message: str | None = None) -> str:
        body: dict[str, Any] = {"agent_id": agent_id}
        if message:
            body["message"] = message
        return (await self.api("POST", "sessions", body))["id"]

    async def events(self, session_id: str) -> list[Any]:
        client = self.emulator.client()
        async with client:
            return [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]

    async def send(self, session_id: str, text: str) -> None:
        client = self.emulator.client()
        async with client:
            await client.beta.sessions.events.send(session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": text}]}])

    async def turn_ends(self, session_id: str, turns: int = 1, timeout: float = 60) -> list[Any]:
        async def ended():
            events = await self.events(session_id)
            done = [e for e in events if e.type == "session.status_idle" and e.stop_reason.type == "end_turn"]
            return events if len(done) >= turns and events[-1].type == "session.status_idle" else None

        return await wait_until(ended, timeout, what=f"{turns} turn(s) of {session_id} ending")

    def state(self, session_id: str) -> str | None:
        row = self.ext.store.session(session_id)
        return row["status"] if row else None


@pytest.fixture
def harness(jp_serverapp, jp_fetch, cma_emulator):
    return Harness(jp_serverapp, jp_fetch, cma_emulator)


def results(events: list[Any]) -> list[str]:
    return ["".join(b.text for b in e.content or [] if b.type == "text") for e in events if e.type == "user.custom_tool_result"]


async def serve_a_scripted_session(h: Harness) -> tuple[str, list[Any]]:
    await h.start()
    agent = await h.agent()
    sid = await h.session(agent, script(python("x = 6 * 7\nprint(x)"), python("print(x + 1)"), {"say": "done: {result}"}))
    events = await h.turn_ends(sid)
    assert results(events) == ["42\n", "43\n"]
    assert events[-2].content[0].text == "done: 43\n"
    return sid, events


async def test_webhook_mode_serves_a_scripted_session_on_the_kernel_tier(harness):
    sid, _ = await serve_a_scripted_session(harness)
    assert harness.ext.effective_mode == "webhook"
    row = await harness.api("GET", f"sessions/{sid}")
    assert row["tier"] == "kernel" and row["cold_start_ms"] is not None
    assert [t["to_state"] for t in row["transitions"]][:3] == ["claimed", "starting", "running"]
    # The worker releases the sandbox after idle_release_seconds; the session sleeps.
    await wait_until(lambda: harness.state(sid) == "sleeping", 30, what="the session to sleep")
    deliveries = (await harness.api("GET", "webhooks"))["data"]
    assert "session.status_run_started" in {d["event_type"] for d in deliveries}


@pytest.mark.parametrize("cma_mode", ["poll"])
async def test_poll_mode_serves_a_scripted_session_on_the_kernel_tier(harness, cma_mode):
    sid, _ = await serve_a_scripted_session(harness)
    assert harness.ext.effective_mode == "poll"
    assert harness.ext.dispatcher.drains == 0, "poll mode claims through its long-poll loop, not drains"
    assert harness.ext.webhooks.accepted == 0, "without a secret, deliveries are refused"


async def test_duplicate_and_concurrent_deliveries_start_one_sandbox_per_session(harness):
    h = await harness.start()
    agent = await h.agent()
    sessions = [await h.session(agent, script({"sleep": 3}, {"say": "ok"})) for _ in range(10)]
    secret = h.emulator.info["webhook_secret"]
    signer = Webhook(secret)

    async def deliver(session_id: str, webhook_id: str) -> int:
        body = json.dumps({"type": "event", "id": webhook_id, "created_at": "2026-11-22T00:00:00Z",
                           "data": {"type": "session.status_run_started", "id": session_id, "organization_id": "o", "workspace_id": "w"}})
        now = datetime.now(timezone.utc)
        headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signer.sign(webhook_id, now, body), "Authorization": ""}
        response = await h.fetch("cma", "webhooks", method="POST", body=body, headers=headers)
        return response.code

    # 50 deliveries: 5 per session, of which 3 reuse one webhook-id (retries) — all at once.
    deliveries = [deliver(sid, f"msg_{sid}_{n % 3}") for sid in sessions for n in range(5)]
    assert set(await asyncio.gather(*deliveries)) == {200}
    await wait_until(lambda: all(h.state(s) in ("running", "idle", "sleeping") for s in sessions), 90, what="all sessions served")
    for sid in sessions:
        await h.turn_ends(sid, timeout=90)
    assert h.ext.sessions.sandboxes_started == 10
    acks = [r for r in h.emulator.requests() if r["path"].endswith("/ack")]
    assert len(acks) == 10
    assert h.ext.webhooks.duplicates >= 20


async def test_sleep_then_resume_keeps_workspace_files_and_gets_a_fresh_kernel(harness):
    h = await harness.start()
    agent = await h.agent()
    sid = await h.session(agent, script(python("open('notes.txt', 'w').write('kept')\nremembered = 1\nprint('saved')")))
    await h.turn_ends(sid)
    await wait_until(lambda: h.state(sid) == "sleeping", 30, what="the session to sleep")
    await h.send(sid, script(python("print(open('notes.txt').read())\nprint('remembered' in globals())")))
    events = await h.turn_ends(sid, turns=2)
    assert results(events)[-1] == "kept\nFalse\n"
    states = [t["to_state"] for t in h.ext.store.transitions(sid)]
    assert "sleeping" in states and "resumed" in states[states.index("sleeping"):]
    assert h.ext.sessions.sandboxes_started == 2


async def test_exported_notebook_reruns_to_the_same_outputs(harness, tmp_path):
    from nbclient import NotebookClient

    sid, _ = await serve_a_scripted_session(harness)
    response = await harness.fetch("cma", "api", "sessions", sid, "notebook")
    assert response.headers["Content-Type"].startswith("application/x-ipynb+json")
    nb = nbformat.reads(response.body.decode(), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["x = 6 * 7\nprint(x)", "print(x + 1)"]
    recorded = [[o.get("text") for o in c.outputs] for c in code]
    rerun = nbformat.reads(nbformat.writes(nb), as_version=4)
    await NotebookClient(rerun, resources={"metadata": {"path": str(tmp_path)}}).async_execute()
    assert [[o.get("text") for o in c.outputs] for c in rerun.cells if c.cell_type == "code"] == recorded == [["42\n"], ["43\n"]]


async def test_a_session_archived_upstream_is_reaped_at_once(harness):
    h = await harness.start()
    agent = await h.agent()
    sid = await h.session(agent, script(python("print('working')"), {"sleep": 60}))
    await wait_until(lambda: len(h.ext.store.cells(sid)) == 1, 60, what="the first call")
    client = h.emulator.client()
    async with client:
        await client.beta.sessions.archive(sid)
    await wait_until(lambda: h.state(sid) == "ended", 30, what="the sandbox to be reaped")
    assert "ended upstream" in h.ext.store.session(sid)["reason"]
    assert sid not in h.ext.sessions.live
    assert not (h.ext.sessions.workspaces / sid).exists()  # the workspace went with it


def test_webhook_statuses_that_arrive_out_of_order_do_not_undo_a_later_one(tmp_path):
    """A late "run started" delivery, created upstream before the "idled" one already applied, is ignored."""
    from jupyter_cma.control.sessions import Live, SessionManager
    from jupyter_cma.store import Store

    store = Store(tmp_path / "cma.sqlite3")
    try:
        manager = SessionManager(store=store, tiers={}, default_tier=lambda: "kernel", workspaces=tmp_path, worker=None)  # type: ignore[arg-type]
        store.upsert_session("sesn_order", status="running")
        manager.live["sesn_order"] = Live(work_id="work_1")
        manager.note_status("sesn_order", "session.status_idled", "2026-01-01T00:00:02.000002Z")
        manager.note_status("sesn_order", "session.status_run_started", "2026-01-01T00:00:01.000001Z")
        assert store.session("sesn_order")["status"] == "idle"
        manager.note_status("sesn_order", "session.status_run_started", "2026-01-01T00:00:03Z")  # the next run
        assert store.session("sesn_order")["status"] == "running"
    finally:
        store.close()
