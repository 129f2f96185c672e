"""The egress proxy through real sandboxes of both tiers, the real engine process, loopback upstreams.

Every request here starts inside a sandbox (a bubblewrap kernel, or a
container of the container tier: each test runs on both), leaves through its
proxy port (bridged to its own Unix socket), and is decided by the engine
(mitmproxy in its own process). Upstream servers listen on the host's loopback only and
are reached as operator-declared private services, which is how an internal
address is meant to be reached; everything else that names an internal
address must be refused. The cases follow the threat list of the egress
design: addresses, names and parsing, protocol, credentials, robustness.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import PolicyStore
from jupyter_cma.egress.proxy import EgressProxy
from jupyter_cma.egress.secrets import SecretStore
from jupyter_cma.sandboxes.container import ContainerTier, Slot
from jupyter_cma.sandboxes.kernel import Kernel, KernelTier
from jupyter_cma.store import Store
from tests.emulator_fixtures import start_emulator
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config,
)
from tests.test_kernel_tier import require_bwrap

# Made per run, so that no file (this one included) holds them unless something leaked them there.
SECRET = f"sk-test-{secrets.token_hex(16)}"  # what the proxy injects; must appear nowhere but at its target
TOKEN = f"sessions-token-{secrets.token_hex(16)}"  # a session's real API token; the sandbox holds a placeholder


# --------------------------------------------------------------------------- loopback upstreams


class Upstream:
    """A loopback HTTP(S) server that records what reached it.

    /redirect?to=URL answers 302 to URL; /ws answers a WebSocket upgrade with
    101; /big?bytes=N answers N bytes; /sleep?seconds=S answers after S
    seconds; anything else 200 with `hello from <label>`.
    """

    def __init__(self, label: str, tls: ssl.SSLContext | None = None) -> None:
        self.label = label
        self.requests: list[dict[str, Any]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                body = self._body()
                upstream.requests.append({
                    "method": self.command, "path": self.path, "body": body.decode("utf-8", "replace"),
                    "headers": [(k.lower(), v) for k, v in self.headers.items()],
                })
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
                    self.send_response(101)
                    self.send_header("Upgrade", "websocket")
                    self.send_header("Connection", "Upgrade")
                    self.send_header("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                    self.end_headers()
                    self.close_connection = True
                    return
                reply = f"hello from {upstream.label}".encode()
                if self.path.startswith("/big?bytes="):
                    reply = b"z" * int(self.path.split("=", 1)[1])
                elif self.path.startswith("/sleep?seconds="):
                    time.sleep(float(self.path.split("=", 1)[1]))
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _body(self) -> bytes:
                # A chunked body is read whole before answering, as real servers do: an answer
                # sent early would race the proxy's cut-off of a body over the limit.
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else b""
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return body

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def headers(self, name: str) -> list[list[str]]:
        """The values of one header, per request received."""
        return [[v for k, v in r["headers"] if k == name] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory) -> dict[str, str]:
    """A CA and a certificate for secure.test, made with the openssl command."""
    d = tmp_path_factory.mktemp("ca")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=jupyter-cma test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=secure.test")
    (d / "ext").write_text("subjectAltName=DNS:secure.test,DNS:other-secure.test\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem",
            "-days", "2", "-extfile", "ext")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "leaf.pem"), "key": str(d / "leaf.key"), "pem": (d / "ca.pem").read_text()}


@pytest.fixture(params=["kernel", "container"])
def tier(request) -> str:
    """Each test runs in a kernel sandbox and in a container: egress must be decided the same way for both."""
    if request.param == "container":
        request.getfixturevalue("docker_client")  # fails in CI without an engine, skips elsewhere
    return request.param


# --------------------------------------------------------------------------- what runs inside the sandbox


CLIENT = r'''
import json, os, socket, ssl, urllib.request, urllib.error
PROXY = ("127.0.0.1", 3128)

def fetch(url, headers=None, method="GET", body=None, cadata=None):
    """(status, body) through the environment's proxy settings; (None, error) when there is no answer."""
    context = ssl.create_default_context(cadata=cadata) if cadata else ssl.create_default_context()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return None, repr(exc)

def _response(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return None, "connection closed without an answer"
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line))
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), rest[:length].decode("utf-8", "replace")

def raw(data, timeout=15):
    """Send raw bytes to the proxy port: (status, body) of the answer, or (None, why) when there is none."""
    with socket.create_connection(PROXY, timeout=timeout) as sock:
        sock.sendall(data)
        try:
            return _response(sock, timeout)
        except OSError as exc:
            return None, repr(exc)

def keep_alive(*requests, timeout=15):
    """Several raw requests on one connection, one after the other: their (status, body)."""
    answers = []
    with socket.create_connection(PROXY, timeout=timeout) as sock:
        for data in requests:
            sock.sendall(data)
            answers.append(_response(sock, timeout))
    return answers

def tunnel(target, sni, request, cadata=None, timeout=15):
    """CONNECT target, TLS with server name `sni`, send `request`: (CONNECT status, status inside, body or error)."""
    sock = socket.create_connection(PROXY, timeout=timeout)
    try:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        status, body = _response(sock, timeout)
        if status != 200:
            return status, None, body
        context = ssl.create_default_context(cadata=cadata) if cadata else ssl.create_default_context()
        try:
            inner = context.wrap_socket(sock, server_hostname=sni)
            inner.sendall(request)
            inner_status, inner_body = _response(inner, timeout)
        except (OSError, ssl.SSLError) as exc:
            return status, None, repr(exc)
        return status, inner_status, inner_body
    finally:
        sock.close()
'''


class Box:
    """One sandboxed kernel attached to the proxy for a session."""

    def __init__(self, kernel: Kernel, session_id: str, placeholder: str | None) -> None:
        self.kernel, self.session_id, self.placeholder = kernel, session_id, placeholder

    async def run(self, code: str) -> Any:
        """Run `code`; the value of its last expression (a Python literal)."""
        ex = await self.kernel.execute(code, timeout=90)
        assert ex.status == "ok", ex.outputs
        values = [o for o in ex.outputs if o["output_type"] == "execute_result"]
        return ast.literal_eval(values[-1]["data"]["text/plain"]) if values else None

    def alive(self) -> bool:
        return self.kernel.alive()

    async def close(self) -> None:
        pass  # the kernel tier shuts its kernels down


# A Python that keeps its globals between runs, like a kernel: one JSON-encoded
# program per line in, the repr of its last expression back on a marked line.
REPL = r'''
import ast, json, sys
namespace = {}
for line in sys.stdin:
    tree = ast.parse(json.loads(line))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    try:
        exec(compile(tree, "<box>", "exec"), namespace)
        value = eval(compile(ast.Expression(last.value), "<box>", "eval"), namespace) if last else None
        answer = {"value": None if value is None else repr(value)}
    except BaseException as exc:
        answer = {"error": repr(exc)}
    print("\x00box " + json.dumps(answer), flush=True)
'''


class ContainerBox(Box):
    """One container of the container tier attached to the proxy; code runs in a Python started by `docker exec`."""

    def __init__(self, tier: ContainerTier, slot: Slot, session_id: str, placeholder: str | None) -> None:
        self.tier, self.slot, self.session_id, self.placeholder = tier, slot, session_id, placeholder
        self.process: asyncio.subprocess.Process | None = None

    async def run(self, code: str) -> Any:
        if self.process is None:
            self.process = await asyncio.create_subprocess_exec(
                "docker", "exec", "-i", self.slot.name, "python3", "-u", "-c", REPL,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**24)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(code).encode() + b"\n")
        await self.process.stdin.drain()
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), 90)
            assert line, "the container's Python ended"
            if line.startswith(b"\x00box "):
                answer = json.loads(line[5:])
                assert "error" not in answer, answer["error"]
                return None if answer["value"] is None else ast.literal_eval(answer["value"])

    def alive(self) -> bool:
        return not self.slot.exited.done()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self.tier._discard(self.slot, keep_volume=False)


class Rig:
    """Store, policies, secrets, log, the proxy (engine process), a kernel tier, and loopback upstreams."""

    def __init__(self, tmp_path: Path, test_ca: dict[str, str], api_base_url: str = "https://api.anthropic.com",
                 internal_handler: Any = None, tier: str = "kernel", **limits: Any) -> None:
        self.data = tmp_path / "cma"
        self.data.mkdir()
        self.store = Store(self.data / "cma.sqlite3")
        self.policies = PolicyStore(self.store)
        self.secrets = SecretStore(self.data / "secrets")
        self.log = EgressLog(self.store)
        self.ca = test_ca
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(test_ca["cert"], test_ca["key"])
        self.plain, self.other, self.secure = Upstream("plain"), Upstream("other"), Upstream("secure", tls)
        self.proxy = EgressProxy(data_dir=self.data, api_base_url=api_base_url, middleware=[], egress_log=self.log,
                                 upstream_ca=test_ca["ca"], internal_handler=internal_handler, **limits)
        self.tier_name = tier
        self.tier: KernelTier | ContainerTier | None = None
        self.boxes: list[Box] = []

    def services(self) -> list[dict[str, str]]:
        return [
            {"name": "plain.test", "target": f"127.0.0.1:{self.plain.port}"},
            {"name": "other.test", "target": f"127.0.0.1:{self.other.port}"},
            {"name": "https://secure.test", "target": f"127.0.0.1:{self.secure.port}"},
        ]

    def policy(self, **extra: Any) -> str:
        """The environment policy: the three upstreams as private services, plus `extra` fields."""
        return self.policies.create({"name": "test", "scope": {"environment": True}, "private_services": self.services(), **extra}).id

    async def __aenter__(self) -> Rig:
        assert await self.proxy.start(), self.proxy.error
        if self.tier_name == "container":
            self.tier = ContainerTier(pool_size=0, data_dir=str(self.data), ca_bundle=str(self.proxy.ca_bundle))
        else:
            require_bwrap()
            self.tier = KernelTier(pool_size=0, kernel_dir=str(self.data / "kernels"), data_dir=str(self.data),
                                   ca_bundle=str(self.proxy.ca_bundle), require_isolation=True)
        await self.tier.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for box in self.boxes:
            await box.close()
        if self.tier is not None:
            await self.tier.close()
        await self.proxy.stop()
        for upstream in (self.plain, self.other, self.secure):
            upstream.close()
        self.store.close()

    async def box(self, session_id: str = "sesn_a", *, agent_id: str | None = "agent_x", metadata: dict[str, str] | None = None,
                  api_token: str | None = None, work_id: str | None = None, environment_id: str | None = None) -> Box:
        """A sandbox of the rig's tier, attached to the proxy for `session_id`, with CLIENT's helpers defined.

        With `api_token`, its worker's work item (`work_id`, `environment_id`; made up unless given) is what the token may be spent on.
        """
        if api_token is not None:
            work_id, environment_id = work_id or f"work_{session_id}", environment_id or "env_rig"
        attach = functools.partial(self.proxy.attach, session_id=session_id, agent_id=agent_id, metadata=metadata, api_token=api_token,
                                   work_id=work_id, environment_id=environment_id)
        box: Box
        if isinstance(self.tier, ContainerTier):
            slot, _ = await self.tier.take(session_id, self.tier.default_size)
            await self.tier._start(slot)
            await self.tier._wait_ready(slot)
            box = ContainerBox(self.tier, slot, session_id, attach(slot.id, str(slot.socket_path), socket_mode=0o666))
        else:
            assert self.tier is not None
            kernel = await self.tier.take_kernel()
            box = Box(kernel, session_id, attach(kernel.id, str(kernel.egress_socket)))
        self.boxes.append(box)
        where = await box.run(CLIENT + "socket.gethostname()")
        # The code runs where it should: a container, or a kernel (in its own UTS namespace, or sharing the host's name).
        assert where == "sandbox" or (not isinstance(box, ContainerBox) and where == socket.gethostname())
        return box

    async def rows(self, count: int, **filters: Any) -> list[dict[str, Any]]:
        """Wait for at least `count` log records (newest first) matching `filters`."""
        return await wait_until(lambda: (rows := self.log.query(limit=500, **filters)) and len(rows) >= count and rows,
                                15, what=f"{count} egress log record(s) {filters}")


def decisions(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["method"], r["host"], r["port"], r["status"], r["decision"], r["rule"]) for r in rows]


# --------------------------------------------------------------------------- allowed traffic


async def test_allowed_requests_pass_and_are_logged(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        pid = rig.policy()
        box = await rig.box("sesn_allowed", agent_id="agent_1")
        assert await box.run("fetch('http://plain.test/some/path?token=abc123')") == (200, "hello from plain")
        https = await box.run(f"fetch('https://secure.test/tls?x=1', cadata={test_ca['pem']!r})")
        assert https == (200, "hello from secure")  # a plain tunnel: the sandbox saw the upstream's own certificate
        # Methods pass through as sent; bodies stream both ways.
        assert await box.run("fetch('http://plain.test/upload', method='POST', body=b'x' * 200000)") == (200, "hello from plain")
        # A tunnel that speaks neither TLS nor HTTP is a byte pipe to the allowed host.
        pipe = await box.run('''
with socket.create_connection(PROXY, timeout=10) as s:
    s.sendall(b"CONNECT plain.test:443 HTTP/1.1\\r\\nHost: plain.test:443\\r\\n\\r\\n")
    status = _response(s, 10)[0]
    s.sendall(b"\\x00\\x01 not http at all\\r\\n\\r\\n")
    reply = s.recv(100)
(status, reply.startswith(b"<!DOCTYPE HTML>"))''')
        rows = await rig.rows(4, session_id="sesn_allowed")
    assert rig.plain.requests[0]["path"] == "/some/path?token=abc123"  # forwarded whole
    assert rig.plain.requests[1]["body"] == "x" * 200000
    assert pipe == (200, True)  # the upstream's own error page for bytes it could not read
    pipes = [r for r in rows if r["method"] == "CONNECT" and r["host"] == "plain.test"]
    assert len(pipes) == 1 and pipes[0]["bytes_up"] >= 20 and pipes[0]["decision"] == "allowed"
    rows = [r for r in rows if r not in pipes]
    by_method = {r["method"]: r for r in rows}
    get, tunnel, post = by_method["GET"], by_method["CONNECT"], by_method["POST"]
    assert get["path"] == "/some/path" and get["status"] == 200 and get["decision"] == "allowed"  # the query is not kept
    assert get["rule"] == f"policy:{pid}:private_service:plain.test" and get["agent_id"] == "agent_1"
    assert (get["scheme"], get["host"], get["port"]) == ("http", "plain.test", 80)
    assert get["bytes_down"] > len("hello from plain") and get["duration_ms"] > 0
    assert (tunnel["scheme"], tunnel["host"], tunnel["port"], tunnel["path"]) == ("https", "secure.test", 443, None)
    assert tunnel["bytes_up"] > 200 and tunnel["bytes_down"] > 200  # TLS both ways, counted at the tunnel's end
    assert post["bytes_up"] > 200000
    assert "abc123" not in json.dumps(rows)


async def test_a_direct_socket_udp_and_dns_fail_at_once(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.policy()
        box = await rig.box()
        outcome = await box.run('''
import errno, socket, time
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
def tcp():
    socket.create_connection(("127.0.0.1", %d), timeout=10).close()
def tcp_out():
    socket.create_connection(("1.1.1.1", 443), timeout=10).close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("1.1.1.1", 53))
def dns():
    try:
        socket.getaddrinfo("example.com", 443)
    except socket.gaierror as exc:
        raise OSError(errno.EAI_AGAIN if hasattr(errno, "EAI_AGAIN") else 0, str(exc))
(attempt(tcp), attempt(tcp_out), attempt(udp), attempt(dns) != "ok")''' % rig.plain.port)
    # The host's loopback is not the sandbox's; the outside has no route.
    assert outcome == ("ECONNREFUSED", "ENETUNREACH", "ENETUNREACH", True)


# --------------------------------------------------------------------------- addresses


async def test_internal_addresses_are_refused_after_resolution(tmp_path, test_ca, tier):
    """With every name allowed by policy, the address check alone must refuse all of these."""
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        ports = {"jupyter": 8888, "docker": 2375, "proxy": 3128, "upstream": rig.plain.port}
        # Even an explicit allow of a loopback address and port is not enough: only private services reach inside.
        rig.policy(allow=["*", *(f"127.0.0.1:{p}" for p in ports.values())], allow_all=True)
        box = await rig.box("sesn_addr")
        targets = [
            "127.0.0.1", "localhost", "[::1]", "0.0.0.0", "127.0.0.2", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]",
            "169.254.169.254", "[::ffff:169.254.169.254]", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
            "[fd00::1]", "[fe80::1]", "[64:ff9b::a00:1]", "[2002:7f00:1::]", "224.0.0.1", "240.0.0.1",
        ]
        cases = [f"{host}:{port}" for host in targets for port in (443,)] + [f"127.0.0.1:{p}" for p in ports.values()]
        connects = await box.run("[raw(b'CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (t.encode(), t.encode())) for t in " + repr(cases) + "]")
        gets = await box.run("[raw(b'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (t.encode(), t.encode())) for t in " + repr(targets) + "]")
        # Other spellings of loopback are not names: refused as malformed, never resolved.
        spellings = ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1"]
        odd = await box.run("[raw(b'GET http://%s/ HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (t.encode(), t.encode())) for t in " + repr(spellings) + "]")
        metadata = await box.run("raw(b'GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\\r\\nHost: metadata.google.internal\\r\\n\\r\\n')")
        rows = await rig.rows(len(cases) + len(targets) + len(spellings) + 1, session_id="sesn_addr")
    for case, (status, body) in zip(cases, connects):
        assert status == 403 and "sandboxes may only reach public addresses" in body, (case, status, body)
    for case, (status, body) in zip(targets, gets):
        assert status == 403 and "public addresses" in body, (case, status, body)
    for case, (status, body) in zip(spellings, odd):
        assert status == 400, (case, status, body)
    # Not resolvable here; where it resolves, it is link-local and refused like 169.254.169.254.
    assert metadata[0] in (403, 502) and "nothing was sent" in metadata[1] or "public addresses" in metadata[1]
    assert all(r["decision"] == "denied" for r in rows)
    assert {r["rule"] for r in rows} <= {"address:not-public", "invalid:request", "invalid:request-line", "resolve:failed"}
    assert rig.plain.requests == []  # the upstream's own port on loopback was never reached


# --------------------------------------------------------------------------- names and parsing


async def test_names_are_matched_exactly_and_parsed_once(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        pid = rig.policy(allow=["*.wild.test"])
        box = await rig.box("sesn_names")
        answers = await box.run('''[
    raw(b"GET http://PLAIN.TEST./upper HTTP/1.1\\r\\nHost: PLAIN.TEST.\\r\\n\\r\\n"),
    raw(b"GET http://plain.test.evil.test/ HTTP/1.1\\r\\nHost: plain.test.evil.test\\r\\n\\r\\n"),
    raw(b"GET http://evilplain.test/ HTTP/1.1\\r\\nHost: evilplain.test\\r\\n\\r\\n"),
    raw(b"GET http://wild.test/ HTTP/1.1\\r\\nHost: wild.test\\r\\n\\r\\n"),
    raw(b"GET http://plain.test@evil.test/ HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n"),
    raw(b"GET http://plain.test\\\\@evil.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n"),
    raw(b"GET http://plain.test/ HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n"),
    raw(b"GET http://plain.test:80/port HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test:22 HTTP/1.1\\r\\nHost: plain.test:22\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test:25 HTTP/1.1\\r\\nHost: plain.test:25\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test:6379 HTTP/1.1\\r\\nHost: plain.test:6379\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test:0 HTTP/1.1\\r\\n\\r\\n"),
    raw(b"CONNECT plain.test:65536 HTTP/1.1\\r\\n\\r\\n"),
    raw(b"CONNECT ::::443 HTTP/1.1\\r\\n\\r\\n"),
    raw(b"GET https://secure.test/ HTTP/1.1\\r\\nHost: secure.test\\r\\n\\r\\n"),
]''')
        rows = await rig.rows(16, session_id="sesn_names")
    statuses = [status for status, _ in answers]
    assert statuses == [200, 403, 403, 403, 400, 400, 421, 200, 403, 403, 403, 400, 400, 400, 400, 400], answers
    assert "not in the allow list" in answers[1][1] and "differs from the URI's host" in answers[6][1]
    assert [r["path"] for r in rig.plain.requests] == ["/upper", "/port"]
    assert all(dict(r["headers"])["host"] == "plain.test" for r in rig.plain.requests)  # Host rebuilt from the URI
    denied = [r for r in rows if r["decision"] == "denied"]
    assert len(denied) == 14 and all(r["status"] >= 400 for r in denied)
    assert {r["rule"] for r in denied} >= {f"policy:{pid}:not-allowed", "invalid:host-mismatch", "invalid:request-line", "invalid:scheme"}


async def test_the_connect_target_is_the_truth_inside_the_tunnel(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.secrets.set("TOKEN_A", SECRET)
        # An injection toward secure.test makes its tunnel one the proxy opens (its CA signs for the sandbox).
        rig.policy(inject=[{"host": "secure.test", "header": "Authorization", "secret": "TOKEN_A", "prefix": "Bearer "}])
        box = await rig.box("sesn_truth")
        inside = await box.run('''[
    tunnel("secure.test:443", "secure.test", b"GET /same HTTP/1.1\\r\\nHost: secure.test\\r\\n\\r\\n"),
    tunnel("secure.test:443", "secure.test", b"GET /other HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n"),
    tunnel("secure.test:443", "secure.test", b"CONNECT other.test:443 HTTP/1.1\\r\\nHost: other.test:443\\r\\n\\r\\n"),
]''')
        # TLS spoken straight to the proxy port names no destination: cut off.
        direct = await box.run('''
try:
    ssl.create_default_context().wrap_socket(socket.create_connection(PROXY, timeout=10), server_hostname="secure.test").close()
    direct = "handshake completed"
except (OSError, ssl.SSLError) as exc:
    direct = "refused"
direct''')
        # A plain tunnel (no rule needs to look inside) whose TLS names another server is cut off.
        sni = await box.run(f"tunnel('plain.test:443', 'other.test', b'GET / HTTP/1.1\\r\\nHost: other.test\\r\\n\\r\\n', cadata={test_ca['pem']!r})")
        rows = await rig.rows(5, session_id="sesn_truth")
    assert inside[0][:2] == (200, 200) and inside[0][2] == "hello from secure", inside
    assert inside[1][:2] == (200, 421) and "differs from the CONNECT target" in inside[1][2]
    assert inside[2][:2] == (200, 400)  # a CONNECT inside a tunnel (mitmproxy refuses it as malformed there)
    assert direct == "refused"
    assert [r["path"] for r in rig.secure.requests] == ["/same"]
    assert sni[0] == 200 and sni[1] is None  # the tunnel was allowed, then cut at the ClientHello
    assert rig.plain.requests == [] and rig.other.requests == []
    assert {r["rule"] for r in rows} >= {"invalid:host-mismatch", "invalid:sni-mismatch", "invalid:protocol", "invalid:tls-without-connect"}


# --------------------------------------------------------------------------- protocol


async def test_smuggling_shapes_and_websockets(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        pid = rig.policy()
        box = await rig.box("sesn_proto")
        upgrade = "GET http://plain.test/ws HTTP/1.1\\r\\nHost: plain.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n"
        answers = await box.run(f'''[
    raw(b"POST http://plain.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\n\\r\\n"),
    raw(b"POST http://plain.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\nContent-Length: 5\\r\\nContent-Length: 6\\r\\n\\r\\nhello!"),
    raw(b"{upgrade}"),
]''')
        rig.policies.update(pid, {"name": "test", "scope": {"environment": True}, "private_services": rig.services(), "websocket": "allow"})
        allowed = await box.run(f'raw(b"{upgrade}")')
        rows = await rig.rows(4, session_id="sesn_proto")
    assert [a[0] for a in answers] == [400, 400, 403]
    assert "WebSocket connections are not allowed" in answers[2][1]
    assert allowed[0] == 101
    assert [r["path"] for r in rig.plain.requests] == ["/ws"]  # nothing smuggled, one upgrade after the policy allowed it
    assert [(r["method"], r["status"], r["decision"]) for r in reversed(rows)] == [
        ("POST", 400, "denied"), ("POST", 400, "denied"), ("GET", 403, "denied"), ("GET", 101, "allowed")]


# --------------------------------------------------------------------------- credentials


async def test_injected_secrets_reach_only_their_target_and_appear_nowhere_else(tmp_path, test_ca, caplog, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.secrets.set("TOKEN_A", SECRET)
        rig.policy(inject=[{"host": "secure.test", "header": "Authorization", "secret": "TOKEN_A", "prefix": "Bearer "}])
        box = await rig.box("sesn_secret")
        answers = await box.run('''[
    fetch("https://secure.test/api", headers={"Authorization": "Bearer the-sandbox-own"}),
    fetch("https://secure.test/redirect?to=http://other.test/landing"),
    fetch("http://plain.test/elsewhere"),
]''')
        found = await box.run(f'''
import os, pathlib
def scan(root):
    hits = []
    for path in pathlib.Path(root).rglob("*"):
        try:
            if path.is_file() and {SECRET!r}.encode() in path.read_bytes():
                hits.append(str(path))
        except OSError:
            pass
    return hits
([k for k, v in os.environ.items() if {SECRET!r} in v], scan(os.getcwd()), scan("/tmp"), scan(os.environ.get("IPYTHONDIR", "/tmp")))''')
        rows = await rig.rows(4, session_id="sesn_secret")
        status = rig.proxy.status()
        stored = json.dumps(rig.log.query(limit=1000))
    assert [a[0] for a in answers] == [200, 200, 200]
    # Replaced, not duplicated; only toward secure.test; not carried along the redirect.
    assert rig.secure.headers("authorization") == [[f"Bearer {SECRET}"], [f"Bearer {SECRET}"]]
    assert rig.other.headers("authorization") == [[]] and rig.plain.headers("authorization") == [[]]
    assert found == ([], [], [], [])
    injected = [r for r in rows if r["decision"] == "injected"]
    assert [r["path"] for r in injected] == ["/redirect", "/api"]
    everything = json.dumps([rows, status]) + caplog.text
    assert SECRET not in everything
    assert SECRET not in stored


async def test_a_missing_secret_refuses_the_request(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.policy(inject=[{"host": "secure.test", "header": "X-Api-Key", "secret": "NOT_SET"}])
        box = await rig.box("sesn_missing")
        status, body = await box.run("fetch('https://secure.test/')")
    assert status == 503 and "NOT_SET" in body and "nothing was sent" in body
    assert rig.secure.requests == []


async def test_the_api_placeholder_is_swapped_toward_the_api_host_only(tmp_path, test_ca, tier):
    """The credential-free worker: a sandbox holds a placeholder; the proxy sends the session's real token."""
    api = Upstream("api")
    try:
        async with Rig(tmp_path, test_ca, tier=tier, api_base_url=f"http://127.0.0.1:{api.port}") as rig:
            rig.policy()
            a = await rig.box("sesn_api_a", api_token=TOKEN)
            b = await rig.box("sesn_api_b", api_token="sessions-token-of-b")
            assert a.placeholder and b.placeholder and a.placeholder != b.placeholder and TOKEN not in a.placeholder
            # Through the proxy port itself: NO_PROXY sends 127.0.0.1 URLs to the sandbox's own loopback.
            def api_call(placeholder: str) -> str:
                return (f'raw(b"GET http://127.0.0.1:{api.port}/v1/sessions/sesn_api_a HTTP/1.1\\r\\nHost: 127.0.0.1:{api.port}\\r\\n'
                        f'Authorization: Bearer {placeholder}\\r\\n\\r\\n")')
            answers = await a.run(f"""[
    {api_call(a.placeholder)},
    fetch("http://plain.test/", headers={{"Authorization": "Bearer {a.placeholder}"}}),
    {api_call(b.placeholder)},
]""")
            from_b = await b.run(api_call(a.placeholder))
            rows = await rig.rows(3, session_id="sesn_api_a")
            rows_b = await rig.rows(1, session_id="sesn_api_b")
    finally:
        api.close()
    assert [x[0] for x in answers] == [200, 200, 200]
    # Only a's own placeholder, only toward the API host, becomes a's token. Another sandbox's placeholder stays useless,
    # and b may not even ask for a's session: that is no call of its worker.
    assert from_b[0] == 403 and "api:outside-worker-scope" in from_b[1]
    assert api.headers("authorization") == [[f"Bearer {TOKEN}"], [f"Bearer {b.placeholder}"]]
    assert rig.plain.headers("authorization") == [[f"Bearer {a.placeholder}"]]
    assert [r["rule"] for r in rows if r["host"] == "127.0.0.1"] == ["system:api-host", "system:api-host"]
    assert [r["decision"] for r in rows if r["host"] == "127.0.0.1"] == ["allowed", "injected"]  # newest first
    assert decisions(rows_b) == [("GET", "127.0.0.1", api.port, 403, "denied", "api:outside-worker-scope")]
    assert TOKEN not in json.dumps(rows)


def _claimed_item(emu: Any) -> dict[str, Any]:
    """A work item of a fresh environment, claimed the way a worker does (poll and ack with the environment key).

    Its session's agent has one skill (`skill`); another skill of the organisation (`other_skill`) is not the agent's.
    Returns the ids, the item's sessions token and a second session of the environment (`other_session`).
    """
    import base64 as b64

    environment_id, key = emu.new_environment("scope")
    skill_md = b"---\nname: %s\ndescription: a skill\n---\n"
    with emu.http() as http:
        skill = http.post("/v1/skills", files=[("files", ("mine/SKILL.md", skill_md % b"mine"))]).json()["id"]
        other_skill = http.post("/v1/skills", files=[("files", ("other/SKILL.md", skill_md % b"other"))]).json()["id"]
        agent = http.post("/v1/agents", json={"name": "scoped", "model": "claude-sonnet-4-5",
                                              "skills": [{"type": "custom", "skill_id": skill, "version": "latest"}]}).json()["id"]
        session = http.post("/v1/sessions", json={"agent": agent, "environment_id": environment_id}).json()["id"]
    with emu.http(key) as http:
        item = http.get(f"/v1/environments/{environment_id}/work/poll", params={"block_ms": 999}).json()
        assert item and item["data"]["id"] == session, item
        assert http.post(f"/v1/environments/{environment_id}/work/{item['id']}/ack").status_code == 200
    with emu.http() as http:
        other_session = http.post("/v1/sessions", json={"agent": agent, "environment_id": environment_id}).json()["id"]
    secret = item["secret"]
    token = json.loads(b64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))["sessions_token"]
    return {"environment_id": environment_id, "work_id": item["id"], "session_id": session, "agent_id": agent, "token": token,
            "skill": skill, "other_skill": other_skill, "other_session": other_session, "requests_before": len(emu.requests())}


async def test_the_worker_token_is_spent_only_on_its_own_work_item(tmp_path, test_ca, tier):
    """The emulator as the API: a sandbox holding its worker's placeholder can make its worker's calls, and no others."""
    emu = start_emulator()
    try:
        item = _claimed_item(emu)
        async with Rig(tmp_path, test_ca, tier=tier, api_base_url=emu.base_url) as rig:
            rig.policy()  # the loopback upstreams only: nothing of the API host
            sid, env, work = item["session_id"], item["environment_id"], item["work_id"]
            box = await rig.box(sid, agent_id=item["agent_id"], api_token=item["token"], work_id=work, environment_id=env)
            host = emu.base_url.split("://", 1)[1].rstrip("/")

            def call(method: str, path: str, body: bytes = b"") -> str:
                head = (f"{method} http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {box.placeholder}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                return f"raw({head + body!r})"

            own = [("GET", f"/v1/sessions/{sid}"), ("GET", f"/v1/sessions/{sid}/events?limit=1000"),
                   ("POST", f"/v1/environments/{env}/work/{work}/heartbeat?expected_last_heartbeat=NO_HEARTBEAT"),
                   ("GET", f"/v1/skills/{item['skill']}/versions/latest")]
            elsewhere = [("GET", f"/v1/sessions/{item['other_session']}/events"), ("POST", "/v1/sessions"),
                         ("GET", f"/v1/environments/{env}/work/poll?block_ms=1"), ("GET", f"/v1/skills/{item['other_skill']}/versions/latest"),
                         ("GET", f"/v1/sessions/{sid}/../{item['other_session']}")]
            bodies = {"/v1/sessions": json.dumps({"agent": item["agent_id"], "environment_id": env}).encode()}
            answers = await box.run("[" + ", ".join(call(m, p, bodies.get(p, b"")) for m, p in own + elsewhere) + "]")
            # What the scope learned from the API's answer (the agent's skill) outlives the engine: the server keeps it.
            await rig.rows(len(own) + len(elsewhere), session_id=sid)
            engine = rig.proxy.pid
            assert engine is not None
            os.kill(engine, signal.SIGKILL)
            await wait_until(lambda: rig.proxy.running and rig.proxy.pid != engine, 30, what="the engine restarted")
            skills = await box.run("[" + ", ".join(call("GET", f"/v1/skills/{s}/versions/latest") for s in (item["skill"], item["other_skill"])) + "]")
            # A sandbox without a worker token (the kernel tier's: its worker runs in the server) has no way to the API
            # unless a policy opens it, and then without any token.
            plain = await rig.box("sesn_plain")
            no_worker = await plain.run(f'raw(b"GET http://{host}/v1/sessions/{sid} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n")')
            rows = [r for r in await rig.rows(len(own) + len(elsewhere) + 2, session_id=sid)][2:]  # without the two after the restart
            plain_rows = await rig.rows(1, session_id="sesn_plain")
        reached = [(r["method"], r["path"] + (f"?{r['query']}" if r["query"] else ""), r["credential"])
                   for r in emu.requests()[item["requests_before"]:] if not r["path"].startswith("/_emulator")]
    finally:
        emu.stop()
    assert [a[0] for a in answers[:len(own)]] == [200, 200, 200, 200], answers
    assert [a[0] for a in skills] == [200, 403], skills
    for (method, path), (status, body) in zip(elsewhere, answers[len(own):]):
        assert status == 403 and "api:outside-worker-scope" in body, (method, path, status, body)
    # The worker's own calls reached the API with the session's token; none of the others reached it at all.
    for method, path in own:
        assert (method, path, "sessions_token") in reached, (method, path, reached)
    assert not [r for r in reached if (r[0], r[1]) in elsewhere or r[1].startswith(f"/v1/sessions/{item['other_session']}")], reached
    # One record per request: the own calls with the token swapped in, each refusal denied once, saying why.
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    for method, path in own:
        (row,) = by_path[path.split("?", 1)[0]]
        assert (row["method"], row["decision"], row["rule"]) == (method, "injected", "system:api-host"), row
    for method, path in elsewhere[:-1]:
        (row,) = by_path[path.split("?", 1)[0]]
        assert (row["method"], row["status"], row["decision"], row["rule"]) == (method, 403, "denied", "api:outside-worker-scope"), row
    assert len(rows) == len(own) + len(elsewhere)
    assert no_worker[0] == 403 and "system:api-host" not in no_worker[1]
    assert decisions(plain_rows) == [("GET", host.split(":")[0], int(host.split(":")[1]), 403, "denied", plain_rows[0]["rule"])]
    assert plain_rows[0]["rule"].endswith(":not-allowed")
    assert item["token"] not in json.dumps(rows)


# --------------------------------------------------------------------------- robustness


async def test_limits_bound_one_sandbox_and_spare_the_others(tmp_path, test_ca, tier):
    limits = dict(max_header_bytes=8192, header_timeout=2.0, max_body_bytes=100_000, connections_per_sandbox=4,
                  requests_per_second=5.0, request_burst=10)
    async with Rig(tmp_path, test_ca, tier=tier, **limits) as rig:
        rig.policy()
        noisy, quiet = await rig.box("sesn_noisy"), await rig.box("sesn_quiet")
        big_head = await noisy.run('raw(b"GET http://plain.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\nX-Big: " + b"a" * 20000 + b"\\r\\n\\r\\n")')
        big_body = await noisy.run('raw(b"POST http://plain.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\nContent-Length: 200000\\r\\n\\r\\n" + b"x" * 200000)')
        chunked = await noisy.run('''
with socket.create_connection(PROXY, timeout=30) as s:
    s.sendall(b"POST http://plain.test/chunked HTTP/1.1\\r\\nHost: plain.test\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
    try:
        for _ in range(50):
            s.sendall(b"4000\\r\\n" + b"y" * 0x4000 + b"\\r\\n")
        s.sendall(b"0\\r\\n\\r\\n")
        answer = _response(s, 30)
    except OSError as exc:
        answer = (None, repr(exc))
answer[0]''')
        slow = await noisy.run('''
import time
with socket.create_connection(PROXY, timeout=30) as s:
    s.sendall(b"GET http://plain.test/ HTTP/1.1\\r\\nHost: pla")
    started = time.monotonic()
    answer = _response(s, 30)
(answer[0], time.monotonic() - started < 20)''')
        held = await noisy.run('''
held = [socket.create_connection(PROXY, timeout=10) for _ in range(4)]
extra = raw(b"GET http://plain.test/ HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n")
extra[0]''')
        assert held == 429
        # Meanwhile the other sandbox is served.
        assert await quiet.run("fetch('http://plain.test/quiet')") == (200, "hello from plain")
        await noisy.run("[s.close() for s in held]\nNone")
        await asyncio.sleep(2.5)  # let the rate bucket refill a little
        burst = await noisy.run("keep_alive(*[b'GET http://plain.test/n HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n'] * 30)")
        rows = await rig.rows(5, session_id="sesn_noisy")
    assert big_head[0] == 431 and big_body[0] == 413 and slow == (408, True)
    assert chunked in (None, 502)  # cut off once past the limit: never forwarded whole
    assert "/chunked" not in [r["path"] for r in rig.plain.requests if len(r["body"]) > 100_000]
    statuses = [s for s, _ in burst]
    assert 200 in statuses and 429 in statuses and statuses.index(429) > 0
    rules = {r["rule"] for r in rows}
    assert {"limit:header-size", "limit:header-time", "limit:connections", "limit:rate", "limit:body-size"} <= rules
    assert [r["path"] for r in rig.plain.requests].count("/quiet") == 1


async def test_a_policy_edit_applies_to_the_next_request(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        pid = rig.policy()
        box = await rig.box("sesn_edit")
        before = await box.run("keep_alive(b'GET http://plain.test/1 HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n')")
        # A plain tunnel opened before the edit: it carries no requests to decide, so the tunnel itself is.
        opened = await box.run('''
held = socket.create_connection(PROXY, timeout=10)
held.sendall(b"CONNECT secure.test:443 HTTP/1.1\\r\\nHost: secure.test:443\\r\\n\\r\\n")
_response(held, 10)
held = ssl.create_default_context(cadata={pem!r}).wrap_socket(held, server_hostname="secure.test")
def on_held(path):
    try:
        held.sendall(b"GET " + path + b" HTTP/1.1\\r\\nHost: secure.test\\r\\n\\r\\n")
        return _response(held, 10)[0]
    except (OSError, ssl.SSLError):
        return None
on_held(b"/first")'''.replace("{pem!r}", repr(test_ca["pem"])))
        rig.policies.update(pid, {"name": "test", "scope": {"environment": True}, "private_services": rig.services(), "deny": ["plain.test", "secure.test"]})
        after = await box.run("fetch('http://plain.test/2')")
        await asyncio.sleep(2.5)  # the engine re-decides open tunnels every second
        held_after = await box.run("on_held(b'/second')")
        # A session-scoped policy wins over the environment's, and its deny list is added to the environment's.
        rig.policies.create({"name": "session", "scope": {"session_id": "sesn_edit"}, "private_services": rig.services()})
        still = await box.run("fetch('http://plain.test/3')")
        other = await box.run("fetch('http://other.test/4')")
    assert before[0][0] == 200 and after[0] == 403 and "denied by policy" in after[1]
    assert opened == 200 and held_after is None and [r["path"] for r in rig.secure.requests] == ["/first"]
    assert still[0] == 403 and other == (200, "hello from other")


async def test_killing_the_engine_is_survived(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.policy()
        box = await rig.box("sesn_kill")
        assert await box.run("fetch('http://plain.test/before')") == (200, "hello from plain")
        # Its log row reaches the server just after the answer; a SIGKILL before that would lose it.
        await rig.rows(1, session_id="sesn_kill")
        pid = rig.proxy.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: rig.proxy.running and rig.proxy.pid != pid, 30, what="the engine restarted")
        assert rig.proxy.restarts == 1 and "SIGKILL" in (rig.proxy.last_exit or "")
        # The same sandbox (never restarted) goes on through the new engine, on the same socket.
        assert await box.run("fetch('http://plain.test/after')") == (200, "hello from plain")
        assert box.alive()
        await rig.rows(2, session_id="sesn_kill")
    assert [r["path"] for r in rig.plain.requests] == ["/before", "/after"]


async def test_without_an_engine_sandboxes_have_no_network(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        rig.policy()
        rig.proxy.engine_python = str(tmp_path / "no-such-python")
        await rig.proxy.stop()
        assert not rig.proxy.available and not await rig.proxy.start()
        assert "install-egress-engine" in (rig.proxy.error or "")
        box = await rig.box("sesn_none")
        status, body = await box.run("fetch('http://plain.test/')")
    assert status == 502 and "no egress proxy is listening" in body
    assert rig.plain.requests == []



# --------------------------------------------------------------------------- through the Jupyter server


async def test_sessions_served_by_the_server_go_out_through_the_proxy(harness):
    """The product path: a session's python tool fetches through the engine the server runs; the REST API shows it."""
    from tests.test_dispatch import python as script_python
    from tests.test_dispatch import script as script_message

    require_bwrap()
    upstream = Upstream("warehouse")
    try:
        h = await harness.start()
        status = await h.api("GET", "status")
        assert status["egress"]["enforced"] is True and status["egress"]["proxy"]["engine"] == "running"
        service = [{"name": "warehouse.test", "target": f"127.0.0.1:{upstream.port}"}]
        await h.api("POST", "egress/policies", {"name": "default", "scope": {"environment": True}})  # allows nothing
        ml = await h.api("POST", "egress/policies", {"name": "ml team", "scope": {"metadata": [{"key": "team", "equals": "ml"}]},
                                                     "private_services": service})
        agent = await h.agent()
        code = CLIENT + "print(fetch('http://warehouse.test/table?rows=10'))"
        ml_session = (await h.api("POST", "sessions", {"agent_id": agent, "metadata": {"team": "ml"},
                                                        "message": script_message(script_python(code), {"say": "done"})}))["id"]
        other_session = (await h.api("POST", "sessions", {"agent_id": agent, "metadata": {"team": "web"},
                                                           "message": script_message(script_python(code), {"say": "done"})}))["id"]
        outputs = {}
        for sid in (ml_session, other_session):
            events = await h.turn_ends(sid)
            (result,) = [e for e in events if e.type == "user.custom_tool_result"]
            outputs[sid] = "".join(b.text for b in result.content)
        log = await wait_until(lambda: _two_rows(h), 15, what="the egress log over REST")
    finally:
        upstream.close()
    assert outputs[ml_session] == "(200, 'hello from warehouse')\n"
    assert outputs[other_session].startswith("(403, ") and "not in the allow list of policy 'default'" in outputs[other_session]
    rows = {r["session_id"]: r for r in log}
    assert rows[ml_session]["rule"] == f"policy:{ml['id']}:private_service:warehouse.test" and rows[ml_session]["agent_id"] == agent
    assert rows[ml_session]["path"] == "/table" and rows[other_session]["decision"] == "denied"


async def _two_rows(h: Any) -> list[dict[str, Any]] | None:
    response = await h.fetch("cma", "api", "egress", "log", params={"host": "warehouse.test"})
    rows = json.loads(response.body)["data"]
    return rows if len(rows) >= 2 else None


def test_the_placeholder_work_secret_carries_only_the_placeholder():
    """What a credential-free worker is given: the SDK reads the placeholder out of it as its sessions token."""
    from anthropic.lib.environments._worker import _sessions_token_from_secret

    from jupyter_cma.egress.proxy import placeholder_work_secret

    payload = placeholder_work_secret("cma-placeholder-abc")
    assert _sessions_token_from_secret(payload) == "cma-placeholder-abc"


async def test_what_the_proxy_cannot_read_or_bound_never_goes_upstream(tmp_path, test_ca, tier):
    """Shapes that slip past a parser: each is refused before any byte of it reaches the upstream."""
    async with Rig(tmp_path, test_ca, tier=tier, max_header_bytes=8192, header_timeout=5.0) as rig:
        rig.secrets.set("TOKEN_A", SECRET)
        # An injection toward plain.test over https makes its tunnels ones the proxy must read.
        rig.policy(inject=[{"host": "plain.test", "header": "X-Key", "secret": "TOKEN_A"}])
        box = await rig.box("sesn_hard")
        answers = await box.run('''
def inside(first, payload, timeout=10):
    """CONNECT plain.test:443, then raw bytes (no TLS): what comes back, or how it ended."""
    with socket.create_connection(PROXY, timeout=timeout) as s:
        s.sendall(b"CONNECT plain.test:443 HTTP/1.1\\r\\nHost: plain.test:443\\r\\n\\r\\n")
        status = _response(s, timeout)[0]
        try:
            s.sendall(first + payload)
            return status, s.recv(100)[:12]
        except OSError as exc:
            return status, type(exc).__name__
big = b"X-Big: " + b"a" * (3 * 1024 * 1024) + b"\\r\\n"
[
    # A request line mitmproxy does not take for HTTP (leading CRLF): bytes the rules cannot read.
    inside(b"\\r\\nDELETE /admin HTTP/1.1\\r\\nHost: plain.test\\r\\n", b"\\r\\n"),
    # A head without end inside a tunnel, and one hidden behind blank lines on a plain connection.
    inside(b"GET /big HTTP/1.1\\r\\nHost: plain.test\\r\\n", big),
    raw(b"\\r\\n\\r\\nGET http://plain.test/big HTTP/1.1\\r\\nHost: plain.test\\r\\n" + big + b"\\r\\n"),
    # A refused request whose body is already on its way is answered at once, not left hanging.
    raw(b"POST http://denied.test/ HTTP/1.1\\r\\nHost: denied.test\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"x" * 100000),
    raw(b"POST http://denied.test/ HTTP/1.1\\r\\nHost: denied.test\\r\\nTransfer-Encoding: chunked\\r\\nExpect: 100-continue\\r\\n\\r\\n"),
]''')
        rows = await rig.rows(4, session_id="sesn_hard")
    assert answers[0][0] == 200 and answers[0][1] in (b"", "ConnectionResetError", "BrokenPipeError")
    assert answers[1][0] == 200 and answers[1][1] in (b"HTTP/1.1 431", b"", "ConnectionResetError", "BrokenPipeError")
    assert answers[2][0] in (431, None)  # the 431 is written, then the connection is cut mid-upload (it may be lost)
    assert answers[3][0] == 403 and answers[4][0] == 403, answers[3:]
    assert rig.plain.requests == [] and rig.other.requests == []
    rules = {r["rule"] for r in rows}
    assert {"invalid:not-http", "limit:header-size"} <= rules
