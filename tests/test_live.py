"""The live channel (`{base_url}cma/api/live`) through the real server, against the emulator.

Real HTTP and websockets on loopback, real kernels serving real sessions, the real write paths (the store's
transitions, the egress log, the API's event streams). pytest-jupyter has no async fixtures, so each test opens
its sockets with `live_socket`, an async context manager.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import pytest
import tornado.httpclient
import tornado.websocket

from jupyter_cma.live import EGRESS_ROW_FIELDS, SESSION_STATE_FIELDS
from tests.emulator_fixtures import start_emulator
from tests.helpers import wait_until
from tests.test_dispatch import Harness, python, script
from tests.test_egress_proxy import CLIENT, Upstream

QUEUE = 200  # the subscribers' bound in these tests, so overflowing one takes a few thousand rows, not tens of thousands
LINGER = 0.5  # seconds an unwatched session's upstream stream stays open here
MAX_WATCHED = 3
MAX_SUBSCRIBERS = 8
EGRESS_SECRET = f"sk-live-{secrets.token_hex(16)}"  # made per run: if a frame holds it, the channel leaked it

DATA_KEYS = {
    "session.state": set(SESSION_STATE_FIELDS),
    "session.event": {"session_id", "event_id", "type", "processed_at"},
    "session.tool": {"session_id", "tool_calls", "at"},
    "egress.row": set(EGRESS_ROW_FIELDS),
    "tools.changed": {"kernel_id"},
    "status.changed": set(),
}


@pytest.fixture
def cma_emulator(jp_http_port, jp_base_url):
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}cma/webhooks"
    emu = start_emulator("--webhook-url", url, "--EmulatorApp.webhook_retry_delays=[0.2,0.5,1,2,4]")
    yield emu
    emu.stop()


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


@pytest.fixture
def harness(jp_serverapp, jp_fetch, cma_emulator):
    return Harness(jp_serverapp, jp_fetch, cma_emulator)


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
    """A websocket client that never reads unless asked: a small receive buffer, the upgrade by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head.split(b"\r\n")[0]


def row(session_id: str | None, host: str, **extra: Any) -> dict[str, Any]:
    return {"method": "GET", "scheme": "https", "host": host, "port": 443, "path": "/x", "decision": "allowed",
            "session_id": session_id, **extra}


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


async def test_bad_client_messages_close_the_socket_and_subscribers_are_capped(harness, jp_ws_fetch):
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
