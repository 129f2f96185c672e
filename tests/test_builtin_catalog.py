"""Built-in tools through the real server: the catalog, enabling families per agent, and sessions calling them.

The families here are small ones defined in this file and loaded by import string (`CMAApp.builtin_families`),
as the server loads its own: one that runs (with a tool that fails, one that hangs and one that crashes), one that
cannot run on this server, and one that offers a `web_fetch` of its own. Sessions are served by the emulator's
scripted brain on the kernel tier; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from traitlets import Unicode

from jupyter_cma.tools.builtin import BuiltinFamily, BuiltinTools, CallContext, ToolError, ToolSpec
from tests.helpers import wait_until
from tests.test_dispatch import Harness, cma_emulator, cma_mode, harness, script  # noqa: F401

TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
NO_INPUT = {"type": "object", "properties": {}}
THIS = "tests.test_builtin_catalog"


class EchoTools(BuiltinFamily):
    """Runs: echoes (with its agent's prefix), fails as told, hangs, crashes; remembers the sessions it ended."""

    name = "echo_test"
    title = "Echo (test)"
    summary = "Echoes text back, in the server."
    requires = "nothing"
    settings_schema = {"type": "object", "properties": {"prefix": {"type": "string"}}, "additionalProperties": False}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ended: list[str] = []
        self.calls: list[CallContext] = []

    def check_settings(self, settings: Any) -> dict[str, Any]:
        unknown = set(settings) - {"prefix"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; the only one is prefix (a string)")
        prefix = settings.get("prefix", "echo")
        if not isinstance(prefix, str):
            raise ValueError("prefix must be a string")
        return {"prefix": prefix}

    def tools(self, settings: Any) -> list[ToolSpec]:
        return [ToolSpec("echo", "Echo the text.", TEXT_SCHEMA), ToolSpec("fail_tool", "Always fails.", NO_INPUT),
                ToolSpec("slow_tool", "Never finishes.", NO_INPUT), ToolSpec("crash_tool", "Crashes.", NO_INPUT)]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Any:
        self.calls.append(ctx)
        if tool == "echo":
            return f"{ctx.settings['prefix']}: {input['text']} (session {ctx.session_id})"
        if tool == "fail_tool":
            raise ToolError("the echo service says no; try echo instead")
        if tool == "slow_tool":
            await asyncio.sleep(60)
        raise RuntimeError("internal detail the model must not see: sk-not-a-real-key")

    async def end_session(self, session_id: str) -> None:
        self.ended.append(session_id)


class OfflineTools(BuiltinFamily):
    """Cannot run here: it says why and what fixes it."""

    name = "offline_test"
    title = "Offline (test)"
    summary = "Needs an engine this server lacks."
    requires = "the offline engine"
    engine = Unicode("", config=True, help="Where the offline engine is.")

    def unavailable(self) -> str | None:
        return None if self.engine else "the offline engine is not configured; set c.OfflineTools.engine and restart the server"

    def tools(self, settings: Any) -> list[ToolSpec]:
        return [ToolSpec("offline_tool", "Does nothing.", NO_INPUT)]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Any:
        return "never"


class FetchTools(BuiltinFamily):
    """Offers a tool named like the standard toolset's web_fetch."""

    name = "fetch_test"
    title = "Fetch (test)"
    summary = "A web_fetch of its own."

    def tools(self, settings: Any) -> list[ToolSpec]:
        return [ToolSpec("web_fetch", "Fetch a page.", {"type": "object", "properties": {"url": {"type": "string"}}})]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Any:
        return f"fetched {input.get('url')}"


class TwinTools(FetchTools):
    """Another family offering the same tool name as FetchTools."""

    name = "twin_test"


FAMILIES = [f"{THIS}.EchoTools", f"{THIS}.OfflineTools", f"{THIS}.FetchTools"]


@pytest.fixture
def builtin_families() -> list[str]:
    return FAMILIES


@pytest.fixture
def jp_server_config(cma_emulator, cma_mode, builtin_families, tmp_path, monkeypatch):  # noqa: F811
    info = cma_emulator.info
    monkeypatch.setenv("ANTHROPIC_API_KEY", info["api_key"])
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", info["environment_key"])
    monkeypatch.setenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", info["webhook_secret"])
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False}, "allow_unauthenticated_access": False},
        "CMAApp": {
            "data_dir": str(tmp_path / "cma"),
            "api_base_url": info["base_url"],
            "environment_id": info["environment_id"],
            "idle_release_seconds": 1.0,
            "safety_drain_interval": 3.0,
            "builtin_families": builtin_families,
        },
        "EchoTools": {"timeout": 1.0},
        "KernelTier": {"pool_size": 1},
        "ContainerTier": {"pool_size": 0},
    }


async def refused(h: Harness, method: str, path: str, body: dict[str, Any]) -> str:
    """The message of a 400 answer."""
    with pytest.raises(HTTPClientError) as caught:
        await h.api(method, path, body)
    assert caught.value.code == 400, caught.value
    return json.loads(caught.value.response.body)["message"]


def tool_results(events: list[Any]) -> list[tuple[str, bool]]:
    return [("".join(b.text for b in e.content or [] if b.type == "text"), bool(e.is_error))
            for e in events if e.type == "user.custom_tool_result"]


async def upstream_tools(h: Harness, agent_id: str) -> list[dict[str, Any]]:
    """The agent's tools as the emulator (the API) holds them."""
    client = h.emulator.client()
    async with client:
        agent = await client.beta.agents.retrieve(agent_id)
    return [t.model_dump(mode="json") for t in agent.tools]


def toolset_enabled(tools: list[dict[str, Any]], name: str) -> bool:
    (toolset,) = [t for t in tools if t["type"] == "agent_toolset_20260401"]
    (config,) = [c for c in toolset["configs"] if c["name"] == name]
    return bool(config["enabled"])


async def test_the_catalog_lists_standard_tools_per_tier_and_each_family_with_its_availability(harness):
    h = await harness.start()
    catalog = await h.api("GET", "tools")
    assert set(catalog) == {"standard", "builtin", "notebook", "server"}
    assert catalog["notebook"] == [] and catalog["server"] == []

    standard = {t["tier"]: {tool["name"]: tool for tool in t["tools"]} for t in catalog["standard"]}
    kernel, container = standard["kernel"], standard["container"]
    assert kernel["python"]["kind"] == "tier" and kernel["python"]["runs"] == "sandbox" and kernel["python"]["input_schema"]
    assert kernel["read"]["enabled"] and kernel["read"]["runs"] == "sandbox"
    assert not kernel["bash"]["enabled"] and not kernel["bash"]["available"] and "kernel tier" in kernel["bash"]["reason"]
    assert container["web_fetch"]["enabled"] and container["web_fetch"]["runs"] == "anthropic"
    assert "outside this server's egress policy" in container["web_fetch"]["note"]
    assert container["web_search"]["runs"] == "anthropic" and container["bash"]["runs"] == "sandbox"
    assert set(container) == {"bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"}

    builtin = {f["family"]: f for f in catalog["builtin"]}
    assert list(builtin) == ["echo_test", "offline_test", "fetch_test"]
    echo, offline = builtin["echo_test"], builtin["offline_test"]
    assert echo["available"] is True and echo["reason"] is None and echo["timeout"] == 1.0
    assert echo["title"] == "Echo (test)" and echo["summary"] and echo["requires"] == "nothing"
    assert echo["settings_schema"]["properties"] == {"prefix": {"type": "string"}}
    assert [t["name"] for t in echo["tools"]] == ["echo", "fail_tool", "slow_tool", "crash_tool"]
    assert echo["tools"][0] == {"name": "echo", "description": "Echo the text.", "input_schema": TEXT_SCHEMA, "runs": "server"}
    assert offline["available"] is False and "c.OfflineTools.engine" in offline["reason"]
    assert offline["settings_schema"] == {"type": "object", "properties": {}, "additionalProperties": False}


async def test_an_agent_is_refused_a_family_that_is_unknown_unavailable_or_badly_set(harness):
    h = await harness.start()
    message = await refused(h, "POST", "agents", {"name": "x", "tier": "kernel", "builtins": {"offline_test": {}}})
    assert "offline_test" in message and "c.OfflineTools.engine" in message
    message = await refused(h, "POST", "agents", {"name": "x", "tier": "kernel", "builtins": {"nope": {}}})
    assert "'nope'" in message and "echo_test" in message and "fetch_test" in message
    message = await refused(h, "POST", "agents", {"name": "x", "tier": "kernel", "builtins": {"echo_test": {"prefix": 3}}})
    assert "prefix must be a string" in message
    message = await refused(h, "POST", "agents", {"name": "x", "tier": "kernel", "builtins": {"fetch_test": {"x": 1}}})
    assert "takes no settings" in message
    tool = {"type": "custom", "name": "echo", "description": "mine", "input_schema": {"type": "object"}}
    message = await refused(h, "POST", "agents", {"name": "x", "tier": "kernel", "tools": [tool], "builtins": {"echo_test": {}}})
    assert "already has a tool named 'echo'" in message
    agent = await h.api("POST", "agents", {"name": "plain", "tier": "kernel"})
    message = await refused(h, "PATCH", f"agents/{agent['id']}", {"builtins": {"offline_test": {}}})
    assert "c.OfflineTools.engine" in message
    assert h.ext.store.agent(agent["id"])["builtins"] == {}


async def test_a_session_calls_its_agents_built_ins_errors_and_timeouts_included_and_they_end_with_its_sandbox(harness):
    h = await harness.start()
    agent = await h.api("POST", "agents", {"name": "echoer", "tier": "kernel", "builtins": {"echo_test": {"prefix": "heard"}}})
    assert agent["builtins"] == {"echo_test": {"prefix": "heard"}}
    assert h.ext.store.agent(agent["id"])["builtins"] == {"echo_test": {"prefix": "heard"}}
    upstream = {t.get("name"): t for t in await upstream_tools(h, agent["id"]) if t["type"] == "custom"}
    assert set(upstream) == {"python", "echo", "fail_tool", "slow_tool", "crash_tool"}
    assert upstream["echo"]["input_schema"] == TEXT_SCHEMA and upstream["echo"]["description"] == "Echo the text."
    assert (await h.api("GET", f"agents/{agent['id']}"))["builtins"] == {"echo_test": {"prefix": "heard"}}

    sid = await h.session(agent["id"], script({"tool": "echo", "input": {"text": "hi"}}, {"tool": "fail_tool", "input": {}},
                                              {"tool": "slow_tool", "input": {}}, {"tool": "crash_tool", "input": {}},
                                              {"tool": "echo", "input": {"text": "still here"}}))
    results = tool_results(await h.turn_ends(sid, timeout=120))
    assert results[0] == (f"heard: hi (session {sid})", False)
    assert results[1] == ("the echo service says no; try echo instead", True)
    assert results[2][1] and "timed out after 1 s" in results[2][0] and "c.EchoTools.timeout" in results[2][0]
    assert results[3][1] and "failed inside the server" in results[3][0] and "sk-not-a-real-key" not in results[3][0]
    assert results[4] == (f"heard: still here (session {sid})", False)
    family = h.ext.builtins.families["echo_test"]
    assert {c.agent_id for c in family.calls} == {agent["id"]} and family.calls[0].egress is h.ext.builtins.egress

    # The sandbox is released after idle_release_seconds: the family hears of it.
    await wait_until(lambda: sid in family.ended, 60, what="the family's end_session for the released session")
    assert h.state(sid) == "sleeping"


async def test_containers_reach_built_ins_through_the_internal_route_of_the_same_registry(harness):
    h = await harness.start()
    agent = (await h.api("POST", "agents", {"name": "c", "tier": "kernel", "builtins": {"echo_test": {}}}))["id"]
    status, body, _ = await h.ext.tools.handle_internal("sesn_x", agent, "GET", "/v1/tools", b"")
    assert status == 200 and [t["name"] for t in json.loads(body)["tools"]] == ["echo", "fail_tool", "slow_tool", "crash_tool"]
    status, body, _ = await h.ext.tools.handle_internal("sesn_x", agent, "POST", "/v1/tools/echo", b'{"text": "via route"}')
    assert status == 200 and json.loads(body) == {"content": "echo: via route (session sesn_x)", "is_error": False}
    status, _, _ = await h.ext.tools.handle_internal("sesn_x", agent, "POST", "/v1/tools/offline_tool", b"{}")
    assert status == 404, "a family the agent was not given is not its tool"
    plain = (await h.api("POST", "agents", {"name": "p", "tier": "kernel"}))["id"]
    status, body, _ = await h.ext.tools.handle_internal("sesn_y", plain, "GET", "/v1/tools", b"")
    assert json.loads(body)["tools"] == []


async def test_a_built_in_web_fetch_turns_the_toolsets_own_off_and_patch_replaces_built_ins_across_tier_changes(harness):
    h = await harness.start()
    agent = await h.api("POST", "agents", {"name": "fetcher", "tier": "container", "builtins": {"fetch_test": {}}})
    tools = await upstream_tools(h, agent["id"])
    assert not toolset_enabled(tools, "web_fetch") and toolset_enabled(tools, "web_search")
    assert [t["name"] for t in tools if t["type"] == "custom"] == ["web_fetch"]

    # A tier change keeps the built-ins (and the toolset's web_fetch stays off).
    moved = await h.api("PATCH", f"agents/{agent['id']}", {"tier": "kernel"})
    assert moved["tier"] == "kernel" and moved["builtins"] == {"fetch_test": {}}
    assert {t.get("name") for t in await upstream_tools(h, agent["id"]) if t["type"] == "custom"} == {"python", "web_fetch"}
    moved = await h.api("PATCH", f"agents/{agent['id']}", {"tier": "container"})
    tools = await upstream_tools(h, agent["id"])
    assert not toolset_enabled(tools, "web_fetch") and [t["name"] for t in tools if t["type"] == "custom"] == ["web_fetch"]

    # PATCH builtins replaces them all: the old definitions go, the toolset's own web_fetch is back.
    patched = await h.api("PATCH", f"agents/{agent['id']}", {"builtins": {"echo_test": {}}})
    assert patched["builtins"] == {"echo_test": {"prefix": "echo"}}
    tools = await upstream_tools(h, agent["id"])
    assert toolset_enabled(tools, "web_fetch")
    assert [t["name"] for t in tools if t["type"] == "custom"] == ["echo", "fail_tool", "slow_tool", "crash_tool"]
    cleared = await h.api("PATCH", f"agents/{agent['id']}", {"builtins": {}})
    assert cleared["builtins"] == {} and h.ext.store.agent(agent["id"])["builtins"] == {}
    assert [t for t in await upstream_tools(h, agent["id"]) if t["type"] == "custom"] == []


@pytest.mark.parametrize("builtin_families", [[f"{THIS}.EchoTools", f"{THIS}.Missing", "no_such_module.Tools", f"{THIS}.THIS"]])
async def test_a_family_that_cannot_be_loaded_is_a_setting_error_naming_it(harness, builtin_families):
    h = await harness.start()
    errors = (await h.api("GET", "status"))["errors"]
    for name in builtin_families[1:]:
        assert any(name in e and "c.CMAApp.builtin_families" in e for e in errors), (name, errors)
    assert [f["family"] for f in (await h.api("GET", "tools"))["builtin"]] == ["echo_test"]


def test_families_may_not_share_a_name_or_a_tool_name():
    with pytest.raises(ValueError, match="both offer a tool named 'web_fetch'"):
        BuiltinTools([FetchTools(), TwinTools()], None, lambda agent_id: {})
    with pytest.raises(ValueError, match="two built-in families are named 'echo_test'"):
        BuiltinTools([EchoTools(), EchoTools()], None, lambda agent_id: {})
