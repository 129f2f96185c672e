"""Bad input never gets a 5xx: every route the extension registers, fuzzed through a real server.

One `jupyter server` with jupyter-cma runs for the module (real HTTP on loopback, real SQLite,
the emulator in place of Anthropic's API, terminals on, the strict authentication mode). Its
routes come from `web.handlers.handlers`, the list `CMAApp.initialize_handlers` registers, so a
route added there without an entry in `ROUTES` below fails `test_every_route_is_fuzzed`.

Each route and method gets malformed JSON bodies (nesting thousands of levels deep, invalid
UTF-8, NaN/Infinity, numbers too large, duplicate keys, empty, not an object, random bytes),
each body field replaced by values of every JSON type and by huge numbers, malformed query and
path parameters, and odd headers (mismatched Content-Type and the like). The webhook route gets
the same bodies signed with the server's secret (so they get past the signature) and unsigned.
Every answer must be below 500 and, from our handlers, JSON with a message; a webhook refused
with a 4xx must not be stored; afterwards the server still serves.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pytest
import tornado.web
import tornado.websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from standardwebhooks import Webhook

from jupyter_cma.egress.policy import POLICY_FIELDS
from jupyter_cma.web import schemas
from jupyter_cma.web.handlers import ApiContext, handlers

# Bounded so the whole module stays well under a minute; deadline=None because a request that goes
# upstream (to the emulator) takes longer than hypothesis's default 200 ms now and then.
FUZZ = settings(max_examples=20, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
MAX_WEBHOOK_BYTES = 64 * 1024

# ---------------------------------------------------------------------- what each route takes


@dataclass(frozen=True)
class Route:
    """A good request to one route and method: what the fuzz starts from and breaks."""

    body: dict[str, Any] | None = None  # a JSON body that the route accepts (None: the route reads no JSON body)
    fields: tuple[str, ...] = ()  # the body's fields, each given every kind of wrong value
    query: tuple[str, ...] = ()  # the query parameters the route reads
    binary: bool = False  # the body is an archive, not JSON


def _fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(model.model_fields)


POLICY = {"name": "fuzz", "scope": {"agent_id": "agent_fuzz"}, "allow": ["example.com"]}
ROUTES: dict[tuple[str, str], Route] = {
    ("StatusHandler", "GET"): Route(),
    ("SetupHandler", "GET"): Route(),
    ("SetupEmulatorHandler", "POST"): Route(body={}),
    ("AgentsHandler", "GET"): Route(query=_fields(schemas.AgentsQuery)),
    ("AgentsHandler", "POST"): Route(body={"name": "fuzz", "tier": "kernel"}, fields=_fields(schemas.AgentCreate)),
    ("AgentHandler", "GET"): Route(),
    ("AgentHandler", "PATCH"): Route(body={"tier": "kernel"}, fields=_fields(schemas.AgentPatch)),
    ("SessionsHandler", "GET"): Route(query=_fields(schemas.SessionsQuery)),
    ("SessionsHandler", "POST"): Route(body={"agent_id": "agent_fuzz", "message": "hi"}, fields=_fields(schemas.SessionCreate)),
    ("SessionHandler", "GET"): Route(),
    ("SessionEventsHandler", "GET"): Route(query=_fields(schemas.EventsQuery)),
    ("SessionMessagesHandler", "POST"): Route(body={"text": "hi"}, fields=_fields(schemas.SessionMessage)),
    ("SessionStopHandler", "POST"): Route(body={}),
    ("SessionNotebookHandler", "GET"): Route(),
    ("SessionTerminalHandler", "POST"): Route(body={}),
    ("SessionWorkspaceHandler", "GET"): Route(),
    ("SessionWorkspaceHandler", "PUT"): Route(binary=True),
    ("SessionWorkspaceSyncHandler", "POST"): Route(body={}),
    ("ToolsHandler", "GET"): Route(),
    ("KernelToolsHandler", "GET"): Route(),
    # Only the kernel itself may PUT (signed with its key): the fuzz's token gets 403, whatever the body.
    ("KernelToolHandler", "PUT"): Route(body={"description": "x", "input_schema": {"type": "object"}},
                                        fields=_fields(schemas.NotebookToolPut)),
    ("KernelToolHandler", "DELETE"): Route(),
    ("WebhookDeliveriesHandler", "GET"): Route(query=_fields(schemas.DeliveriesQuery)),
    ("EgressLogHandler", "GET"): Route(query=_fields(schemas.EgressLogQuery)),
    ("EgressPoliciesHandler", "GET"): Route(),
    ("EgressPoliciesHandler", "POST"): Route(body=POLICY, fields=POLICY_FIELDS),
    ("EgressPolicyValidateHandler", "POST"): Route(body=POLICY, fields=POLICY_FIELDS),
    ("EgressPolicyHandler", "GET"): Route(),
    ("EgressPolicyHandler", "PUT"): Route(body=POLICY, fields=POLICY_FIELDS + ("id",)),
    ("EgressPolicyHandler", "DELETE"): Route(),
    ("EgressDecideHandler", "POST"): Route(body={"url": "https://pypi.org/simple/"}, fields=_fields(schemas.DecideBody)),
    ("EgressSecretsHandler", "GET"): Route(),
    ("EgressSecretHandler", "PUT"): Route(body={"value": "fuzz"}, fields=_fields(schemas.SecretPut)),
    ("EgressSecretHandler", "DELETE"): Route(),
    ("NotebookEditsHandler", "GET"): Route(query=_fields(schemas.NotebookEditsQuery)),
    ("NotebookEditUndoHandler", "POST"): Route(body={}),
    ("MailHandler", "GET"): Route(query=_fields(schemas.MailQuery)),
    ("WebhookHandler", "POST"): Route(),  # fuzzed by the webhook tests below
}
# A well-formed value for each path parameter; the path tests break them.
PATH_VALUES = {"session_id": "sesn_fuzz", "agent_id": "agent_fuzz", "policy_id": "pol_fuzz", "name": "FUZZ_SECRET", "action": "push",
               "kernel_id": "0b8f3c1e-0000-4000-8000-00000000f022", "tool_name": "fuzz_tool", "edit_id": "1"}
_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")


@dataclass(frozen=True)
class Registered:
    """One route and method as the extension registers it."""

    pattern: str
    handler: str
    method: str

    @property
    def params(self) -> list[str]:
        return _GROUP.findall(self.pattern)

    def path(self, **values: str) -> str:
        template = _GROUP.sub(lambda m: "{" + m.group(1) + "}", self.pattern)
        return template.format(**{**PATH_VALUES, **values})

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}"


def registered() -> list[Registered]:
    """Every (route, method) of the extension, from the handler list the app registers."""
    # handlers() only places the context into each route's kwargs: placeholders are enough to list them.
    ctx = ApiContext(**{f.name: None for f in dataclasses.fields(ApiContext)})
    found = []
    for pattern, handler, _kwargs in handlers(ctx):
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            continue  # the live channel speaks websocket frames, not JSON bodies: tests/test_live.py checks its auth and input
        for method in tornado.web.RequestHandler.SUPPORTED_METHODS:
            own = [k for k in handler.__mro__ if k.__module__.startswith("jupyter_cma.") and method.lower() in vars(k)]
            if own:
                found.append(Registered(pattern, handler.__name__, method))
    return found


REGISTERED = registered()
REST = [r for r in REGISTERED if r.handler != "WebhookHandler"]
WITH_BODY = [r for r in REST if ROUTES.get((r.handler, r.method), Route()).body is not None]
WITH_FIELDS = [r for r in REST if ROUTES.get((r.handler, r.method), Route()).fields]
WITH_QUERY = [r for r in REST if ROUTES.get((r.handler, r.method), Route()).query]
WITH_PATH = [r for r in REST if r.params]
BINARY = [r for r in REST if ROUTES.get((r.handler, r.method), Route()).binary]
WEBHOOK = next(r for r in REGISTERED if r.handler == "WebhookHandler")


def test_every_route_is_fuzzed():
    missing = [str(r) for r in REGISTERED if (r.handler, r.method) not in ROUTES]
    assert missing == [], f"routes without a fuzz entry: add them to ROUTES in {__name__}: {missing}"
    stale = set(ROUTES) - {(r.handler, r.method) for r in REGISTERED}
    assert stale == set(), f"ROUTES names routes the app does not register: {sorted(stale)}"
    for route in REGISTERED:
        assert set(route.params) <= set(PATH_VALUES), f"{route}: give its path parameters a value in PATH_VALUES"


# ---------------------------------------------------------------------- the server


@dataclass
class Server:
    """A running `jupyter server` with jupyter-cma, and raw HTTP to it."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    webhook_secret: str
    log_path: str
    accepted_webhooks: int = 0  # deliveries answered {"status": "accepted"}, each of which must be stored

    def request(self, method: str, path: str, *, query: str = "", body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request, sent as given (nothing re-encoded)."""
        sent = dict(headers or {})
        if auth:
            sent.setdefault("Authorization", f"token {self.token}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path + (f"?{query}" if query else ""), body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def log_tail(self, lines: int = 60) -> str:
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def check(self, what: str, status: int, headers: dict[str, str], body: bytes, *, ours: bool = True) -> None:
        """No 5xx; from our handlers, an error is JSON with a message."""
        assert self.proc.poll() is None, f"the server exited while serving {what}\n{self.log_tail()}"
        assert status < 500, f"{what} → {status} {body[:300]!r}\n--- server log ---\n{self.log_tail()}"
        if ours and status >= 400:
            assert headers.get("content-type", "").startswith("application/json"), f"{what} → {status} {headers}"
            assert json.loads(body).get("message"), f"{what} → {status} {body[:300]!r}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(emulator, tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("fuzz")
    info = emulator.info
    port, token = _free_port(), secrets.token_hex(16)
    # The server's own webhook secret: this emulator sends no deliveries, the tests sign them.
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {**os.environ, "ANTHROPIC_API_KEY": info["api_key"], "ANTHROPIC_ENVIRONMENT_KEY": info["environment_key"],
           "ANTHROPIC_WEBHOOK_SIGNING_KEY": webhook_secret, "JUPYTER_CONFIG_DIR": str(work / "config"),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
    log_path = str(work / "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             *(["--allow-root"] if os.geteuid() == 0 else []),
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--ServerApp.allow_unauthenticated_access=False",
             # Terminals on, so the terminal route answers for its input rather than "terminals are disabled".
             '--ServerApp.jpserver_extensions={"jupyter_cma": True, "jupyter_server_terminals": True}',
             f"--CMAApp.data_dir={work / 'cma'}", f"--CMAApp.api_base_url={info['base_url']}",
             f"--CMAApp.environment_id={info['environment_id']}", f"--CMAApp.max_webhook_bytes={MAX_WEBHOOK_BYTES}",
             "--CMAApp.default_tier=kernel", "--KernelTier.pool_size=0", "--ContainerTier.pool_size=0"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    srv = Server(proc, port, token, webhook_secret, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server did not start:\n{srv.log_tail()}"
            try:
                if srv.request("GET", "/cma/api/status")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer within 90 s:\n{srv.log_tail()}"
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- malformed input

def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"name": "x", "metadata": ' + b"[" * depth + b"]" * depth + b"}"  # deep inside a field


# Text that is not acceptable JSON, or JSON that is not an object, or an object that is barely one.
ODD_BODIES = [
    _deep(65, "array"), _deep(3000, "array"), _deep(3000, "object"), _deep(3000, "field"), _deep(100_000, "array"),
    b"", b" ", b"\n", b"{", b"}", b"[", b"null", b"true", b"0", b"-1", b'"text"', b"[]", b"[{}]", b"{}",
    b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a": Infinity}', b"1e999", b"-1e999", b'{"a": 1e999}',
    b"9" * 30, b"1" + b"0" * 5000, b'{"a": ' + b"9" * 5000 + b"}",
    b'{"a": 1, "a": 2}', b'{"name": "x", "name": "x"}',
    b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b'{"a": "\xff"}', b"\xed\xa0\x80", b'{"a": "\\ud800"}', b'{"\\udfff": 1}',
    b"{'a': 1}", b'{"a": 1,}', b"[1, 2", b'{"a" 1}', b"\x00", b"<xml/>", b"a=1&b=2",
]


deep_bodies = st.builds(_deep, st.one_of(st.integers(60, 70), st.integers(70, 20_000)), st.sampled_from(["array", "object", "field"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
malformed_bodies = st.one_of(
    st.sampled_from(ODD_BODIES),
    deep_bodies,
    st.binary(max_size=511),  # below one tar block: random bytes never make an (empty) archive
    json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
# JSON text put in place of one field's value: every JSON type, and what a parser must refuse.
WRONG_VALUES = [
    "null", "true", "false", "0", "-1", "1.5", "-0.0", '""', '" "', '"x"', "[]", "[1]", '["x"]', "{}", '{"a": 1}', '{"type": "x"}',
    str(2**63), str(-(2**63) - 1), "1e308", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400,
    '"' + "x" * 100_000 + '"', '"\\u0000"', '"\\ud800"', '"../../etc"', '"%s%n"', "[" * 100 + "]" * 100,
]
# Values of a query or path parameter: not numbers, negative, huge, not finite, empty, not UTF-8, not ASCII.
RAW_PARAMS = [
    "", "abc", "-1", "0", "1.5", "1e3", "nan", "inf", "-inf", "9" * 40, "1" * 5000, "%ff", "%FF%FE", "%00", "%", "%zz",
    "%2F", "..", "%2E%2E", quote("ü"), quote("１"), quote(" 5 "), "a,b,,c", quote("<script>"), "x" * 300, quote("\U0001f600"),
]
query_values = st.one_of(st.sampled_from(RAW_PARAMS), st.text(max_size=30).map(lambda t: quote(t, safe="")))
path_values = st.one_of(
    st.sampled_from(RAW_PARAMS[1:]),
    st.text(min_size=1, max_size=40).map(lambda t: quote(t, safe="")),
    st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True),
    st.integers(129, 400).map(lambda n: "a" * n),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
CONTENT_TYPES = [
    "application/json", "application/json; charset=latin-1", "application/json; charset=utf-16", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=x", "application/octet-stream",
    "application/gzip", "application/x-tar", "*/*", "", "garbage", "application/json;;;", "text/html; charset=\"",
]
odd_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(CONTENT_TYPES) | HEADER_TEXT,
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x"]),
    "Accept": st.sampled_from(["*/*", "text/html", "application/xml", ""]) | HEADER_TEXT,
    "Accept-Encoding": st.sampled_from(["gzip", "*", ""]),
    "Cookie": HEADER_TEXT,
    "X-XSRFToken": HEADER_TEXT,
    "Origin": st.sampled_from(["http://evil.example", "null", ""]),
})


def _form(headers: dict[str, str]) -> bool:
    """Whether tornado itself parses the body as a form: one it cannot parse gets a bare 400 before any handler."""
    return headers.get("Content-Type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


def _with_field(base: dict[str, Any], name: str, raw: str) -> bytes:
    """`base` with `name` set to the JSON text `raw` (which json.dumps could not write: NaN, 1e999, deep nesting)."""
    rest = {k: v for k, v in base.items() if k != name}
    head = json.dumps(rest)[:-1]
    return f"{head}{', ' if rest else ''}{json.dumps(name)}: {raw}}}".encode()


# ---------------------------------------------------------------------- the REST routes


def _route(route: Registered) -> Route:
    return ROUTES[(route.handler, route.method)]


@pytest.mark.parametrize("route", WITH_BODY, ids=str)
def test_malformed_bodies_get_4xx(server, route):
    for body in ODD_BODIES:  # each of them, then random ones
        status, headers, answer = server.request(route.method, route.path(), body=body)
        server.check(f"{route} with {body[:80]!r}", status, headers, answer)

    @FUZZ
    @given(body=malformed_bodies, content_type=st.sampled_from(CONTENT_TYPES))
    def run(body: bytes, content_type: str) -> None:
        sent = {"Content-Type": content_type}
        status, headers, answer = server.request(route.method, route.path(), body=body, headers=sent)
        server.check(f"{route} with {body[:80]!r} as {content_type}", status, headers, answer, ours=not _form(sent))

    run()


@pytest.mark.parametrize("route", WITH_FIELDS, ids=str)
def test_every_field_with_a_wrong_value_gets_4xx(server, route):
    spec = _route(route)
    assert spec.body is not None
    fields = (*spec.fields, "unknown_field")
    # Every field with every kind of wrong value, once each...
    for name in fields:
        for raw in WRONG_VALUES:
            status, headers, answer = server.request(route.method, route.path(), body=_with_field(spec.body, name, raw))
            server.check(f"{route} with {name}={raw[:60]}", status, headers, answer)

    # ...then random JSON in random fields, several at once.
    @FUZZ
    @given(changes=st.dictionaries(st.sampled_from(fields), json_values, min_size=1, max_size=3))
    def run(changes: dict[str, Any]) -> None:
        body = json.dumps({**spec.body, **changes}).encode()
        status, headers, answer = server.request(route.method, route.path(), body=body)
        server.check(f"{route} with {body[:200]!r}", status, headers, answer)

    run()


@pytest.mark.parametrize("route", WITH_QUERY, ids=str)
def test_malformed_query_parameters_get_4xx(server, route):
    names = _route(route).query
    for name in names:
        for raw in RAW_PARAMS:
            status, headers, answer = server.request(route.method, route.path(), query=f"{name}={raw}")
            server.check(f"{route} ?{name}={raw[:60]}", status, headers, answer)

    @FUZZ
    @given(params=st.lists(st.tuples(st.sampled_from((*names, "unknown")), query_values), min_size=1, max_size=4))
    def run(params: list[tuple[str, str]]) -> None:
        query = "&".join(f"{k}={v}" for k, v in params)  # repeated names included
        status, headers, answer = server.request(route.method, route.path(), query=query)
        server.check(f"{route} ?{query[:200]}", status, headers, answer)

    run()


@pytest.mark.parametrize("route", WITH_PATH, ids=str)
def test_malformed_path_parameters_get_4xx(server, route):
    spec = _route(route)
    body = json.dumps(spec.body).encode() if spec.body is not None else (b"" if route.method in ("POST", "PUT", "PATCH") else None)

    @FUZZ
    @given(values=st.fixed_dictionaries({p: path_values for p in route.params}))
    def run(values: dict[str, str]) -> None:
        path = route.path(**values)
        status, headers, answer = server.request(route.method, path, body=body)
        # A path our pattern does not match is answered by Jupyter's own handlers (404 or 400 pages), still never 5xx.
        server.check(f"{route.method} {path[:200]}", status, headers, answer, ours=re.fullmatch(route.pattern, path) is not None)

    run()


@pytest.mark.parametrize("route", REST, ids=str)
def test_odd_headers_get_4xx(server, route):
    spec = _route(route)
    good = json.dumps(spec.body).encode() if spec.body is not None else None
    if route.method in ("POST", "PUT", "PATCH") and good is None:
        good = b""

    @settings(FUZZ, max_examples=10)
    @given(headers=odd_headers, body=st.sampled_from([good, b'{"a": ' * 3000]) if good is not None else st.none(), token=st.booleans())
    def run(headers: dict[str, str], body: bytes | None, token: bool) -> None:
        status, answer_headers, answer = server.request(route.method, route.path(), body=body, headers=headers, auth=token)
        server.check(f"{route} with headers {headers} and token={token}", status, answer_headers, answer, ours=not _form(headers))
        if not token:  # Jupyter answers a request from a foreign Origin 404 before it looks at the credentials
            refusals = {403} | ({404} if "Origin" in headers else set()) | ({400} if _form(headers) else set())
            assert status in refusals, f"{route} answered {status} without a token"

    run()


@pytest.mark.parametrize("route", BINARY, ids=str)
def test_archive_routes_refuse_what_is_not_an_archive(server, route):
    @FUZZ
    @given(body=st.one_of(st.binary(max_size=511), st.sampled_from(ODD_BODIES)))
    def run(body: bytes) -> None:
        status, headers, answer = server.request(route.method, route.path(), body=body, headers={"Content-Type": "application/gzip"})
        server.check(f"{route} with {body[:80]!r}", status, headers, answer)
        assert status in (400, 404, 409), f"{route} with {body[:80]!r} → {status} {answer[:200]!r}"

    run()


# ---------------------------------------------------------------------- the webhook route


def _signed(server: Server, body: bytes) -> dict[str, str]:
    msg_id = "whe_fuzz_" + secrets.token_hex(8)
    signature = Webhook(server.webhook_secret).sign(msg_id, datetime.now(timezone.utc), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(time.time())), "webhook-signature": signature,
            "Content-Type": "application/json"}


def _deliveries(server: Server) -> int:
    count, before = 0, None
    while True:
        status, _, answer = server.request("GET", "/cma/api/webhooks", query="limit=500" + (f"&before={before}" if before else ""))
        assert status == 200, answer
        page = json.loads(answer)
        count += len(page["data"])
        if not page["data"]:
            return count
        before = page["next_before"]


def _post_webhook(server: Server, body: bytes, headers: dict[str, str]) -> int:
    status, answer_headers, answer = server.request("POST", WEBHOOK.path(), body=body, headers=headers, auth=False)
    server.check(f"webhook {body[:80]!r} {headers}", status, answer_headers, answer)
    if status == 200 and json.loads(answer) == {"status": "accepted"}:
        server.accepted_webhooks += 1
    else:
        assert status in (400, 401, 413), f"webhook {body[:80]!r} → {status} {answer[:200]!r}"
    return status


def test_signed_malformed_webhooks_get_4xx_and_are_not_stored(server):
    stored_before, server.accepted_webhooks = _deliveries(server), 0
    # Signed JSON of any shape is stored (the sender did its part); anything a JSON parser must refuse is a 400.
    statuses = {body: _post_webhook(server, body, _signed(server, body)) for body in ODD_BODIES}
    assert set(statuses.values()) <= {200, 400, 413}, statuses
    assert statuses[b"[]"] == 200 and statuses[b"NaN"] == statuses[b"{"] == statuses[b'{"a": 1, "a": 2}'] == 400
    deep = _deep(3000, "array")
    assert _post_webhook(server, deep, _signed(server, deep)) == 400  # was a RecursionError, a 500 and a retry

    @FUZZ
    @given(body=malformed_bodies)
    def run(body: bytes) -> None:
        _post_webhook(server, body, _signed(server, body))

    run()
    assert _deliveries(server) == stored_before + server.accepted_webhooks, "a refused delivery was stored, or an accepted one lost"


def test_unsigned_and_oddly_signed_webhooks_get_4xx(server):
    before = _deliveries(server)

    @FUZZ
    @given(body=malformed_bodies, headers=st.fixed_dictionaries({}, optional={
        "webhook-id": HEADER_TEXT, "webhook-timestamp": st.sampled_from(["", "0", "-1", "nan", "1e300", "9" * 40, str(int(time.time()))]) | HEADER_TEXT,
        "webhook-signature": st.sampled_from(["", "v1,", "v1,abc", "v1,****", "v2,AAAA"]) | HEADER_TEXT,
        "Content-Type": st.sampled_from(CONTENT_TYPES),
    }))
    def run(body: bytes, headers: dict[str, str]) -> None:
        assert _post_webhook(server, body, headers) != 200

    run()
    assert _deliveries(server) == before


# ---------------------------------------------------------------------- afterwards


def test_the_server_still_serves_afterwards(server):
    """Runs last in this module: the server is up, and good requests still do what they should."""
    status, _, answer = server.request("GET", "/cma/api/status")
    assert status == 200, answer
    before = _deliveries(server)
    env = {"type": "event", "id": "whe_" + secrets.token_hex(8), "data": {"type": "session.status_idled", "id": "sesn_after_fuzz"}}
    body = json.dumps(env).encode()
    status, _, answer = server.request("POST", WEBHOOK.path(), body=body, headers=_signed(server, body), auth=False)
    assert (status, json.loads(answer)) == (200, {"status": "accepted"})
    assert _deliveries(server) == before + 1
    status, _, answer = server.request("POST", "/cma/api/agents", body=json.dumps({"name": "after the fuzz", "tier": "kernel",
                                                                                  "system": "be brief"}).encode())
    assert status == 201, answer
    assert json.loads(answer)["system"] == "be brief"
    assert server.proc.poll() is None
