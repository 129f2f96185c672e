"""HTTP-level tests of the Managed Agents emulator against the wire contract.

Plain httpx, talking the way the `anthropic` SDK does: every credential as
`Authorization: Bearer`, bodiless POSTs (ack, heartbeat) with
`content-type: application/json` and an empty body, query arrays with
brackets. The contract is docs/cma-api-contract.md; section numbers in
docstrings refer to it.

Every test that touches a work queue uses a fresh environment, so tests never
share a queue even though they share one emulator process per module.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from standardwebhooks import Webhook

from tests.emulator_fixtures import EmulatorProcess, start_emulator

T = TypeVar("T")

JSON = {"content-type": "application/json"}
NO_HEARTBEAT = "NO_HEARTBEAT"
TOOLSET = {"type": "agent_toolset_20260401"}
TOOLSET_NAMES = {"bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"}
LOOKUP_TOOL = {
    "type": "custom",
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


# --------------------------------------------------------------------------- helpers


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition", interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def assert_error(resp: httpx.Response, status: int, error_type: str | None = None) -> dict[str, Any]:
    """Assert the API error shape `{"type":"error","error":{"type","message"}}`; return `error`."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["type"] == "error"
    assert isinstance(body["error"]["type"], str)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if error_type is not None:
        assert body["error"]["type"] == error_type, body
    return body["error"]


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    return resp.json()


def script(*steps: dict[str, Any]) -> str:
    return json.dumps({"cma_script": list(steps)})


def user_message(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def tool_result(tool_use_id: str, text: str, is_error: bool = False) -> dict[str, Any]:
    return {"type": "user.tool_result", "tool_use_id": tool_use_id, "is_error": is_error, "content": [{"type": "text", "text": text}]}


def decode_secret(secret: str) -> dict[str, Any]:
    """The worker's decoding: base64url, padding optional (§4.6)."""
    return json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def texts(event: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in event.get("content") or [])


def idle_reasons(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["stop_reason"] for e in events if e["type"] == "session.status_idle"]


@dataclass
class Ctx:
    """A fresh environment in an emulator, with clients for each credential."""

    emu: EmulatorProcess
    env_id: str
    env_key: str
    api: httpx.Client
    envc: httpx.Client

    def http(self, token: str) -> httpx.Client:
        return self.emu.http(token)

    # ---- resources

    def agent(self, tools: list[dict[str, Any]] | None = None, **body: Any) -> dict[str, Any]:
        payload = {"name": "test agent", "model": "claude-emulated", "tools": [TOOLSET] if tools is None else tools, **body}
        return ok(self.api.post("/v1/agents", json=payload))

    def session(self, agent_id: str | None = None, **body: Any) -> dict[str, Any]:
        agent_id = agent_id or self.agent()["id"]
        return ok(self.api.post("/v1/sessions", json={"agent": agent_id, "environment_id": self.env_id, **body}))

    # ---- work queue

    def work_url(self, work_id: str = "", suffix: str = "") -> str:
        url = f"/v1/environments/{self.env_id}/work"
        if work_id:
            url += f"/{work_id}"
        return url + suffix

    def poll(self, client: httpx.Client | None = None, **params: Any) -> httpx.Response:
        headers = {}
        if "worker_id" in params:
            headers["anthropic-worker-id"] = params.pop("worker_id")
        return (client or self.envc).get(self.work_url(suffix="/poll"), params=params, headers=headers)

    def poll_item(self, **params: Any) -> dict[str, Any]:
        item = ok(self.poll(**params))
        assert item is not None, "expected a work item, the queue was empty"
        return item

    def ack(self, work_id: str, client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.envc).post(self.work_url(work_id, "/ack"), headers=JSON)

    def heartbeat(self, work_id: str, expected: str | None, client: httpx.Client | None = None, **params: Any) -> httpx.Response:
        query = [] if expected is None else [f"expected_last_heartbeat={quote(expected, safe='')}"]
        query += [f"{k}={quote(str(v), safe='')}" for k, v in params.items()]
        url = self.work_url(work_id, "/heartbeat") + ("?" + "&".join(query) if query else "")
        return (client or self.envc).post(url, headers=JSON)

    def stop(self, work_id: str, body: dict[str, Any], client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.envc).post(self.work_url(work_id, "/stop"), json=body)

    def work_items(self) -> list[dict[str, Any]]:
        return ok(self.envc.get(self.work_url(), params={"limit": 1000}))["data"]

    def work_for(self, session_id: str) -> list[dict[str, Any]]:
        return [w for w in self.work_items() if w["data"] == {"type": "session", "id": session_id}]

    def work_state(self, work_id: str) -> str:
        return ok(self.api.get(self.work_url(work_id)))["state"]

    def stats(self) -> dict[str, Any]:
        return ok(self.envc.get(self.work_url(suffix="/stats")))

    def claim(self) -> tuple[dict[str, Any], str]:
        """Poll and ack the next item as the SDK worker does; return it and its sessions token."""
        item = self.poll_item()
        ok(self.ack(item["id"]))
        return item, decode_secret(item["secret"])["sessions_token"]

    # ---- events

    def send(self, session_id: str, *events: dict[str, Any], client: httpx.Client | None = None) -> httpx.Response:
        return (client or self.api).post(f"/v1/sessions/{session_id}/events", json={"events": list(events)})

    def events(self, session_id: str, client: httpx.Client | None = None, **params: Any) -> list[dict[str, Any]]:
        """The whole history, following `next_page` the way the runner does."""
        client = client or self.api
        params = {"limit": 1000, **params}
        out: list[dict[str, Any]] = []
        while True:
            page = ok(client.get(f"/v1/sessions/{session_id}/events", params=params))
            out.extend(page["data"])
            if not page["next_page"]:
                return out
            params["page"] = page["next_page"]

    def wait_events(self, session_id: str, predicate: Callable[[list[dict[str, Any]]], Any], what: str = "events", timeout: float = 15.0) -> list[dict[str, Any]]:
        holder: list[list[dict[str, Any]]] = []

        def check() -> bool:
            evs = self.events(session_id)
            holder[:] = [evs]
            return bool(predicate(evs))

        try:
            wait_for(check, timeout, what)
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}; history: {types(holder[0]) if holder else None}") from None
        return holder[0]

    def wait_idle(self, session_id: str, count: int = 1, reason: str | None = None) -> list[dict[str, Any]]:
        """Wait for the `count`-th `session.status_idle` (optionally with stop reason `reason`)."""

        def done(evs: list[dict[str, Any]]) -> bool:
            reasons = [r for r in idle_reasons(evs) if reason is None or r["type"] == reason]
            return len(reasons) >= count

        return self.wait_events(session_id, done, f"idle #{count} ({reason or 'any'})")


def new_ctx(emu: EmulatorProcess) -> Iterator[Ctx]:
    env_id, env_key = emu.new_environment()
    api, envc = emu.http(), emu.http(env_key)
    try:
        yield Ctx(emu, env_id, env_key, api, envc)
    finally:
        api.close()
        envc.close()


@pytest.fixture
def ctx(emulator: EmulatorProcess) -> Iterator[Ctx]:
    yield from new_ctx(emulator)


@pytest.fixture
def short_ctx(short_lease_emulator: EmulatorProcess) -> Iterator[Ctx]:
    yield from new_ctx(short_lease_emulator)


class SSEReader:
    """Reads an event stream in a thread; frames as dicts `{"event","data","raw"}`."""

    def __init__(self, emu: EmulatorProcess, session_id: str, token: str | None = None) -> None:
        self.client = emu.http(token)
        self.path = f"/v1/sessions/{session_id}/events/stream"
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.client.stream("GET", self.path, headers={"accept": "application/json"}) as resp:
                self.status, self.headers = resp.status_code, resp.headers
                self.connected.set()
                lines: list[str] = []
                for line in resp.iter_lines():
                    if line:
                        if not line.startswith(":"):  # SSE comments carry nothing
                            lines.append(line)
                        continue
                    if lines:
                        self.frames.put(self._parse(lines))
                        lines = []
        except BaseException as exc:  # noqa: BLE001 - report it to the test
            self.error = exc
        finally:
            self.connected.set()
            self.closed.set()

    @staticmethod
    def _parse(lines: list[str]) -> dict[str, Any]:
        fields: dict[str, Any] = {"raw": lines}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
        return fields

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> list[dict[str, Any]]:
        """Frames received up to and including the first one matching `predicate`."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {timeout} s; got {[f.get('event') for f in got]}")
            try:
                frame = self.frames.get(timeout=remaining)
            except queue.Empty:
                continue
            got.append(frame)
            if predicate(frame):
                return got

    def close(self) -> None:
        self.client.close()


# =========================================================================== poll


def test_empty_poll_is_200_json_null(ctx: Ctx) -> None:
    """§0.2: an empty poll is HTTP 200, application/json, body `null` (non-blocking and blocking)."""
    for params in ({}, {"block_ms": 1}, {"block_ms": 999}):
        resp = ctx.poll(**params)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.content.strip() == b"null"
        assert resp.json() is None


@pytest.mark.parametrize("block_ms", ["0", "1000", "-5", "soon"])
def test_poll_rejects_block_ms_out_of_range(ctx: Ctx, block_ms: str) -> None:
    """§4.2: block_ms is 1–999; 0 is rejected by the server."""
    assert_error(ctx.poll(block_ms=block_ms), 400, "invalid_request_error")


def test_long_poll_returns_an_item_enqueued_while_waiting(ctx: Ctx) -> None:
    """A poll with block_ms=999 that started before the session existed returns its item."""
    agent_id = ctx.agent()["id"]
    for attempt in range(3):  # the window is under a second: allow a slow machine a retry
        env_id, env_key = ctx.emu.new_environment()
        sub = Ctx(ctx.emu, env_id, env_key, ctx.api, ctx.http(env_key))
        result: list[httpx.Response] = []
        worker = f"long-poller-{attempt}"
        thread = threading.Thread(target=lambda: result.append(sub.poll(block_ms=999, worker_id=worker)))
        thread.start()
        # The poll has reached the server once it counts as a polling worker.
        wait_for(lambda: sub.stats()["workers_polling"] == 1, 10, "the poll to arrive")
        session = sub.session(agent_id)
        thread.join(30)
        sub.envc.close()
        item = ok(result[0])
        if item is None:
            continue  # the poll timed out before the session was created; try again
        assert item["data"] == {"type": "session", "id": session["id"]}
        return
    pytest.fail("a long poll never returned the item created while it waited")


def test_poll_secret_carries_a_sessions_token_and_other_paths_return_null_secret(ctx: Ctx) -> None:
    """§4.1, §4.6: only poll populates `secret`, base64url JSON with `sessions_token`."""
    session = ctx.session()
    item = ctx.poll_item()
    secret = item["secret"]
    assert isinstance(secret, str) and secret
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    token = decode_secret(secret)["sessions_token"]
    assert isinstance(token, str) and token
    assert token not in (ctx.env_key, ctx.emu.api_key)
    assert item["type"] == "work" and item["environment_id"] == ctx.env_id and item["data"]["id"] == session["id"]

    acked = ok(ctx.ack(item["id"]))
    assert acked["secret"] is None
    assert all(w["secret"] is None for w in ctx.work_items())
    assert ok(ctx.api.get(ctx.work_url(item["id"])))["secret"] is None
    assert ok(ctx.api.post(ctx.work_url(item["id"]), json={"metadata": {"k": "v"}}))["secret"] is None
    assert ok(ctx.heartbeat(item["id"], NO_HEARTBEAT)).get("secret") is None
    assert ok(ctx.stop(item["id"], {"force": True}))["secret"] is None


def test_poll_on_a_cloud_environment_is_rejected_and_its_sessions_enqueue_nothing(ctx: Ctx) -> None:
    env = ok(ctx.api.post("/v1/environments", json={"name": "cloud", "config": {"type": "cloud"}}))
    key = ok(ctx.api.post(f"/_emulator/environments/{env['id']}/keys"))["environment_key"]
    ok(ctx.api.post("/v1/sessions", json={"agent": ctx.agent()["id"], "environment_id": env["id"]}))
    with ctx.http(key) as client:
        assert_error(client.get(f"/v1/environments/{env['id']}/work/poll"), 400)
        assert ok(client.get(f"/v1/environments/{env['id']}/work"))["data"] == []


# =========================================================================== queue


def test_creating_a_session_enqueues_exactly_one_item(ctx: Ctx) -> None:
    session = ctx.session()
    items = ctx.work_items()
    assert len(items) == 1
    assert items[0]["data"] == {"type": "session", "id": session["id"]}
    assert items[0]["state"] == "queued"
    assert items[0]["type"] == "work" and items[0]["environment_id"] == ctx.env_id
    assert items[0]["acknowledged_at"] is None and items[0]["stopped_at"] is None
    assert ctx.poll_item()["id"] == items[0]["id"]


def test_queue_stats(ctx: Ctx) -> None:
    """§4.2: depth, pending (polled, not acked), oldest_queued_at, workers_polling."""
    stats = ctx.stats()
    assert stats == {"type": "work_queue_stats", "depth": 0, "pending": 0, "oldest_queued_at": None, "workers_polling": 0}
    ctx.session()
    ctx.session()
    stats = ctx.stats()
    assert (stats["depth"], stats["pending"]) == (2, 0)
    assert isinstance(stats["oldest_queued_at"], str) and stats["oldest_queued_at"].endswith("Z")
    oldest = stats["oldest_queued_at"]

    first = ctx.poll_item(worker_id="worker-a")
    stats = ctx.stats()
    assert (stats["depth"], stats["pending"], stats["workers_polling"]) == (2, 1, 1)
    assert stats["oldest_queued_at"] == oldest

    ctx.poll_item(worker_id="worker-b")
    ctx.poll(worker_id="worker-a")  # the same worker again counts once; the queue is drained
    stats = ctx.stats()
    assert (stats["depth"], stats["pending"], stats["workers_polling"]) == (2, 2, 2)

    ok(ctx.ack(first["id"]))
    stats = ctx.stats()
    assert (stats["depth"], stats["pending"]) == (1, 1)
    assert stats["oldest_queued_at"] >= oldest


def test_polled_item_is_redelivered_only_after_reclaim_window(ctx: Ctx) -> None:
    ctx.session()
    item = ctx.poll_item()
    # Within the default reclaim window (5 s) and within an explicit long one: nothing to hand out.
    assert ok(ctx.poll()) is None
    assert ok(ctx.poll(reclaim_older_than_ms=600_000)) is None
    time.sleep(0.3)
    again = ctx.poll_item(reclaim_older_than_ms=100)
    assert again["id"] == item["id"]
    assert again["state"] == "queued"


def test_ack_moves_item_to_starting_and_a_second_ack_is_409_without_retry(ctx: Ctx) -> None:
    ctx.session()
    item = ctx.poll_item()
    assert item["state"] == "queued"
    acked = ok(ctx.ack(item["id"]))
    assert acked["state"] == "starting"
    assert acked["acknowledged_at"] is not None
    assert ctx.stats()["depth"] == 0
    assert ok(ctx.poll()) is None  # removed from the queue

    again = ctx.ack(item["id"])
    assert_error(again, 409)
    assert again.headers["x-should-retry"] == "false"


def test_ack_of_an_item_never_polled_is_409(ctx: Ctx) -> None:
    ctx.session()
    (item,) = ctx.work_items()
    resp = ctx.ack(item["id"])
    assert_error(resp, 409)
    assert resp.headers["x-should-retry"] == "false"


def test_unknown_work_item_is_404(ctx: Ctx) -> None:
    assert_error(ctx.ack("work_doesnotexist"), 404, "not_found_error")
    assert_error(ctx.heartbeat("work_doesnotexist", NO_HEARTBEAT), 404, "not_found_error")


def test_healthcheck_items(ctx: Ctx) -> None:
    """§4.1: a healthcheck item is polled and acked like any other, then stopped."""
    hc = ok(ctx.api.post(f"/_emulator/environments/{ctx.env_id}/healthcheck"))
    assert hc["data"]["type"] == "healthcheck" and isinstance(hc["data"]["id"], str)
    item = ctx.poll_item()
    assert item["id"] == hc["id"]
    ok(ctx.ack(item["id"]))
    assert ok(ctx.stop(item["id"], {"force": True}))["state"] == "stopped"


# =========================================================================== heartbeat


def test_heartbeat_protocol(ctx: Ctx) -> None:
    """§4.3: NO_HEARTBEAT claims the lease, each beat echoes the previous value, a wrong one is 412."""
    ctx.session()
    item, _ = ctx.claim()
    first = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT))
    assert set(first) == {"type", "last_heartbeat", "lease_extended", "state", "ttl_seconds"}
    assert first["type"] == "work_heartbeat"
    assert first["lease_extended"] is True
    assert first["state"] == "active"
    assert first["ttl_seconds"] == 120 and isinstance(first["ttl_seconds"], int)
    assert isinstance(first["last_heartbeat"], str) and first["last_heartbeat"]
    assert ctx.work_state(item["id"]) == "active"

    second = ok(ctx.heartbeat(item["id"], first["last_heartbeat"]))
    assert second["lease_extended"] is True and second["state"] == "active"
    assert second["last_heartbeat"] != first["last_heartbeat"]
    retrieved = ok(ctx.api.get(ctx.work_url(item["id"])))
    assert retrieved["latest_heartbeat_at"] is not None and retrieved["started_at"] is not None

    for wrong in (first["last_heartbeat"], NO_HEARTBEAT, "hb-1"):
        resp = ctx.heartbeat(item["id"], wrong)
        error = assert_error(resp, 412, "invalid_request_error")
        details = error["details"]
        assert details["error_code"] == "heartbeat_precondition_failed"
        state = details["current_state"]
        assert state["state"] == "active"
        assert state["last_heartbeat"] == second["last_heartbeat"]
        assert state["lease_extended"] is False
        assert state["ttl_seconds"] == 120
    # The failed beats changed nothing: the right value still works.
    assert ok(ctx.heartbeat(item["id"], second["last_heartbeat"]))["lease_extended"] is True


def test_heartbeat_parameters_are_query_parameters(ctx: Ctx) -> None:
    """§4.2: the SDK sends expected_last_heartbeat in the query; a JSON body is not read."""
    ctx.session()
    item, _ = ctx.claim()
    resp = ctx.envc.post(ctx.work_url(item["id"], "/heartbeat"), json={"expected_last_heartbeat": NO_HEARTBEAT})
    assert_error(resp, 412)
    beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT))
    assert beat["lease_extended"] is True


def test_heartbeat_desired_ttl_is_honoured(ctx: Ctx) -> None:
    ctx.session()
    item, _ = ctx.claim()
    beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, desired_ttl_seconds=30))
    assert beat["ttl_seconds"] == 30
    beat = ok(ctx.heartbeat(item["id"], beat["last_heartbeat"], desired_ttl_seconds=45))
    assert beat["ttl_seconds"] == 45
    beat = ok(ctx.heartbeat(item["id"], beat["last_heartbeat"]))
    assert beat["ttl_seconds"] == 120


def test_desired_ttl_outlives_the_default_lease(short_ctx: Ctx) -> None:
    """With 2 s leases, a beat asking for 60 s keeps the item active well past 2 s."""
    ctx = short_ctx
    ctx.session()
    item, _ = ctx.claim()
    beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, desired_ttl_seconds=60))
    assert beat["ttl_seconds"] == 60
    time.sleep(3.5)
    assert ctx.work_state(item["id"]) == "active"
    assert ok(ctx.heartbeat(item["id"], beat["last_heartbeat"]))["lease_extended"] is True


def test_heartbeat_on_a_queued_item_is_412(ctx: Ctx) -> None:
    ctx.session()
    item = ctx.poll_item()
    error = assert_error(ctx.heartbeat(item["id"], NO_HEARTBEAT), 412)
    assert error["details"]["current_state"]["state"] == "queued"
    assert error["details"]["current_state"]["last_heartbeat"] is None


# =========================================================================== lease expiry


def test_lease_expires_without_heartbeats(short_ctx: Ctx) -> None:
    """§4.3: ack, no beat → after the TTL the item is queued again and re-pollable; the old holder gets 412."""
    ctx = short_ctx
    session = ctx.session()
    item, token = ctx.claim()
    wait_for(lambda: ctx.work_state(item["id"]) == "queued", 20, "the lease to expire")
    again = ctx.poll_item()
    assert again["id"] == item["id"] and again["data"]["id"] == session["id"]
    assert decode_secret(again["secret"])["sessions_token"] != token
    # The old holder (here heartbeating with the environment key) has lost the lease.
    error = assert_error(ctx.heartbeat(item["id"], NO_HEARTBEAT), 412)
    assert error["details"]["error_code"] == "heartbeat_precondition_failed"
    assert error["details"]["current_state"]["state"] == "queued"
    assert error["details"]["current_state"]["ttl_seconds"] == 2


def test_lease_expires_after_the_last_heartbeat(short_ctx: Ctx) -> None:
    ctx = short_ctx
    ctx.session()
    item, _ = ctx.claim()
    beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT))
    assert beat["ttl_seconds"] == 2
    wait_for(lambda: ctx.work_state(item["id"]) == "queued", 20, "the lease to expire")
    error = assert_error(ctx.heartbeat(item["id"], beat["last_heartbeat"]), 412)
    state = error["details"]["current_state"]
    assert state["state"] == "queued" and state["last_heartbeat"] is None and state["lease_extended"] is False
    assert ctx.poll_item()["id"] == item["id"]


def test_lease_expiry_old_holder_heartbeat_with_its_sessions_token_is_412(short_ctx: Ctx) -> None:
    """The SDK worker beats with its sessions token: a lost lease must answer 412, not 401."""
    ctx = short_ctx
    ctx.session()
    item, token = ctx.claim()
    with ctx.http(token) as holder:
        beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder))
        wait_for(lambda: ctx.work_state(item["id"]) == "queued", 20, "the lease to expire")
        error = assert_error(ctx.heartbeat(item["id"], beat["last_heartbeat"], client=holder), 412)
        assert error["details"]["error_code"] == "heartbeat_precondition_failed"
        assert error["details"]["current_state"]["state"] == "queued"
        # Another worker picks the item up with a fresh token; the old holder still hears 412.
        again = ctx.poll_item()
        assert again["id"] == item["id"]
        new_token = decode_secret(again["secret"])["sessions_token"]
        assert new_token != token
        ok(ctx.ack(item["id"]))
        with ctx.http(new_token) as new_holder:
            assert ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=new_holder))["lease_extended"] is True
        assert_error(ctx.heartbeat(item["id"], beat["last_heartbeat"], client=holder), 412)
        assert_error(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder), 412)


def test_a_stale_token_cannot_touch_the_new_holders_lease(ctx: Ctx) -> None:
    """After a lease moves on, the old holder's token can neither claim nor stop it."""
    ctx.session()
    item, old_token = ctx.claim()
    ok(ctx.api.post(f"/_emulator/work/{item['id']}/expire"))
    again = ctx.poll_item()
    new_token = decode_secret(again["secret"])["sessions_token"]
    ok(ctx.ack(item["id"]))
    with ctx.http(old_token) as old_holder:
        # Before the new holder's first beat, NO_HEARTBEAT would match: the token's delivery decides.
        assert_error(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=old_holder), 412)
        stop = old_holder.post(f"/v1/environments/{ctx.env_id}/work/{item['id']}/stop", json={"force": True})
        assert_error(stop, 409)
        assert stop.headers["x-should-retry"] == "false"
    with ctx.http(new_token) as new_holder:
        assert ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=new_holder))["state"] == "active"
    assert ctx.work_state(item["id"]) == "active"


def test_admin_expire_requeues_at_once(ctx: Ctx) -> None:
    ctx.session()
    item, _ = ctx.claim()
    beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT))
    expired = ok(ctx.api.post(f"/_emulator/work/{item['id']}/expire"))
    assert expired["state"] == "queued"
    assert ctx.poll_item()["id"] == item["id"]
    error = assert_error(ctx.heartbeat(item["id"], beat["last_heartbeat"]), 412)
    assert error["details"]["current_state"]["state"] == "queued"
    # Only a held lease can expire.
    assert_error(ctx.api.post(f"/_emulator/work/{item['id']}/expire"), 400)


# =========================================================================== stop


def test_force_stop(ctx: Ctx) -> None:
    ctx.session()
    item, token = ctx.claim()
    with ctx.http(token) as holder:
        beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder))
        stopped = ok(ctx.stop(item["id"], {"force": True}, client=holder))
    assert stopped["state"] == "stopped"
    assert stopped["stopped_at"] is not None and stopped["stop_requested_at"] is not None
    # A beat on a stopped item is not compared: it answers 200, stopped, not extended.
    beat = ok(ctx.heartbeat(item["id"], beat["last_heartbeat"]))
    assert (beat["state"], beat["lease_extended"]) == ("stopped", False)
    again = ctx.stop(item["id"], {"force": True})
    assert_error(again, 409)
    assert again.headers["x-should-retry"] == "false"


def test_graceful_stop_of_an_active_item_asks_the_holder_to_stop(ctx: Ctx) -> None:
    ctx.session()
    item, token = ctx.claim()
    with ctx.http(token) as holder:
        ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder))
        stopping = ok(ctx.stop(item["id"], {}))  # the poller's auto_stop body
        assert stopping["state"] == "stopping"
        assert stopping["stop_requested_at"] is not None and stopping["stopped_at"] is None
        # Whatever value the holder sends, the beat says: stopping, lease not extended.
        for expected in (NO_HEARTBEAT, "anything", "2026-01-01T00:00:00Z"):
            beat = ok(ctx.heartbeat(item["id"], expected, client=holder))
            assert beat["state"] == "stopping"
            assert beat["lease_extended"] is False
            assert beat["type"] == "work_heartbeat"
        # The worker reacts with a force stop, using its sessions token.
        assert ok(ctx.stop(item["id"], {"force": True}, client=holder))["state"] == "stopped"
    resp = ctx.stop(item["id"], {})
    assert_error(resp, 409)
    assert resp.headers["x-should-retry"] == "false"


def test_graceful_stop_of_a_queued_item_stops_it(ctx: Ctx) -> None:
    ctx.session()
    (item,) = ctx.work_items()
    assert ok(ctx.stop(item["id"], {}))["state"] == "stopped"
    assert ok(ctx.poll()) is None
    assert ctx.stats()["depth"] == 0


def test_stop_with_no_body_at_all_is_graceful(ctx: Ctx) -> None:
    ctx.session()
    item, _ = ctx.claim()
    resp = ctx.envc.post(ctx.work_url(item["id"], "/stop"), headers=JSON)
    assert ok(resp)["state"] == "stopping"


def test_stop_rejects_a_non_boolean_force(ctx: Ctx) -> None:
    ctx.session()
    item, _ = ctx.claim()
    assert_error(ctx.stop(item["id"], {"force": "yes"}), 400, "invalid_request_error")


# =========================================================================== credentials


def test_api_key_cannot_poll_or_ack(ctx: Ctx) -> None:
    ctx.session()
    assert_error(ctx.poll(client=ctx.api), 403, "permission_error")
    item = ctx.poll_item()
    assert_error(ctx.ack(item["id"], client=ctx.api), 403, "permission_error")
    ok(ctx.ack(item["id"]))


def test_environment_key_of_another_environment_is_403(ctx: Ctx) -> None:
    ctx.session()
    _, other_key = ctx.emu.new_environment("other")
    with ctx.http(other_key) as other:
        assert_error(ctx.poll(client=other), 403, "permission_error")
        assert_error(other.get(ctx.work_url()), 403, "permission_error")
        item = ctx.poll_item()
        assert_error(ctx.ack(item["id"], client=other), 403, "permission_error")
        assert_error(other.get(f"/v1/sessions/{item['data']['id']}"), 403, "permission_error")


def test_unknown_or_missing_token_is_401(ctx: Ctx) -> None:
    with ctx.http("sk-ant-not-a-real-token") as stranger:
        assert_error(ctx.poll(client=stranger), 401, "authentication_error")
        assert_error(stranger.get("/v1/agents"), 401, "authentication_error")
    with httpx.Client(base_url=ctx.emu.base_url) as anonymous:
        assert_error(anonymous.get("/v1/agents"), 401, "authentication_error")


def test_x_api_key_header_is_accepted(ctx: Ctx) -> None:
    """§0.1: accepting `x-api-key` as well is harmless (older SDKs)."""
    with httpx.Client(base_url=ctx.emu.base_url, headers={"x-api-key": ctx.emu.api_key}) as client:
        assert "data" in ok(client.get("/v1/agents"))
    with httpx.Client(base_url=ctx.emu.base_url, headers={"x-api-key": ctx.env_key}) as client:
        assert ok(client.get(ctx.work_url(suffix="/poll"))) is None


def test_sessions_token_scope(ctx: Ctx) -> None:
    """§2: the item's sessions token works for its own item and session, not for others."""
    agent_id = ctx.agent()["id"]
    mine = ctx.session(agent_id)
    other = ctx.session(agent_id)
    item, token = ctx.claim()
    assert item["data"]["id"] == mine["id"]
    other_item = ctx.poll_item()
    assert other_item["data"]["id"] == other["id"]
    ok(ctx.ack(other_item["id"]))
    with ctx.http(token) as holder:
        beat = ok(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder))
        assert beat["lease_extended"] is True
        assert ok(holder.get(f"/v1/sessions/{mine['id']}"))["id"] == mine["id"]
        ok(holder.get(f"/v1/sessions/{mine['id']}/events", params={"limit": 1000}))
        send = ctx.send(mine["id"], user_message("from the sandbox"), client=holder)
        assert ok(send)["data"][0]["type"] == "user.message"

        assert_error(holder.get(f"/v1/sessions/{other['id']}"), 403, "permission_error")
        assert_error(holder.get(f"/v1/sessions/{other['id']}/events"), 403, "permission_error")
        assert_error(ctx.send(other["id"], user_message("nope"), client=holder), 403, "permission_error")
        assert_error(holder.get(f"/v1/sessions/{other['id']}/events/stream"), 403, "permission_error")
        assert_error(ctx.heartbeat(other_item["id"], NO_HEARTBEAT, client=holder), 403, "permission_error")
        assert_error(ctx.stop(other_item["id"], {"force": True}, client=holder), 403, "permission_error")
        # Polling and acking stay on the environment key.
        assert_error(ctx.poll(client=holder), 403, "permission_error")
        # Control-plane calls need the API key.
        assert_error(holder.get("/v1/agents"), 403, "permission_error")

        assert ok(ctx.stop(item["id"], {"force": True}, client=holder))["state"] == "stopped"
        # Once its item stops, the token is revoked.
        assert_error(holder.get(f"/v1/sessions/{mine['id']}"), 401, "authentication_error")
        assert_error(ctx.heartbeat(item["id"], NO_HEARTBEAT, client=holder), 401, "authentication_error")


def test_environment_key_reads_sessions_of_its_environment(ctx: Ctx) -> None:
    session = ctx.session()
    assert ok(ctx.envc.get(f"/v1/sessions/{session['id']}"))["id"] == session["id"]
    ok(ctx.envc.get(f"/v1/sessions/{session['id']}/events"))


def test_work_list_rejects_api_key_and_retrieve_update_reject_env_key(ctx: Ctx) -> None:
    ctx.session()
    item = ctx.poll_item()
    token = decode_secret(item["secret"])["sessions_token"]
    assert_error(ctx.api.get(ctx.work_url()), 403, "permission_error")
    assert len(ok(ctx.envc.get(ctx.work_url()))["data"]) == 1
    with ctx.http(token) as holder:
        for client in (ctx.envc, holder):
            assert_error(client.get(ctx.work_url(item["id"])), 403, "permission_error")
            assert_error(client.post(ctx.work_url(item["id"]), json={"metadata": {"a": "b"}}), 403, "permission_error")
    assert ok(ctx.api.get(ctx.work_url(item["id"])))["id"] == item["id"]


def test_work_update_merges_metadata(ctx: Ctx) -> None:
    ctx.session()
    (item,) = ctx.work_items()
    url = ctx.work_url(item["id"])
    assert ok(ctx.api.post(url, json={"metadata": {"a": "1", "b": "2"}}))["metadata"] == {"a": "1", "b": "2"}
    assert ok(ctx.api.post(url, json={"metadata": {"a": None, "c": "3"}}))["metadata"] == {"b": "2", "c": "3"}


def test_request_log_records_credential_kinds_and_stop_bodies(ctx: Ctx) -> None:
    ctx.session()
    item, token = ctx.claim()
    with ctx.http(token) as holder:
        holder.post(ctx.work_url(item["id"], "/stop"), json={"force": True}, headers={"x-stainless-helper": "environments-worker"})
    log = ctx.emu.requests()
    mine = [r for r in log if r["path"].startswith(ctx.work_url())]
    by_path = {(r["method"], r["path"].rsplit("/", 1)[-1]): r for r in mine}
    assert by_path[("GET", "poll")]["credential"] == "environment_key"
    assert by_path[("POST", "ack")]["credential"] == "environment_key"
    stop = by_path[("POST", "stop")]
    assert stop["credential"] == "sessions_token"
    assert stop["helper"] == "environments-worker"
    assert stop["body"] == {"force": True}
    assert stop["status"] == 200


# =========================================================================== one live item per session


def test_new_input_enqueues_only_for_a_dormant_session(ctx: Ctx) -> None:
    """§4.4: at most one live item per session; new input to a dormant session enqueues one."""
    session = ctx.session()
    sid = session["id"]
    (first,) = ctx.work_for(sid)
    ok(ctx.send(sid, user_message(script({"say": "one"}))))
    ctx.wait_idle(sid, reason="end_turn")
    assert [w["id"] for w in ctx.work_for(sid)] == [first["id"]]

    ctx.claim()
    ok(ctx.send(sid, user_message(script({"say": "two"}))))
    ctx.wait_idle(sid, count=2, reason="end_turn")
    assert [w["id"] for w in ctx.work_for(sid)] == [first["id"]]

    assert ok(ctx.stop(first["id"], {"force": True}))["state"] == "stopped"
    ok(ctx.send(sid, user_message(script({"say": "three"}))))
    items = wait_for(lambda: len(ctx.work_for(sid)) == 2 and ctx.work_for(sid), 10, "a new work item")
    new = next(w for w in items if w["id"] != first["id"])
    assert new["state"] == "queued"
    assert new["data"] == {"type": "session", "id": sid}
    assert ctx.poll_item()["id"] == new["id"]
    ctx.wait_idle(sid, count=3, reason="end_turn")
    assert len(ctx.work_for(sid)) == 2


def test_new_input_while_awaiting_a_tool_result_with_no_live_item_enqueues_one(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    item, _ = ctx.claim()
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}))))
    ctx.wait_idle(sid, reason="requires_action")
    ok(ctx.stop(item["id"], {"force": True}))
    ok(ctx.send(sid, user_message("are you there?")))
    wait_for(lambda: any(w["state"] == "queued" for w in ctx.work_for(sid)), 5, "a new work item")


# =========================================================================== events


def _session_with_history(ctx: Ctx) -> tuple[str, list[dict[str, Any]]]:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"say": "a"}, {"think": True}, {"say": "b"}, {"say": "c"}))))
    return sid, ctx.wait_idle(sid, reason="end_turn")


def test_events_list_defaults_to_ascending_and_paginates(ctx: Ctx) -> None:
    sid, history = _session_with_history(ctx)
    assert len(history) >= 10
    assert history[0]["type"] == "user.message"
    assert history[-1]["type"] == "session.status_idle"
    stamps = [e["processed_at"] for e in history]
    assert stamps == sorted(stamps)
    assert all(e["id"].startswith("sevt_") for e in history)
    assert len({e["id"] for e in history}) == len(history)

    # No params at all: ascending too.
    page = ok(ctx.api.get(f"/v1/sessions/{sid}/events"))
    assert [e["id"] for e in page["data"]] == [e["id"] for e in history[: len(page["data"])]]

    for limit in (1, 3, 4):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        pages = 0
        while True:
            page = ok(ctx.api.get(f"/v1/sessions/{sid}/events", params=params))
            assert len(page["data"]) <= limit
            seen.extend(e["id"] for e in page["data"])
            pages += 1
            if not page["next_page"]:
                break
            params["page"] = page["next_page"]
        assert seen == [e["id"] for e in history]
        assert pages == -(-len(history) // limit)

    desc = ok(ctx.api.get(f"/v1/sessions/{sid}/events", params={"limit": 1000, "order": "desc"}))["data"]
    assert [e["id"] for e in desc] == [e["id"] for e in reversed(history)]
    assert_error(ctx.api.get(f"/v1/sessions/{sid}/events", params={"order": "sideways"}), 400)
    assert_error(ctx.api.get(f"/v1/sessions/{sid}/events", params={"page": "not-a-cursor"}), 400)
    assert_error(ctx.api.get(f"/v1/sessions/{sid}/events", params={"limit": 1001}), 400)


def test_events_list_filters(ctx: Ctx) -> None:
    sid, history = _session_with_history(ctx)
    messages = ctx.events(sid, **{"types[]": "agent.message"})
    assert types(messages) == ["agent.message"] * 3
    assert [texts(e) for e in messages] == ["a", "b", "c"]
    both = ctx.events(sid, **{"types[]": ["agent.message", "agent.thinking"]})
    assert [e["id"] for e in both] == [e["id"] for e in history if e["type"] in ("agent.message", "agent.thinking")]

    pivot = history[len(history) // 2]["processed_at"]
    after = ctx.events(sid, **{"created_at[gt]": pivot})
    assert [e["id"] for e in after] == [e["id"] for e in history if e["processed_at"] > pivot]
    assert after and all(e["processed_at"] > pivot for e in after)
    upto = ctx.events(sid, **{"created_at[lte]": pivot})
    assert [e["id"] for e in upto] + [e["id"] for e in after] == [e["id"] for e in history]
    assert_error(ctx.api.get(f"/v1/sessions/{sid}/events", params={"created_at[gt]": "yesterday"}), 400)


def test_send_validation_errors_store_nothing(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    before = ctx.events(sid)
    bad_batches: list[Any] = [
        [{"type": "user.shout", "content": [{"type": "text", "text": "hi"}]}],
        [tool_result("sevt_nosuchcall", "x")],
        [{"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_nosuchcall"}],
        [],
        [{"type": "user.message", "content": []}],
        [{"type": "user.tool_confirmation", "tool_use_id": "x", "result": "maybe"}],
        # One bad event spoils the batch: the good one is not stored either.
        [user_message("fine"), {"type": "user.shout"}],
    ]
    for batch in bad_batches:
        error = assert_error(ctx.send(sid, *batch), 400, "invalid_request_error")
        assert len(error["message"]) > 10
    unknown = assert_error(ctx.send(sid, {"type": "user.shout"}), 400)
    assert "user.shout" in unknown["message"] and "user.message" in unknown["message"]
    orphan = assert_error(ctx.send(sid, tool_result("sevt_nosuchcall", "x")), 400)
    assert "sevt_nosuchcall" in orphan["message"]
    assert_error(ctx.api.post(f"/v1/sessions/{sid}/events", json={}), 400)
    assert_error(ctx.api.post(f"/v1/sessions/{sid}/events", content=b"{not json", headers=JSON), 400)
    assert ctx.events(sid) == before


def test_duplicate_tool_result_is_accepted_once(ctx: Ctx) -> None:
    """§6.2: the SDK retries POSTs; a duplicate result for the same id is tolerated and not stored twice."""
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}, {"say": "got {result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    (call,) = [e for e in history if e["type"] == "agent.tool_use"]
    first = ok(ctx.send(sid, tool_result(call["id"], "hi")))
    assert types(first["data"]) == ["user.tool_result"]
    assert first["data"][0]["id"].startswith("sevt_") and first["data"][0]["processed_at"]
    second = ctx.send(sid, tool_result(call["id"], "hi again"))
    assert second.status_code == 200
    history = ctx.wait_idle(sid, reason="end_turn")
    results = [e for e in history if e["type"] == "user.tool_result"]
    assert len(results) == 1 and texts(results[0]) == "hi"
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["got hi"]


def test_client_supplied_event_id_is_replaced_by_a_server_id(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    (call,) = [e for e in history if e["type"] == "agent.tool_use"]
    echoed = ok(ctx.send(sid, {**user_message("hello"), "id": call["id"]}))["data"][0]
    assert echoed["id"] != call["id"]
    ok(ctx.send(sid, tool_result(call["id"], "hi")))


def test_malformed_result_content_is_400_and_leaves_the_call_answerable(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}, {"say": "got {result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    (call,) = [e for e in history if e["type"] == "agent.tool_use"]
    bad = {"type": "user.tool_result", "tool_use_id": call["id"], "content": ["not a block"]}
    assert_error(ctx.send(sid, bad), 400, "invalid_request_error")
    assert ctx.events(sid) == history
    ok(ctx.send(sid, tool_result(call["id"], "hi")))
    history = ctx.wait_idle(sid, reason="end_turn", count=1)
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["got hi"]


@pytest.mark.parametrize("block", [{"type": "text"}, {"type": "text", "text": 5}])
def test_message_text_blocks_need_text(ctx: Ctx, block: dict[str, Any]) -> None:
    session = ctx.session()
    assert_error(ctx.send(session["id"], {"type": "user.message", "content": [block]}), 400, "invalid_request_error")


def test_interrupt_in_the_same_batch_as_the_message_still_ends_the_turn(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"sleep": 30}, {"say": "too late"})), {"type": "user.interrupt"}))
    history = ctx.wait_events(sid, lambda evs: idle_reasons(evs), "the interrupted turn to go idle", timeout=5)
    assert types(history)[-1] == "session.status_idle"
    assert "agent.message" not in types(history)


def test_results_cannot_name_the_wrong_kind_of_call(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "true"}}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    (call,) = [e for e in history if e["type"] == "agent.tool_use"]
    resp = ctx.send(sid, {"type": "user.custom_tool_result", "custom_tool_use_id": call["id"]})
    assert_error(resp, 400)
    ok(ctx.send(sid, {"type": "user.interrupt"}))


MALFORMED = [
    pytest.param("/v1/environments", {"name": "x", "config": "self_hosted"}, id="environment-config-string"),
    pytest.param("/v1/agents", {"name": "x", "model": "m", "tools": [{"type": "agent_toolset_20260401", "configs": ["bash"]}]}, id="toolset-config-string"),
    pytest.param("/v1/agents", {"name": "x", "model": "m", "tools": ["bash"]}, id="tool-string"),
    pytest.param("/v1/agents", {"name": "x", "model": "m", "tools": "bash"}, id="tools-string"),
    pytest.param("/v1/environments", {"name": "x", "config": {"type": "mainframe"}}, id="environment-config-type"),
]


@pytest.mark.parametrize(("path", "body"), MALFORMED)
def test_malformed_bodies_are_400_not_500(ctx: Ctx, path: str, body: dict[str, Any]) -> None:
    assert_error(ctx.api.post(path, json=body), 400, "invalid_request_error")


def test_session_with_a_string_agent_version_is_400(ctx: Ctx) -> None:
    agent = ctx.agent()
    resp = ctx.api.post("/v1/sessions", json={"agent": {"type": "agent", "id": agent["id"], "version": "1"}, "environment_id": ctx.env_id})
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert_error(resp, 400, "invalid_request_error")


def test_unsupported_methods_answer_in_the_error_shape(ctx: Ctx) -> None:
    assert_error(ctx.api.put("/v1/agents", json={}), 405)


def test_unknown_routes_and_wrong_methods_answer_in_the_error_shape(ctx: Ctx) -> None:
    assert_error(ctx.api.get("/v1/nothing/here"), 404, "not_found_error")
    assert_error(ctx.api.delete("/v1/agents"), 405, "invalid_request_error")


# =========================================================================== SSE stream


def test_event_stream(ctx: Ctx) -> None:
    """§0.3, §0.4, §6.3: text/event-stream, `event:` = data type, live events only, closed on terminate."""
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"say": "before"}))))
    before = ctx.wait_idle(sid, reason="end_turn")

    reader = SSEReader(ctx.emu, sid)
    try:
        assert reader.connected.wait(10) and reader.error is None
        assert reader.status == 200
        assert reader.headers is not None and reader.headers["content-type"].startswith("text/event-stream")
        ok(ctx.send(sid, user_message(script({"say": "live"}))))
        frames = reader.until(lambda f: f.get("event") == "session.status_idle")
        ok(ctx.api.post(f"/v1/sessions/{sid}/archive"))
        frames += reader.until(lambda f: f.get("event") == "session.status_terminated")
        assert reader.closed.wait(10), "the stream stayed open after session.status_terminated"
        assert reader.error is None
        while not reader.frames.empty():
            frames.append(reader.frames.get())
    finally:
        reader.close()

    frames = [f for f in frames if f.get("event") != "ping"]
    for frame in frames:
        assert "event" in frame and "data" in frame, frame["raw"]
        assert frame["event"] == frame["data"]["type"]
    events = [f["data"] for f in frames]
    old_ids = {e["id"] for e in before}
    assert not old_ids & {e["id"] for e in events}, "events from before the connection were replayed"
    assert events[0]["type"] == "user.message" and "live" in texts(events[0])
    assert [texts(e) for e in events if e["type"] == "agent.message"] == ["live"]
    assert events[-1]["type"] == "session.status_terminated"
    # The stream carries exactly what history holds, in order.
    history = ctx.events(sid)
    assert [e["id"] for e in events] == [e["id"] for e in history[len(before):]]


def test_stream_of_a_terminated_session_closes_at_once(ctx: Ctx) -> None:
    session = ctx.session()
    ok(ctx.api.post(f"/v1/sessions/{session['id']}/archive"))
    reader = SSEReader(ctx.emu, session["id"])
    try:
        assert reader.closed.wait(10)
        assert reader.status == 200 and reader.error is None
        assert reader.frames.empty()
    finally:
        reader.close()


def test_stream_with_the_sessions_token(ctx: Ctx) -> None:
    session = ctx.session()
    _, token = ctx.claim()
    reader = SSEReader(ctx.emu, session["id"], token)
    try:
        assert reader.connected.wait(10) and reader.status == 200
        ok(ctx.send(session["id"], user_message(script({"say": "x"}))))
        frames = reader.until(lambda f: f.get("event") == "session.status_idle")
        assert frames[0]["event"] == "user.message"
    finally:
        reader.close()


# =========================================================================== the scripted brain


def test_brain_tool_call_round_trip(ctx: Ctx) -> None:
    """§6.5: running → tool_use (allow) → idle requires_action → result → message → idle end_turn."""
    session = ctx.session()
    sid = session["id"]
    sent = ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}, {"say": "got {result}"}))))
    assert types(sent["data"]) == ["user.message"]
    history = ctx.wait_idle(sid)
    seq = [t for t in types(history) if not t.startswith("span.")]
    assert seq == ["user.message", "session.status_running", "agent.tool_use", "session.status_idle"]
    call = next(e for e in history if e["type"] == "agent.tool_use")
    assert call["name"] == "bash"
    assert call["input"] == {"command": "echo hi"}
    assert call["evaluated_permission"] == "allow"
    assert history[-1]["stop_reason"] == {"type": "requires_action", "event_ids": [call["id"]]}
    assert ok(ctx.api.get(f"/v1/sessions/{sid}"))["status"] == "idle"

    ok(ctx.send(sid, tool_result(call["id"], "hi from the sandbox")))
    history = ctx.wait_idle(sid, reason="end_turn")
    tail = [t for t in types(history) if not t.startswith("span.")][4:]
    assert tail == ["user.tool_result", "session.status_running", "agent.message", "session.status_idle"]
    message = next(e for e in history if e["type"] == "agent.message")
    assert message["content"] == [{"type": "text", "text": "got hi from the sandbox"}]
    assert history[-1]["stop_reason"] == {"type": "end_turn"}
    retrieved = ok(ctx.api.get(f"/v1/sessions/{sid}"))
    assert retrieved["status"] == "idle"
    assert retrieved["usage"]["output_tokens"] > 0


def test_brain_parallel_tools_with_partial_answers(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    calls = [{"tool": "bash", "input": {"command": f"echo {c}"}} for c in "abc"]
    ok(ctx.send(sid, user_message(script({"tools": calls}, {"say": "got {result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    uses = [e for e in history if e["type"] == "agent.tool_use"]
    assert [u["input"]["command"] for u in uses] == ["echo a", "echo b", "echo c"]
    ids = [u["id"] for u in uses]
    assert history[-1]["stop_reason"] == {"type": "requires_action", "event_ids": ids}

    ok(ctx.send(sid, tool_result(ids[1], "B")))
    history = ctx.wait_idle(sid, count=2, reason="requires_action")
    assert idle_reasons(history)[-1] == {"type": "requires_action", "event_ids": [ids[0], ids[2]]}

    ok(ctx.send(sid, tool_result(ids[2], "C"), tool_result(ids[0], "A")))
    history = ctx.wait_idle(sid, reason="end_turn")
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["got A\nB\nC"]
    assert len([r for r in idle_reasons(history) if r["type"] == "requires_action"]) == 2


def test_brain_ask_permission_and_deny(ctx: Ctx) -> None:
    """§6.5: an `ask` call waits for user.tool_confirmation; a deny resolves it with no tool_result."""
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "rm -rf /"}, "permission": "ask"}, {"say": "after: {result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    call = next(e for e in history if e["type"] == "agent.tool_use")
    assert call["evaluated_permission"] == "ask"
    assert call["evaluation"] == {"type": "always_ask"}
    assert history[-1]["stop_reason"]["event_ids"] == [call["id"]]

    confirm = {"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "deny", "deny_message": "not on my machine"}
    echoed = ok(ctx.send(sid, confirm))["data"]
    assert types(echoed) == ["user.tool_confirmation"]
    history = ctx.wait_idle(sid, reason="end_turn")
    assert "user.tool_result" not in types(history)
    assert "user.tool_confirmation" in types(history)
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["after: not on my machine"]


def test_brain_ask_permission_and_allow(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "date"}, "permission": "ask"}, {"say": "{result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    call = next(e for e in history if e["type"] == "agent.tool_use")
    ok(ctx.send(sid, {"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "allow"}))
    ok(ctx.send(sid, tool_result(call["id"], "Tuesday")))
    history = ctx.wait_idle(sid, reason="end_turn")
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["Tuesday"]


def test_always_ask_policy_from_the_agent(ctx: Ctx) -> None:
    agent = ctx.agent(tools=[{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}]}])
    session = ctx.session(agent["id"])
    ok(ctx.send(session["id"], user_message(script({"tool": "bash", "input": {"command": "ls"}}, {"tool": "read", "input": {"file_path": "x"}}))))
    history = ctx.wait_idle(session["id"], reason="requires_action")
    call = next(e for e in history if e["type"] == "agent.tool_use")
    assert call["evaluated_permission"] == "ask"
    ok(ctx.send(session["id"], {"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "deny"}))
    history = ctx.wait_idle(session["id"], count=2, reason="requires_action")
    read = [e for e in history if e["type"] == "agent.tool_use"][-1]
    assert (read["name"], read["evaluated_permission"]) == ("read", "allow")
    ok(ctx.send(session["id"], {"type": "user.interrupt"}))


def test_brain_interrupt_ends_a_sleeping_turn(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"sleep": 30}, {"say": "too late"}))))
    ctx.wait_events(sid, lambda evs: "session.status_running" in types(evs), "the turn to start")
    assert ok(ctx.api.get(f"/v1/sessions/{sid}"))["status"] == "running"
    echoed = ok(ctx.send(sid, {"type": "user.interrupt"}))["data"]
    assert types(echoed) == ["user.interrupt"]
    history = ctx.wait_idle(sid, reason="end_turn")
    assert "agent.message" not in types(history)
    assert types(history)[-2:] == ["user.interrupt", "session.status_idle"]
    assert ok(ctx.api.get(f"/v1/sessions/{sid}"))["status"] == "idle"


def test_brain_custom_tool(ctx: Ctx) -> None:
    agent = ctx.agent(tools=[TOOLSET, LOOKUP_TOOL])
    session = ctx.session(agent["id"])
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "lookup", "input": {"q": "emulator"}}, {"say": "meaning: {result}"}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    call = next(e for e in history if e["type"] == "agent.custom_tool_use")
    assert (call["name"], call["input"]) == ("lookup", {"q": "emulator"})
    assert "agent.tool_use" not in types(history)
    assert history[-1]["stop_reason"] == {"type": "requires_action", "event_ids": [call["id"]]}
    # A user.tool_result cannot answer a custom call.
    assert_error(ctx.send(sid, tool_result(call["id"], "x")), 400)
    result = {"type": "user.custom_tool_result", "custom_tool_use_id": call["id"], "content": [{"type": "text", "text": "a stand-in"}]}
    assert types(ok(ctx.send(sid, result))["data"]) == ["user.custom_tool_result"]
    history = ctx.wait_idle(sid, reason="end_turn")
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["meaning: a stand-in"]


def test_brain_stop_step_and_initial_events(ctx: Ctx) -> None:
    session = ctx.session(initial_events=[user_message(script({"say": "hello"}, {"stop": "refusal"}))])
    history = ctx.wait_idle(session["id"], reason="refusal")
    assert types(history)[0] == "user.message"
    assert [texts(e) for e in history if e["type"] == "agent.message"] == ["hello"]


# =========================================================================== agents


def test_agent_toolset_is_normalised(ctx: Ctx) -> None:
    agent = ctx.agent(tools=[TOOLSET])
    assert agent["type"] == "agent" and agent["version"] == 1 and agent["id"].startswith("agent_")
    assert agent["model"] == {"id": "claude-emulated"}
    (toolset,) = agent["tools"]
    assert toolset["type"] == "agent_toolset_20260401"
    assert len(toolset["configs"]) == 8
    assert {c["name"] for c in toolset["configs"]} == TOOLSET_NAMES
    for cfg in toolset["configs"]:
        assert {"name", "type", "enabled", "permission_policy"} <= set(cfg)
        assert cfg["enabled"] is True
        assert cfg["permission_policy"]["type"] in ("always_allow", "always_ask", "auto")
    assert toolset["default_config"]["enabled"] is True
    assert "type" in toolset["default_config"]["permission_policy"]
    assert ok(ctx.api.get(f"/v1/agents/{agent['id']}")) == agent


def test_agent_toolset_configs_override_defaults(ctx: Ctx) -> None:
    agent = ctx.agent(tools=[{
        "type": "agent_toolset_20260401",
        "default_config": {"enabled": False},
        "configs": [{"name": "bash", "enabled": True}],
    }])
    configs = {c["name"]: c for c in agent["tools"][0]["configs"]}
    assert configs["bash"]["enabled"] is True
    assert all(not c["enabled"] for name, c in configs.items() if name != "bash")
    assert_error(ctx.api.post("/v1/agents", json={"name": "x", "model": "m", "tools": [{"type": "agent_toolset_20260401", "configs": [{"name": "teleport"}]}]}), 400)


def test_custom_tools_are_kept_verbatim_and_reach_the_session_snapshot(ctx: Ctx) -> None:
    agent = ctx.agent(tools=[TOOLSET, LOOKUP_TOOL])
    assert agent["tools"][1] == LOOKUP_TOOL
    session = ctx.session(agent["id"])
    snapshot = session["agent"]
    assert snapshot["id"] == agent["id"] and snapshot["version"] == 1 and snapshot["type"] == "agent"
    assert snapshot["tools"] == agent["tools"]
    assert ok(ctx.api.get(f"/v1/sessions/{session['id']}"))["agent"]["tools"][1] == LOOKUP_TOOL


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "x" * 129, 42])
def test_invalid_custom_tool_name_is_400(ctx: Ctx, name: Any) -> None:
    tool = {**LOOKUP_TOOL, "name": name}
    error = assert_error(ctx.api.post("/v1/agents", json={"name": "a", "model": "m", "tools": [tool]}), 400, "invalid_request_error")
    assert "name" in error["message"]


def test_custom_tool_name_edge_cases_accepted(ctx: Ctx) -> None:
    ok(ctx.api.post("/v1/agents", json={"name": "a", "model": "m", "tools": [{**LOOKUP_TOOL, "name": "a-B_9" + "x" * 123}]}))


def test_agent_validation(ctx: Ctx) -> None:
    assert_error(ctx.api.post("/v1/agents", json={"model": "m"}), 400)
    assert_error(ctx.api.post("/v1/agents", json={"name": "a"}), 400)
    assert_error(ctx.api.post("/v1/agents", json={"name": "a", "model": "m", "tools": [{"type": "custom", "name": "x", "input_schema": {"type": "string"}}]}), 400)
    assert_error(ctx.api.post("/v1/agents", json={"name": "a", "model": "m", "tools": [LOOKUP_TOOL, LOOKUP_TOOL]}), 400)
    assert_error(ctx.api.get("/v1/agents/agent_nope"), 404, "not_found_error")
    assert_error(ctx.envc.get("/v1/agents"), 403, "permission_error")


def test_agent_update_versions_and_conflicts(ctx: Ctx) -> None:
    agent = ctx.agent(metadata={"team": "a", "keep": "yes"})
    aid = agent["id"]
    v2 = ok(ctx.api.post(f"/v1/agents/{aid}", json={"version": 1, "name": "renamed", "metadata": {"team": None}}))
    assert v2["version"] == 2 and v2["name"] == "renamed"
    assert v2["metadata"] == {"keep": "yes"}
    assert v2["tools"] == agent["tools"]
    stale = ctx.api.post(f"/v1/agents/{aid}", json={"version": 1, "name": "lost update"})
    assert_error(stale, 409)
    assert stale.headers["x-should-retry"] == "false"
    v3 = ok(ctx.api.post(f"/v1/agents/{aid}", json={"system": "be brief"}))  # no version: no check
    assert v3["version"] == 3 and v3["name"] == "renamed"
    assert ok(ctx.api.get(f"/v1/agents/{aid}"))["version"] == 3
    assert ok(ctx.api.get(f"/v1/agents/{aid}", params={"version": 1}))["name"] == "test agent"
    assert_error(ctx.api.get(f"/v1/agents/{aid}", params={"version": 9}), 404)

    seen = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        page = ok(ctx.api.get(f"/v1/agents/{aid}/versions", params=params))
        assert len(page["data"]) <= 1
        seen += [v["version"] for v in page["data"]]
        if not page["next_page"]:
            break
        params["page"] = page["next_page"]
    assert sorted(seen) == [1, 2, 3] and len(seen) == 3

    # A session pinned to version 1 gets that snapshot.
    session = ok(ctx.api.post("/v1/sessions", json={"agent": {"type": "agent", "id": aid, "version": 1}, "environment_id": ctx.env_id}))
    assert (session["agent"]["version"], session["agent"]["name"]) == (1, "test agent")


def test_agent_list_pagination(ctx: Ctx) -> None:
    mine = {ctx.agent(name=f"paged {i}")["id"] for i in range(3)}
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = ok(ctx.api.get("/v1/agents", params=params))
        assert len(page["data"]) <= 2
        seen += [a["id"] for a in page["data"]]
        if not page["next_page"]:
            break
        params["page"] = page["next_page"]
    assert len(seen) == len(set(seen))
    assert mine <= set(seen)


def test_archived_agent(ctx: Ctx) -> None:
    agent = ctx.agent()
    aid = agent["id"]
    archived = ok(ctx.api.post(f"/v1/agents/{aid}/archive"))
    assert archived["archived_at"] is not None
    error = assert_error(ctx.api.post("/v1/sessions", json={"agent": aid, "environment_id": ctx.env_id}), 400)
    assert "archived" in error["message"]
    assert ctx.work_items() == []
    assert_error(ctx.api.post(f"/v1/agents/{aid}", json={"name": "zombie"}), 400)
    listed = lambda **p: {a["id"] for a in ok(ctx.api.get("/v1/agents", params={"limit": 100, **p}))["data"]}  # noqa: E731
    assert aid not in listed()
    assert aid in listed(include_archived="true")


# =========================================================================== sessions


def test_session_retrieve_and_list(ctx: Ctx) -> None:
    agent = ctx.agent()
    idle = ctx.session(agent["id"], title="idle one")
    busy = ctx.session(agent["id"], title="busy one")
    assert idle["status"] == "idle" and idle["type"] == "session" and idle["environment_id"] == ctx.env_id
    assert idle["title"] == "idle one" and idle["archived_at"] is None
    assert ok(ctx.api.get(f"/v1/sessions/{idle['id']}"))["id"] == idle["id"]
    assert_error(ctx.api.get("/v1/sessions/sesn_nope"), 404, "not_found_error")

    ok(ctx.send(busy["id"], user_message(script({"sleep": 30}))))
    ctx.wait_events(busy["id"], lambda evs: "session.status_running" in types(evs), "busy to run")
    try:
        def listed(**params: Any) -> list[str]:
            page = ok(ctx.api.get("/v1/sessions", params={"limit": 1000, "agent_id": agent["id"], **params}))
            assert "prev_page" in page and "next_page" in page
            return [s["id"] for s in page["data"]]

        assert listed(**{"statuses[]": "running"}) == [busy["id"]]
        assert listed(**{"statuses[]": "idle"}) == [idle["id"]]
        assert set(listed(**{"statuses[]": ["idle", "running"]})) == {idle["id"], busy["id"]}
        assert listed(order="asc") == [idle["id"], busy["id"]]
        assert listed(order="desc") == [busy["id"], idle["id"]]
        first = ok(ctx.api.get("/v1/sessions", params={"limit": 1, "agent_id": agent["id"], "order": "asc"}))
        assert [s["id"] for s in first["data"]] == [idle["id"]]
        second = ok(ctx.api.get("/v1/sessions", params={"limit": 1, "agent_id": agent["id"], "order": "asc", "page": first["next_page"]}))
        assert [s["id"] for s in second["data"]] == [busy["id"]]
        assert_error(ctx.api.get("/v1/sessions", params={"order": "up"}), 400)
    finally:
        ok(ctx.send(busy["id"], {"type": "user.interrupt"}))


def test_session_update(ctx: Ctx) -> None:
    session = ctx.session(metadata={"a": "1", "b": "2"})
    sid = session["id"]
    updated = ok(ctx.api.post(f"/v1/sessions/{sid}", json={"title": "new title", "metadata": {"a": None, "c": "3"}}))
    assert updated["title"] == "new title"
    assert updated["metadata"] == {"b": "2", "c": "3"}
    assert ok(ctx.api.get(f"/v1/sessions/{sid}"))["metadata"] == {"b": "2", "c": "3"}
    assert "session.updated" in types(ctx.events(sid))
    assert ok(ctx.api.post(f"/v1/sessions/{sid}", json={"title": None}))["title"] is None
    assert_error(ctx.api.post(f"/v1/sessions/{sid}", json={"metadata": {"n": 5}}), 400)
    assert_error(ctx.envc.post(f"/v1/sessions/{sid}", json={"title": "x"}), 403, "permission_error")


def test_session_archive(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    ok(ctx.send(sid, user_message(script({"tool": "bash", "input": {"command": "echo hi"}}))))
    history = ctx.wait_idle(sid, reason="requires_action")
    call = next(e for e in history if e["type"] == "agent.tool_use")
    archived = ok(ctx.api.post(f"/v1/sessions/{sid}/archive"))
    assert archived["status"] == "terminated" and archived["archived_at"] is not None
    assert ok(ctx.api.get(f"/v1/sessions/{sid}"))["status"] == "terminated"
    assert ctx.events(sid)[-1]["type"] == "session.status_terminated"
    count = len(ctx.events(sid))
    assert_error(ctx.send(sid, tool_result(call["id"], "too late")), 400, "invalid_request_error")
    assert_error(ctx.send(sid, user_message("hello?")), 400, "invalid_request_error")
    assert len(ctx.events(sid)) == count
    assert_error(ctx.api.post(f"/v1/sessions/{sid}", json={"title": "x"}), 400)
    listed = lambda **p: {s["id"] for s in ok(ctx.api.get("/v1/sessions", params={"limit": 1000, **p}))["data"]}  # noqa: E731
    assert sid not in listed()
    assert sid in listed(include_archived="true")


def test_session_delete(ctx: Ctx) -> None:
    session = ctx.session()
    sid = session["id"]
    assert ok(ctx.api.delete(f"/v1/sessions/{sid}")) == {"id": sid, "type": "session_deleted"}
    assert_error(ctx.api.get(f"/v1/sessions/{sid}"), 404, "not_found_error")
    assert_error(ctx.api.get(f"/v1/sessions/{sid}/events"), 404, "not_found_error")
    assert_error(ctx.api.delete(f"/v1/sessions/{sid}"), 404, "not_found_error")


def test_session_validation(ctx: Ctx) -> None:
    agent_id = ctx.agent()["id"]
    assert_error(ctx.api.post("/v1/sessions", json={"agent": agent_id}), 400)
    assert_error(ctx.api.post("/v1/sessions", json={"environment_id": ctx.env_id}), 400)
    assert_error(ctx.api.post("/v1/sessions", json={"agent": agent_id, "environment_id": "env_nope"}), 404)
    assert_error(ctx.api.post("/v1/sessions", json={"agent": "agent_nope", "environment_id": ctx.env_id}), 404)
    assert_error(ctx.api.post("/v1/sessions", json={"agent": agent_id, "environment_id": ctx.env_id, "initial_events": [{"type": "user.interrupt"}]}), 400)
    assert_error(ctx.envc.post("/v1/sessions", json={"agent": agent_id, "environment_id": ctx.env_id}), 403, "permission_error")
    assert ctx.work_items() == []


# =========================================================================== skills


SKILL_MD = b"---\nname: pdf-helper\ndescription: Helps with PDFs.\n---\n\n# PDF helper\n"


def _upload_skill(ctx: Ctx, files: list[tuple[str, bytes]], url: str = "/v1/skills", **data: str) -> httpx.Response:
    return ctx.api.post(url, files=[("files", (name, body, "application/octet-stream")) for name, body in files], data=data)


def test_skill_upload_version_and_download(ctx: Ctx) -> None:
    files = [("pdf/SKILL.md", SKILL_MD), ("pdf/scripts/extract.py", b"print('extract')\n")]
    skill = ok(_upload_skill(ctx, files, display_name="PDF"))
    assert skill["type"] == "skill" and skill["display_name"] == "PDF"
    version_id = skill["latest_version_id"]
    assert version_id

    by_id = ok(ctx.api.get(f"/v1/skills/{skill['id']}/versions/{version_id}"))
    assert by_id["type"] == "skill_version"
    assert (by_id["id"], by_id["skill_id"], by_id["name"]) == (version_id, skill["id"], "pdf-helper")
    assert by_id["description"] == "Helps with PDFs."
    assert ok(ctx.api.get(f"/v1/skills/{skill['id']}/versions/latest")) == by_id

    # The worker downloads with its item credential and no beta header (§8).
    ctx.session()
    _, token = ctx.claim()
    with ctx.http(token) as holder:
        meta = ok(holder.get(f"/v1/skills/{skill['id']}/versions/latest"))
        resp = holder.get(f"/v1/skills/{skill['id']}/versions/{meta['id']}/content", headers={"accept": "application/binary"})
    assert resp.status_code == 200
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        assert sorted(zf.namelist()) == sorted(name for name, _ in files)
        for name, body in files:
            assert zf.read(name) == body

    v2 = ok(_upload_skill(ctx, [("pdf/SKILL.md", SKILL_MD.replace(b"PDFs", b"more PDFs"))], url=f"/v1/skills/{skill['id']}/versions"))
    assert v2["id"] != version_id
    assert ok(ctx.api.get(f"/v1/skills/{skill['id']}/versions/latest"))["id"] == v2["id"]
    assert ok(ctx.api.get(f"/v1/skills/{skill['id']}/versions/{version_id}"))["description"] == "Helps with PDFs."
    assert_error(ctx.api.get(f"/v1/skills/{skill['id']}/versions/nope"), 404, "not_found_error")


def test_skill_upload_validation(ctx: Ctx) -> None:
    assert_error(_upload_skill(ctx, [("pdf/README.md", b"no skill here")]), 400)
    assert_error(_upload_skill(ctx, [("a/SKILL.md", SKILL_MD), ("b/other.txt", b"x")]), 400)
    assert_error(ctx.api.post("/v1/skills", data={"display_name": "empty"}), 400)
    assert_error(ctx.api.get("/v1/skills/skill_nope/versions/latest"), 404, "not_found_error")


# =========================================================================== webhooks


class WebhookReceiver:
    """A loopback HTTP server that records deliveries; fails the first N attempts of chosen types."""

    def __init__(self, fail_first: dict[str, int]) -> None:
        self.fail_first = fail_first
        self.attempts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    event_type = json.loads(body)["data"]["type"]
                except (ValueError, KeyError, TypeError):
                    event_type = None
                with receiver.lock:
                    webhook_id = self.headers.get("webhook-id")
                    before = sum(1 for a in receiver.attempts if a["headers"].get("webhook-id") == webhook_id)
                    status = 500 if before < receiver.fail_first.get(event_type or "", 0) else 200
                    receiver.attempts.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "type": event_type, "status": status})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.attempts if a["type"] == event_type]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook_setup() -> Iterator[tuple[EmulatorProcess, WebhookReceiver]]:
    receiver = WebhookReceiver(fail_first={"agent.created": 2})
    emu = start_emulator("--webhook-url", receiver.url, "--EmulatorApp.webhook_retry_delays=[0.1,0.1]")
    try:
        yield emu, receiver
    finally:
        emu.stop()
        receiver.close()


def test_webhooks_are_signed_and_cover_the_session_lifecycle(webhook_setup: tuple[EmulatorProcess, WebhookReceiver]) -> None:
    emu, receiver = webhook_setup
    secret = emu.info["webhook_secret"]
    for ctx in new_ctx(emu):
        session = ctx.session()
        sid = session["id"]
        ok(ctx.send(sid, user_message(script({"say": "hi"}))))
        ctx.wait_idle(sid, reason="end_turn")
        wanted = ("session.created", "session.status_run_started", "session.status_idled")

        def delivered() -> bool:
            return all(any(json.loads(a["body"])["data"]["id"] == sid for a in receiver.of_type(t)) for t in wanted)

        wait_for(delivered, 20, f"webhooks {wanted}")
    verifier = Webhook(secret)
    with receiver.lock:
        attempts = list(receiver.attempts)
    assert attempts
    for attempt in attempts:
        payload = verifier.verify(attempt["body"], attempt["headers"])
        assert payload["type"] == "event" and payload["id"].startswith("whe_")
        assert payload["id"] == attempt["headers"]["webhook-id"]
        assert isinstance(payload["created_at"], str)
        assert {"type", "id", "organization_id"} <= set(payload["data"])
        assert attempt["headers"]["content-type"].startswith("application/json")
    for event_type in wanted:
        mine = [json.loads(a["body"]) for a in receiver.of_type(event_type) if json.loads(a["body"])["data"]["id"] == sid]
        assert mine, event_type
        assert mine[0]["data"]["workspace_id"]
    # A tampered body does not verify.
    from standardwebhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        verifier.verify(attempts[0]["body"] + b" ", attempts[0]["headers"])


def test_webhook_retries_keep_the_webhook_id(webhook_setup: tuple[EmulatorProcess, WebhookReceiver]) -> None:
    emu, receiver = webhook_setup
    with emu.http() as api:
        agent = ok(api.post("/v1/agents", json={"name": "hooked", "model": "m"}))

    def mine() -> list[dict[str, Any]]:
        return [a for a in receiver.of_type("agent.created") if json.loads(a["body"])["data"]["id"] == agent["id"]]

    attempts = wait_for(lambda: len(mine()) >= 3 and mine(), 30, "three delivery attempts")
    assert [a["status"] for a in attempts] == [500, 500, 200]
    assert len({a["headers"]["webhook-id"] for a in attempts}) == 1
    assert len({a["body"] for a in attempts}) == 1
    verifier = Webhook(emu.info["webhook_secret"])
    for attempt in attempts:
        verifier.verify(attempt["body"], attempt["headers"])
    time.sleep(0.5)
    assert len(mine()) == 3  # no further attempts after the success

    def recorded() -> dict[str, Any] | None:
        return next((d for d in emu.webhooks() if d["body"]["data"]["id"] == agent["id"] and d["delivered"]), None)

    delivery = wait_for(recorded, 10, "the delivery record")
    assert [a["status"] for a in delivery["attempts"]] == [500, 500, 200]
    assert delivery["webhook_id"] == attempts[0]["headers"]["webhook-id"]
    assert delivery["gave_up"] is False


# =========================================================================== the command line


def test_json_line(emulator: EmulatorProcess, webhook_setup: tuple[EmulatorProcess, WebhookReceiver]) -> None:
    info = emulator.info
    assert info["base_url"].startswith("http://127.0.0.1:")
    assert info["api_key"] and info["environment_key"] and info["environment_id"].startswith("env_")
    assert "webhook_secret" not in info
    with emulator.http(info["environment_key"]) as envc:
        assert ok(envc.get(f"/v1/environments/{info['environment_id']}/work/stats"))["type"] == "work_queue_stats"
    with emulator.http() as api:
        assert ok(api.get("/_emulator/info"))["base_url"] == info["base_url"]
        env = ok(api.get(f"/v1/environments/{info['environment_id']}"))
        assert env["config"] == {"type": "self_hosted"}

    hooked, _ = webhook_setup
    assert hooked.info["webhook_secret"].startswith("whsec_")
    Webhook(hooked.info["webhook_secret"])  # a valid signing key


def test_non_loopback_host_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_cma", "emulator", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""
    assert "allow-remote" in proc.stderr


# =========================================================================== custom tool schemas the API refuses


def _custom_tool(schema: dict[str, Any], name: str = "checker") -> dict[str, Any]:
    return {"type": "custom", "name": name, "description": "Checks.", "input_schema": schema}


@pytest.mark.parametrize(("schema", "phrases"), [
    ({"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {"type": "string"}}},
     ["input_schema has $defs", "remove $defs and inline"]),
    ({"type": "object", "properties": {"p": {"type": "array", "items": {"$ref": "#/definitions/P"}}}},
     ["input_schema.properties.p.items has a $ref", "inline the schema it points to"]),
    ({"type": "object", "properties": {"p": {"type": "object"}}, "definitions": {"P": {"type": "string"}}},
     ["input_schema has definitions", "remove definitions"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "^(?=.*[0-9]).{8,}$"}}},
     ["input_schema.properties.p.pattern", "a lookahead '(?='", "remove it"]),
    ({"type": "object", "properties": {"p": {"anyOf": [{"type": "string", "pattern": "(?<!un)happy"}, {"type": "null"}]}}},
     ["input_schema.properties.p.anyOf[0].pattern", "a negative lookbehind '(?<!'"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "(?<=#)\\w+"}}}, ["a lookbehind '(?<='"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "^#(?!\\d)"}}}, ["a negative lookahead '(?!'"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "^(\\w)\\w*\\1$"}}}, ["a backreference '\\1'"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "(?<c>a)\\k<c>"}}},
     ["a named backreference '\\k<name>'"]),
    ({"type": "object", "properties": {"p": {"type": "string", "pattern": "(?P<c>a)(?P=c)"}}},
     ["a named backreference '(?P=name)'"]),
    ({"type": "object", "properties": {"p": {"type": "object", "patternProperties": {"^(?!x)": {"type": "string"}}}}},
     ["patternProperties key '^(?!x)'", "a negative lookahead"]),
])
def test_custom_tool_schemas_with_references_or_lookarounds_are_400(ctx: Ctx, schema: dict[str, Any], phrases: list[str]) -> None:
    error = assert_error(ctx.api.post("/v1/agents", json={"name": "a", "model": "m", "tools": [_custom_tool(schema)]}),
                         400, "invalid_request_error")
    assert error["message"].startswith("custom tool 'checker': "), error
    for phrase in phrases:
        assert phrase in error["message"], error
    # an update is held to the same rule
    agent = ctx.agent(tools=[LOOKUP_TOOL])
    assert_error(ctx.api.post(f"/v1/agents/{agent['id']}", json={"tools": [_custom_tool(schema)]}), 400, "invalid_request_error")


def test_custom_tool_schemas_that_only_look_like_references_are_accepted(ctx: Ctx) -> None:
    """Property names are names, data is data, and escaped or bracketed parentheses are no lookarounds."""
    schema = {
        "type": "object",
        "properties": {
            "$ref": {"type": "string"},
            "definitions": {"type": "string", "pattern": "^\\(?=[(?=]\\\\1[\\1]$"},
            "pattern": {"type": "object", "default": {"$ref": "#/x", "$defs": {}}},
            "named": {"type": "string", "pattern": "^(?<year>\\d{4})-(?:\\d{2})$"},
        },
        "required": ["$ref"],
    }
    agent = ctx.agent(tools=[_custom_tool(schema)])
    assert agent["tools"][0]["input_schema"] == schema
