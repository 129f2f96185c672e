"""Webhook ingest: Standard Webhooks verification, dedupe, storage, and the public route.

Two layers:

- `WebhookIngest` directly, with a real `Store` on a temporary SQLite file;
- the same cases through a real Jupyter server (pytest-jupyter) with
  `allow_unauthenticated_access=False`: `POST cma/webhooks` needs no Jupyter
  token (its signature is the guard), everything else under `cma/` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from standardwebhooks import Webhook

from jupyter_cma.anthropic_api import Secret
from jupyter_cma.control.webhooks import WebhookIngest
from jupyter_cma.store import Store

SIGNING_KEY = "whsec_" + base64.b64encode(b"jupyter-cma-test-signing-key-32b").decode()
OTHER_KEY = "whsec_" + base64.b64encode(b"another-signing-key-of-32-bytes!").decode()
INVALID_KEY = "whsec_!!!"
MAX_BYTES = 1024  # the server tests' c.CMAApp.max_webhook_bytes


# ---------------------------------------------------------------------- helpers


def envelope(event_type: str = "session.status_idled", object_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A thin envelope as the Managed Agents API sends it."""
    return {
        "type": "event",
        "id": "whe_" + secrets.token_hex(12),
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": {
            "type": event_type,
            "id": object_id or "sesn_" + secrets.token_hex(8),
            "organization_id": "org_test",
            "workspace_id": "wrkspc_test",
            **extra,
        },
    }


def sign(
    body: str | bytes | dict[str, Any] | list[Any],
    *,
    key: str = SIGNING_KEY,
    msg_id: str | None = None,
    at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(body bytes, Standard Webhooks headers) for one delivery."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else body
    if msg_id is None:
        msg_id = body["id"] if isinstance(body, dict) and "id" in body else "msg_" + secrets.token_hex(10)
    at = at or datetime.now(timezone.utc)
    signature = Webhook(key).sign(msg_id, at, raw.decode("utf-8", errors="replace"))
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def sign_envelope(env: dict[str, Any], **kw: Any) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(env).encode()
    return sign(raw, msg_id=kw.pop("msg_id", env["id"]), **kw)


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


# A table of deliveries that must be refused, shared by the direct and the HTTP tests.
# Each builder returns (body, headers); `status` is the answer both layers must give.


@dataclass
class Bad:
    name: str
    build: Callable[[], tuple[bytes, dict[str, str]]]
    status: int


def _missing(header: str) -> Callable[[], tuple[bytes, dict[str, str]]]:
    def build() -> tuple[bytes, dict[str, str]]:
        body, headers = sign_envelope(envelope())
        return body, without(headers, header)

    return build


def _empty(header: str) -> Callable[[], tuple[bytes, dict[str, str]]]:
    def build() -> tuple[bytes, dict[str, str]]:
        body, headers = sign_envelope(envelope())
        return body, {**headers, header: ""}

    return build


def _with_signature(value: Callable[[str], str]) -> Callable[[], tuple[bytes, dict[str, str]]]:
    """A correctly signed delivery whose signature header is rewritten."""

    def build() -> tuple[bytes, dict[str, str]]:
        body, headers = sign_envelope(envelope())
        return body, {**headers, "webhook-signature": value(headers["webhook-signature"])}

    return build


def _tampered() -> tuple[bytes, dict[str, str]]:
    env = envelope("session.status_idled")
    _, headers = sign_envelope(env)
    env["data"]["type"] = "session.status_run_started"
    return json.dumps(env).encode(), headers


def _other_id() -> tuple[bytes, dict[str, str]]:
    """A captured delivery replayed under a fresh webhook-id (to slip past dedupe)."""
    body, headers = sign_envelope(envelope())
    return body, {**headers, "webhook-id": "whe_" + secrets.token_hex(12)}


def _at(offset: timedelta) -> Callable[[], tuple[bytes, dict[str, str]]]:
    return lambda: sign_envelope(envelope(), at=datetime.now(timezone.utc) + offset)


def _timestamp(value: str) -> Callable[[], tuple[bytes, dict[str, str]]]:
    def build() -> tuple[bytes, dict[str, str]]:
        body, headers = sign_envelope(envelope())
        return body, {**headers, "webhook-timestamp": value}

    return build


BAD = [
    Bad("missing webhook-id", _missing("webhook-id"), 401),
    Bad("missing webhook-timestamp", _missing("webhook-timestamp"), 401),
    Bad("missing webhook-signature", _missing("webhook-signature"), 401),
    Bad("no headers at all", lambda: (json.dumps(envelope()).encode(), {}), 401),
    Bad("empty webhook-signature", _empty("webhook-signature"), 401),
    Bad("empty webhook-id", _empty("webhook-id"), 401),
    Bad("wrong secret", lambda: sign_envelope(envelope(), key=OTHER_KEY), 401),
    Bad("tampered body", _tampered, 401),
    Bad("signature replayed under another webhook-id", _other_id, 401),
    Bad("stale timestamp (now - 6 min)", _at(timedelta(minutes=-6)), 401),
    Bad("future timestamp (now + 6 min)", _at(timedelta(minutes=6)), 401),
    Bad("timestamp not a number", _timestamp("yesterday"), 401),
    Bad("timestamp nan", _timestamp("nan"), 401),
    Bad("timestamp out of range", _timestamp("1e300"), 401),
    Bad("signature without a comma", _with_signature(lambda s: s.replace(",", "")), 401),
    Bad("signature not base64 (padding)", _with_signature(lambda s: "v1,abc"), 401),
    Bad("signature not base64 (alphabet)", _with_signature(lambda s: "v1,****"), 401),
    Bad("only a v2 signature", _with_signature(lambda s: "v2," + s.split(",", 1)[1]), 401),
    Bad("only a v1a signature", _with_signature(lambda s: "v1a," + s.split(",", 1)[1]), 401),
    Bad("v1 signature of a different length", _with_signature(lambda s: "v1," + base64.b64encode(b"short").decode()), 401),
    Bad("body not UTF-8", lambda: (b"\xff\xfe{\"type\": \"event\"}\x80", sign_envelope(envelope())[1]), 400),
    Bad("signed, not JSON", lambda: sign("this is not JSON {"), 400),
    Bad("signed, empty body", lambda: sign(""), 400),
    Bad("signed, truncated JSON", lambda: sign(json.dumps(envelope())[:-3]), 400),
    Bad("signed, nested 400 deep", lambda: sign("[" * 400 + "]" * 400), 400),
    Bad("signed, NaN", lambda: sign('{"type": "event", "data": {"type": "x", "n": NaN}}'), 400),
    Bad("signed, a number too large", lambda: sign('{"type": "event", "n": 1e999}'), 400),
    Bad("signed, duplicate keys", lambda: sign('{"type": "event", "data": {"type": "a", "type": "b"}}'), 400),
    Bad("signed, an unpaired surrogate", lambda: sign('{"type": "event", "id": "\\ud800"}'), 400),
]


def _good_multi(pick: str) -> tuple[bytes, dict[str, str]]:
    body, headers = sign_envelope(envelope())
    good = headers["webhook-signature"]
    wrong = sign(body, key=OTHER_KEY, msg_id=headers["webhook-id"])[1]["webhook-signature"]
    variants = {
        "wrong first": f"{wrong} {good}",
        "wrong last": f"{good} {wrong}",
        "v2 and v1a first": f"v2,{good[3:]} v1a,{good[3:]} {good}",
        "three": f"{wrong} {good} {wrong}",
    }
    return body, {**headers, "webhook-signature": variants[pick]}


# ---------------------------------------------------------------------- WebhookIngest directly


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, data: dict[str, Any], created_at: str | None = None) -> None:
        self.events.append(data)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "cma.sqlite3"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def ingest(store, recorder):
    return WebhookIngest(store=store, secret=Secret(SIGNING_KEY, "test"), on_event=recorder)


def test_accepted_delivery_is_stored_and_reacted_to(ingest, store, recorder):
    env = envelope("session.status_run_started", "sesn_abc")
    body, headers = sign_envelope(env)
    status, answer = ingest.receive(body, headers)
    assert (status, answer) == (200, {"status": "accepted"})
    assert recorder.events == [env["data"]]
    (row,) = store.deliveries()
    assert row["webhook_id"] == env["id"]
    assert row["event_type"] == "session.status_run_started"
    assert row["object_id"] == "sesn_abc"
    assert json.loads(row["body"]) == env
    assert (ingest.accepted, ingest.duplicates, ingest.rejected) == (1, 0, 0)


def test_header_names_are_case_insensitive(ingest, recorder):
    body, headers = sign_envelope(envelope())
    upper = {k.title(): v for k, v in headers.items()}  # Webhook-Id, as tornado spells them
    assert ingest.receive(body, upper) == (200, {"status": "accepted"})
    assert len(recorder.events) == 1


def test_repeated_webhook_id_is_a_duplicate(ingest, store, recorder):
    env = envelope()
    body, headers = sign_envelope(env)
    assert ingest.receive(body, headers)[0] == 200
    # A retry: same webhook-id, fresh timestamp and signature.
    body2, headers2 = sign_envelope(env, at=datetime.now(timezone.utc) + timedelta(seconds=2))
    assert headers2["webhook-signature"] != headers["webhook-signature"]
    assert ingest.receive(body2, headers2) == (200, {"status": "duplicate"})
    assert ingest.receive(body, headers) == (200, {"status": "duplicate"})
    assert len(recorder.events) == 1
    assert len(store.deliveries()) == 1
    assert (ingest.accepted, ingest.duplicates) == (1, 2)


def test_duplicates_survive_a_restart(db_path, recorder):
    env = envelope()
    body, headers = sign_envelope(env)
    first = Store(db_path)
    assert WebhookIngest(store=first, secret=Secret(SIGNING_KEY, "t"), on_event=recorder).receive(body, headers)[0] == 200
    first.close()

    again = Store(db_path)
    try:
        after = Recorder()
        ingest = WebhookIngest(store=again, secret=Secret(SIGNING_KEY, "t"), on_event=after)
        assert ingest.receive(*sign_envelope(env)) == (200, {"status": "duplicate"})
        assert after.events == []
        assert len(again.deliveries()) == 1
    finally:
        again.close()


def test_same_body_under_a_new_webhook_id_is_a_new_delivery(ingest, recorder):
    # Dedupe is by webhook-id only: two signed deliveries of the same event are two deliveries.
    env = envelope()
    raw = json.dumps(env).encode()
    assert ingest.receive(*sign(raw, msg_id="whe_one"))[1] == {"status": "accepted"}
    assert ingest.receive(*sign(raw, msg_id="whe_two"))[1] == {"status": "accepted"}
    assert len(recorder.events) == 2


@pytest.mark.parametrize("case", BAD, ids=[b.name for b in BAD])
def test_bad_delivery_is_refused(case, ingest, store, recorder):
    body, headers = case.build()
    status, answer = ingest.receive(body, headers)
    assert status == case.status, answer
    assert isinstance(answer.get("message"), str) and answer["message"]
    assert SIGNING_KEY not in json.dumps(answer)
    assert store.deliveries() == []
    assert recorder.events == []
    assert (ingest.accepted, ingest.rejected) == (0, 1)


def test_a_body_nested_thousands_deep_is_a_400_not_a_recursion_error(ingest, store, recorder):
    # json.loads raises RecursionError (not a ValueError) past about 1,000 levels: that was a 500 and a retry.
    for depth in (3000, 100_000):
        status, answer = ingest.receive(*sign("[" * depth + "]" * depth))
        assert status == 400 and "deeper than 64 levels" in answer["message"], answer
    assert store.deliveries() == [] and recorder.events == []
    assert ingest.receive(*sign_envelope(envelope())) == (200, {"status": "accepted"})


def test_missing_header_message_names_the_header(ingest):
    body, headers = sign_envelope(envelope())
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        status, answer = ingest.receive(body, without(headers, name))
        assert status == 401
        assert name in answer["message"]


def test_a_refused_delivery_does_not_burn_its_webhook_id(ingest, recorder):
    # A forged delivery must not make the genuine one with the same id a "duplicate".
    env = envelope()
    body, headers = sign_envelope(env, key=OTHER_KEY)
    assert ingest.receive(body, headers)[0] == 401
    assert ingest.receive(*sign_envelope(env)) == (200, {"status": "accepted"})
    assert recorder.events == [env["data"]]


@pytest.mark.parametrize("minutes", [-4, 4])
def test_timestamps_within_tolerance_are_accepted(ingest, minutes):
    body, headers = sign_envelope(envelope(), at=datetime.now(timezone.utc) + timedelta(minutes=minutes))
    assert ingest.receive(body, headers) == (200, {"status": "accepted"})


@pytest.mark.parametrize("pick", ["wrong first", "wrong last", "v2 and v1a first", "three"])
def test_one_valid_signature_among_several_is_enough(ingest, recorder, pick):
    assert ingest.receive(*_good_multi(pick)) == (200, {"status": "accepted"})
    assert len(recorder.events) == 1


@pytest.mark.parametrize(
    "payload",
    [{"type": "event", "id": "whe_nodata"}, [], "str", None, 42, {"type": "event", "data": "not an object"}, {"data": []}],
    ids=["no data", "list", "string", "null", "number", "data a string", "data a list"],
)
def test_signed_json_without_a_data_object_is_stored(ingest, store, recorder, payload):
    raw = json.dumps(payload)
    status, answer = ingest.receive(*sign(raw, msg_id="whe_" + secrets.token_hex(6)))
    assert (status, answer) == (200, {"status": "accepted"})
    (row,) = store.deliveries()
    assert row["event_type"] == "unknown"
    assert row["object_id"] is None
    assert row["body"] == raw
    assert recorder.events == []  # nothing to react to


def test_data_with_non_string_type_and_id_is_stored_as_unknown(ingest, store, recorder):
    env = {"type": "event", "id": "whe_odd", "data": {"type": 7, "id": ["x"]}}
    assert ingest.receive(*sign_envelope(env)) == (200, {"status": "accepted"})
    (row,) = store.deliveries()
    assert (row["event_type"], row["object_id"]) == ("unknown", None)
    assert recorder.events == [env["data"]]


def test_unknown_event_type_is_stored_with_its_type(ingest, store, recorder):
    env = envelope("vault.rotated", "vlt_123")
    assert ingest.receive(*sign_envelope(env)) == (200, {"status": "accepted"})
    (row,) = store.deliveries()
    assert (row["event_type"], row["object_id"]) == ("vault.rotated", "vlt_123")
    assert recorder.events == [env["data"]]


def test_a_failing_reaction_still_answers_200_and_stays_deduplicated(store):
    calls = []

    def explode(data: dict[str, Any], created_at: str | None = None) -> None:
        calls.append(data)
        raise RuntimeError("boom")

    ingest = WebhookIngest(store=store, secret=Secret(SIGNING_KEY, "t"), on_event=explode)
    env = envelope()
    assert ingest.receive(*sign_envelope(env)) == (200, {"status": "accepted"})
    assert ingest.receive(*sign_envelope(env)) == (200, {"status": "duplicate"})
    assert len(calls) == 1
    assert len(store.deliveries()) == 1


def test_no_secret_configured_is_503_and_says_what_to_set(store, recorder):
    ingest = WebhookIngest(store=store, secret=None, on_event=recorder)
    status, answer = ingest.receive(*sign_envelope(envelope()))
    assert status == 503
    message = answer["message"]
    assert "secret" in message and ("README" in message or "ANTHROPIC_WEBHOOK_SIGNING_KEY" in message)
    assert "poll" in message  # the alternative
    assert store.deliveries() == [] and recorder.events == []
    # Unsigned junk gets the same answer: nothing is checked without a secret.
    assert ingest.receive(b"\xff", {})[0] == 503


@pytest.mark.parametrize(
    "value",
    [INVALID_KEY, "whsec_", "whsec_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVha", "not base64 at all \u00fc"],
    ids=["punctuation", "empty", "bad length", "not ASCII"],
)
def test_invalid_secret_is_503_and_never_printed(store, recorder, value):
    ingest = WebhookIngest(store=store, secret=Secret(value, "env:ANTHROPIC_WEBHOOK_SIGNING_KEY"), on_event=recorder)
    assert ingest.config_error
    status, answer = ingest.receive(*sign_envelope(envelope()))
    assert status == 503
    text = json.dumps(answer, ensure_ascii=False)
    assert "not a valid" in answer["message"]
    if value != "whsec_":  # the bare prefix is part of the advice ("a valid whsec_… secret")
        assert value not in text
        assert value not in ingest.config_error
    assert store.deliveries() == [] and recorder.events == []


def test_paging_shows_every_delivery_once_even_with_equal_timestamps(ingest, store, monkeypatch):
    import jupyter_cma.store

    # A clock that does not advance between deliveries (store.py only calls time.time()).
    monkeypatch.setattr(jupyter_cma.store, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    for _ in range(3):
        assert ingest.receive(*sign_envelope(envelope()))[0] == 200
    seen, before = [], None
    while page := store.deliveries(limit=2, before=before):
        seen += [r["webhook_id"] for r in page]
        before = page[-1]["seq"]
    assert len(seen) == len(set(seen)) == 3


# ---------------------------------------------------------------------- through a real Jupyter server


@pytest.fixture
def signing_key() -> str | None:
    """The webhook secret the server gets in its environment; tests override it by parametrizing."""
    return SIGNING_KEY


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch, signing_key):
    for var in ("ANTHROPIC_ENVIRONMENT_KEY", "ANTHROPIC_ENVIRONMENT_ID", "ANTHROPIC_API_KEY", "ANTHROPIC_WEBHOOK_SIGNING_KEY"):
        monkeypatch.delenv(var, raising=False)
    if signing_key is not None:
        monkeypatch.setenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", signing_key)
    return {
        "ServerApp": {
            # jupyter_server_terminals has an endpoint without an auth decorator: leave it out,
            # so no JupyterServerAuthWarning is raised while the server loads its extensions.
            "jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
        },
        "CMAApp": {"data_dir": str(tmp_path / "cma"), "max_webhook_bytes": MAX_BYTES},
    }


@pytest.fixture
def post_webhook(jp_fetch):
    """POST a delivery to cma/webhooks with no Jupyter credentials; returns (status, JSON answer)."""

    async def post(body: bytes | None, headers: dict[str, str], **kw: Any) -> tuple[int, dict[str, Any]]:
        response = await jp_fetch(
            "cma", "webhooks",
            method="POST",
            body=body,
            headers={"Authorization": "", "Content-Type": "application/json", **headers},
            raise_error=False,
            **kw,
        )
        assert response.headers.get("Content-Type", "").startswith("application/json"), response
        return response.code, json.loads(response.body)

    return post


def cma_ext(jp_serverapp):
    (ext,) = jp_serverapp.extension_manager.extension_apps["jupyter_cma"]
    return ext


async def test_http_accepted_without_a_jupyter_token(post_webhook, jp_serverapp):
    env = envelope("session.status_idled", "sesn_http")
    status, answer = await post_webhook(*sign_envelope(env))
    assert (status, answer) == (200, {"status": "accepted"})
    (row,) = cma_ext(jp_serverapp).store.deliveries()
    assert (row["webhook_id"], row["event_type"], row["object_id"]) == (env["id"], "session.status_idled", "sesn_http")
    # a retry of it
    assert await post_webhook(*sign_envelope(env)) == (200, {"status": "duplicate"})


async def test_http_every_bad_delivery_gets_its_status_and_the_server_keeps_serving(post_webhook, jp_fetch, jp_serverapp):
    wrong = []
    for case in BAD:
        body, headers = case.build()
        status, answer = await post_webhook(body, headers)
        if status != case.status or not answer.get("message"):
            wrong.append((case.name, status, answer))
        assert SIGNING_KEY not in json.dumps(answer)
    assert wrong == []
    for pick in ("wrong first", "wrong last", "v2 and v1a first"):
        assert await post_webhook(*_good_multi(pick)) == (200, {"status": "accepted"}), pick
    for payload in ([], "str", {"type": "event"}):
        assert await post_webhook(*sign(json.dumps(payload))) == (200, {"status": "accepted"})
    env = envelope("agent.exploded", "agent_1")
    assert await post_webhook(*sign_envelope(env)) == (200, {"status": "accepted"})
    # After all of that, an ordinary delivery is still accepted.
    assert await post_webhook(*sign_envelope(envelope())) == (200, {"status": "accepted"})

    store = cma_ext(jp_serverapp).store
    types = [r["event_type"] for r in store.deliveries(limit=500)]
    assert len(types) == 3 + 3 + 1 + 1
    assert "agent.exploded" in types and types.count("unknown") == 3
    counters = json.loads((await jp_fetch("cma", "api", "status")).body)["webhooks"]
    assert counters == {"accepted": 8, "duplicates": 0, "rejected": len(BAD)}


async def test_http_body_at_the_size_limit_is_accepted(post_webhook):
    env = envelope()
    env["pad"] = ""
    env["pad"] = "x" * (MAX_BYTES - len(json.dumps(env)))
    body, headers = sign_envelope(env)
    assert len(body) == MAX_BYTES
    assert await post_webhook(body, headers) == (200, {"status": "accepted"})


async def test_http_oversized_body_with_content_length_is_413(post_webhook):
    env = envelope()
    env["pad"] = ""
    env["pad"] = "x" * (MAX_BYTES + 1 - len(json.dumps(env)))
    body, headers = sign_envelope(env)
    assert len(body) == MAX_BYTES + 1
    status, answer = await post_webhook(body, headers)
    assert status == 413
    assert str(MAX_BYTES) in answer["message"]
    env["pad"] = "y" * 20_000
    assert (await post_webhook(*sign_envelope(env)))[0] == 413
    # the server still serves
    assert (await post_webhook(*sign_envelope(envelope())))[0] == 200


def _chunks(body: bytes, size: int = 256) -> Callable[[Callable[[bytes], Any]], Any]:
    async def produce(write: Callable[[bytes], Any]) -> None:
        for i in range(0, len(body), size):
            await write(body[i : i + size])

    return produce


async def test_http_chunked_bodies_are_counted_too(post_webhook, jp_serverapp):
    small = envelope()
    body, headers = sign_envelope(small)
    assert await post_webhook(None, headers, body_producer=_chunks(body, 64)) == (200, {"status": "accepted"})

    big = envelope()
    big["pad"] = "z" * (4 * MAX_BYTES)
    body, headers = sign_envelope(big)
    status, answer = await post_webhook(None, headers, body_producer=_chunks(body))
    assert status == 413 and str(MAX_BYTES) in answer["message"]
    ids = [r["webhook_id"] for r in cma_ext(jp_serverapp).store.deliveries()]
    assert ids == [small["id"]]
    assert (await post_webhook(*sign_envelope(envelope())))[0] == 200


async def _raw_exchange(
    port: int, request: bytes, body_parts: list[bytes] = (), *, then_closed: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-written HTTP/1.1 request; read one response (the server's loop is this loop).

    With `then_closed`, also require the server to close the connection after its answer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        for part in body_parts:
            writer.write(part)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        if then_closed:
            assert await asyncio.wait_for(reader.read(), 10) == b"", "the server should close the connection"
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_http_huge_content_length_is_refused_before_the_body_is_sent(http_server, jp_http_port, jp_base_url, post_webhook):
    _, headers = sign_envelope(envelope())
    request = _head(f"{jp_base_url}cma/webhooks", {**headers, "Content-Type": "application/json", "Content-Length": str(50 * 1024 * 1024)})
    # No body is ever sent: the answer comes from the declared length alone, and the
    # connection is closed rather than read to the end.
    status, _, body = await _raw_exchange(jp_http_port, request, then_closed=True)
    assert status == 413
    assert str(MAX_BYTES) in json.loads(body)["message"]
    assert (await post_webhook(*sign_envelope(envelope())))[0] == 200


async def test_http_raw_chunked_transfer_over_the_limit_is_413(http_server, jp_serverapp, jp_http_port, jp_base_url):
    env = envelope()
    env["pad"] = "q" * (2 * MAX_BYTES)
    body, headers = sign_envelope(env)
    request = _head(f"{jp_base_url}cma/webhooks", {**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + 300]), body[i : i + 300]) for i in range(0, len(body), 300)] + [b"0\r\n\r\n"]
    status, _, answer = await _raw_exchange(jp_http_port, request, parts)
    assert status == 413
    assert str(MAX_BYTES) in json.loads(answer)["message"]
    assert cma_ext(jp_serverapp).store.deliveries() == []
    # and a raw chunked delivery under the limit is fine
    body, headers = sign_envelope(envelope())
    request = _head(f"{jp_base_url}cma/webhooks", {**headers, "Transfer-Encoding": "chunked"})
    status, _, answer = await _raw_exchange(jp_http_port, request, [b"%x\r\n%s\r\n" % (len(body), body), b"0\r\n\r\n"])
    assert (status, json.loads(answer)) == (200, {"status": "accepted"})


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_http_other_methods_are_405(jp_fetch, method):
    kw = {"body": b"{}"} if method in ("PUT", "PATCH") else {}
    response = await jp_fetch("cma", "webhooks", method=method, headers={"Authorization": ""}, raise_error=False, **kw)
    assert response.code == 405
    assert json.loads(response.body)["message"]


async def test_http_deliveries_listed_newest_first_with_paging(post_webhook, jp_fetch):
    sent = []
    for i in range(5):
        env = envelope("session.status_run_started", f"sesn_{i}")
        assert (await post_webhook(*sign_envelope(env)))[0] == 200
        sent.append(env)
    await post_webhook(*sign_envelope(sent[0]))  # a duplicate is not listed twice

    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    pages = 0
    while True:
        page = json.loads((await jp_fetch("cma", "api", "webhooks", params=params)).body)
        pages += 1
        if not page["data"]:
            assert page["next_before"] is None
            break
        assert len(page["data"]) <= 2
        assert page["next_before"] == page["data"][-1]["seq"]
        seen += page["data"]
        params = {"limit": 2, "before": page["next_before"]}
    assert pages == 4
    assert [d["webhook_id"] for d in seen] == [e["id"] for e in reversed(sent)]
    times = [d["received_at"] for d in seen]
    assert times == sorted(times, reverse=True)
    newest = seen[0]
    assert newest["body"] == sent[-1]
    assert (newest["event_type"], newest["object_id"]) == ("session.status_run_started", "sesn_4")

    everything = json.loads((await jp_fetch("cma", "api", "webhooks")).body)
    assert [d["webhook_id"] for d in everything["data"]] == [e["id"] for e in reversed(sent)]


async def test_http_deliveries_bad_paging_arguments_are_400(jp_fetch):
    for params in ({"limit": "0"}, {"limit": "many"}, {"before": "yesterday"}):
        response = await jp_fetch("cma", "api", "webhooks", params=params, raise_error=False)
        assert response.code == 400, params
        assert json.loads(response.body)["message"]


async def test_http_deliveries_need_a_token(jp_fetch, post_webhook):
    assert (await post_webhook(*sign_envelope(envelope())))[0] == 200
    response = await jp_fetch("cma", "api", "webhooks", headers={"Authorization": ""}, raise_error=False)
    assert response.code == 403
    assert b"whe_" not in response.body


@pytest.mark.parametrize("signing_key", [None], ids=["no secret"])
async def test_http_no_secret_is_503(post_webhook, jp_serverapp, signing_key):
    status, answer = await post_webhook(*sign_envelope(envelope()))
    assert status == 503
    assert "secret" in answer["message"] and "poll" in answer["message"]
    assert cma_ext(jp_serverapp).store.deliveries() == []


@pytest.mark.parametrize("signing_key", [INVALID_KEY], ids=["invalid secret"])
async def test_http_invalid_secret_is_503_and_never_printed(post_webhook, jp_fetch, jp_serverapp, signing_key):
    status, answer = await post_webhook(*sign_envelope(envelope()))
    assert status == 503
    assert "not a valid" in answer["message"]
    assert INVALID_KEY not in json.dumps(answer)
    status_body = (await jp_fetch("cma", "api", "status")).body.decode()
    assert INVALID_KEY not in status_body


@pytest.mark.parametrize("signing_key", [INVALID_KEY], ids=["invalid secret"])
async def test_http_invalid_secret_is_reported_by_status(jp_fetch, signing_key):
    status = json.loads((await jp_fetch("cma", "api", "status")).body)
    assert any("webhook_secret" in e for e in status["errors"]), status["errors"]
    assert status["ready"] is False


@pytest.mark.parametrize("shape", ["garbage {good}", "{good}, v1,AAAA", "v2,xyz,{good}", "  {good}  ", "{good},v1"])
def test_a_stray_signature_entry_cannot_hide_a_valid_one(ingest, shape):
    body, headers = sign_envelope(envelope())
    headers = {**headers, "webhook-signature": shape.format(good=headers["webhook-signature"])}
    assert ingest.receive(body, headers)[0] == 200
