"""The internal route: code in a sandbox calls the server's tool registry at http://cma.internal/.

Every call here starts inside a bubblewrap-sandboxed kernel, goes through the
real engine process and reaches a real `ToolRegistry` in this process. The
session a call is made for must come from the sandbox's socket only: nothing
the sandbox writes into a request (headers, path, body) may change it, and
nothing sent to cma.internal may reach an upstream, whatever the policy says.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

import pytest

from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import INTERNAL_HOST
from jupyter_cma.egress.proxy import Attachment, EgressProxy
from jupyter_cma.store import Store
from jupyter_cma.tools.registry import ToolRegistry
from tests.test_egress_proxy import Rig, test_ca, tier  # noqa: F401  (test_ca and tier are fixtures there)

# What runs in the kernel, after test_egress_proxy's CLIENT (fetch, raw): one call to the route.
TOOL_CLIENT = r'''
def tool(path, payload=None, headers=None, body=None, port=""):
    """(status, the JSON answer or its text) of a call to http://cma.internal<path> through the proxy."""
    if body is None and payload is not None:
        body = json.dumps(payload).encode()
    status, text = fetch(f"http://cma.internal{port}{path}", headers=headers, method="GET" if body is None else "POST", body=body)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text

def chunked(path, size, timeout=30):
    """POST a chunked body of `size` bytes: (status, body) of the answer, or (None, why) when the connection was cut."""
    with socket.create_connection(PROXY, timeout=timeout) as s:
        try:
            s.sendall(f"POST http://cma.internal{path} HTTP/1.1\r\nHost: cma.internal\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for _ in range(size // 0x4000):
                s.sendall(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        try:
            return _response(s, timeout)
        except OSError as exc:
            return None, repr(exc)
'''


class Tools:
    """A registry with a few tools, and the calls its route saw (session, agent, method, path)."""

    def __init__(self) -> None:
        self.registry = ToolRegistry()
        self.seen: list[tuple[Any, ...]] = []
        self.called: list[tuple[str, str, dict[str, Any]]] = []
        self.release = asyncio.Event()
        registry = self.registry
        schema = {"type": "object", "properties": {"text": {"type": "string"}}}

        def whoami(session_id: str, tool_input: dict[str, Any]) -> dict[str, Any]:
            self.called.append(("whoami", session_id, tool_input))
            return {"session": session_id, "input": tool_input}

        async def size(session_id: str, tool_input: dict[str, Any]) -> str:
            self.called.append(("size", session_id, {}))
            return str(len(tool_input.get("text", "")))

        def boom(session_id: str, tool_input: dict[str, Any]) -> str:
            self.called.append(("boom", session_id, tool_input))
            raise RuntimeError("the warehouse is closed today")

        async def nap(session_id: str, tool_input: dict[str, Any]) -> str:
            self.called.append(("nap", session_id, tool_input))
            await asyncio.sleep(tool_input["seconds"])
            return "rested"

        async def slow(session_id: str, tool_input: dict[str, Any]) -> str:
            self.called.append(("slow", session_id, tool_input))
            await self.release.wait()
            return "too late"

        registry.register("whoami", whoami, description="Says which session calls.", input_schema=schema)
        registry.register("size", size, description="The length of text.", input_schema=schema)
        registry.register("boom", boom, description="Always fails.", input_schema={"type": "object"})
        registry.register("slow", slow, description="Never answers in time.", input_schema={"type": "object"})
        registry.register("nap", nap, description="Answers after a while.", input_schema={"type": "object"})
        registry.register("only_a", whoami, description="For session a only.", input_schema={"type": "object"}, sessions={"sesn_a"})

    async def handle(self, session_id: str | None, agent_id: str | None, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        self.seen.append((session_id, agent_id, method, path))
        return await self.registry.handle_internal(session_id, agent_id, method, path, body)


def internal_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["method"], r["path"], r["status"], r["decision"], r["rule"]) for r in rows if r["host"] == INTERNAL_HOST]


# --------------------------------------------------------------------------- through real sandboxes


async def test_a_sandbox_calls_tools_as_the_session_its_socket_serves(tmp_path, test_ca, tier):
    tools = Tools()
    async with Rig(tmp_path, test_ca, tier=tier, internal_handler=tools.handle) as rig:
        # Every host allowed, and cma.internal itself declared as a private service leading to an upstream:
        # still nothing sent to the name may leave the proxy.
        services = [*rig.services(), {"name": INTERNAL_HOST, "target": f"127.0.0.1:{rig.other.port}"}]
        rig.policies.create({"name": "open", "scope": {"environment": True}, "allow_all": True, "private_services": services})
        a = await rig.box("sesn_a", agent_id="agent_a")
        b = await rig.box("sesn_b", agent_id="agent_b")
        await a.run(TOOL_CLIENT + "None")
        await b.run(TOOL_CLIENT + "None")
        from_a = await a.run('''[
    tool("/v1/tools"),
    tool("/v1/tools/whoami", {"text": "hi"}),
    # Forged identities: a header, a query, the body, the path. None of them is asked.
    tool("/v1/tools/whoami", {"session_id": "sesn_b"}, headers={"X-Session-Id": "sesn_b", "X-CMA-Session": "sesn_b",
                                                              "X-CMA-Sandbox": "other", "Authorization": "Bearer sesn_b"}),
    tool("/v1/tools/whoami?session_id=sesn_b&sandbox=other", {}),
    tool("/v1/sessions/sesn_b/tools/whoami", {}),
    tool("/v1/tools/only_a", {}),
]''')
        from_b = await b.run('''[
    tool("/v1/tools"),
    tool("/v1/tools/whoami", {}, headers={"X-Session-Id": "sesn_a"}),
    tool("/v1/tools/only_a", {}),
]''')
        control = await a.run("fetch('http://plain.test/control')")  # the policy does let requests out
        rows = await rig.rows(6, session_id="sesn_a", host=INTERNAL_HOST)
        b_rows = await rig.rows(3, session_id="sesn_b", host=INTERNAL_HOST)
    listed_a, called, forged_header, forged_query, forged_path, only_a = from_a
    assert listed_a[0] == 200
    assert [t["name"] for t in listed_a[1]["tools"]] == ["whoami", "size", "boom", "slow", "nap", "only_a"]
    assert listed_a[1]["tools"][0] == {"name": "whoami", "description": "Says which session calls.",
                                       "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
    assert called == (200, {"content": json.dumps({"session": "sesn_a", "input": {"text": "hi"}}), "is_error": False})
    assert forged_header[0] == 200 and json.loads(forged_header[1]["content"])["session"] == "sesn_a"
    assert forged_query[0] == 200 and json.loads(forged_query[1]["content"])["session"] == "sesn_a"
    assert forged_path[0] == 404 and "no such route" in forged_path[1]["error"]
    assert only_a[0] == 200 and json.loads(only_a[1]["content"])["session"] == "sesn_a"
    # The other sandbox is its own session: it sees its own identity, and not a's restricted tool.
    listed_b, b_called, b_only_a = from_b
    assert [t["name"] for t in listed_b[1]["tools"]] == ["whoami", "size", "boom", "slow", "nap"]
    assert b_called[0] == 200 and json.loads(b_called[1]["content"])["session"] == "sesn_b"
    assert b_only_a[0] == 404 and "no tool named 'only_a'" in b_only_a[1]["error"]
    # What the handler saw: the attachment's session and agent, every time.
    assert {(s, agent) for s, agent, _, _ in tools.seen} == {("sesn_a", "agent_a"), ("sesn_b", "agent_b")}
    assert [(s, agent) for s, agent, _, _ in tools.seen[:6]] == [("sesn_a", "agent_a")] * 6
    assert ("POST", "/v1/tools/whoami?session_id=sesn_b&sandbox=other") in [(m, p) for _, _, m, p in tools.seen]
    assert [c[1] for c in tools.called] == ["sesn_a"] * 4 + ["sesn_b"]
    # Logged like any request, and never sent anywhere.
    assert internal_rows(rows)[:6][::-1] == [
        ("GET", "/v1/tools", 200, "allowed", "internal"),
        ("POST", "/v1/tools/whoami", 200, "allowed", "internal"),
        ("POST", "/v1/tools/whoami", 200, "allowed", "internal"),
        ("POST", "/v1/tools/whoami", 200, "allowed", "internal"),  # the query is not logged
        ("POST", "/v1/sessions/sesn_b/tools/whoami", 404, "allowed", "internal"),
        ("POST", "/v1/tools/only_a", 200, "allowed", "internal"),
    ]
    assert all(r["agent_id"] == "agent_a" and r["port"] == 80 for r in rows)
    assert [r["status"] for r in b_rows[:3]] == [404, 200, 200]
    assert control == (200, "hello from plain") and [r["path"] for r in rig.plain.requests] == ["/control"]
    assert rig.other.requests == [] and rig.secure.requests == []  # other is where a policy sends cma.internal


async def test_what_the_route_does_not_serve_is_refused(tmp_path, test_ca, tier):
    """No policy at all (every destination denied): the route works, and refuses what it does not serve."""
    tools = Tools()
    async with Rig(tmp_path, test_ca, tier=tier, internal_handler=tools.handle) as rig:
        box = await rig.box("sesn_errors")
        await box.run(TOOL_CLIENT + "None")
        answers = await box.run(r'''{
    "denied": fetch("http://plain.test/"),
    "unknown": tool("/v1/tools/nope", {}),
    "bad name": tool("/v1/tools/who%20ami", {}),
    "bad json": tool("/v1/tools/whoami", body=b"{not json"),
    "not an object": tool("/v1/tools/whoami", [1, 2]),
    "empty body": tool("/v1/tools/whoami", body=b""),
    "get a tool": tool("/v1/tools/whoami"),
    "put": fetch("http://cma.internal/v1/tools/whoami", method="PUT", body=b"{}"),
    "failing tool": tool("/v1/tools/boom", {"x": 1}),
    "one mebibyte": tool("/v1/tools/size", body=json.dumps({"text": "x" * (1024 * 1024 - 12)}).encode()),
    "too large": raw(b"POST http://cma.internal/v1/tools/size HTTP/1.1\r\nHost: cma.internal\r\nContent-Length: 1048577\r\n\r\n{"),
    "too large chunked": chunked("/v1/tools/size", 1024 * 1024 + 0x8000),
    "connect": raw(b"CONNECT cma.internal:443 HTTP/1.1\r\nHost: cma.internal:443\r\n\r\n"),
    "connect 80": raw(b"CONNECT cma.internal:80 HTTP/1.1\r\nHost: cma.internal:80\r\n\r\n"),
    "https": fetch("https://cma.internal/v1/tools"),
    "other port": tool("/v1/tools", port=":8080"),
    "https uri": raw(b"GET https://cma.internal/v1/tools HTTP/1.1\r\nHost: cma.internal\r\n\r\n"),
    "spelling": raw(b"GET http://CMA.Internal./v1/tools HTTP/1.1\r\nHost: CMA.INTERNAL.\r\n\r\n"),
    "host mismatch": raw(b"GET http://cma.internal/v1/tools HTTP/1.1\r\nHost: plain.test\r\n\r\n"),
    "host header only": raw(b"GET http://plain.test/v1/tools HTTP/1.1\r\nHost: cma.internal\r\n\r\n"),
}''')
        rows = await rig.rows(19, session_id="sesn_errors")
    assert answers["denied"][0] == 403  # no applicable policy: every destination is denied
    assert answers["unknown"] == (404, {"error": "no tool named 'nope'; GET /v1/tools lists this session's tools"})
    assert answers["bad name"][0] == 404
    for key in ("bad json", "not an object"):
        assert answers[key][0] == 400 and "JSON object" in answers[key][1]["error"], answers[key]
    assert answers["empty body"][0] == 200 and json.loads(answers["empty body"][1]["content"])["input"] == {}
    assert answers["get a tool"][0] == 405 and answers["put"][0] == 405
    assert answers["failing tool"] == (200, {"content": "the warehouse is closed today", "is_error": True})
    assert answers["one mebibyte"] == (200, {"content": str(1024 * 1024 - 12), "is_error": False})
    assert answers["too large"][0] == 413
    assert answers["too large chunked"][0] in (413, None)  # answered 413, or cut off mid-upload: never called
    for key in ("connect", "connect 80", "other port"):
        status, body = answers[key]
        assert status == 403 and "http://cma.internal/" in (body if isinstance(body, str) else body.get("error", str(body))), (key, answers[key])
    assert answers["https"][0] is None and "403" in answers["https"][1]  # urllib: "Tunnel connection failed: 403"
    assert answers["https uri"][0] == 403 and "http://cma.internal/" in answers["https uri"][1]
    assert answers["spelling"][0] == 200 and "whoami" in answers["spelling"][1]
    assert answers["host mismatch"][0] == 421 and answers["host header only"][0] == 421
    # Only the calls that passed the route's checks reached a tool: no over-large body, nothing forged.
    assert [name for name, _, _ in tools.called] == ["whoami", "boom", "size"]
    assert [p for _, _, _, p in tools.seen].count("/v1/tools/size") == 1
    rules = {r["rule"] for r in rows if r["host"] == INTERNAL_HOST}
    assert {"internal", "internal:http-only", "internal:method", "limit:body-size", "invalid:host-mismatch"} <= rules
    assert [r["status"] for r in rows if r["rule"] == "internal:http-only"].count(403) >= 4
    assert rig.plain.requests == [] and rig.other.requests == []


async def test_a_call_without_an_answer_in_time_gets_504_and_without_a_registry_404(tmp_path, test_ca, tier):
    tools = Tools()
    async with Rig(tmp_path, test_ca, tier=tier, internal_handler=tools.handle, internal_timeout=4.0, idle_timeout=1.0) as rig:
        box = await rig.box("sesn_slow")
        await box.run(TOOL_CLIENT + "None")
        # A call waiting for its tool is not an idle connection: it outlives idle_timeout, up to internal_timeout.
        napped = await box.run('tool("/v1/tools/nap", {"seconds": 2.5})')
        try:
            slow = await box.run('tool("/v1/tools/slow", {})')
        finally:
            tools.release.set()
        # The next call is answered as usual; then the server loses its registry.
        after = await box.run('tool("/v1/tools/whoami", {})')
        rig.proxy.internal_handler = None
        unserved = await box.run('tool("/v1/tools")')

        async def broken(*args: Any) -> tuple[int, bytes, str]:
            raise RuntimeError("secret detail of the server")

        rig.proxy.internal_handler = broken
        failed = await box.run('tool("/v1/tools")')
        rows = await rig.rows(5, session_id="sesn_slow", host=INTERNAL_HOST)
    assert napped == (200, {"content": "rested", "is_error": False})
    assert slow[0] == 504 and "did not answer within 4 s" in slow[1]["error"]
    assert after[0] == 200 and json.loads(after[1]["content"])["session"] == "sesn_slow"
    assert unserved == (404, {"error": "no tool registry on this server"})
    assert failed[0] == 500 and "secret detail" not in json.dumps(failed) and "log" in failed[1]["error"]
    assert [r["status"] for r in rows[:5]] == [500, 404, 200, 504, 200]


# --------------------------------------------------------------------------- the server's side, without an engine


async def test_the_server_names_the_session_from_its_own_attachment(tmp_path):
    """What the engine sends is a sandbox id; anything else in the message is not asked."""
    seen: list[tuple[Any, ...]] = []

    async def handler(session_id: str | None, agent_id: str | None, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        seen.append((session_id, agent_id, method, path, body))
        return 200, b"ok", "text/plain"

    store = Store(tmp_path / "cma.sqlite3")
    try:
        proxy = EgressProxy(data_dir=tmp_path, api_base_url="https://api.anthropic.com", middleware=[], egress_log=EgressLog(store),
                            internal_handler=handler)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            proxy.attachments["kernel-1"] = Attachment("kernel-1", str(tmp_path / "egress.sock"), listener,
                                                       {"id": "kernel-1", "session_id": "sesn_real", "agent_id": "agent_real"})
            message = {"op": "internal", "id": 7, "sandbox": "kernel-1", "method": "POST", "path": "/v1/tools/x",
                       "body": base64.b64encode(b"{}").decode(), "session_id": "sesn_forged", "agent_id": "agent_forged"}
            assert await proxy._internal_answer(message) == (200, b"ok", "text/plain")
            unknown = await proxy._internal_answer({**message, "sandbox": "kernel-2"})
            proxy.internal_handler = None
            unserved = await proxy._internal_answer(message)
    finally:
        store.close()
    assert seen == [("sesn_real", "agent_real", "POST", "/v1/tools/x", b"{}")]
    assert unknown[0] == 403 and unserved == (404, b'{"error": "no tool registry on this server"}', "application/json")


# --------------------------------------------------------------------------- the registry on its own


async def test_the_registry_validates_scopes_and_calls_tools():
    registry = ToolRegistry()
    for bad in ("", "a b", "x" * 65, "a/b", "é", None):
        with pytest.raises(ValueError):
            registry.register(bad, lambda s, i: "", description="", input_schema={})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        registry.register("ok", lambda s, i: "", description="", input_schema={}, sessions="sesn_a")
    with pytest.raises(ValueError):
        registry.register("ok", lambda s, i: "", description="", input_schema={"default": object()})

    async def blocks(session_id: str, tool_input: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "text", "text": f"hello {session_id}"}]

    registry.register("text", lambda s, i: "plain", description="t", input_schema={"type": "object"})
    registry.register("blocks", blocks, description="b", input_schema={"type": "object"}, sessions=["sesn_a"])
    registry.register("numbers", lambda s, i: [1, 2], description="n", input_schema={"type": "object"})
    registry.register("not_json", lambda s, i: object(), description="j", input_schema={"type": "object"})
    assert [d["name"] for d in registry.definitions("sesn_a")] == ["text", "blocks", "numbers", "not_json"]
    assert [d["name"] for d in registry.definitions("sesn_b")] == ["text", "numbers", "not_json"]
    assert await registry.call("sesn_a", "text", {}) == {"content": "plain", "is_error": False}
    assert await registry.call("sesn_a", "blocks", {}) == {"content": [{"type": "text", "text": "hello sesn_a"}], "is_error": False}
    assert await registry.call("sesn_a", "numbers", {}) == {"content": "[1, 2]", "is_error": False}
    failed = await registry.call("sesn_a", "not_json", {})
    assert failed["is_error"] is True and "not JSON serializable" in failed["content"]
    with pytest.raises(LookupError):
        await registry.call("sesn_b", "blocks", {})
    # Registering again replaces; unregistering withdraws.
    registry.register("text", lambda s, i: "replaced", description="t2", input_schema={"type": "object"})
    assert await registry.call("sesn_b", "text", {}) == {"content": "replaced", "is_error": False}
    assert registry.unregister("text") is True and registry.unregister("text") is False
    assert await registry.handle_internal("sesn_b", None, "POST", "/v1/tools/text", b"{}") == (
        404, b'{"error": "no tool named \'text\'; GET /v1/tools lists this session\'s tools"}', "application/json")


async def test_the_route_needs_a_session_and_a_known_path():
    registry = ToolRegistry()
    registry.register("t", lambda s, i: "x", description="t", input_schema={"type": "object"})
    no_session = await registry.handle_internal(None, None, "GET", "/v1/tools", b"")
    assert no_session[0] == 403 and "not serving a session" in json.loads(no_session[1])["error"]
    assert (await registry.handle_internal("s", None, "GET", "/v1/tools/", b""))[0] == 200
    assert (await registry.handle_internal("s", None, "POST", "/v1/tools", b"{}"))[0] == 405
    assert (await registry.handle_internal("s", None, "GET", "/v2/tools", b""))[0] == 404
    assert (await registry.handle_internal("s", None, "POST", "/v1/tools/t", b"\xff\xfe"))[0] == 400
    status, body, content_type = await registry.handle_internal("s", "agent", "POST", "/v1/tools/t?x=1", b" {} ")
    assert (status, json.loads(body), content_type) == (200, {"content": "x", "is_error": False}, "application/json")


async def test_messages_larger_than_a_packet_cross_the_control_channel_whole():
    """An internal call's body (1 MiB, more in base64) and answer exceed one packet: they go as fragments."""
    from jupyter_cma.egress import channel

    server, engine = channel.pair()
    with server, engine:
        server.setblocking(False)
        outbox, inbox = channel.Outbox(server), channel.Inbox()
        big = {"op": "internal", "id": 1, "body": base64.b64encode(bytes(range(256)) * 4096 * 2).decode()}
        outbox.send(big)
        outbox.send({"op": "log", "rows": []})
        received: list[dict[str, Any]] = []
        packets = 0
        engine.setblocking(False)
        while len(received) < 2:
            try:
                packet = engine.recv(channel.MESSAGE_BYTES)
            except BlockingIOError:  # the outbox sends the rest when its socket can take it
                await asyncio.sleep(0.01)
                continue
            packets += 1
            assert len(packet) <= channel.MESSAGE_BYTES
            whole = inbox.feed(packet)
            if whole is not None:
                received.append(json.loads(whole))
        with pytest.raises(ValueError):
            outbox.send({"op": "internal", "body": "x" * channel.MAX_MESSAGE_BYTES})
    assert received == [big, {"op": "log", "rows": []}] and packets > 3
