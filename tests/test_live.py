"""The live channel (`{base_url}cma/api/live`) through the real server, against the emulator.

Real HTTP and websockets on loopback, real kernels serving real sessions, the real write paths (the store's
transitions, the egress log, the API's event streams). pytest-jupyter has no async fixtures, so each test opens
its sockets with `live_socket`, an async context manager.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
import tornado.httpclient
import tornado.websocket

from jupyter_cma.live import EGRESS_ROW_FIELDS, SESSION_STATE_FIELDS
from tests.helpers import wait_until
from tests.test_dispatch import Harness, cma_emulator, harness, python, script  # noqa: F401  (the end-to-end tests' fixtures)
from tests.test_egress_proxy import CLIENT, Upstream

QUEUE = 200  # the subscribers' bound in these tests, so overflowing one takes a few thousand rows, not tens of thousands
LINGER = 0.5  # seconds an unwatched session's upstream stream stays open here
MAX_WATCHED = 3
MAX_SUBSCRIBERS = 8
EGRESS_SECRET = f"sk-live-{secrets.token_hex(16)}"  # made per run: if a frame holds it, the channel leaked it

DATA_KEYS = {
    "session.state": set(SESSION_STATE_FIELDS),
    "session.event": {"session_id", "event_id", "type", "processed_at"},
    "session.tool": {"session_id", "tool_calls", "at", "cold_start_ms"},
    "egress.row": set(EGRESS_ROW_FIELDS),
    "tools.changed": {"kernel_id"},
    "status.changed": set(),
}


@pytest.fixture
def jp_server_config(cma_emulator, tmp_path, monkeypatch):
    info = cma_emulator.info
    monkeypatch.setenv("ANTHROPIC_API_KEY", info["api_key"])
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", info["environment_key"])
    monkeypatch.setenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", info["webhook_secret"])
    return {
        # jupyter_server_terminals' websocket lacks the auth decorators this strict mode demands; it is not ours.
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False}, "allow_unauthenticated_access": False},
        "CMAApp": {
            "data_dir": str(tmp_path / "cma"),
            "api_base_url": info["base_url"],
            "environment_id": info["environment_id"],
            "idle_release_seconds": 1.0,
            "safety_drain_interval": 3.0,
            "live_queue_size": QUEUE,
            "live_relay_linger": LINGER,
            "live_max_watched_sessions": MAX_WATCHED,
            "live_max_subscribers": MAX_SUBSCRIBERS,
        },
        "KernelTier": {"pool_size": 1},
        "ContainerTier": {"pool_size": 0},
    }


class Live:
    """One subscriber seen from the client: every frame it received, parsed, and helpers to wait on them."""

    def __init__(self, ws: tornado.websocket.WebSocketClientConnection) -> None:
        self.ws = ws
        self.raw: list[str] = []
        self.frames: list[Any] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (text := await self.ws.read_message()) is not None:
            self.raw.append(text)
            self.frames.append(json.loads(text))
            self._changed.set()
        self.closed.set()
        self._changed.set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for f in self.frames if isinstance(f, list) for m in f]

    def control(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("kind") == kind]

    async def until(self, predicate: Any, what: str, timeout: float = 90) -> Any:
        """Wait until `predicate(self)` is truthy (checked after each frame); fail if the socket closes or after `timeout`."""
        async def check() -> Any:
            while True:
                value = predicate(self)
                if value:
                    return value
                if self.closed.is_set():
                    raise AssertionError(f"the socket closed before {what}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(check(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{what} did not happen within {timeout}s; frames: {self.raw[-5:]}") from None

    async def subscribe(self, **wanted: Any) -> dict[str, Any]:
        count = len(self.control("subscribed"))
        await self.ws.write_message(json.dumps({"op": "subscribe", **wanted}))
        await self.until(lambda s: len(s.control("subscribed")) > count, "the subscribed answer")
        return self.control("subscribed")[-1]


@asynccontextmanager
async def live_socket(jp_ws_fetch: Any, **kw: Any) -> AsyncIterator[Live]:
    """An open, authenticated live socket that has read its hello; closed on the way out."""
    live = Live(await jp_ws_fetch("cma", "api", "live", **kw))
    try:
        await live.until(lambda s: s.control("hello"), "the hello frame")
        yield live
    finally:
        live.ws.close()
        await asyncio.wait_for(live.closed.wait(), 30)
        live._reader.cancel()


async def refused_status(jp_ws_fetch: Any, **kw: Any) -> int:
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        ws = await jp_ws_fetch("cma", "api", "live", **kw)
        ws.close()
    return err.value.code


async def raw_socket(port: int, path: str, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A websocket client that never reads unless asked, the upgrade made by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head.split(b"\r\n")[0]


def row(session_id: str | None, host: str, **extra: Any) -> dict[str, Any]:
    return {"method": "GET", "scheme": "https", "host": host, "port": 443, "path": "/x", "decision": "allowed",
            "session_id": session_id, **extra}


async def get(h: Harness, path: str, **params: Any) -> Any:
    response = await h.fetch("cma", "api", *path.split("/"), params=params)
    return json.loads(response.body)


def egress_rows(live: Live) -> list[dict[str, Any]]:
    return [m["data"] for m in live.messages if m["kind"] == "egress.row"]


# --------------------------------------------------------------------------- who may subscribe


async def test_an_unauthenticated_subscriber_gets_nothing(harness, jp_ws_fetch, jp_fetch, jp_serverapp, jp_http_port, jp_base_url):
    h = await harness.start()
    token = jp_serverapp.identity_provider.token
    assert await refused_status(jp_ws_fetch, headers={"Authorization": ""}) == 403
    assert await refused_status(jp_ws_fetch, headers={"Authorization": "token wrong"}) == 403
    assert await refused_status(jp_ws_fetch, headers={"Authorization": ""}, params={"token": "wrong"}) == 403
    # The login cookie opens it from the server's own pages only: another site's page is refused by its Origin.
    login = await jp_fetch("login", headers={"Authorization": ""})
    xsrf = re.search(r"_xsrf=([^;]+)", login.headers["Set-Cookie"]).group(1)
    response = await jp_fetch("login", method="POST", body=urlencode({"password": token, "_xsrf": xsrf}), follow_redirects=False,
                              raise_error=False, headers={"Authorization": "", "Cookie": f"_xsrf={xsrf}"})
    assert response.code == 302
    cookies = "; ".join(c.split(";", 1)[0] for c in response.headers.get_list("Set-Cookie"))
    # jp_fetch logged in at 127.0.0.1 (the cookie's name says which host it is for), so the socket goes there too.
    here = f"127.0.0.1:{jp_http_port}"

    def with_cookie(*parts: str, headers: dict[str, str]) -> Any:
        url = f"ws://{here}{jp_base_url}{'/'.join(parts)}"
        return tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url, headers={"Cookie": cookies, **headers}))

    assert await refused_status(with_cookie, headers={"Origin": "http://evil.example"}) == 403
    assert (await h.api("GET", "status"))["live"]["subscribers"] == 0
    h.ext.egress_log.record(**row("sesn_a", "nobody.example"))
    # The same cookie from the server's own origin is a subscriber, so the refusal above was the Origin's.
    async with live_socket(with_cookie, headers={"Origin": f"http://{here}"}) as live:
        hello = live.control("hello")[0]
        assert hello["max_queue"] == QUEUE and hello["epoch"] and hello["seq"] >= 1
        assert (await h.api("GET", "status"))["live"]["subscribers"] == 1
        # Nothing published before it subscribed reaches it; what comes after does.
        h.ext.egress_log.record(**row("sesn_a", "after.example"))
        await live.until(lambda s: egress_rows(s), "an egress row")
        assert [r["host"] for r in egress_rows(live)] == ["after.example"]


async def test_bad_client_messages_close_the_socket_and_subscribers_are_capped(harness, jp_ws_fetch, caplog):
    h = await harness.start()
    for bad, says in [("not json", "not JSON"), ('{"op": "watch"}', "op"), ('{"op": "subscribe", "kinds": ["secrets"]}', "kinds[0]"),
                      (json.dumps({"op": "subscribe", "sessions": [f"sesn_{i}" for i in range(21)]}), "sessions"),
                      ('{"op": "subscribe", "sessions": ["../x"]}', "sessions[0]"), ('{"op": "subscribe", "x": 1}', "x is not a field")]:
        async with live_socket(jp_ws_fetch) as live:
            await live.ws.write_message(bad)
            await live.until(lambda s: s.closed.is_set(), "the close")
            (error,) = live.control("error")
            assert says in error["message"], (bad, error)
            assert live.ws.close_code == 1008
    # A good message right behind a bad one reaches a socket already closing: it is dropped, and nothing fails.
    caplog.clear()
    async with live_socket(jp_ws_fetch) as live:
        live.ws.write_message("not json")
        live.ws.write_message('{"op": "subscribe", "kinds": null}')
        await live.until(lambda s: s.closed.is_set(), "the close")
        assert live.ws.close_code == 1008 and not live.control("subscribed")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # A message larger than 16 KB closes the socket too (tornado's own limit, set by the handler).
    async with live_socket(jp_ws_fetch) as live:
        await live.ws.write_message(json.dumps({"op": "subscribe", "kinds": None, "pad": "x" * 17000}))
        await live.until(lambda s: s.closed.is_set(), "the close")
    sockets = [Live(await jp_ws_fetch("cma", "api", "live")) for _ in range(MAX_SUBSCRIBERS)]
    try:
        for live in sockets:
            await live.until(lambda s: s.control("hello"), "the hello frame")
        assert await refused_status(jp_ws_fetch) == 503
    finally:
        for live in sockets:
            live.ws.close()
    await wait_until(lambda: h.ext.live.status()["subscribers"] == 0, 30, what="the sockets to close")


# --------------------------------------------------------------------------- what a view sees of a real session


async def test_a_session_seen_live_with_nothing_secret_on_the_wire(harness, jp_ws_fetch, jp_serverapp):
    h = await harness.start()
    upstream = Upstream("warehouse")
    try:
        await h.api("PUT", "egress/secrets/LIVE_KEY", {"value": EGRESS_SECRET})
        await h.api("POST", "egress/policies", {
            "name": "default", "scope": {"environment": True},
            "private_services": [{"name": "warehouse.test", "target": f"127.0.0.1:{upstream.port}"}],
            "inject": [{"host": "warehouse.test", "scheme": "http", "header": "X-Key", "secret": "LIVE_KEY"}],
        })
        agent = await h.agent()
        async with live_socket(jp_ws_fetch) as live, live_socket(jp_ws_fetch) as other:
            sid = await h.session(agent)  # no message yet: its first event comes once the view watches it
            answer = await live.subscribe(kinds=None, sessions=[sid])
            assert answer["filter"] == {"kinds": None, "sessions": [sid], "egress": None}
            await wait_until(lambda: h.ext.live_relay.status()["connected"] == 1, 30, what="the session's upstream stream")
            code = CLIENT + "print(fetch('http://warehouse.test/table?rows=10'))"
            await h.api("POST", f"sessions/{sid}/messages", {"text": script(python(code), {"say": "done"})})
            await h.turn_ends(sid)
            await wait_until(lambda: h.state(sid) == "sleeping", 30, what="the session to sleep")
            # A kernel's notebook tools changing, and the setup changing, reach the views too.
            kernel = "0b8f3c1e-0000-4000-8000-00000000a11e"
            await h.ext.notebook_tools.register(kernel, "lookup", description="Look up.", input_schema={"type": "object"})
            h.ext.notify_status_changed()

            def seen(s: Live) -> bool:
                kinds = {(m["kind"], m["data"].get("type") or m["data"].get("state")) for m in s.messages}
                return {("session.state", "sleeping"), ("session.event", "session.status_idle"), ("status.changed", None)} <= kinds

            await live.until(seen, "the session's whole run")
            await other.until(lambda s: any(m["kind"] == "status.changed" for m in s.messages), "the status change")
        rest_rows = (await get(h, "egress/log", session_id=sid))["data"]
        rest_events = (await get(h, f"sessions/{sid}/events"))["data"]
    finally:
        upstream.close()
    assert upstream.headers("x-key") == [[EGRESS_SECRET]], "the secret was in play: the proxy injected it"
    mine = [m for m in live.messages if m["session_id"] == sid]
    states = [m["data"]["state"] for m in mine if m["kind"] == "session.state"]
    assert states[:3] == ["claimed", "starting", "running"] and states[-1] == "sleeping"
    state = next(m["data"] for m in mine if m["kind"] == "session.state")
    assert (state["id"], state["tier"], state["agent_id"], state["from_state"]) == (sid, "kernel", agent, None)
    # Egress rows are exactly the rows REST serves.
    (live_row,) = [m["data"] for m in mine if m["kind"] == "egress.row"]
    assert live_row == next(r for r in rest_rows if r["id"] == live_row["id"])
    assert (live_row["host"], live_row["path"], live_row["decision"]) == ("warehouse.test", "/table", "injected")
    tools = [m["data"] for m in mine if m["kind"] == "session.tool"]
    assert [t["tool_calls"] for t in tools] == [1] and tools[0]["at"] is not None
    assert tools[0]["cold_start_ms"] == (await get(h, f"sessions/{sid}"))["cold_start_ms"] is not None  # the row shows it at once
    # Events: ids, types and times only; the contents come from REST, after any event a view has.
    relayed = [m["data"] for m in mine if m["kind"] == "session.event"]
    by_id = {e["id"]: e for e in rest_events}
    assert relayed and all(by_id[e["event_id"]]["type"] == e["type"] for e in relayed)
    assert [e["event_id"] for e in relayed] == [e["id"] for e in rest_events][-len(relayed):], "in order, none missed once watched"
    first = relayed[0]
    after = (await get(h, f"sessions/{sid}/events", after=first["processed_at"]))["data"]
    assert [e["id"] for e in after] == [e["event_id"] for e in relayed[1:]]
    assert any(m["kind"] == "tools.changed" and m["data"] == {"kernel_id": kernel} for m in live.messages)
    # The other view did not watch the session: no events of it, everything else alike.
    assert not [m for m in other.messages if m["kind"] == "session.event"]
    assert [m["data"] for m in other.messages if m["kind"] == "egress.row"] == [live_row]
    # Nothing secret in any frame, and every message's data holds only its kind's fields.
    wire = "".join(live.raw + other.raw)
    info = h.emulator.info
    for name, value in {"API key": info["api_key"], "environment key": info["environment_key"], "webhook secret": info["webhook_secret"],
                        "egress secret": EGRESS_SECRET, "server token": jp_serverapp.identity_provider.token}.items():
        assert value not in wire, f"the {name} went out on the live channel"
    assert "rows=10" not in wire, "no query string leaves the egress log"
    for m in live.messages + other.messages:
        assert set(m) == {"seq", "t", "kind", "session_id", "data"} and set(m["data"]) == DATA_KEYS[m["kind"]], m
    seqs = [m["seq"] for m in live.messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


# --------------------------------------------------------------------------- filters, bounds, reconnects


async def test_a_view_gets_what_its_filter_names(harness, jp_ws_fetch):
    h = await harness.start()
    async with live_socket(jp_ws_fetch) as everything, live_socket(jp_ws_fetch) as one_session, live_socket(jp_ws_fetch) as rows_only:
        await one_session.subscribe(kinds=["egress.row"], egress={"session_id": "sesn_a"})
        await rows_only.subscribe(kinds=["egress.row"])
        h.ext.store.transition("sesn_b", "claimed", "a test")
        h.ext.egress_log.record_many([row("sesn_b", "b.example"), row("sesn_a", "a.example"), row(None, "nobody.example")])
        h.ext.store.transition("sesn_a", "claimed", "a test")
        h.ext.egress_log.record(**row("sesn_a", "last.example"))
        for live in (everything, one_session, rows_only):
            await live.until(lambda s: any(r["host"] == "last.example" for r in egress_rows(s)), "the last row")
    assert [r["host"] for r in egress_rows(one_session)] == ["a.example", "last.example"]
    assert [r["host"] for r in egress_rows(rows_only)] == ["b.example", "a.example", "nobody.example", "last.example"]
    assert {m["kind"] for m in one_session.messages + rows_only.messages} == {"egress.row"}
    states = [(m["session_id"], m["data"]["state"]) for m in everything.messages if m["kind"] == "session.state"]
    assert states == [("sesn_b", "claimed"), ("sesn_a", "claimed")]
    assert len(egress_rows(everything)) == 4


async def test_a_subscriber_that_stops_reading_is_bounded_and_told_of_the_gap(harness, jp_ws_fetch, jp_serverapp, jp_http_port, jp_base_url):
    h = await harness.start()
    token = jp_serverapp.identity_provider.token
    reader, writer, status_line = await raw_socket(jp_http_port, f"{jp_base_url}cma/api/live", token)  # never reads until the end
    assert b" 101 " in status_line
    try:
        async with live_socket(jp_ws_fetch) as fast:
            await wait_until(lambda: h.ext.live.status()["subscribers"] == 2, 30, what="both subscribers")
            subs = list(h.ext.live.subscribers)
            pad = "/" + "p" * 2000  # about 2 KB a message: the socket's buffers fill after a few thousand
            sent = 0
            # Batches smaller than the queue, each read by the fast view before the next: it never falls behind, the other
            # never reads. Publish until the one that never reads has overflowed (through the real egress log path).
            for _ in range(400):
                h.ext.egress_log.record_many([row("sesn_bulk", "bulk.example", path=pad) for _ in range(100)])
                sent += 100
                await fast.until(lambda s, n=sent: len(egress_rows(s)) >= n, "the fast view to keep up")
                if h.ext.live.status()["gaps"] >= 1:
                    break
            status = h.ext.live.status()
            assert status["gaps"] >= 1 and status["dropped"] > 0, status
            assert all(len(s.queue) <= QUEUE for s in subs), "no queue grows past its bound"
            slow = next(s for s in subs if s.gaps)
            assert slow.maxlen == QUEUE
            # The fast view got every row, in order, and no gap.
            assert [r["id"] for r in egress_rows(fast)] == sorted(r["id"] for r in egress_rows(fast)) and len(egress_rows(fast)) == sent
            assert fast.control("gap") == []
        # Once it reads, the slow subscriber finds the gap marker in what it is sent, and can resync from REST.
        data = b""
        while b'"kind":"gap"' not in data and b'"kind": "gap"' not in data:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 60)
            assert chunk, "the socket closed before the gap marker"
            data += chunk
    finally:
        writer.close()
    await wait_until(lambda: h.ext.live.status()["subscribers"] == 0, 30, what="the sockets to close")
    assert h.ext.live.status()["dropped"] > 0, "the counters outlive their subscribers"


async def test_a_view_that_reconnects_catches_up_from_rest(harness, jp_ws_fetch):
    h = await harness.start()
    h.ext.store.transition("sesn_r", "claimed", "a test")
    first = h.ext.egress_log.record(**row("sesn_r", "before.example"))
    async with live_socket(jp_ws_fetch) as live:
        hello = live.control("hello")[0]
    # While it is away: a state change and two rows it never hears of.
    h.ext.store.transition("sesn_r", "starting", "a test")
    h.ext.egress_log.record_many([row("sesn_r", "away1.example"), row("sesn_r", "away2.example")])
    async with live_socket(jp_ws_fetch) as again:
        new_hello = again.control("hello")[0]
        assert new_hello["epoch"] == hello["epoch"] and new_hello["seq"] > hello["seq"]
        # What a view does on hello: refetch what it shows, from what it had.
        caught = await get(h, "egress/log", after=first["id"])
        assert [r["host"] for r in caught["data"]] == ["away1.example", "away2.example"]
        assert caught["next_after"] == caught["data"][-1]["id"]
        assert (await get(h, "egress/log", after=caught["next_after"])) == {"data": [], "next_after": caught["next_after"]}
        assert (await h.api("GET", "sessions/sesn_r"))["status"] == "starting"
        h.ext.store.transition("sesn_r", "running", "a test")
        await again.until(lambda s: [m for m in s.messages if m["kind"] == "session.state"], "the next state")
        assert [m["data"]["state"] for m in again.messages if m["kind"] == "session.state"] == ["running"]


# --------------------------------------------------------------------------- the upstream event relay


async def test_one_upstream_stream_per_watched_session_for_any_number_of_views(harness, jp_ws_fetch):
    h = await harness.start()
    agent = await h.agent()
    sid = await h.session(agent, script({"say": "before anyone watches"}))
    views = [Live(await jp_ws_fetch("cma", "api", "live")) for _ in range(3)]
    try:
        await h.turn_ends(sid)
        before = [e["id"] for e in (await get(h, f"sessions/{sid}/events"))["data"]]
        for view in views:
            await view.until(lambda s: s.control("hello"), "the hello frame")
            assert (await view.subscribe(kinds=["session.event"], sessions=[sid]))["filter"]["sessions"] == [sid]
        await wait_until(lambda: h.ext.live_relay.status()["connected"] == 1, 30, what="the session's upstream stream")
        # Once the stream is open, the newest event so far is announced: what the first view read before the
        # stream opened is caught up from there (the stream itself carries only what happens from then on).
        # A view that came once it was open read REST after it opened: it misses nothing either way.
        def event_ids(view: Live) -> list[str]:
            return [m["data"]["event_id"] for m in view.messages if m["kind"] == "session.event"]

        await views[0].until(event_ids, "the newest event so far")
        assert event_ids(views[0]) == before[-1:]
        await h.api("POST", f"sessions/{sid}/messages", {"text": script({"say": "hello"})})
        await h.turn_ends(sid, turns=2)
        rest_ids = [e["id"] for e in (await get(h, f"sessions/{sid}/events"))["data"]]
        for view in views:
            await view.until(lambda s: rest_ids[-1] in event_ids(s), "the last event")
            assert event_ids(view) in (rest_ids[len(before) - 1:], rest_ids[len(before):])
        status = (await h.api("GET", "status"))["live"]
        assert (status["watched_sessions"], status["streams"], status["upstream_opens"]) == (1, 1, 1)
        streams = [r for r in h.emulator.requests() if r["path"] == f"/v1/sessions/{sid}/events/stream"]
        assert len(streams) <= 1  # the emulator lists a stream once it ended, if at all: never a second one
        # The server's cap on watched sessions: one view asking for more is told which it does not get.
        others = [f"sesn_other{i}" for i in range(MAX_WATCHED)]
        answer = await views[0].subscribe(kinds=["session.event"], sessions=[sid, *others])
        assert len(answer["refused"]) == 1 and "live_max_watched_sessions" in answer["message"]
        assert len(answer["filter"]["sessions"]) == MAX_WATCHED
        await views[0].subscribe(kinds=["session.event"], sessions=[sid])
    finally:
        for view in views:
            view.ws.close()
    # The last view gone, the stream lingers, then closes.
    await wait_until(lambda: h.ext.live.status()["watched_sessions"] == 0, 30, what="the views to let go")
    await wait_until(lambda: h.ext.live_relay.status()["streams"] == 0, 30, what="the stream to close after its linger")
    assert h.ext.live_relay.status()["upstream_opens"] >= 1


async def test_a_view_at_the_cap_can_swap_the_sessions_it_watches(harness, jp_ws_fetch):
    h = await harness.start()
    first = [f"sesn_first{i}" for i in range(MAX_WATCHED)]
    second = [f"sesn_second{i}" for i in range(MAX_WATCHED)]
    async with live_socket(jp_ws_fetch) as view:
        assert "refused" not in await view.subscribe(kinds=["session.event"], sessions=first)
        # The sessions it gives up make room for those it names now, though the server watches as many as it may.
        answer = await view.subscribe(kinds=["session.event"], sessions=second)
        assert "refused" not in answer and answer["filter"]["sessions"] == second
        assert sorted(h.ext.live.watched()) == second


async def test_a_stopping_hub_opens_no_upstream_stream():
    from anthropic import AsyncAnthropic

    from jupyter_cma.control.relay import SessionEventRelay
    from jupyter_cma.live import LiveFilter, LiveHub

    relay = SessionEventRelay(client=AsyncAnthropic(api_key="unused", base_url="http://127.0.0.1:9"), publish=lambda *a, **k: None)
    hub = LiveHub(watcher=relay)
    sub = hub.subscribe()
    hub.close()  # the server stops; a socket not yet closed still sends its filter
    assert hub.set_filter(sub, LiveFilter(sessions=frozenset({"sesn_late"}))) == ["sesn_late"]
    assert relay.status()["streams"] == 0 and not list(hub.watched())
    await relay.close()
