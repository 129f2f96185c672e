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


async def expect_error(h: Harness, status: int, method: str, path: str, body=None, *, raw: str | bytes | None = None, **kw) -> str:
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


async def test_agents_are_listed_page_by_page(harness):
    h = await harness.start()
    created = [(await h.api("POST", "agents", {"name": f"paged-{i}", "tier": "kernel"}))["id"] for i in range(5)]

    async def page(**params: str) -> dict:
        return json.loads((await h.fetch("cma", "api", "agents", params=params)).body)

    first = await page(limit="3")
    assert len(first["data"]) == 3 and first["next_page"], first
    rest = await page(limit="3", page=first["next_page"])
    assert len(rest["data"]) == 2 and rest["next_page"] is None, rest
    listed = [a["id"] for a in first["data"] + rest["data"]]
    assert sorted(listed) == sorted(created), "every agent once, across the pages"
    assert all("tier" in a for a in rest["data"]), "a later page carries what is stored here too"
    assert "page" in await expect_error(h, 400, "GET", "agents", params={"page": "not a cursor!"})


async def test_bad_input_gets_a_clear_4xx(harness):
    h = await harness.start()
    assert "name is required" in await expect_error(h, 400, "POST", "agents", {"tier": "kernel"})
    assert "tier must be one of" in await expect_error(h, 400, "POST", "agents", {"name": "a", "tier": "quantum"})
    assert "custom tools" in await expect_error(h, 400, "POST", "agents", {"name": "a", "tools": [{"type": "agent_toolset_20260401"}]})
    assert "not valid JSON" in await expect_error(h, 400, "POST", "agents", raw="{not json")
    assert "agent_id: must be an id" in await expect_error(h, 400, "POST", "sessions", {"agent_id": "../etc"})
    assert "agent_id is required" in await expect_error(h, 400, "POST", "sessions", {"message": "hi"})
    assert "status[0]: must be one of" in await expect_error(h, 400, "GET", "sessions", params={"status": "dancing"})
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


async def test_fields_are_checked_before_anything_goes_upstream(harness):
    h = await harness.start()
    created = len([r for r in h.emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/agents"])
    refusals = {
        # (body or raw text, a piece of the message): each names the field and what it takes
        "system as a list": ({"name": "a", "system": ["be brief"]}, "system: input should be a valid string"),
        "name a number": ({"name": 7}, "name: input should be a valid string"),
        "model a number": ({"name": "a", "model": 7}, "model: expected a model name"),
        "model speed": ({"name": "a", "model": {"id": "claude-sonnet-4-5", "speed": "warp"}}, "model.speed"),
        "metadata values": ({"name": "a", "metadata": {"team": 1}}, "metadata.team: input should be a valid string"),
        "too much metadata": ({"name": "a", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        "tool name": ({"name": "a", "tools": [{"type": "custom", "name": "a b", "description": "d", "input_schema": {"type": "object"}}]},
                      "tools[0].name"),
        "misspelt field": ({"name": "a", "sytem": "x"}, "sytem is not a field here; the fields are name, tier"),
        "size without sizes or unknown": ({"name": "a", "tier": "kernel", "size": "galactic"}, "size"),
        "nested 2,000 deep": ("[" * 2000 + "]" * 2000, "deeper than 64 levels"),
        "nested 65 deep": ('{"name": "a", "metadata": ' + "[" * 65 + "]" * 65 + "}", "deeper than 64 levels"),
        "NaN": ('{"name": NaN}', "NaN is not JSON"),
        "overflowing number": ('{"name": "a", "x": 1e999}', "too large"),
        "duplicate keys": ('{"name": "a", "name": "b"}', "appears twice"),
        "unpaired surrogate": ('{"name": "\\ud800"}', "surrogate"),
        "not an object": ("[]", "must be a JSON object"),
        "blank": ("  ", "empty"),
    }
    for case, (body, expected) in refusals.items():
        raw = body if isinstance(body, str) else json.dumps(body)
        message = await expect_error(h, 400, "POST", "agents", raw=raw)
        assert expected in message, (case, message)
    message = await expect_error(h, 400, "POST", "agents", raw=b"\xff\xfe{}")
    assert "not UTF-8" in message
    assert len([r for r in h.emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/agents"]) == created
    # Query parameters: not numbers, out of range, too large, not finite.
    for path, params, field in [
        ("agents", {"limit": "abc"}, "limit"), ("agents", {"limit": "101"}, "limit"), ("agents", {"limit": "-1"}, "limit"),
        ("sessions", {"limit": "9" * 400}, "limit"), ("sessions", {"before": "nan"}, "before"), ("sessions", {"tier": "quantum"}, "tier"),
        ("sessions", {"agent_id": "a/b"}, "agent_id"), ("sessions/sesn_x/events", {"limit": "0"}, "limit"),
        ("sessions/sesn_x/events", {"page": "not a cursor!"}, "page"), ("webhooks", {"before": str(2**63)}, "before"),
        ("egress/log", {"since": "inf"}, "since"), ("egress/log", {"format": "xml"}, "format"), ("egress/log", {"decision": "maybe"}, "decision"),
    ]:
        message = await expect_error(h, 400, "GET", path, params=params)
        assert message.startswith(field), (path, params, message)
    # Routes without a body take none (or {}); a field there is a mistake worth saying.
    assert "takes no body fields" in await expect_error(h, 400, "POST", "sessions/sesn_x/stop", {"force": True})
    # After all of that the API works, whatever the body is labelled (curl -d says it is a form).
    assert (await h.api("POST", "agents", {"name": "fine", "tier": "kernel", "system": "be brief"}))["system"] == "be brief"
    response = await h.fetch("cma", "api", "agents", method="POST", body=json.dumps({"name": "curl", "tier": "kernel"}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 201


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
    summary = listed[0]["sandbox"]  # what a list of sessions shows of the live sandbox
    assert summary["state"] == "serving" and summary["start"] in ("pool", "new") and summary["isolation"] in ("bubblewrap", "none")
    assert summary["tool_calls"] == 1 and summary["last_activity"] is not None
    running = await h.fetch("cma", "api", "sessions", params={"status": "running,idle", "tier": "kernel", "agent_id": agent})
    assert [s["id"] for s in json.loads(running.body)["data"]] == [sid]
    none = await h.fetch("cma", "api", "sessions", params={"status": "failed"})
    assert json.loads(none.body)["data"] == []
    detail = await h.api("GET", f"sessions/{sid}")
    assert detail["sandbox"]["tier"] == "kernel" and detail["sandbox"]["state"]
    assert detail["sandbox"]["tool_calls"] == summary["tool_calls"] and detail["sandbox"]["last_activity"] == summary["last_activity"]
    events = await h.api("GET", f"sessions/{sid}/events")
    assert "agent.custom_tool_use" in [e["type"] for e in events["data"]]
    stopped = await h.api("POST", f"sessions/{sid}/stop", {})
    assert stopped == {"id": sid, "stopped": True}
    row = await h.api("GET", f"sessions/{sid}")
    assert row["status"] == "stopped" and "stopped through the API" in row["reason"] and row["sandbox"] is None
    assert (await h.api("GET", "sessions"))["data"][0]["sandbox"] is None
    # The worker force-stopped the work item on its way out.
    await wait_until(lambda: any(r["path"].endswith("/stop") and r["body"] == {"force": True} for r in h.emulator.requests()), 30, what="the force-stop")


async def test_sessions_are_listed_by_every_state_the_server_gives_them(harness):
    h = await harness.start()
    h.ext.store.transition("sesn_gone", "claimed", "a test")
    h.ext.store.transition("sesn_gone", "ended", "a test: its sandbox and workspace were removed")
    ended = await h.fetch("cma", "api", "sessions", params={"status": "ended"})
    assert [s["id"] for s in json.loads(ended.body)["data"]] == ["sesn_gone"]
