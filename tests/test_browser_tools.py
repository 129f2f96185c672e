"""The browser built-ins with Debian's Chromium, a real egress engine and loopback sites behind private services.

Every request the browser makes leaves through the session's `ToolEgress` socket: the sites listen on the
host's loopback only, reached as the policy's private services; the engine (mitmproxy in its own
process) decides each request and logs it under the session's id. The browser runs in bubblewrap with a
network namespace of its own, so a site refused by the policy (or named by a loopback address) is never
reached. Processes are found by the browser's profile directory on their command lines.

The rig's proxy answers calls to cma.internal with a tool registry holding one tool, `probe`, which records
its calls: a page must never reach it. The policy may inject `SECRET` toward secure.test: the browser must
never spend it, and no page's text may show it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import PolicyStore
from jupyter_cma.egress.policy.resolution import PolicyResolver
from jupyter_cma.egress.proxy import EgressProxy
from jupyter_cma.egress.secrets import SecretStore
from jupyter_cma.store import Store
from jupyter_cma.tools.builtin.base import CallContext, ServerParts, ToolError
from jupyter_cma.tools.builtin.browser import PROBING, BrowserTools, last_certificate, spki_sha256
from jupyter_cma.tools.builtin.egress import ToolEgress
from jupyter_cma.tools.registry import ToolRegistry
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config,
    script,
)
from tests.test_egress_proxy import test_ca  # noqa: F401  (the fixture: a CA and a certificate for secure.test)
from tests.test_kernel_tier import require_bwrap

SECRET = f"sk-browser-{secrets.token_hex(16)}"  # made per run
INTERNAL_TARGETS = ("http://cma.internal/v1/tools/probe", "http://cma.internal./v1/tools/probe",
                    "http://CMA.Internal:80/v1/tools/probe", "https://cma.internal/v1/tools/probe",
                    "http://cma.internal:3128/v1/tools/probe", "ws://cma.internal/v1/tools/probe")

PAGES: dict[str, tuple[str, str]] = {
    "/page": ("text/html", "<html><head><title>Plain page</title></head><body><h1>Hello from the site</h1>"
                           "<p>Rendered by the browser.</p></body></html>"),
    "/script": ("text/html", "<html><head><title>Scripted</title></head><body><div id=out>waiting</div>"
                             "<script>document.getElementById('out').textContent = 'written by ' + 'a script';</script></body></html>"),
    "/mixed": ("text/html", "<html><head><title>Mixed</title><script src='http://denied.test/tracker.js'></script></head>"
                            "<body><p>Main text stays.</p><img src='http://denied.test/pixel.png'>"
                            "<img src='http://site.test/logo.png'></body></html>"),
    "/logo.png": ("image/png", ""),
    "/form": ("text/html", "<html><head><title>Search</title></head><body><form action='/result' method='get'>"
                           "<input id=q name=q><button id=go type=submit>Go</button></form>"
                           "<ul><li class=item>one</li><li class=item>two</li></ul></body></html>"),
    "/slow": ("text/html", "<html><head><title>Slow</title></head><body><p>The text is here already.</p>"
                           "<img src='/hang.png'></body></html>"),
    "/tall": ("text/html", "<html><head><title>Tall</title></head><body style='margin:0'>"
                           "<div style='height:3000px;background:linear-gradient(red,blue)'>top</div></body></html>"),
    # A page that tries the session's tools: fetch (no-cors: a reached route would answer, opaquely), a WebSocket.
    "/internal": ("text/html", "<html><head><title>Internal</title></head><body><pre id=out></pre><script>"
                               f"const targets = {json.dumps(INTERNAL_TARGETS)};"
                               "const one = u => u.startsWith('ws') ? new Promise(done => { const ws = new WebSocket(u);"
                               "  ws.onopen = () => done(u + ' answered'); ws.onerror = () => done(u + ' failed'); })"
                               "  : fetch(u, {method: 'POST', mode: 'no-cors', body: '{}'}).then(() => u + ' answered', () => u + ' failed');"
                               "Promise.all(targets.map(one)).then(lines => { document.getElementById('out').textContent = lines.join('\\n');"
                               "  document.body.insertAdjacentHTML('beforeend', '<p id=done>done</p>'); });"
                               "</script></body></html>"),
    # A page that shows the session's secret (as a service answering with the credential it was sent would).
    "/leak": ("text/html", f"<html><head><title>Key {SECRET}</title></head><body><p id=key>The key is {SECRET}.</p></body></html>"),
}


class Site:
    """A loopback HTTP(S) server with a few pages; records every request that reached it."""

    def __init__(self, label: str, tls: ssl.SSLContext | None = None) -> None:
        self.label = label
        self.requests: list[dict[str, Any]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                site.requests.append({"path": self.path, "headers": dict(self.headers.items())})
                path, _, query = self.path.partition("?")
                if path == "/hang.png":
                    time.sleep(20)  # an image that never comes in time
                if path == "/result":
                    kind, body = "text/html", f"<html><head><title>Result</title></head><body><p id=answer>You searched: {query.split('=', 1)[-1]}</p></body></html>"
                elif path in PAGES:
                    kind, body = PAGES[path]
                else:
                    kind, body = "text/html", f"<html><head><title>{site.label}</title></head><body>hello from {site.label}</body></html>"
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BrowserRig:
    """Store, policies, the egress engine, `ToolEgress`, the browser family started with the server's parts, and sites."""

    def __init__(self, tmp_path: Path, ca: dict[str, str], **traits: Any) -> None:
        self.data = tmp_path / "cma"
        self.data.mkdir()
        self.store = Store(self.data / "cma.sqlite3")
        self.policy_store = PolicyStore(self.store)
        self.policies = PolicyResolver(self.policy_store, api_base_url="https://api.anthropic.com")
        self.secrets = SecretStore(self.data / "secrets")
        self.secrets.set("API_TOKEN", SECRET)
        self.log = EgressLog(self.store)
        # The session's tools, as a sandbox would reach them at cma.internal: `probe` records every call.
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        self.registry = ToolRegistry()
        self.registry.register("probe", lambda session_id, input: self.tool_calls.append((session_id, input)) or "called",
                               description="Records its calls.", input_schema={"type": "object"})
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(ca["cert"], ca["key"])
        self.site, self.denied, self.secure = Site("site"), Site("denied"), Site("secure", tls)
        self.proxy = EgressProxy(data_dir=self.data, api_base_url="https://api.anthropic.com", middleware=[],
                                 egress_log=self.log, upstream_ca=ca["ca"], internal_handler=self.registry.handle_internal)
        self.egress = ToolEgress(hook=SessionEgress(store=self.store, proxy=self.proxy), proxy=self.proxy, socket_dir=self.data / "tools",
                                 policies=self.policies, secrets=self.secrets)
        self.family = BrowserTools(**traits)

    def policy(self, **extra: Any) -> str:
        """The environment policy: the three sites as private services; denied.test is denied (so never reached)."""
        services = [
            {"name": "site.test", "target": f"127.0.0.1:{self.site.port}"},
            {"name": "denied.test", "target": f"127.0.0.1:{self.denied.port}"},
            {"name": "https://secure.test", "target": f"127.0.0.1:{self.secure.port}"},
        ]
        return self.policy_store.create({"name": "test", "scope": {"environment": True}, "private_services": services,
                                         "deny": ["denied.test"], **extra}).id

    async def __aenter__(self) -> BrowserRig:
        require_bwrap()
        assert await self.proxy.start(), self.proxy.error
        parts = ServerParts(store=self.store, client=_no_client, environment_id=lambda: "", contents_manager=None,
                            root_dir=str(self.data), policies=self.policies, secrets=self.secrets, data_dir=self.data, egress=self.egress)
        await self.family.start(parts)
        # The sandbox is probed in the background: until its answer, the family says it is checking.
        await wait_until(lambda: self.family.unavailable() != PROBING, 30, what="the browser's sandbox probe")
        assert self.family.unavailable() is None, self.family.unavailable()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.family.close()
        await self.egress.close()
        await self.proxy.stop()
        for site in (self.site, self.denied, self.secure):
            site.close()
        self.store.close()

    def ctx(self, session_id: str = "sesn_browser") -> CallContext:
        return CallContext(session_id=session_id, agent_id=None, settings={}, egress=self.egress)

    async def call(self, tool: str, session_id: str = "sesn_browser", **input: Any) -> Any:
        return await self.family.call(self.ctx(session_id), tool, input)

    async def rows(self, predicate: Any, what: str) -> list[dict[str, Any]]:
        """Wait until the log's rows (newest first) satisfy `predicate`."""
        return await wait_until(lambda: (rows := self.log.query(limit=500)) and predicate(rows) and rows, 15, what=what)


def _no_client() -> Any:
    raise AssertionError("the browser family does not call the API")


def processes(marker: str) -> list[int]:
    """Pids of the processes whose command line names `marker` (a browser's profile directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def roots(pids: list[int]) -> list[int]:
    """Those of `pids` whose parent is not among them."""
    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return [p for p in pids if parent(p) not in pids]


def profile_of(family: BrowserTools, session_id: str) -> str:
    return str(family._browsers[session_id].profile)


# --------------------------------------------------------------------------- through the session's egress


async def test_browse_renders_the_page_through_the_sessions_egress(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        pid = rig.policy()
        text = await rig.call("browse", url="http://site.test/page")
        scripted = await rig.call("browse", url="http://site.test/script")
        rows = await rig.rows(lambda rows: any(r["path"] == "/script" for r in rows), "the browser's rows")
    assert text.startswith("Title: Plain page\nURL: http://site.test/page\nStatus: 200")
    assert "Hello from the site" in text and "Rendered by the browser." in text and "<h1>" not in text
    assert "written by a script" in scripted  # the rendered page, not its source
    assert "/page" in rig.site.paths() and "/script" in rig.site.paths()
    mine = [r for r in rows if r["host"] == "site.test"]
    assert {r["path"] for r in mine} >= {"/page", "/script"}
    assert all(r["session_id"] == "sesn_browser" and r["decision"] == "allowed" for r in mine)
    assert all(r["rule"] == f"policy:{pid}:private_service:site.test" for r in mine)
    # Nothing of the browser's own reaches the proxy: every row is a page's.
    assert {r["host"] for r in rows} == {"site.test"}, rows


async def test_loopback_goes_to_the_proxy_too_and_is_refused(tmp_path, test_ca):
    """The browser has no network of its own: even the host's loopback is asked of the proxy, which refuses it."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        with pytest.raises(ToolError) as refused:
            await rig.call("browse", url=f"http://127.0.0.1:{rig.site.port}/page")
        rows = await rig.rows(lambda rows: any(r["host"] == "127.0.0.1" for r in rows), "the refused row")
    assert "refused by the session's egress policy" in str(refused.value), refused.value
    assert rig.site.requests == []
    row = next(r for r in rows if r["host"] == "127.0.0.1")
    assert row["decision"] == "denied" and row["session_id"] == "sesn_browser"


async def test_a_denied_sub_resource_is_not_loaded(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        pid = rig.policy()
        text = await rig.call("browse", url="http://site.test/mixed")
        rows = await rig.rows(lambda rows: len([r for r in rows if r["host"] == "denied.test"]) >= 2, "the denied rows")
    assert "Main text stays." in text
    assert "Refused by the session's egress policy (not loaded):" in text
    assert f"GET http://denied.test/tracker.js (policy:{pid}:deny:denied.test)" in text
    assert f"GET http://denied.test/pixel.png (policy:{pid}:deny:denied.test)" in text
    assert rig.denied.requests == []  # its upstream saw nothing
    assert "/logo.png" in rig.site.paths()  # the allowed image was loaded
    denied = [r for r in rows if r["host"] == "denied.test"]
    assert {r["path"] for r in denied} == {"/tracker.js", "/pixel.png"}
    assert all(r["decision"] == "denied" and r["rule"] == f"policy:{pid}:deny:denied.test" and r["session_id"] == "sesn_browser"
               for r in denied)


async def test_a_refused_page_names_the_policys_reason(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        pid = rig.policy()
        with pytest.raises(ToolError) as plain:
            await rig.call("browse", url="http://denied.test/")
        with pytest.raises(ToolError) as tunnel:  # https: Chromium sees only a refused CONNECT
            await rig.call("screenshot", url="https://denied.test/")
        with pytest.raises(ToolError) as unknown:
            await rig.call("browse", url="https://nowhere.test/")
        rows = await rig.rows(lambda rows: len([r for r in rows if r["decision"] == "denied"]) >= 3, "the denied rows")
    rule = f"policy:{pid}:deny:denied.test"
    assert str(plain.value).startswith(f"refused by the session's egress policy ({rule}): ") and "denied by policy 'test'" in str(plain.value)
    assert str(tunnel.value).startswith(f"refused by the session's egress policy ({rule}): ") and "denied by policy 'test'" in str(tunnel.value)
    assert f"(policy:{pid}:not-allowed)" in str(unknown.value) and "add it there" in str(unknown.value)
    assert rig.denied.requests == []
    assert {(r["method"], r["host"], r["rule"]) for r in rows} >= {
        ("GET", "denied.test", rule), ("CONNECT", "denied.test", rule), ("CONNECT", "nowhere.test", f"policy:{pid}:not-allowed")}


async def test_https_through_an_opened_tunnel_trusts_the_proxys_ca(tmp_path, test_ca):
    """A path rule makes the proxy open secure.test's tunnels: the browser sees the proxy's certificate and accepts it."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy(allow=[{"host": "secure.test", "paths": ["/"]}])
        text = await rig.call("browse", url="https://secure.test/inside")
        rows = await rig.rows(lambda rows: any(r["path"] == "/inside" for r in rows), "the request inside the tunnel")
    assert "hello from secure" in text and "URL: https://secure.test/inside" in text
    assert "/inside" in rig.secure.paths()
    inside = next(r for r in rows if r["path"] == "/inside")
    assert inside["scheme"] == "https" and inside["decision"] == "allowed" and inside["session_id"] == "sesn_browser"


def test_the_proxy_ca_key_hash_is_the_certificates(test_ca):
    """The SPKI hash Chromium is given, against the openssl command's own."""
    import subprocess

    pubkey = subprocess.run(["openssl", "x509", "-in", test_ca["ca"], "-pubkey", "-noout"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pubkey, capture_output=True, check=True).stdout
    import hashlib

    expected = base64.b64encode(hashlib.sha256(der).digest()).decode()
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt").read_text() + test_ca["pem"]
    assert spki_sha256(last_certificate(bundle)) == expected


# --------------------------------------------------------------------------- the tools


async def test_screenshot_returns_an_image_block(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        window = await rig.call("screenshot", url="http://site.test/tall")
        whole = await rig.call("screenshot", url="http://site.test/tall", full_page=True)
    for blocks in (window, whole):
        assert [b["type"] for b in blocks] == ["text", "image"]
        assert blocks[0]["text"].startswith("Screenshot of http://site.test/tall") and "Tall" in blocks[0]["text"]
        assert blocks[1]["source"]["type"] == "base64" and blocks[1]["source"]["media_type"] == "image/png"
    png = [base64.b64decode(b[1]["source"]["data"]) for b in (window, whole)]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in png)
    sizes = [(int.from_bytes(p[16:20], "big"), int.from_bytes(p[20:24], "big")) for p in png]  # the IHDR's width, height
    assert sizes[0] == (1280, 800) and sizes[1] == (1280, 3000)


async def test_a_full_page_over_the_size_limit_is_cut(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca, max_screenshot_bytes=30_000) as rig:
        rig.policy()
        blocks = await rig.call("screenshot", url="http://site.test/tall", full_page=True)
    png = base64.b64decode(blocks[1]["source"]["data"])
    assert len(png) <= 30_000 and "the whole page was over the size limit" in blocks[0]["text"]
    assert 800 <= int.from_bytes(png[20:24], "big") < 3000


async def test_browser_steps_type_click_and_extract(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        text = await rig.call("browser_steps", url="http://site.test/form", steps=[
            {"action": "extract", "selector": "li.item"},
            {"action": "type", "selector": "#q", "text": "otters"},
            {"action": "click", "selector": "#go"},
            {"action": "wait", "selector": "#answer"},
            {"action": "extract", "selector": "#answer"},
        ])
        with pytest.raises(ToolError) as failed:
            await rig.call("browser_steps", url="http://site.test/form", steps=[
                {"action": "type", "selector": "#q", "text": "x\n"},
                {"action": "click", "selector": "#not-there"},
            ])
        with pytest.raises(ToolError) as bad:
            await rig.call("browser_steps", url="http://site.test/form", steps=[{"action": "hover", "selector": "#q"}])
    assert "Title: Result\nURL: http://site.test/result?q=otters" in text
    assert "1. extract 'li.item': 2 element(s)\none\ntwo" in text
    assert "2. type '#q': typed 6 characters" in text and "3. click '#go': done" in text
    assert "5. extract '#answer': 1 element(s)\nYou searched: otters" in text
    assert "step 2 (click '#not-there') failed: nothing matched '#not-there'" in str(failed.value)
    assert "1. type '#q': typed 1 characters and pressed Enter" in str(failed.value)  # the steps done before it
    assert "action must be click, type, extract or wait" in str(bad.value)


async def test_a_page_whose_images_hang_is_read_when_its_time_is_up(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca, page_timeout=3.0) as rig:
        rig.policy()
        text = await rig.call("browse", url="http://site.test/slow")
    assert "Title: Slow" in text and "The text is here already." in text
    assert "/hang.png" in rig.site.paths()


async def test_only_web_urls_are_opened(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        for url in ("file:///etc/passwd", "chrome://version", "javascript:alert(1)", "data:text/html,hi", "site.test/page", 42):
            with pytest.raises(ToolError, match="send an http:// or https:// URL"):
                await rig.call("browse", url=url)
        with pytest.raises(ToolError, match="without a user name or password"):
            await rig.call("screenshot", url="http://user:pw@site.test/page")
        assert rig.family._browsers == {}  # nothing was started for them


# --------------------------------------------------------------------------- one browser per session


async def test_one_browser_per_session_closed_with_the_session(tmp_path, test_ca, monkeypatch):
    monkeypatch.setenv("CMA_SERVER_ONLY", "a value of the server's environment")
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        # Two calls at once: one browser starts, and both use it.
        first, second = await asyncio.gather(rig.call("browse", url="http://site.test/page"),
                                             rig.call("screenshot", url="http://site.test/page"))
        assert "Hello from the site" in first and second[1]["type"] == "image"
        profile = profile_of(rig.family, "sesn_browser")
        sandboxes = roots(processes(profile))
        assert sandboxes == [rig.family._browsers["sesn_browser"].pid], sandboxes  # one sandbox, Chromium's processes inside it
        assert len(processes(profile)) > 2  # bubblewrap (outside and inside) and Chromium's processes
        for pid in processes(profile):  # nothing of the server's environment; inside, a network of its own
            assert b"CMA_SERVER_ONLY" not in Path(f"/proc/{pid}/environ").read_bytes()
            if pid not in sandboxes:
                assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        await rig.call("browse", url="http://site.test/script")
        assert profile_of(rig.family, "sesn_browser") == profile  # reused
        assert roots(processes(profile)) == sandboxes
        # Another session: a browser of its own, attached as that session.
        await rig.call("browse", session_id="sesn_other", url="http://site.test/page")
        other = profile_of(rig.family, "sesn_other")
        assert other != profile and processes(other)
        await rig.family.end_session("sesn_browser")
        assert processes(profile) == []  # no Chromium left of the ended session
        assert not Path(profile).exists()
        assert processes(other)  # the other session's browser runs on
        await rig.rows(lambda rows: any(r["session_id"] == "sesn_other" for r in rows), "the other session's rows")
    assert processes(other) == []  # close() ended it
    assert rig.family._driver is None


async def test_an_idle_browser_is_closed(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca, idle_close=1.0) as rig:
        rig.policy()
        await rig.call("browse", url="http://site.test/page")
        profile = profile_of(rig.family, "sesn_browser")
        assert processes(profile)
        await wait_until(lambda: "sesn_browser" not in rig.family._browsers and not processes(profile), 30, what="the idle browser closed")
        # The next call starts another.
        assert "Hello from the site" in await rig.call("browse", url="http://site.test/page")
        assert profile_of(rig.family, "sesn_browser") != profile


# --------------------------------------------------------------------------- unavailable


async def test_unavailable_says_what_is_missing_and_the_fix(tmp_path, test_ca):
    assert "apt-get install chromium" in (BrowserTools(chromium_path="/nonexistent/chromium").unavailable() or "")
    assert "apt-get install bubblewrap" in (BrowserTools(bwrap="no-such-bwrap").unavailable() or "")
    # A bubblewrap that cannot make the sandbox (here: a command that fails) is found by the probe, in the background.
    failing = BrowserTools(bwrap="false")
    assert failing.unavailable() == PROBING
    reason = await wait_until(lambda: (r := failing.unavailable()) != PROBING and r, 30, what="the probe's answer")
    assert "does not start inside the browser's bubblewrap sandbox" in reason
    await failing.close()
    # Without an egress engine the browser has no network, so it is unavailable (never a direct connection).
    data = tmp_path / "cma"
    data.mkdir()
    store = Store(data / "cma.sqlite3")
    proxy = EgressProxy(data_dir=data, api_base_url="https://api.anthropic.com", middleware=[], egress_log=EgressLog(store),
                        engine_python=str(tmp_path / "missing" / "python"))
    egress = ToolEgress(hook=SessionEgress(store=store, proxy=proxy), proxy=proxy, socket_dir=data / "tools")
    family = BrowserTools()
    await family.start(ServerParts(store=store, client=_no_client, environment_id=lambda: "", contents_manager=None,
                                   root_dir=str(data), policies=PolicyResolver(PolicyStore(store), api_base_url="https://api.anthropic.com"),
                                   secrets=SecretStore(data / "secrets"), data_dir=data, egress=egress))
    reason = family.unavailable() or ""
    assert "egress proxy" in reason and "install-egress-engine" in reason
    with pytest.raises(ToolError, match="not available on this server"):
        await family.call(CallContext("sesn_x", None, {}, egress), "browse", {"url": "http://site.test/"})
    await family.close()
    store.close()


async def test_the_sandbox_is_probed_in_the_background(tmp_path):
    """Asking whether the family is available never waits for the probe (which starts bubblewrap and Chromium): while
    it runs, the family says it is checking. Here a bubblewrap stand-in waits for a gate file before it fails."""
    gate = tmp_path / "gate"
    fake = tmp_path / "bwrap-gated"
    fake.write_text(f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\necho 'no sandbox here' >&2\nexit 1\n")
    fake.chmod(0o755)
    family = BrowserTools(bwrap=str(fake))
    try:
        # Each answer comes at once (an inline probe would hang on the gate); one probe runs for them all.
        assert [family.unavailable() for _ in range(3)] == [PROBING] * 3
        assert len(family._background) == 1
        gate.touch()
        reason = await wait_until(lambda: (r := family.unavailable()) != PROBING and r, 30, what="the probe's answer")
        assert "does not start inside the browser's bubblewrap sandbox here: no sandbox here" in reason
        # Another configuration is another probe; meanwhile, checking again.
        family.bwrap = "false"
        assert family.unavailable() == PROBING
        assert "does not start inside" in await wait_until(lambda: (r := family.unavailable()) != PROBING and r, 30,
                                                           what="the new probe's answer")
    finally:
        gate.touch()
        await family.close()


# --------------------------------------------------------------------------- what a page may not do


async def test_a_page_cannot_reach_the_sessions_tools(tmp_path, test_ca):
    """cma.internal (the sandboxes' route to the session's tools) is never sent to the proxy: in any spelling, over
    fetch or a WebSocket, a page's request fails for want of a network, and the registry's tool is never called."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        text = await rig.call("browser_steps", url="http://site.test/internal", steps=[
            {"action": "wait", "selector": "#done"}, {"action": "extract", "selector": "#out"}])
        await rig.call("browse", url="http://site.test/page")  # a later request's row: the log has caught up
        rows = await rig.rows(lambda rows: any(r["path"] == "/page" for r in rows), "the page's row")
    for target in INTERNAL_TARGETS:
        assert f"{target} failed" in text, text
    assert "answered" not in text
    assert rig.tool_calls == []
    assert [r for r in rows if "internal" in r["host"].lower()] == []  # never asked of the proxy
    # The tool is there to be called: the registry answers a session's call (as a sandbox's would reach it).
    status, _, _ = await rig.registry.handle_internal("sesn_browser", None, "POST", "/v1/tools/probe", b"{}")
    assert status == 200 and rig.tool_calls == [("sesn_browser", {})]


async def test_the_browser_does_not_spend_the_sessions_injections(tmp_path, test_ca):
    """The policy injects a key toward secure.test: a tool's own request carries it, the browser's never does (its
    requests are still decided and logged as the session)."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy(inject=[{"host": "secure.test", "header": "X-Api-Key", "secret": "API_TOKEN"}],
                   allow=[{"host": "secure.test", "paths": ["/"]}])  # the proxy opens the tunnels: it could inject in them
        async with rig.egress.http_client("sesn_browser", await rig.egress.socket_path("sesn_browser"), timeout=15) as client:
            control = await client.get("https://secure.test/control")
        text = await rig.call("browse", url="https://secure.test/page")
        rows = await rig.rows(lambda rows: any(r["path"] == "/page" for r in rows), "the browser's row")
    assert control.status_code == 200
    seen = {r["path"]: {k.lower(): v for k, v in r["headers"].items()} for r in rig.secure.requests}
    assert seen["/control"]["x-api-key"] == SECRET  # the policy injects toward secure.test
    assert "x-api-key" not in seen["/page"]  # but not for the browser
    assert "Hello from the site" in text
    page = next(r for r in rows if r["path"] == "/page")
    assert page["session_id"] == "sesn_browser" and page["decision"] == "allowed"


async def test_what_a_page_shows_of_an_injected_secret_is_withheld(tmp_path, test_ca):
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy(inject=[{"host": "secure.test", "header": "X-Api-Key", "secret": "API_TOKEN"}])
        text = await rig.call("browse", url="http://site.test/leak")
        shot = await rig.call("screenshot", url="http://site.test/leak")
        steps = await rig.call("browser_steps", url="http://site.test/leak", steps=[{"action": "extract", "selector": "#key"}])
        with pytest.raises(ToolError) as failed:
            await rig.call("browser_steps", url=f"http://site.test/leak?{SECRET}", steps=[{"action": "click", "selector": "#nothing"}])
    for result in (text, shot[0]["text"], steps, str(failed.value)):
        assert SECRET not in result and "[secret API_TOKEN withheld]" in result, result
    assert "The key is [secret API_TOKEN withheld]." in text


# --------------------------------------------------------------------------- starts and ends


async def test_a_launch_cut_off_leaves_nothing_running(tmp_path, test_ca, monkeypatch):
    """A call cancelled while its browser starts (the family's timeout): what the launch starts is closed, its
    sandbox ended and its directory removed. A bubblewrap stand-in holds the start until the call is cancelled."""
    hold = tmp_path / "hold"
    fake = tmp_path / "bwrap-held"
    fake.write_text(f"#!/bin/sh\nwhile [ -e {hold} ]; do sleep 0.05; done\nexec {shutil.which('bwrap')} \"$@\"\n")
    fake.chmod(0o755)
    workdirs = tmp_path / "workdirs"
    workdirs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(workdirs))
    async with BrowserRig(tmp_path, test_ca, bwrap=str(fake)) as rig:
        rig.policy()
        hold.touch()
        call = asyncio.create_task(rig.call("browse", url="http://site.test/page"))
        pid_file = await wait_until(lambda: next(workdirs.glob("jupyter-cma-browser-*/bwrap.pid"), None), 30, what="the launch")
        profile = str(pid_file.parent / "profile")
        await wait_until(lambda: processes(profile), 10, what="the held sandbox")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        hold.unlink()  # the launch goes on, and is discarded
        await wait_until(lambda: not processes(profile) and not pid_file.parent.exists(), 30, what="the cut-off launch cleaned up")
        assert rig.family._browsers == {}
        # The session's next call starts a browser as usual.
        assert "Hello from the site" in await rig.call("browse", url="http://site.test/page")


async def test_no_browser_starts_while_the_session_is_being_released(tmp_path, test_ca):
    """end_session closes the browser; until the session's socket is released (ToolEgress.release, after every
    family's end_session), a call starts no browser bound to it; after, it starts one on a new socket."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        await rig.call("browse", url="http://site.test/page")
        profile = profile_of(rig.family, "sesn_browser")
        await rig.family.end_session("sesn_browser")
        assert processes(profile) == [] and "sesn_browser" not in rig.family._browsers
        with pytest.raises(ToolError, match="its sandbox is being released; call again in a moment"):
            await rig.call("browse", url="http://site.test/page")
        assert "sesn_browser" not in rig.family._browsers
        await rig.egress.release("sesn_browser")
        assert "written by a script" in await rig.call("browse", url="http://site.test/script")
        assert profile_of(rig.family, "sesn_browser") != profile
        rows = await rig.rows(lambda rows: any(r["path"] == "/script" for r in rows), "the new browser's rows")
    assert all(r["session_id"] == "sesn_browser" for r in rows)
    assert rig.family._launching == {}  # no session's lock outlives its users


async def test_a_browser_whose_socket_was_released_is_replaced(tmp_path, test_ca):
    """However it came about (a release the browser did not see coming), a browser whose socket is gone is closed,
    at its session's next call or by its watch, and the next call starts one on a served socket."""
    async with BrowserRig(tmp_path, test_ca) as rig:
        rig.policy()
        await rig.call("browse", url="http://site.test/page")
        first = profile_of(rig.family, "sesn_browser")
        await rig.egress.release("sesn_browser")
        assert "written by a script" in await rig.call("browse", url="http://site.test/script")
        second = profile_of(rig.family, "sesn_browser")
        assert second != first
        await wait_until(lambda: not processes(first), 30, what="the released browser closed")
        await rig.egress.release("sesn_browser")  # and without a call: its watch closes it
        await wait_until(lambda: "sesn_browser" not in rig.family._browsers and not processes(second), 30,
                         what="the watch closed the released browser")


# --------------------------------------------------------------------------- through the real server (the harness of test_dispatch)


async def test_an_agent_with_the_browser_screenshots_a_page_through_its_sessions_egress(harness, caplog):
    """The agent is given the browser over REST; its scripted session takes a screenshot and reads a page; the
    image reaches the session's events, the egress log (over REST) has the browser's requests under the session's
    id, and the browser is closed once the session's sandbox is released."""
    require_bwrap()
    site = Site("site")
    try:
        h = await harness.start()
        family = h.ext.builtins.families["browser"]
        await wait_until(lambda: family.unavailable() != PROBING, 30, what="the browser's sandbox probe")
        await h.api("POST", "egress/policies", {"name": "web", "scope": {"environment": True},
                                                "private_services": [{"name": "site.test", "target": f"127.0.0.1:{site.port}"}]})
        agent = await h.api("POST", "agents", {"name": "looker", "tier": "kernel", "builtins": {"browser": {}}})
        assert agent["builtins"] == {"browser": {}}
        sid = await h.session(agent["id"], script({"tool": "screenshot", "input": {"url": "http://site.test/page"}},
                                                  {"tool": "browse", "input": {"url": "http://site.test/script"}}, {"say": "seen"}))
        events = await h.turn_ends(sid)

        async def logged() -> list[dict[str, Any]]:
            response = await h.fetch("cma", "api", "egress", "log", params={"session_id": sid})
            rows = json.loads(response.body)["data"]
            return rows if {"/page", "/script"} <= {r["path"] for r in rows} else []

        rows = await wait_until(logged, 15, what="the session's egress rows")
        # The session's sandbox is released a second after its turn: its browser goes with it.
        (started,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"jupyter-cma: started a browser for session {sid}")]
        profile = started.rsplit("profile ", 1)[1].rstrip(")")
        await wait_until(lambda: sid not in family._browsers and not processes(profile), 30, what="the session's browser closed")
    finally:
        site.close()
    shot, page = [e for e in events if e.type == "user.custom_tool_result"]
    assert not shot.is_error and not page.is_error
    assert [b.type for b in shot.content] == ["text", "image"]
    assert shot.content[0].text.startswith("Screenshot of http://site.test/page")
    assert base64.b64decode(shot.content[1].source.data).startswith(b"\x89PNG")
    assert "written by a script" in page.content[0].text
    assert all(r["session_id"] == sid and r["host"] == "site.test" and r["decision"] == "allowed" for r in rows)
