"""The web built-ins (`web_fetch`, `call_service`) through the real egress engine, as the session they run for.

Each test runs the families directly (a `CallContext` per call) on a real `EgressProxy` (the engine in its
own process), the server's `SessionEgress` and `ToolEgress`, and loopback upstreams reached as private
services of an egress policy scoped to the session's agent: what the policy allows, refuses and injects
holds for a built-in exactly as for a sandbox, and the egress log names the session.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import PolicyResolver, PolicyStore
from jupyter_cma.egress.proxy import EgressProxy
from jupyter_cma.egress.secrets import SecretStore
from jupyter_cma.store import Store
from jupyter_cma.tools.builtin.base import CallContext, ServerParts, ToolError
from jupyter_cma.tools.builtin.egress import EgressRefused, ToolEgress
from jupyter_cma.tools.builtin.web import ServiceTools, WebFetchTools
from jupyter_cma.tools.registry import ToolRegistry
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config,
    results,
    script,
)
from tests.test_egress_proxy import test_ca  # noqa: F401  (the module's CA fixture)

SECRET = f"sk-web-{secrets.token_hex(16)}"  # made per run: no file holds it unless something leaked it there
SESSION, AGENT = "sesn_webtools", "agent_web"

PAGE = """<!doctype html><html><head><title>Widget handbook</title><meta charset="utf-8"></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<main><h1>Widgets</h1>
<p>Widgets are <b>small</b> parts that the factory ships in boxes of twelve; each box carries a label with its batch.</p>
<p>To order widgets, write to the <a href="https://example.org/sales">sales desk</a> with the batch numbers you need.</p>
<h2>Sizes</h2><ul><li>small: 2 cm</li><li>large: 5 cm</li></ul>
</main><footer>Copyright Widget Works</footer><script>var tracking = "do-not-show";</script></body></html>"""


def reflect(header: str) -> str:
    """A debug endpoint's answer: the header's value (less its prefix) JSON-escaped (Python's, PHP's, Go's), URL-encoded,
    in base64, and the whole header in base64."""
    value = header.removeprefix("Token ")
    escaped = json.dumps(value)[1:-1]
    fields = {"json": escaped, "php": escaped.replace("/", "\\/"),
              "go": escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
              "path": quote(value, safe=""), "query": quote_plus(value), "b64": base64.b64encode(value.encode()).decode(),
              "header_b64": base64.urlsafe_b64encode(header.encode()).decode().rstrip("=")}
    return "{" + ", ".join(f'"{k}": "{v}"' for k, v in fields.items()) + "}"


class Site:
    """A loopback site that records what reached it (method, path, headers, body).

    `/page` is PAGE; `/hop?n=N` redirects N more times, then to /page; `/json` answers JSON; `/echo` answers
    the request's headers as JSON (as a debug endpoint would, credentials included); `/big` a long text page;
    `/missing` 404; `/image` a PNG; `/away` redirects to a host the policy does not allow; `/reflect` answers the
    request's X-Token header (less a "Token " prefix) in the encodings services echo values in; `/reason` answers
    409 with the header in its reason phrase.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                site.requests.append({"method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                path = self.path.split("?", 1)[0] if not self.path.startswith("/hop") else self.path
                status, kind, reply, extra = 200, "text/html; charset=utf-8", PAGE.encode(), {}
                if path.startswith("/hop?n="):
                    n = int(path.split("=", 1)[1])
                    status, reply, extra = 302, b"", {"Location": f"/hop?n={n - 1}" if n > 1 else "/page"}
                elif path == "/away":
                    status, reply, extra = 302, b"", {"Location": "http://denied.example/elsewhere"}
                elif path == "/json":
                    kind, reply = "application/json", json.dumps({"items": [1, 2, 3], "method": self.command}).encode()
                elif path == "/echo":
                    kind = "application/json"
                    reply = json.dumps({"seen": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()}).encode()
                    extra = {"X-Request-Id": "req-1", "Set-Cookie": "session=abc"}
                elif path == "/reflect":
                    kind, reply = "application/json", reflect(self.headers.get("X-Token", "")).encode()
                elif path == "/reason":
                    status, kind, reply = 409, "text/plain", b"conflict"
                    extra = {}
                elif path == "/big":
                    kind, reply = "text/plain; charset=utf-8", ("line of text\n" * 5000).encode()
                elif path == "/missing":
                    status, kind, reply = 404, "text/plain", b"no such page"
                elif path == "/image":
                    kind, reply = "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64
                if path == "/reason":
                    self.send_response(status, f"conflict over {self.headers.get('X-Token', '')}")
                else:
                    self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(reply)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebRig:
    """Store, policies, secrets, the egress log, the engine, `SessionEgress` + `ToolEgress`, the two families, and sites."""

    def __init__(self, tmp_path: Path, ca: dict[str, str], *, engine: bool = True, internal_handler: Any = None) -> None:
        self.data = tmp_path / "cma"
        self.data.mkdir()
        self.store = Store(self.data / "cma.sqlite3")
        self.policies = PolicyStore(self.store)
        self.secrets = SecretStore(self.data / "secrets")
        self.log = EgressLog(self.store)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(ca["cert"], ca["key"])
        self.site, self.api, self.secure = Site(), Site(), Site(tls)
        self.engine = engine
        self.proxy = EgressProxy(data_dir=self.data, api_base_url="https://api.anthropic.com", middleware=[], egress_log=self.log,
                                 upstream_ca=ca["ca"], internal_handler=internal_handler)
        if not engine:
            self.proxy.engine_python = str(tmp_path / "no-engine" / "python")
        self.egress = ToolEgress(hook=SessionEgress(store=self.store, proxy=self.proxy), proxy=self.proxy,
                                 socket_dir=self.data / "tool-egress")
        self.resolver = PolicyResolver(self.policies, api_base_url="https://api.anthropic.com")
        self.web, self.service = WebFetchTools(), ServiceTools()
        # The session row names its agent: the policy below is the agent's, so a built-in is matched as its session.
        self.store.upsert_session(SESSION, status="running", agent_id=AGENT)

    def policy(self, **extra: Any) -> str:
        services = [{"name": "site.test", "target": f"127.0.0.1:{self.site.port}"},
                    {"name": "api.internal", "target": f"127.0.0.1:{self.api.port}"},
                    {"name": "https://secure.test", "target": f"127.0.0.1:{self.secure.port}"}]
        return self.policies.create({"name": "web", "scope": {"agent_id": AGENT}, "private_services": services, **extra}).id

    def ctx(self, session_id: str = SESSION) -> CallContext:
        return CallContext(session_id=session_id, agent_id=AGENT, settings={}, egress=self.egress)

    async def __aenter__(self) -> WebRig:
        if self.engine:
            assert await self.proxy.start(), self.proxy.error
        parts = ServerParts(store=self.store, client=lambda: None, environment_id=lambda: "", contents_manager=None,  # type: ignore[arg-type]
                            root_dir=str(self.data), policies=self.resolver, secrets=self.secrets, data_dir=self.data, egress=self.egress)
        for family in (self.web, self.service):
            await family.start(parts)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.egress.close()
        await self.proxy.stop()
        for site in (self.site, self.api, self.secure):
            site.close()
        self.store.close()

    async def rows(self, count: int, **filters: Any) -> list[dict[str, Any]]:
        """At least `count` egress log rows (newest first) matching `filters`."""
        return await wait_until(lambda: (rows := self.log.query(limit=200, **filters)) and len(rows) >= count and rows,
                                15, what=f"{count} egress log row(s) {filters}")


async def test_web_fetch_returns_the_page_as_markdown_with_its_title_and_final_url(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        rig.policy()
        assert rig.web.unavailable() is None
        text = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/hop?n=2"})
        rows = await rig.rows(3, session_id=SESSION)
    assert isinstance(text, str)
    head, _, body = text.partition("\n\n")
    assert "Title: Widget handbook" in head
    assert "URL: http://site.test/page" in head and "Requested: http://site.test/hop?n=2" in head
    # Main content as markdown: headings, emphasis, links, lists; navigation, footer and scripts left out.
    assert "# Widgets" in body and "**small**" in body and "[sales desk](https://example.org/sales)" in body
    assert "- small: 2 cm" in body and "## Sizes" in body
    assert "Copyright" not in body and "do-not-show" not in body and "About" not in body
    # Each hop went through the proxy as the session (its own socket, attached as the session).
    assert [r["path"] for r in rig.site.requests] == ["/hop?n=2", "/hop?n=1", "/page"]
    assert all(r["headers"]["user-agent"].startswith("jupyter-cma/") for r in rig.site.requests)
    assert {(r["host"], r["decision"], r["session_id"]) for r in rows} == {("site.test", "allowed", SESSION)}
    assert sorted(r["path"] for r in rows) == ["/hop", "/hop", "/page"]  # the log keeps paths without their query


async def test_web_fetch_caps_text_and_refuses_what_is_not_a_page(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        rig.policy()
        rig.web.max_chars = 1000
        json_text = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/json"})
        big = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/big", "max_chars": 200})
        rig.web.max_download_bytes = 300
        cut = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/big"})
        with pytest.raises(ToolError, match=r"http://site.test/missing answered HTTP 404 Not Found"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/missing"})
        with pytest.raises(ToolError, match=r"is image/png .*not a page or text"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/image"})
        rig.web.max_redirects = 1
        with pytest.raises(ToolError, match=r"redirected more than 1 times"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/hop?n=3"})
        with pytest.raises(ToolError, match=r"http:// or https:// URL"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "file:///etc/passwd"})
        rows = await rig.rows(7, session_id=SESSION)  # json, big twice, missing, image, two hops; the file: URL never left
    assert len(rig.site.requests) == len(rows) == 7
    assert isinstance(json_text, str) and json.loads(json_text.split("\n\n", 1)[1]) == {"items": [1, 2, 3], "method": "GET"}
    assert isinstance(big, str) and "[cut at 200 characters; ask with a larger max_chars (at most 1000) for more]" in big
    assert big.split("\n\n", 1)[1].startswith("line of text\n") and len(big.split("\n\n", 1)[1]) < 200 + 200
    assert isinstance(cut, str) and "the download stopped at 300 bytes" in cut


async def test_a_denied_page_is_refused_with_the_policy_reason_and_nothing_reaches_it(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        pid = rig.policy(deny=["site.test"])
        # Plain http (the answer to the request) and https (the answer to the CONNECT), by a deny rule and by the allow list.
        for url in ("http://site.test/page", "https://site.test/page", "https://denied.example/page"):
            with pytest.raises(ToolError, match=r"refused by the session's egress policy \(policy:") as refused:
                await rig.web.call(rig.ctx(), "web_fetch", {"url": url})
            assert pid in str(refused.value)
        # A redirect to a host the policy does not allow stops there, and says where it came from.
        with pytest.raises(ToolError, match=r"not-allowed\).*denied\.example:80 is not in the allow list.*redirect from http://api.internal/away"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://api.internal/away"})
        rows = await rig.rows(4, session_id=SESSION, decision="denied")
    assert "deny:site.test" in " ".join(r["rule"] for r in rows)
    assert rig.site.requests == []  # the denied site saw nothing at all
    assert [r["path"] for r in rig.api.requests] == ["/away"]
    assert {r["session_id"] for r in rows} == {SESSION}


async def test_https_through_the_proxy_is_verified_end_to_end(tmp_path, test_ca):
    # A plain tunnel: the client checks secure.test's own certificate (the operator's CA, which the proxy trusts too);
    # a tunnel the proxy opens (a method rule must see each request): the proxy's CA signs, the bundle trusts it.
    for name, extra in (("plain", {}), ("opened", {"allow": [{"host": "secure.test", "methods": ["GET"]}]})):
        (tmp_path / name).mkdir()
        async with WebRig(tmp_path / name, test_ca) as rig:
            rig.policy(**extra)
            text = await rig.web.call(rig.ctx(), "web_fetch", {"url": "https://secure.test/page"})
            rows = await rig.rows(1, session_id=SESSION, host="secure.test")
        assert isinstance(text, str) and "URL: https://secure.test/page" in text and "# Widgets" in text
        assert [r["path"] for r in rig.secure.requests] == ["/page"]
        # An opened tunnel's requests are logged one by one; a plain one is logged as the tunnel.
        assert rows[0]["path"] == ("/page" if name == "opened" else None), rows


async def test_call_service_injects_the_secret_which_never_reaches_the_model_or_the_logs(tmp_path, test_ca, caplog):
    caplog.set_level(logging.DEBUG)
    async with WebRig(tmp_path, test_ca) as rig:
        rig.secrets.set("API_TOKEN", SECRET)
        rig.policy(inject=[{"host": "api.internal", "scheme": "http", "header": "Authorization", "secret": "API_TOKEN", "prefix": "Bearer "},
                           {"host": "secure.test", "header": "X-Api-Key", "secret": "API_TOKEN"}])
        plain = await rig.service.call(rig.ctx(), "call_service", {
            "name": "api.internal", "method": "post", "path": "/echo?x=1", "body": {"q": "widgets"},
            "headers": {"Accept": "application/json", "Authorization": "Bearer forged"}})
        tls = await rig.service.call(rig.ctx(), "call_service", {"name": "https://secure.test", "method": "GET", "path": "/json"})
        rows = await rig.rows(2, session_id=SESSION)
        everything = [plain, tls, json.dumps(rows), caplog.text]
        # Every file the server keeps but the secret store itself (the database, the engine's files, the sockets' directory).
        stored = {str(p): p.read_bytes() for p in rig.data.rglob("*") if p.is_file() and "secrets" not in p.relative_to(rig.data).parts}
    # The services saw the credential, as the policy's injection put it (the model's own Authorization replaced).
    assert rig.api.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert rig.api.requests[0]["method"] == "POST" and rig.api.requests[0]["path"] == "/echo?x=1"
    assert json.loads(rig.api.requests[0]["body"]) == {"q": "widgets"}
    assert rig.secure.requests[0]["headers"]["x-api-key"] == SECRET
    # The answer: status, the selected headers (no cookies), the body as JSON, the echoed credential withheld.
    answer = json.loads(plain)
    assert answer["status"] == 200 and answer["headers"]["x-request-id"] == "req-1" and "set-cookie" not in answer["headers"]
    assert answer["body"]["seen"]["authorization"] == "Bearer [secret API_TOKEN withheld]"
    assert answer["body"]["body"] == json.dumps({"q": "widgets"})
    assert json.loads(tls)["body"] == {"items": [1, 2, 3], "method": "GET"}
    assert {r["decision"] for r in rows} == {"injected"} and {r["session_id"] for r in rows} == {SESSION}
    for text in everything:
        assert SECRET not in text
    assert stored and not [name for name, data in stored.items() if SECRET.encode() in data]


async def test_call_service_names_the_services_it_may_call(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        with pytest.raises(ToolError, match=r"declares no private services"):
            await rig.service.call(rig.ctx(), "call_service", {"name": "api.internal", "method": "GET", "path": "/json"})
        rig.policy()
        with pytest.raises(ToolError, match=r"no private service named 'warehouse.internal'.*available ones are: "
                           r"api\.internal, https://secure\.test, site\.test"):
            await rig.service.call(rig.ctx(), "call_service", {"name": "warehouse.internal", "method": "GET", "path": "/"})
        with pytest.raises(ToolError, match=r"path must start with a single /"):
            await rig.service.call(rig.ctx(), "call_service", {"name": "api.internal", "method": "GET", "path": "@evil.example/"})
        with pytest.raises(ToolError, match=r"header 'Host' cannot be set"):
            await rig.service.call(rig.ctx(), "call_service", {"name": "api.internal", "method": "GET", "path": "/", "headers": {"Host": "x"}})
        # A service answering an error is an answer, not a failure: the model reads its status.
        missing = json.loads(await rig.service.call(rig.ctx(), "call_service", {"name": "site.test", "method": "GET", "path": "/missing"}))  # type: ignore[arg-type]
    assert missing["status"] == 404 and missing["body"] == "no such page"
    assert [r["path"] for r in rig.site.requests] == ["/missing"] and rig.api.requests == []


async def test_without_an_engine_the_tools_are_unavailable_and_never_connect(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca, engine=False) as rig:
        rig.policy()
        reason = rig.web.unavailable()
        assert reason is not None and "jupyter cma install-egress-engine" in reason
        assert rig.service.unavailable() == reason
        with pytest.raises(ToolError, match=r"no network for built-in tools: the egress engine is not installed"):
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/page"})
    assert rig.site.requests == []


async def test_a_released_session_is_detached_and_attached_again_on_its_next_call(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        rig.policy()
        first = await rig.egress.socket_path(SESSION)
        assert len(first.encode()) <= 100 and rig.proxy.attachments[f"tools-{SESSION}"].spec["agent_id"] == AGENT
        assert await rig.egress.socket_path(SESSION) == first  # one socket per session
        await rig.egress.release(SESSION)
        assert f"tools-{SESSION}" not in rig.proxy.attachments and not Path(first).exists()
        text = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/page"})
        assert isinstance(text, str) and "# Widgets" in text


async def test_tool_sockets_never_reach_the_sessions_tools_while_a_sandboxs_socket_does(tmp_path, test_ca):
    """A web page a tool (or the browser) loads can make it request http://cma.internal/: that must not run the
    session's tools. The server refuses such calls on the tools' sockets, both kinds; a sandbox's still works."""
    calls: list[tuple[str, dict[str, Any]]] = []
    registry = ToolRegistry()
    registry.register("send_note", lambda sid, tool_input: calls.append((sid, tool_input)) or "sent",
                      description="Sends a note.", input_schema={"type": "object"})
    short = Path(tempfile.mkdtemp(prefix="cma-web-"))  # a socket path must stay under ~100 bytes
    async with WebRig(tmp_path, test_ca, internal_handler=registry.handle_internal) as rig:
        rig.policy(allow_all=True)
        refused = []
        for injections in (True, False):
            path = await rig.egress.socket_path(SESSION, injections=injections)
            async with rig.egress.http_client(SESSION, path, timeout=30) as client:
                refused.append(await client.get("http://cma.internal/v1/tools"))
                # What a page's `fetch(url, {method: "POST", mode: "no-cors", body})` sends.
                refused.append(await client.post("http://cma.internal/v1/tools/send_note", content=b'{"to": "a"}',
                                                 headers={"Content-Type": "text/plain"}))
        # A sandbox's socket, attached as the tiers attach theirs.
        sandbox = str(short / "sbx.sock")
        await rig.egress.hook.attach("sbx_web", sandbox, session_id=SESSION)
        async with rig.egress.http_client(SESSION, sandbox, timeout=30) as client:
            listed = await client.get("http://cma.internal/v1/tools")
            called = await client.post("http://cma.internal/v1/tools/send_note", json={"to": "b"})
        await rig.egress.hook.detach("sbx_web", sandbox, session_id=SESSION)
    assert [r.status_code for r in refused] == [403] * 4
    assert all("does not reach cma.internal" in r.json()["error"] for r in refused)
    assert listed.status_code == 200 and [t["name"] for t in listed.json()["tools"]] == ["send_note"]
    assert called.status_code == 200 and calls == [(SESSION, {"to": "b"})]  # the refused call never ran


async def test_a_socket_without_injections_sends_no_credential_yet_is_decided_and_logged_as_the_session(tmp_path, test_ca):
    async with WebRig(tmp_path, test_ca) as rig:
        rig.secrets.set("API_TOKEN", SECRET)
        rig.policy(inject=[{"host": "api.internal", "scheme": "http", "header": "Authorization", "secret": "API_TOKEN", "prefix": "Bearer "},
                           {"host": "secure.test", "header": "X-Api-Key", "secret": "API_TOKEN"}])
        bare = await rig.egress.socket_path(SESSION, injections=False)
        full = await rig.egress.socket_path(SESSION)
        assert bare != full and await rig.egress.socket_path(SESSION, injections=False) == bare
        specs = {sid: a.spec for sid, a in rig.proxy.attachments.items()}
        assert {(sid, spec["inject"], spec["internal_route"], spec["session_id"]) for sid, spec in specs.items()} == {
            (f"browser-{SESSION}", False, False, SESSION), (f"tools-{SESSION}", True, False, SESSION)}
        for path in (bare, full):
            async with rig.egress.http_client(SESSION, path, timeout=30) as client:
                assert (await client.get("http://api.internal/echo", headers={"Connection": "close"})).status_code == 200
                assert (await client.get("https://secure.test/json", headers={"Connection": "close"})).status_code == 200
        # Without injections a request is still decided by the policy: a host it does not allow is refused.
        async with rig.egress.http_client(SESSION, bare, timeout=30) as client:
            with pytest.raises(EgressRefused, match=r"denied\.example:80 is not in the allow list"):
                await client.get("http://denied.example/")
        rows = await rig.rows(5, session_id=SESSION)
        await rig.egress.release(SESSION)
        assert not rig.proxy.attachments and not Path(bare).exists() and not Path(full).exists()
    (bare_api, full_api), (bare_tls, full_tls) = rig.api.requests, rig.secure.requests
    assert "authorization" not in bare_api["headers"] and full_api["headers"]["authorization"] == f"Bearer {SECRET}"
    assert "x-api-key" not in bare_tls["headers"] and full_tls["headers"]["x-api-key"] == SECRET
    assert sorted((r["host"], r["decision"]) for r in rows) == [
        ("api.internal", "allowed"), ("api.internal", "injected"), ("denied.example", "denied"), ("secure.test", "allowed"),
        ("secure.test", "injected")]
    assert {r["session_id"] for r in rows} == {SESSION}


async def test_echoed_credentials_are_withheld_in_their_encoded_forms(tmp_path, test_ca):
    value = f'tok/{secrets.token_hex(12)}+"q"=<&>'  # characters every encoding writes differently
    forms = {value, json.dumps(value)[1:-1], json.dumps(value)[1:-1].replace("/", "\\/"), quote(value, safe=""),
             quote_plus(value), base64.b64encode(value.encode()).decode(),
             base64.urlsafe_b64encode(f"Token {value}".encode()).decode().rstrip("=")}
    async with WebRig(tmp_path, test_ca) as rig:
        rig.secrets.set("PAGE_TOKEN", value)
        rig.policy(inject=[{"host": "site.test", "scheme": "http", "header": "X-Token", "secret": "PAGE_TOKEN", "prefix": "Token "}])
        page = await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/reflect"})
        answer = await rig.service.call(rig.ctx(), "call_service", {"name": "site.test", "method": "GET", "path": "/reflect"})
        with pytest.raises(ToolError, match=r"answered HTTP 409 conflict over Token \[secret PAGE_TOKEN withheld\]") as fetch_error:
            await rig.web.call(rig.ctx(), "web_fetch", {"url": "http://site.test/reason"})
        reason = await rig.service.call(rig.ctx(), "call_service", {"name": "site.test", "method": "GET", "path": "/reason"})
        direct = rig.egress.scrub(SESSION, f"a {value} b")
        other = rig.egress.scrub("sesn_other", f"a {value} b")  # another session's policy injects nothing
    assert all(r["headers"]["x-token"] == f"Token {value}" for r in rig.site.requests)
    # What the site answered did hold every form (so the scrub had something to do)...
    assert all(form in reflect(f"Token {value}") for form in forms if form != value)
    assert isinstance(page, str) and isinstance(answer, str) and isinstance(reason, str)
    fields = json.loads(answer)["body"]
    assert set(fields) == {"json", "php", "go", "path", "query", "b64", "header_b64"}
    assert all(v == "[secret PAGE_TOKEN withheld]" for v in fields.values()), fields
    assert json.loads(reason)["reason"] == "conflict over Token [secret PAGE_TOKEN withheld]"
    assert page.count("[secret PAGE_TOKEN withheld]") == 7
    assert direct == "a [secret PAGE_TOKEN withheld] b" and other == f"a {value} b"
    for text in (page, answer, reason, str(fetch_error.value)):
        assert not [form for form in forms if form in text], text


# ---------------------------------------------------------------------- through the real server (the harness of test_dispatch)


async def test_an_agent_with_web_fetch_reads_a_page_through_its_sessions_egress(harness, tmp_path):
    """The agent is given the built-in over REST; its scripted session calls it; the page comes back as markdown and
    the egress log (over REST) has the request under the session's id."""
    site = Site()
    try:
        h = await harness.start()
        await h.api("POST", "egress/policies", {"name": "web", "scope": {"environment": True},
                                                "private_services": [{"name": "site.test", "target": f"127.0.0.1:{site.port}"}]})
        agent = await h.api("POST", "agents", {"name": "reader", "tier": "kernel", "builtins": {"web_fetch": {}}})
        assert agent["builtins"] == {"web_fetch": {}}
        sid = await h.session(agent["id"], script({"tool": "web_fetch", "input": {"url": "http://site.test/page"}}, {"say": "read it"}))
        events = await h.turn_ends(sid)
        async def logged() -> list[dict[str, Any]]:
            response = await h.fetch("cma", "api", "egress", "log", params={"session_id": sid})
            return json.loads(response.body)["data"]

        rows = await wait_until(logged, 15, what="the session's egress rows")
    finally:
        site.close()
    (text,) = results(events)
    assert "Title: Widget handbook" in text and "URL: http://site.test/page" in text and "# Widgets" in text
    assert "do-not-show" not in text
    assert [r["path"] for r in site.requests] == ["/page"]
    assert [(r["host"], r["path"], r["decision"], r["session_id"]) for r in rows] == [("site.test", "/page", "allowed", sid)]
