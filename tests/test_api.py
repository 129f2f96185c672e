"""The REST API under {base_url}cma/api/ through the real server, against the emulator."""

from __future__ import annotations

import json

import pytest
import tornado.httpclient

from tests.test_dispatch import (  # noqa: F401  (fixtures shared with the end-to-end tests)
    Harness,
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config,
    python,
    script,
    wait_until,
)


async def expect_error(h: Harness, status: int, method: str, path: str, body=None, *, raw: str | None = None, **kw) -> str:
    payload = raw if raw is not None else (None if body is None else json.dumps(body))
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await h.fetch("cma", "api", *path.split("/"), method=method, body=payload, **kw)
    assert err.value.code == status, err.value.response.body
    message = json.loads(err.value.response.body)["message"]
    assert message
    return message


async def test_agents_are_created_fitted_to_their_tier_and_can_move(harness):
    h = await harness.start()
    custom = {"type": "custom", "name": "lookup", "description": "Look up.", "input_schema": {"type": "object", "properties": {}}}
    created = await h.api("POST", "agents", {"name": "a", "tier": "kernel", "tools": [custom]})
    assert created["tier"] == "kernel"
    names = {t["name"] for t in created["tools"] if t["type"] == "custom"}
    assert names == {"python", "lookup"}, "the kernel tier adds its python tool; the agent's own tools stay"
    toolset = next(t for t in created["tools"] if t["type"] == "agent_toolset_20260401")
    assert {c["name"]: c["enabled"] for c in toolset["configs"]}["bash"] is False
    listed = (await h.api("GET", "agents"))["data"]
    assert [a["tier"] for a in listed if a["id"] == created["id"]] == ["kernel"]
    fetched = await h.api("GET", f"agents/{created['id']}")
    assert fetched["tier"] == "kernel" and fetched["version"] == created["version"]
    moved = await h.api("PATCH", f"agents/{created['id']}", {"tier": "kernel"})
    assert moved["version"] == created["version"] + 1
    assert {t["name"] for t in moved["tools"] if t["type"] == "custom"} == {"python", "lookup"}


async def test_bad_input_gets_a_clear_4xx(harness):
    h = await harness.start()
    assert "name is required" in await expect_error(h, 400, "POST", "agents", {"tier": "kernel"})
    assert "tier must be one of" in await expect_error(h, 400, "POST", "agents", {"name": "a", "tier": "quantum"})
    assert "custom tools" in await expect_error(h, 400, "POST", "agents", {"name": "a", "tools": [{"type": "agent_toolset_20260401"}]})
    assert "not JSON" in await expect_error(h, 400, "POST", "agents", raw="{not json")
    assert "agent_id is required" in await expect_error(h, 400, "POST", "sessions", {"agent_id": "../etc"})
    assert "unknown status" in await expect_error(h, 400, "GET", "sessions", params={"status": "dancing"})
    assert "limit" in await expect_error(h, 400, "GET", "sessions", params={"limit": "0"})
    assert "not found upstream" in await expect_error(h, 404, "GET", "agents/agent_doesnotexist")
    assert "no session" in await expect_error(h, 404, "GET", "sessions/sesn_unknown")
    assert "no sandbox is serving" in await expect_error(h, 409, "POST", "sessions/sesn_unknown/stop", {})
    # An id with characters outside [A-Za-z0-9_-] never reaches a handler, let alone Anthropic's API.
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await h.fetch("cma", "api", "agents", "agent$x")
    assert err.value.code == 404
    before = len([r for r in h.emulator.requests() if r["path"].startswith("/v1/agents/")])
    assert before == 1  # only the one well-formed, unknown id above went upstream


async def test_every_api_route_needs_a_token(harness):
    h = await harness.start()
    for path in ("status", "agents", "sessions", "webhooks", "sessions/sesn_x", "sessions/sesn_x/events", "sessions/sesn_x/notebook"):
        await expect_error(h, 403, "GET", path, headers={"Authorization": ""})
    await expect_error(h, 403, "POST", "sessions/sesn_x/stop", {}, headers={"Authorization": ""})


async def test_sessions_list_get_events_and_stop(harness):
    h = await harness.start()
    agent = await h.agent()
    sid = await h.session(agent, script(python("print('hi')"), {"sleep": 60}))
    await wait_until(lambda: h.state(sid) == "running" and len(h.ext.store.cells(sid)) == 1, 60, what="the first call")
    listed = (await h.api("GET", "sessions"))["data"]
    assert [s["id"] for s in listed] == [sid]
    running = await h.fetch("cma", "api", "sessions", params={"status": "running,idle", "tier": "kernel", "agent_id": agent})
    assert [s["id"] for s in json.loads(running.body)["data"]] == [sid]
    none = await h.fetch("cma", "api", "sessions", params={"status": "failed"})
    assert json.loads(none.body)["data"] == []
    detail = await h.api("GET", f"sessions/{sid}")
    assert detail["sandbox"]["tier"] == "kernel" and detail["sandbox"]["state"]
    events = await h.api("GET", f"sessions/{sid}/events")
    assert "agent.custom_tool_use" in [e["type"] for e in events["data"]]
    stopped = await h.api("POST", f"sessions/{sid}/stop", {})
    assert stopped == {"id": sid, "stopped": True}
    row = await h.api("GET", f"sessions/{sid}")
    assert row["status"] == "stopped" and "stopped through the API" in row["reason"] and row["sandbox"] is None
    # The worker force-stopped the work item on its way out.
    await wait_until(lambda: any(r["path"].endswith("/stop") and r["body"] == {"force": True} for r in h.emulator.requests()), 30, what="the force-stop")
