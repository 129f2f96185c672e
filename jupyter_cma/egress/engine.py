"""The egress engine: mitmproxy with jupyter-cma's policy in its hooks, in a process of its own.

`EgressProxy` (egress/proxy.py) starts it as::

    <engine python> -m jupyter_cma.egress.engine --control-fd N

from a Python environment of its own (mitmproxy pins versions of tornado,
h11 and cryptography that the Jupyter server must not share), watches it and
starts it again when it dies. The engine opens no listening socket itself:
over the control channel (a SOCK_SEQPACKET pair) the server sends the
settings, then each sandbox's *listening* Unix socket (SCM_RIGHTS) with who
that sandbox serves. The socket a connection arrives on is the sandbox's
identity; nothing the sandbox sends can claim another. Because the server
keeps the listening sockets, connections made while the engine restarts wait
in the socket's backlog instead of failing.

Every connection goes through mitmproxy's regular (forward) proxy layers with
these hooks, in this order:

1. `http_connect` / `requestheaders`: rate limit, then the policy decides on
   the requested *name* (no DNS yet). A CONNECT target is the destination of
   everything inside the tunnel; a request inside whose `Host` names another
   host is refused (421). A plain request's absolute URI is the destination;
   its `Host` must agree (421), and is rewritten from the URI.
2. Resolve → check → pin: the name is resolved once, every address must be
   globally routable (no loopback, private, link-local/metadata, CGNAT,
   unique-local, multicast, reserved, nor those embedded in IPv4-mapped,
   -compatible, NAT64 or 6to4 forms) unless the policy routes the name to an
   operator-declared private service. The request is re-targeted to the
   checked address, so nothing resolves it again (DNS rebinding).
3. `server_connect`: the last gate. An upstream connection opens only to an
   address step 2 approved for this client connection; anything else is
   refused. The TLS SNI toward upstream is forced to the CONNECT name.
4. `tls_clienthello`: a tunnel stays a plain byte pipe unless a rule needs
   to see inside (an injection, a method/path rule, the API placeholder
   swap); a ClientHello whose SNI names another host than the CONNECT is
   cut off.
5. Injections replace the client's header of that name, toward their exact
   target only; the worker's placeholder is swapped for the session's real
   token only on the calls its worker makes for its own work item (the
   system allowance, `policy.WorkerScope`); a request to the API host that
   carries the placeholder and is not one of them is refused
   (`api:outside-worker-scope`). The scope learns the session's skills and
   memory stores from the API's answer to the worker's retrieve of its session.
6. One log record per request goes back to the server, and exactly one: a
   refusal (a limit, a parse failure, a policy) is one `denied` record naming
   what refused it, and nothing of a refused request is logged again. A plain
   tunnel and a WebSocket are one record each, written when they end (bytes
   both ways); the engine reports each when it opens, so that the server can
   write the record of one still open when the engine dies (`EgressProxy`).
   Whatever a limit cuts (a connection's time, idleness, a WebSocket message
   too large, a body too large) is recorded `denied` with that limit's rule.

The internal route: a plain-http request to `cma.internal` (port 80, GET or
POST) is answered by the server's tool registry, never by an upstream. It is
recognised right after the rate limit and bypasses the policy: no decision,
no DNS, no approved address (so `server_connect` could not open anything for
it). Its body (at most 1 MiB) is read whole, then the `request` hook sends it
over the control channel with the *sandbox id of the socket* the connection
came in on; the server finds the session from its own attachment of that
socket, never from anything in the request, and answers. A CONNECT to the
name, another port or https is refused.

Any exception in a hook refuses the request (fail closed): mitmproxy would
otherwise log the error and carry on. Limits: header bytes and time, body
size, WebSocket message size, idle and total connection time, connections
per sandbox and in all, requests per second per sandbox.

Only the standard library, mitmproxy (and wsproto, its WebSocket library),
and the light modules of this package (policy, secrets, store) are imported here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from http.client import responses as HTTP_REASONS
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mitmproxy import http, options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.proxy import commands as mitm_commands
from mitmproxy.proxy import events as mitm_events
from mitmproxy.proxy import layer as mitm_layer
from mitmproxy.proxy import layers as mitm_layers
from mitmproxy.proxy.layers import websocket as mitm_websocket
from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.proxy import server as mitm_server
from mitmproxy.proxy.layers.modes import HttpProxy
from mitmproxy.proxy.mode_servers import ProxyConnectionHandler
from mitmproxy.net import encoding as mitm_encoding
from mitmproxy.net.http import url
from mitmproxy.net.http.http1 import read as http1_read
from mitmproxy.tls import ClientHelloData
from wsproto.events import CloseConnection as WsCloseConnection

from ..store import Store
from . import channel
from .log import clean_path
from .policy import (
    DEFAULT_PORTS,
    INTERNAL_HOST,
    SYSTEM_API_RULE,
    WORKER_SCOPE_RULE,
    Decision,
    PolicyError,
    PolicyResolver,
    PolicyStore,
    SessionContext,
    WorkerScope,
    _display_host,
    _is_ip,
    load_middleware,
    normalize_host,
)
from .secrets import SecretStore

log = logging.getLogger("jupyter_cma.egress.engine")

LOG_BATCH_ROWS = 50  # records per control message: with paths capped at 2 KiB, well under the socket's buffer
HEAD_END = re.compile(rb"\n\r?\n")  # where mitmproxy's parser ends a request head (leading blank lines skipped)
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS handshake record: a ClientHello, not a request line
HEAD_SLACK = 1024 * 1024  # inside a tunnel the bytes before a parsed head include TLS and maybe some body
SWEEP_SECONDS = 1.0
RESOLVE_TIMEOUT = 5.0
RESOLVE_CACHE_SECONDS = 30.0
ERROR_HEADERS = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
INTERNAL_MAX_BODY = 1024 * 1024  # a tool's input: JSON, small; the body is held in memory and sent to the server whole
INTERNAL_METHODS = ("GET", "POST")
INTERNAL_RULE = "internal"
INTERNAL_USE = f"the tool registry is reached with plain http on port 80 only: use http://{INTERNAL_HOST}/ through the proxy (HTTP_PROXY)"
WORKER_ANSWER_MAX = 4 * 1024 * 1024  # the API's answer to the worker's retrieve of its session, read for its skills and memory stores
WS_FRAGMENT_OVERHEAD = 64  # what one buffered fragment of a WebSocket message costs beyond its payload (counted against the limit)


@dataclass
class Limits:
    """Bounds on what one sandbox can make the engine do (`EgressProxy`'s traits, where the defaults live)."""

    max_header_bytes: int
    header_timeout: float
    idle_timeout: float
    max_connection_seconds: float
    max_body_bytes: int
    max_websocket_message_bytes: int
    connections_per_sandbox: int
    connections_total: int
    requests_per_second: float
    request_burst: int


# ---------------------------------------------------------------------- addresses


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a sandbox may not connect to this address (None: globally routable)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or _ipv4_compatible(ip) or ip.sixtofour or _nat64(ip)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (in an IPv6 form)" if problem else "an IPv6 form of an IPv4 address (use the IPv4 address itself)"
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives here)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and (ip in _UNIQUE_LOCAL or ip.is_site_local):
        return "a unique-local or site-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _ipv4_compatible(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: and ::1, which are themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _nat64(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class ClosedLayer(mitm_layer.Layer):
    """Closes both ends and drops whatever arrives: nothing the client sent goes upstream."""

    def _handle_event(self, event: mitm_events.Event) -> mitm_layer.CommandGenerator[None]:
        if isinstance(event, mitm_events.Start):
            yield mitm_commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield mitm_commands.CloseConnection(self.context.server)


class Refused(Exception):
    """A request the engine will not forward: answered with `status` and `reason`, logged with `rule`."""

    def __init__(self, status: int, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.rule = status, reason, rule


class Resolver:
    """Resolve once, check every answer, remember the checked answer for a short while.

    A name is refused if *any* of its addresses is not globally routable: a
    name that mixes public and internal answers is an attack, not a
    configuration. The checked address is what the connection uses.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, bool], tuple[float, str]] = {}

    async def pin(self, host: str, port: int, *, check: bool = True) -> str:
        """The address to connect to; `check=False` only for a destination the operator named (the API host)."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            if check:
                self._check(host, literal)
            return str(literal)
        key = (host, port, check)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError, UnicodeError) as exc:
            raise Refused(502, f"{host} could not be resolved ({type(exc).__name__}); nothing was sent", "resolve:failed") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            if check:
                self._check(host, address)
            addresses.append(str(address))
        if not addresses:
            raise Refused(502, f"{host} has no address; nothing was sent", "resolve:failed")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + RESOLVE_CACHE_SECONDS, addresses[0])
        return addresses[0]

    @staticmethod
    def _check(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        problem = address_problem(address)
        if problem is not None:
            shown = host if host.strip("[]") == str(address) else f"{host} ({address})"
            raise Refused(
                403,
                f"{shown} is {problem}; sandboxes may only reach public addresses. To reach an internal "
                "service, an operator declares it as a private service in the egress policy",
                "address:not-public",
            )


# ---------------------------------------------------------------------- sandboxes and connections


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class Sandbox:
    """One sandbox's socket: whom it serves, what it may use, what it has open."""

    id: str
    context: SessionContext  # its `worker` (the scope of the token below) is set exactly when `api_token` is
    bucket: TokenBucket  # requests and CONNECTs
    connect_bucket: TokenBucket  # connections opened
    api_token: str | None = None  # the session's real token, swapped for `placeholder` on its worker's own API calls
    placeholder: str | None = None
    listener: socket.socket | None = None  # until the server below serves it
    server: asyncio.AbstractServer | None = None
    conns: set[Conn] = field(default_factory=set)


@dataclass
class Tunnel:
    """An allowed CONNECT: the name is the truth for everything inside."""

    host: str
    port: int
    address: tuple[str, int]
    decision: Decision
    intercept: bool
    at: float
    started: float
    bytes_up_at_start: int
    bytes_down_at_start: int
    revision: int  # of the policies that allowed it; a plain tunnel is decided again when they change
    passthrough: bool = False  # the client's TLS goes through untouched
    record_id: int | None = None  # set once the server was told the tunnel is open (its record is written when it ends)


class Conn:
    """A client connection from a sandbox: its byte counts, timers and what it was allowed."""

    def __init__(self, sandbox: Sandbox, writer: asyncio.StreamWriter) -> None:
        self.sandbox = sandbox
        self.writer = writer
        self.opened = self.last_activity = time.monotonic()
        self.bytes_up = 0
        self.bytes_down = 0
        self.awaiting_head = True
        self.head_bytes = 0
        self.head_started: float | None = None
        self.head_tail = b""  # the last bytes of the head so far (its end may straddle two reads)
        self.head_text = False  # anything but blank lines seen in this head
        self.first_line = b""  # the request line being received, until it is checked
        self.line_checked = False
        self.tunnel: Tunnel | None = None
        self.approved: set[tuple[str, int]] = set()
        self.internal = False  # the request being read is a call to cma.internal (see ConnOptions)
        self.handler: ProxyConnectionHandler | None = None  # mitmproxy's, once it serves the connection
        self.closing_reason: str | None = None
        # The rule of the limit (or policy change) that cut this connection: what was under way when it was cut
        # (a request, a tunnel, a WebSocket) is recorded denied with it.
        self.cut_rule: str | None = None
        # A refusal of the whole connection was recorded (refuse_connection): nothing more of it is.
        self.silenced = False

    def expect_head(self) -> None:
        """A request is done (answered or refused): the next bytes start a new request head."""
        self.awaiting_head, self.head_bytes, self.head_started = True, 0, None
        self.head_tail, self.head_text, self.first_line, self.line_checked = b"", False, b"", False
        self.internal = False

    def abort(self, reason: str, rule: str | None = None) -> None:
        """Cut the connection; `rule` (a limit's) is what the record of whatever was under way names."""
        if self.closing_reason is None:
            self.closing_reason = reason
        if rule is not None and self.cut_rule is None:
            self.cut_rule = rule
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


class CountingReader:
    """The client side of a connection as mitmproxy reads it, counting bytes and bounding request heads."""

    def __init__(self, reader: asyncio.StreamReader, conn: Conn, engine: Engine) -> None:
        self._reader, self._conn, self._engine = reader, conn, engine

    async def read(self, n: int = -1) -> bytes:
        conn = self._conn
        if conn.silenced:
            return b""  # refused as a whole: mitmproxy reads nothing more of it
        data = await self._reader.read(n)
        conn.bytes_up += len(data)
        conn.last_activity = time.monotonic()
        if data and conn.awaiting_head and not (conn.tunnel is not None and conn.tunnel.passthrough):
            self._count_head(data)
            if conn.silenced:
                return b""  # the head that broke the limit never reaches mitmproxy's parser (nor any hook)
        return data

    def _count_head(self, data: bytes) -> None:
        """Bound a request head in bytes (and start its clock) before mitmproxy, which has no limit, buffers it.

        On a plain connection the head's end is found the way mitmproxy's
        parser finds it. Inside a tunnel the bytes are TLS (or a request the
        client sent after its CONNECT): everything read before a parsed head
        counts, with some slack, and `requestheaders` checks the parsed head
        exactly.
        """
        conn, limit = self._conn, self._engine.limits.max_header_bytes
        if conn.head_started is None:
            conn.head_started = conn.last_activity
        if conn.tunnel is not None:
            conn.head_bytes += len(data)
            limit += HEAD_SLACK
        else:
            chunk = data
            if not conn.head_text:
                chunk = data.lstrip(b"\r\n")  # blank lines before a request are skipped by the parser too
                conn.head_bytes += len(data) - len(chunk)
                conn.head_text = bool(chunk)
            if chunk:
                if not conn.line_checked:
                    self._check_request_line(chunk)
                end = HEAD_END.search(conn.head_tail + chunk)
                if end is not None:  # the head ends here; what follows is the body
                    conn.head_bytes += max(0, end.end() - len(conn.head_tail))
                    conn.awaiting_head = False
                else:
                    conn.head_bytes += len(chunk)
                    conn.head_tail = (conn.head_tail + chunk)[-2:]
        if conn.head_bytes > limit:
            self._engine.refuse_connection(conn, 431, "limit:header-size", f"request head larger than {self._engine.limits.max_header_bytes} bytes")

    def _check_request_line(self, data: bytes) -> None:
        """Refuse a request line mitmproxy would refuse (it answers 400 itself, but tells no hook): one record, ours."""
        conn = self._conn
        conn.first_line = (conn.first_line + data)[:8192]
        buffered = conn.first_line
        if buffered.startswith(TLS_HANDSHAKE):
            conn.line_checked = True  # TLS without a CONNECT: mitmproxy reads the ClientHello, and `tls_clienthello` refuses it
            return
        if b"\n" not in buffered:
            return
        conn.line_checked = True
        line = buffered.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            http1_read._read_request_line(line)
        except ValueError:
            self._engine.refuse_connection(conn, 400, "invalid:request-line", "the request line could not be read")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class ConnOptions:
    """mitmproxy's options as the layers of one connection read them: a call to cma.internal is read whole.

    The engine streams every body (`stream_large_bodies`) and mitmproxy can
    stream a request body only into an upstream connection, which a call to
    the server must never open: its body is buffered instead, and bounded by
    `INTERNAL_MAX_BODY` through `body_size_limit` (mitmproxy answers 413 when
    a chunked body outgrows it). mitmproxy has no per-request switch, but a
    plain connection speaks HTTP/1, one request at a time, so the connection's
    flag is that of the request being read; it is set in `requestheaders`,
    before any of the body is read, and cleared when the request is done.
    """

    def __init__(self, opts: options.Options, conn: Conn) -> None:
        self._options, self._conn = opts, conn

    @property
    def stream_large_bodies(self) -> str | None:
        return None if self._conn.internal else self._options.stream_large_bodies

    @property
    def body_size_limit(self) -> str | None:
        return str(INTERNAL_MAX_BODY) if self._conn.internal else self._options.body_size_limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._options, name)


class CountingWriter:
    def __init__(self, writer: asyncio.StreamWriter, conn: Conn) -> None:
        self._writer, self._conn = writer, conn

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # A Unix socket has no addresses; mitmproxy expects a TCP-like client.
        if name == "peername":
            return ("127.0.0.1", 0)
        if name == "sockname":
            return ("127.0.0.1", 3128)
        return self._writer.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        self._conn.bytes_down += len(data)
        self._conn.last_activity = time.monotonic()
        self._writer.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class BoundedWebsocketLayer(mitm_websocket.WebsocketLayer):
    """mitmproxy's WebSocket layer with a bound on each message, which mitmproxy reassembles whole without one.

    A message is relayed only once complete, so its fragments wait in memory:
    after every read the message being reassembled on each side is measured
    (its payload, plus `WS_FRAGMENT_OVERHEAD` per fragment, since a flood of
    tiny fragments costs memory too), and so is every complete message before
    it is relayed. Over `max_websocket_message_bytes`, nothing more of the
    connection is relayed: both ends get a close frame (1009, message too big)
    and are closed, and the engine records the WebSocket as denied.
    Installed in place of mitmproxy's class by the engine (`Engine.__init__`),
    which it asks for the limit and tells about the cut.
    """

    engine: Engine | None = None

    def __init__(self, context: Any, flow: http.HTTPFlow) -> None:
        super().__init__(context, flow)
        self._measured: dict[int, tuple[list[bytes], int, int]] = {}  # per side: (its fragment list, fragments counted, their cost)

    def relay_messages(self, event: mitm_events.Event) -> mitm_layer.CommandGenerator[None]:
        engine = self.engine
        if engine is None:  # pragma: no cover - the engine installs this class
            raise RuntimeError("BoundedWebsocketLayer without an engine")
        limit = engine.limits.max_websocket_message_bytes
        relay = super().relay_messages(event)
        answer: Any = None
        while True:
            try:
                command = relay.send(answer)
            except StopIteration:
                break
            if isinstance(command, mitm_websocket.WebsocketMessageHook):
                assert self.flow.websocket is not None
                size = len(self.flow.websocket.messages[-1].content)
                if size > limit:
                    relay.close()
                    yield from self._cut(engine, size)
                    return
            answer = yield command
        for ws in (self.client_ws, self.server_ws):
            size = self._pending_size(ws)
            if size > limit:
                yield from self._cut(engine, size)
                return

    def _pending_size(self, ws: mitm_websocket.WebsocketConnection) -> int:
        """What the message being reassembled on this side costs, counted incrementally (fragments only grow in place)."""
        fragments = ws.frame_buf
        seen = self._measured.get(id(ws))
        counted, cost = (seen[1], seen[2]) if seen is not None and seen[0] is fragments else (0, 0)
        for fragment in fragments[counted:-1]:
            cost += len(fragment) + WS_FRAGMENT_OVERHEAD
        self._measured[id(ws)] = (fragments, len(fragments) - 1, cost)
        return cost + len(fragments[-1]) + WS_FRAGMENT_OVERHEAD

    def _cut(self, engine: Engine, size: int) -> mitm_layer.CommandGenerator[None]:
        engine.cut_websocket(self.flow, size)
        for ws in (self.client_ws, self.server_ws):
            ws.frame_buf = [b""]
            if ws.state is mitm_websocket.ConnectionState.OPEN:
                yield ws.send2(WsCloseConnection(code=1009, reason="message too big"))
            yield mitm_commands.CloseConnection(ws.conn)
        self._handle_event = self.done


def fail_closed(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `Refused` into an answer, and any other error into a refusal.

    mitmproxy would log a hook's exception and let the flow go on: fail open.
    """

    @functools.wraps(hook)
    async def guarded(self: Engine, data: Any) -> None:
        try:
            await hook(self, data)
        except Refused as refused:
            self.refuse(data, refused)
        except Exception:
            log.exception("egress engine: %s failed; refusing", hook.__name__)
            self.refuse(data, Refused(502, "the egress proxy could not decide on this request, so it was refused", f"error:{hook.__name__}"))

    return guarded


# ---------------------------------------------------------------------- the engine


class Engine:
    """mitmproxy's master plus this addon: decisions, pins, injections, limits and log records."""

    def __init__(self, control: socket.socket, settings: dict[str, Any]) -> None:
        self.control = control
        self.outbox = channel.Outbox(control)
        self.inbox = channel.Inbox()
        self.limits = Limits(**settings["limits"])
        self.internal_timeout = float(settings.get("internal_timeout") or 300.0)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}  # internal calls awaiting the server, by id
        self._last_call_id = 0
        self._control_open = True
        data_dir = Path(settings["data_dir"])
        self.store = Store.read_only(data_dir / "cma.sqlite3")
        try:
            middleware, setup_error = load_middleware(settings.get("middleware", [])), None
        except PolicyError as exc:
            middleware, setup_error = [], str(exc)
        self.resolver = PolicyResolver(PolicyStore(self.store), api_base_url=settings["api_base_url"],
                                       middleware=middleware, setup_error=setup_error)
        self.secrets = SecretStore(data_dir / "secrets")
        self.addresses = Resolver()
        self.sandboxes: dict[str, Sandbox] = {}
        self.conns: dict[str, Conn] = {}  # by mitmproxy client id
        self._pending: list[dict[str, Any]] = []  # log records of this event-loop turn
        self._last_record_id = 0  # of the tunnels and WebSockets reported open (see `_report_open`)
        self._mode = mode_specs.ProxyMode.parse("regular")
        # mitmproxy's own idle watchdog closes connections silently; ours (the sweeper) records what it cuts, so it acts first.
        mitm_server.TCP_TIMEOUT = int(self.limits.idle_timeout + 2 * SWEEP_SECONDS) + 1
        BoundedWebsocketLayer.engine = self
        mitm_websocket.WebsocketLayer = BoundedWebsocketLayer  # type: ignore[misc]  # mitmproxy's HTTP layer makes it by this name
        opts = options.Options()
        self.master = Master(opts)
        self.proxyserver = proxyserver.Proxyserver()
        self.master.addons.add(core.Core(), self.proxyserver, next_layer.NextLayer(), self, tlsconfig.TlsConfig(),
                               disable_h2c.DisableH2C())
        opts.update(
            mode=[],  # no listening server of mitmproxy's own: the sockets come from the control channel
            confdir=settings["confdir"],
            connection_strategy="eager",
            upstream_cert=False,
            http3=False,
            websocket=True,
            rawtcp=True,
            ssl_insecure=False,
            ssl_verify_upstream_trusted_ca=settings.get("upstream_ca") or None,
            stream_large_bodies="1",  # stream every body: nothing is buffered, bytes are counted
            body_size_limit=str(self.limits.max_body_bytes),
            validate_inbound_headers=True,
        )

    # ------------------------------------------------------------------ control channel

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._on_control)
        sweeper = asyncio.ensure_future(self._sweep_forever())
        self._send({"op": "ready", "ca_cert": str(Path(self.master.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"),
                    "setup_error": self.resolver.setup_error})
        try:
            await self.master.run()
        finally:
            sweeper.cancel()
            self._send_pending()

    def _on_control(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, channel.MESSAGE_BYTES, 4)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                log.info("egress engine: the server closed the control channel; exiting")
                asyncio.get_running_loop().remove_reader(self.control.fileno())
                self._control_open = False
                for future in self._calls.values():  # no answer can come any more
                    if not future.done():
                        future.set_exception(ConnectionError("the control channel closed"))
                self.master.shutdown()
                return
            try:
                message = self.inbox.feed(data)
                if message is None:
                    continue  # a fragment; the rest of the message follows
                self._handle_control(json.loads(message), fds)
            except Exception:
                log.exception("egress engine: bad control message")
                for fd in fds:
                    os.close(fd)

    def _handle_control(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "attach":
            spec = message["sandbox"]
            listener = socket.socket(fileno=fds[0])
            self._detach(spec["id"])
            # The token is swapped only within its worker's scope: without a complete scope there is no token (fail closed).
            worker = WorkerScope.from_json(spec["worker"]) if spec.get("api_token") and spec.get("placeholder") else None
            sandbox = Sandbox(
                id=spec["id"],
                context=SessionContext(spec.get("session_id"), spec.get("agent_id"), dict(spec.get("metadata") or {}), worker),
                bucket=TokenBucket(self.limits.requests_per_second, self.limits.request_burst),
                connect_bucket=TokenBucket(self.limits.requests_per_second, self.limits.request_burst),
                api_token=spec.get("api_token") if worker is not None else None,
                placeholder=spec.get("placeholder") if worker is not None else None,
            )
            sandbox.listener = listener
            self.sandboxes[sandbox.id] = sandbox
            asyncio.ensure_future(self._listen(sandbox))
        elif op == "detach":
            self._detach(message["id"])
        elif op == "internal_reply":
            future = self._calls.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message)  # an unknown id: the call timed out or its connection is gone
        else:
            log.warning("egress engine: unknown control op %r", op)

    async def _listen(self, sandbox: Sandbox) -> None:
        listener, sandbox.listener = sandbox.listener, None
        if listener is None or self.sandboxes.get(sandbox.id) is not sandbox:
            return  # detached before it was served (the detach closed the listener)
        listener.setblocking(False)
        sandbox.server = await asyncio.start_unix_server(functools.partial(self._serve, sandbox), sock=listener)

    def _detach(self, sandbox_id: str) -> None:
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return
        if sandbox.listener is not None:
            sandbox.listener.close()
            sandbox.listener = None
        if sandbox.server is not None:
            sandbox.server.close()
        for conn in list(sandbox.conns):
            conn.abort("sandbox detached", rule="sandbox:detached")

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.outbox.send(message)
        except OSError:  # the server is gone; the engine exits when it reads the channel's end
            log.warning("egress engine: could not send %s to the server", message.get("op"))

    async def _sweep_forever(self) -> None:
        """Cut connections that idle, dawdle over a request head, live too long, or lost their policy."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            try:
                self._redecide_tunnels(self.store.egress_revision())
            except Exception:
                log.exception("egress engine: could not re-decide open tunnels")
            for conn in list(self.conns.values()):
                if now - conn.opened > self.limits.max_connection_seconds:
                    conn.abort("connection time limit", rule="limit:connection-time")
                elif now - conn.last_activity > self.limits.idle_timeout:
                    conn.abort("idle", rule="limit:idle")
                elif conn.awaiting_head and conn.head_started is not None and now - conn.head_started > self.limits.header_timeout:
                    self.refuse_connection(conn, 408, "limit:header-time",
                                           f"request head not complete within {self.limits.header_timeout:g} s")

    def _redecide_tunnels(self, revision: int) -> None:
        """A plain tunnel carries no requests to decide, so a policy change is applied to the tunnel itself:
        one that would now be denied, or would now have to be opened, is closed."""
        for conn in list(self.conns.values()):
            tunnel = conn.tunnel
            if tunnel is None or not tunnel.passthrough or tunnel.revision == revision:
                continue
            effective = self.resolver.resolve(conn.sandbox.context)
            decision = effective.decide("CONNECT", "https", tunnel.host, tunnel.port, None)
            if decision.allowed and not decision.injections and not effective.needs_inspection(tunnel.host, tunnel.port):
                tunnel.revision = revision
                continue
            # The tunnel's one record (written as it ends) is denied, with the rule that now refuses it.
            conn.abort("the egress policy changed", rule=decision.rule if not decision.allowed else "policy:changed:needs-inspection")

    # ------------------------------------------------------------------ connections

    async def _serve(self, sandbox: Sandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(sandbox, writer)
        limit = None
        if len(sandbox.conns) >= self.limits.connections_per_sandbox:
            limit = f"this sandbox already has {len(sandbox.conns)} connections open (the limit)"
        elif not sandbox.connect_bucket.take():
            limit = "this sandbox opens connections faster than its rate; reuse them (keep-alive)"
        elif len(self.conns) >= self.limits.connections_total:
            limit = f"the egress proxy has {len(self.conns)} connections open (the limit)"
        if limit is not None or self.sandboxes.get(sandbox.id) is not sandbox:
            reason = limit or "this sandbox is no longer attached"
            # Refused before a byte is read: nothing of the request is known.
            self.record(sandbox, method="-", scheme="tcp", host="-", decision="denied", status=429, rule="limit:connections")
            writer.write(_status_bytes(429, reason, "limit:connections"))
            writer.close()
            return
        handler = ProxyConnectionHandler(self.master, CountingReader(reader, conn, self), CountingWriter(writer, conn),
                                         ConnOptions(self.master.options, conn), self._mode)
        handler.layer = HttpProxy(handler.layer.context)
        conn.handler = handler
        client = handler.client
        self.conns[client.id] = conn
        sandbox.conns.add(conn)
        try:
            with self.proxyserver.register_connection(client.id, handler):
                await handler.handle_client()
        finally:
            self.conns.pop(client.id, None)
            sandbox.conns.discard(conn)
            self._end_tunnel(conn)

    def _passthrough(self, conn: Conn, tunnel: Tunnel) -> None:
        """The tunnel is a byte pipe from here on: tell the server it is open (its one record is written as it ends)."""
        tunnel.passthrough = True
        conn.awaiting_head = False
        tunnel.record_id = self._report_open(conn.sandbox, method="CONNECT", scheme="https", host=tunnel.host, port=tunnel.port,
                                             decision="allowed", rule=tunnel.decision.rule, at=tunnel.at)

    def _end_tunnel(self, conn: Conn) -> None:
        """A plain tunnel's one record: allowed, or denied with the limit (or policy change) that cut it."""
        tunnel = conn.tunnel
        if tunnel is None or not tunnel.passthrough:
            return
        conn.tunnel = None
        cut = conn.cut_rule
        self.record(conn.sandbox, method="CONNECT", scheme="https", host=tunnel.host, port=tunnel.port,
                    decision="denied" if cut else "allowed", status=None if cut else 200, rule=cut or tunnel.decision.rule, at=tunnel.at,
                    bytes_up=conn.bytes_up - tunnel.bytes_up_at_start, bytes_down=conn.bytes_down - tunnel.bytes_down_at_start,
                    duration_ms=(time.monotonic() - tunnel.started) * 1000, record_id=tunnel.record_id)

    def refuse_connection(self, conn: Conn, status: int, rule: str, reason: str) -> None:
        """Answer a connection whose request broke a limit before mitmproxy parsed it, record that once, then cut it.

        The record names what could be read: the request line of a plain
        request, the tunnel's destination inside a tunnel. Nothing more of the
        connection reaches mitmproxy (`CountingReader`) or the log (`silenced`).
        """
        if conn.closing_reason is not None or conn.silenced:
            return
        method, scheme, host, port, path = _readable_target(conn)
        self.record(conn.sandbox, method=method, scheme=scheme, host=host, port=port, path=path, decision="denied", status=status,
                    rule=rule, at=time.time(), bytes_up=conn.head_bytes)
        conn.silenced = True
        try:
            conn.writer.write(_status_bytes(status, reason, rule))
        except Exception:
            pass
        conn.closing_reason = reason
        conn.writer.close()

    # ------------------------------------------------------------------ mitmproxy hooks

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        conn = self._conn(flow)
        started, at = time.monotonic(), time.time()
        flow.metadata["cma"] = {"started": started, "at": at, "host": flow.request.host, "port": flow.request.port, "scheme": "https"}
        if not conn.sandbox.bucket.take():
            raise Refused(429, "this sandbox is over its request rate; slow down", "limit:rate")
        if _is_internal(flow.request.host):
            # The route is answered by the proxy itself, in plain http; a tunnel would have to go somewhere.
            flow.metadata["cma"]["host"] = INTERNAL_HOST
            raise Refused(403, INTERNAL_USE, "internal:http-only")
        revision = self.store.egress_revision()
        effective = self.resolver.resolve(conn.sandbox.context)
        decision = effective.decide("CONNECT", "https", flow.request.host, flow.request.port, None)
        if not decision.allowed:
            raise Refused(decision.status or 403, decision.reason, decision.rule)
        host, port = normalize_host(flow.request.host), flow.request.port
        flow.metadata["cma"]["host"] = host
        address = await self._destination(host, port, decision)
        intercept = (
            bool(decision.injections)
            or effective.needs_inspection(host, port)
            or decision.rule == SYSTEM_API_RULE  # a worker's tunnel to the API: each call inside is decided (and the token swapped)
        )
        conn.tunnel = Tunnel(host, port, address, decision, intercept, at, started, conn.bytes_up, conn.bytes_down, revision)
        conn.expect_head()  # what comes through the tunnel is bounded like any request head until it is known
        conn.approved.add(address)
        flow.request.host, flow.request.port = address
        flow.metadata["cma"]["logged"] = True  # the tunnel (plain) or each request inside (intercepted) is logged

    def next_layer(self, nextlayer: Any) -> None:
        """A tunnel that speaks neither TLS nor HTTP: a plain byte pipe, or closed if a rule must see inside.

        mitmproxy's own choice (it runs first) would keep every chunk of such
        a tunnel in memory until it closes. Bytes mitmproxy already buffered
        go to the layer chosen here, so a refusal must be a layer that drops them.
        """
        layer = nextlayer.layer
        if not isinstance(layer, mitm_layers.TCPLayer) or layer.flow is None:
            return
        conn = self.conns.get(nextlayer.context.client.id)
        tunnel = conn.tunnel if conn is not None else None
        if conn is None or tunnel is None or tunnel.intercept:
            nextlayer.layer = ClosedLayer(nextlayer.context)
            if conn is not None:
                host, port = (tunnel.host, tunnel.port) if tunnel is not None else ("-", None)
                self.record(conn.sandbox, conn=conn, method="CONNECT" if tunnel else "-", scheme="https" if tunnel else "http", host=host,
                            port=port, decision="denied", status=400, rule="invalid:not-http")
                conn.tunnel = None
                conn.abort("neither TLS nor HTTP where the proxy must read the requests")
            return
        self._passthrough(conn, tunnel)
        nextlayer.layer = mitm_layers.TCPLayer(nextlayer.context, ignore=True)

    @fail_closed
    async def tls_clienthello(self, data: ClientHelloData) -> None:
        conn = self.conns.get(data.context.client.id)
        if conn is None:
            raise RuntimeError("TLS on a connection this engine did not accept")
        tunnel = conn.tunnel
        if tunnel is None:  # TLS spoken straight to the proxy port: there is no destination to check
            self.record(conn.sandbox, conn=conn, method="-", scheme="https", host=data.client_hello.sni or "-", decision="denied",
                        status=400, rule="invalid:tls-without-connect")
            conn.abort("TLS without a CONNECT")
            return
        sni = data.client_hello.sni
        if sni:
            try:
                same = normalize_host(sni) == tunnel.host
            except PolicyError:
                same = False
            if not same:
                data.context.server.sni = tunnel.host  # in case mitmproxy reaches the server before the abort lands
                self.record(conn.sandbox, conn=conn, method="CONNECT", scheme="https", host=tunnel.host, port=tunnel.port,
                            decision="denied", status=421, rule="invalid:sni-mismatch")
                conn.tunnel = None
                conn.abort("TLS server name differs from the CONNECT target")
                return
        if tunnel.intercept:
            if not _is_ip(tunnel.host):
                data.context.server.sni = tunnel.host
        else:
            data.ignore_connection = True
            self._passthrough(conn, tunnel)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.error is not None:
            return  # mitmproxy refused it (e.g. a smuggling shape); the error hook logs it
        conn = self._conn(flow)
        conn.awaiting_head, conn.head_bytes, conn.head_started = False, 0, None
        request = flow.request
        upgrade = bool(request.headers.get("upgrade"))
        meta: dict[str, Any] = {"started": time.monotonic(), "at": time.time(), "scheme": "http", "host": request.host, "port": request.port, "up": 0, "down": 0}
        flow.metadata["cma"] = meta
        if not conn.sandbox.bucket.take():
            raise Refused(429, "this sandbox is over its request rate; slow down", "limit:rate")
        tunnel = conn.tunnel
        if tunnel is None and _is_internal(request.host):
            self._internal_headers(flow, conn, meta, upgrade)
            return
        if tunnel is not None:
            if _head_size(request) > self.limits.max_header_bytes:
                raise Refused(431, f"request head larger than {self.limits.max_header_bytes} bytes", "limit:header-size")
            scheme = "https" if flow.client_conn.tls_established else "http"
            host, port = tunnel.host, tunnel.port
            meta.update(scheme=scheme, host=host, port=port)
            if not _authority_names(request.host_header, host, port, scheme):
                raise Refused(421, f"the Host header {request.host_header!r} differs from the CONNECT target {_hostport(host, port)}; "
                                   "one connection reaches one host", "invalid:host-mismatch")
        else:
            if request.scheme != "http":
                raise Refused(400, "send https requests through CONNECT (set HTTPS_PROXY), not as an absolute https:// URI", "invalid:scheme")
            try:
                host, port = normalize_host(request.host), request.port
            except PolicyError as exc:
                raise Refused(400, f"refused: {exc}", "invalid:request") from None
            scheme = "http"
            meta.update(host=host, port=port)
            if request.host_header is not None and not _authority_names(request.host_header, host, port, scheme):
                raise Refused(421, f"the Host header {request.host_header!r} differs from the URI's host {_hostport(host, port)}",
                              "invalid:host-mismatch")
        sandbox = conn.sandbox
        effective = self.resolver.resolve(sandbox.context)
        decision = effective.decide(request.method, scheme, host, port, request.path, websocket=upgrade)
        if not decision.allowed:
            raise Refused(decision.status or 403, decision.reason, decision.rule)
        label = "allowed"
        if decision.rule == SYSTEM_API_RULE:
            # One of the worker's own calls: the only place the session's token is spent.
            if sandbox.api_token is not None and request.headers.get("authorization") == f"Bearer {sandbox.placeholder}":
                request.headers["Authorization"] = f"Bearer {sandbox.api_token}"
                label = "injected"
            worker = sandbox.context.worker
            if worker is not None and self.resolver.system is not None and worker.is_session_retrieve(
                    request.method, self.resolver.system.api_path(request.path)):
                meta["learn"] = True  # its answer names the session's skills and memory stores
        elif self._names_api(sandbox, scheme, host, port) and _carries(request, sandbox.placeholder):
            # A policy allows this call to the API host, but the worker never makes it: its placeholder says the sandbox
            # tries to act as the worker elsewhere (another session, the work queue, …). Nothing is swapped; it is refused.
            raise Refused(403, f"{request.method} {request.path.split('?', 1)[0][:200]} is not a call this sandbox's worker makes for its "
                               "own work item; its token is not spent on it", WORKER_SCOPE_RULE)
        for injection in decision.injections:
            secret = self.secrets.get(injection.secret_name)
            if secret is None:
                raise Refused(503, f"the secret {injection.secret_name} that the policy injects into {injection.header} is not set; "
                                   "an operator sets it (jupyter cma secrets) — nothing was sent", f"{decision.rule}:secret-missing")
            request.headers[injection.header] = injection.value(secret).reveal()  # replaces any value the client sent
            label = "injected"
        if tunnel is not None:
            address = tunnel.address
        else:
            address = await self._destination(host, port, decision)
            conn.approved.add(address)
        request.host, request.port = address
        request.host_header = _hostport(host, port, scheme)
        meta.update(rule=decision.rule, decision=label)
        request.stream = functools.partial(_count, meta, "up", conn, self.limits.max_body_bytes)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        """A call to cma.internal, its body read: the server answers it. Every other request passes untouched."""
        meta = flow.metadata.get("cma")
        if meta is None or not meta.get("internal") or flow.response is not None or flow.error is not None:
            return
        meta["body_read"] = True  # a refusal from here on is an ordinary answer (see _refuse)
        conn = self._conn(flow)
        body = flow.request.raw_content or b""
        meta["up"] = len(body)
        awake = asyncio.ensure_future(self._keep_awake(conn))
        try:
            status, answer, content_type = await self._call_server(conn.sandbox, flow.request.method, flow.request.path, body)
        finally:
            awake.cancel()
        meta["down"] = len(answer)
        flow.response = http.Response.make(status, answer, {"Content-Type": content_type, "Cache-Control": "no-store"})

    @fail_closed
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("cma")
        if meta is not None and meta.get("internal"):
            return  # the engine's own answer, counted when it was made
        conn = self.conns.get(flow.client_conn.id)
        if flow.response is not None and flow.response.status_code == 101 and flow.request.headers.get("upgrade", "").lower() != "websocket":
            # mitmproxy would relay such a connection keeping every chunk in memory; only WebSockets are upgrades here.
            if meta is not None:
                meta.update(decision="denied", rule="invalid:upgrade", refused=502)
            flow.kill()
            return
        if meta is not None and flow.response is not None and conn is not None:
            count = functools.partial(_count, meta, "down", conn, self.limits.max_body_bytes)
            if meta.get("learn") and flow.response.status_code == 200:
                flow.response.stream = _Collector(count, functools.partial(self._learn, conn.sandbox, flow.response.headers.get("content-encoding")))
            else:
                flow.response.stream = count

    def _learn(self, sandbox: Sandbox, content_encoding: str | None, body: bytes | None) -> None:
        """The API answered the worker's retrieve of its session: its skills and memory stores join the worker's scope.

        Called as the answer's last byte is relayed, before the worker can ask
        for a skill. The server keeps the learned scope with the attachment, so
        a restarted engine has it too.
        """
        worker = sandbox.context.worker
        if worker is None or body is None:
            return  # larger than WORKER_ANSWER_MAX: nothing is learned, skills and memory stores stay out of scope
        try:
            session = json.loads(mitm_encoding.decode(body, content_encoding) if content_encoding else body)
        except (ValueError, TypeError):
            log.warning("egress engine: the API's answer about session %s could not be read; its skills and memory stores stay "
                        "out of its worker's scope", worker.session_id)
            return
        learned = worker.learn(session)
        if learned != worker:
            sandbox.context = dataclasses.replace(sandbox.context, worker=learned)
            self._send({"op": "worker_scope", "sandbox": sandbox.id, "worker": learned.to_json()})

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        # mitmproxy keeps every message of a WebSocket for the flow's life; nothing here reads them again.
        if flow.websocket is not None and len(flow.websocket.messages) > 1:
            del flow.websocket.messages[:-1]

    @fail_closed
    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A WebSocket's one record, written as it ends: allowed, or denied with the limit that cut it."""
        meta = flow.metadata.get("cma")
        conn = self.conns.get(flow.client_conn.id)
        if meta is not None and conn is not None:
            _apply_cut(meta, conn)
        self._finish(flow, 101)

    def cut_websocket(self, flow: http.HTTPFlow, size: int) -> None:
        """`BoundedWebsocketLayer` cut a WebSocket for a message over the limit: its one record, denied."""
        meta = flow.metadata.get("cma")
        conn = self.conns.get(flow.client_conn.id)
        if meta is None or conn is None:
            return
        log.info("egress engine: a WebSocket message of session %s reached %d bytes (limit %d); the connection is closed",
                 conn.sandbox.context.session_id, size, self.limits.max_websocket_message_bytes)
        conn.cut_rule = conn.cut_rule or "limit:websocket-message"
        meta.update(decision="denied", rule="limit:websocket-message")
        self._finish(flow, 101)

    @fail_closed
    async def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """An allowed CONNECT whose upstream could not be reached: log it, and say so without naming the address."""
        conn = self.conns.get(flow.client_conn.id)
        if conn is None or conn.tunnel is None:
            return
        tunnel, conn.tunnel = conn.tunnel, None
        self.record(conn.sandbox, conn=conn, method="CONNECT", scheme="https", host=tunnel.host, port=tunnel.port, decision="allowed",
                    status=502, rule=tunnel.decision.rule, at=tunnel.at, duration_ms=(time.monotonic() - tunnel.started) * 1000)
        if flow.response is not None:
            flow.response.text = f"jupyter-cma egress: {_hostport(tunnel.host, tunnel.port)} could not be reached\n"

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("cma")
        conn = self.conns.get(flow.client_conn.id)
        if flow.response is not None and flow.response.status_code == 101 and meta is not None and conn is not None and not meta.get("internal"):
            if flow.websocket is None:
                # Not a WebSocket mitmproxy accepts (no or another Sec-WebSocket-Version): it would relay the connection as
                # raw TCP, keeping every chunk in memory.
                raise Refused(502, "an upgrade to anything but a WebSocket (version 13) is not relayed", "invalid:upgrade")
            # A WebSocket: one record when it ends (`websocket_end`, `cut_websocket`), with the bytes of its whole life.
            meta.update(ws_up=conn.bytes_up, ws_down=conn.bytes_down)
            meta["record_id"] = self._report_open(conn.sandbox, method=flow.request.method, scheme=meta["scheme"], host=meta["host"],
                                                  port=meta["port"], path=flow.request.path, decision=meta["decision"], rule=meta["rule"],
                                                  at=meta["at"])
            return
        self._finish(flow, flow.response.status_code if flow.response is not None else None)

    @fail_closed
    async def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("cma")
        if meta is None or "rule" not in meta:
            # Refused before any decision: a protocol error mitmproxy caught (smuggling shapes, bad framing).
            conn = self.conns.get(flow.client_conn.id)
            if conn is not None and not (meta or {}).get("logged"):
                request = flow.request
                self.record(conn.sandbox, conn=conn, method=request.method, scheme=request.scheme or "http", host=request.host or "-",
                            port=request.port, path=request.path, decision="denied", status=400, rule="invalid:protocol")
                flow.metadata.setdefault("cma", {})["logged"] = True
                conn.expect_head()
            return
        message = flow.error.msg if flow.error is not None else ""
        if "refused" not in meta and "body_size_limit" in message:
            # mitmproxy refused a body over the limit (a declared length; for a call to cma.internal, a chunked body too)
            # and answered 413 (a request) or 502 (a response) itself.
            meta.update(decision="denied", rule="limit:body-size", refused=413 if message.startswith("Request") else 502)
        conn = self.conns.get(flow.client_conn.id)
        if "refused" in meta:
            status = meta["refused"]
        elif conn is not None and _apply_cut(meta, conn):  # cut by a limit: the status the sandbox got, if any
            status = flow.response.status_code if flow.response is not None else None
        else:  # cut short upstream
            status = flow.response.status_code if flow.response is not None else 502
        self._finish(flow, status)

    @fail_closed
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        conn = self.conns.get(data.client.id)
        address = data.server.address
        # A call to cma.internal is never approved an address; while one is being read its connection opens nothing at all.
        if conn is None or conn.internal or address is None or (str(address[0]), int(address[1])) not in conn.approved:
            data.server.error = "refused by the egress proxy: no decision approved this address"
            return
        tunnel = conn.tunnel
        if tunnel is not None and not _is_ip(tunnel.host):
            data.server.sni = tunnel.host  # the CONNECT name, never the client's choice

    # ------------------------------------------------------------------ the internal route

    def _internal_headers(self, flow: http.HTTPFlow, conn: Conn, meta: dict[str, Any], upgrade: bool) -> None:
        """Check a call to cma.internal by its head; `request` answers it once the body is read.

        No policy applies: the name is never a destination. What the request
        says about who sends it (headers, path, body) is passed on as data
        only; the sandbox is the socket's.
        """
        request = flow.request
        meta.update(host=INTERNAL_HOST, port=request.port, scheme=request.scheme or "http")
        if request.scheme != "http" or request.port != 80:
            raise Refused(403, INTERNAL_USE, "internal:http-only")
        if request.host_header is not None and not _authority_names(request.host_header, INTERNAL_HOST, 80, "http"):
            raise Refused(421, f"the Host header {request.host_header!r} differs from the URI's host {INTERNAL_HOST}", "invalid:host-mismatch")
        if request.method not in INTERNAL_METHODS:
            raise Refused(405, f"{INTERNAL_HOST} answers GET and POST only", "internal:method")
        if upgrade:
            raise Refused(400, f"{INTERNAL_HOST} does not upgrade connections", "internal:upgrade")
        try:
            length = int(request.headers.get("content-length", "0") or 0)  # validated by mitmproxy (one, a number)
        except ValueError:
            raise Refused(400, "refused: an unreadable Content-Length", "invalid:request") from None
        if length > INTERNAL_MAX_BODY:
            raise Refused(413, f"a call's body may be at most {INTERNAL_MAX_BODY} bytes", "limit:body-size")
        meta.update(internal=True, rule=INTERNAL_RULE, decision="allowed")
        conn.internal = True  # read the body whole, bounded (ConnOptions)
        request.stream = False  # mitmproxy marked it for streaming before this hook

    async def _keep_awake(self, conn: Conn) -> None:
        """A call waiting for the server is not an idle connection: internal_timeout bounds it, not idle_timeout.

        Both idle clocks are fed while it waits: the sweeper's, and mitmproxy's
        watchdog, which a hook disarms only for its *next* sleep, so one already
        under way would close the connection (silently) during a long call.
        """
        tick = max(0.05, min(SWEEP_SECONDS, self.limits.idle_timeout / 4))
        while True:
            conn.last_activity = time.monotonic()
            if conn.handler is not None:
                conn.handler.timeout_watchdog.register_activity()
            await asyncio.sleep(tick)

    async def _call_server(self, sandbox: Sandbox, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """The server's answer (status, body, content type) to a sandbox's call, or why there is none (503, 504).

        The sandbox id is the only identity sent: the server looks the session
        up in its own attachments. Ids are this engine's own; a reply to a
        call that is no longer waited for is dropped.
        """
        if not self._control_open:
            return _internal_error(503, "the server cannot be reached (the egress engine is restarting); try again")
        self._last_call_id += 1
        call_id = self._last_call_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self.outbox.send({"op": "internal", "id": call_id, "sandbox": sandbox.id, "method": method, "path": path,
                              "body": base64.b64encode(body).decode("ascii")})
            reply = await asyncio.wait_for(future, self.internal_timeout)
        except asyncio.TimeoutError:
            return _internal_error(504, f"the server did not answer within {self.internal_timeout:g} s")
        except OSError:  # ConnectionError too: the channel closed while the call waited
            return _internal_error(503, "the server cannot be reached (the egress engine is restarting); try again")
        finally:
            self._calls.pop(call_id, None)
        status = reply.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"the server answered an internal call with status {status!r}")
        content_type = str(reply.get("content_type") or "application/octet-stream")
        if any(ord(c) < 32 or ord(c) == 127 for c in content_type):
            raise ValueError("the server answered an internal call with an unusable content type")
        return status, base64.b64decode(reply.get("body") or "", validate=True), content_type

    # ------------------------------------------------------------------ decisions to actions

    async def _destination(self, host: str, port: int, decision: Decision) -> tuple[str, int]:
        service = decision.private_service
        if service is not None:
            return (service.target_host, service.target_port)
        # The API host is the operator's own setting (api_base_url), like a private service.
        operator_named = decision.rule == SYSTEM_API_RULE
        return (await self.addresses.pin(host, port, check=not operator_named), port)

    def _conn(self, flow: http.HTTPFlow) -> Conn:
        conn = self.conns.get(flow.client_conn.id)
        if conn is None:
            raise RuntimeError("a flow from a connection this engine did not accept")
        return conn

    def _finish(self, flow: http.HTTPFlow, status: int | None) -> None:
        """A decided request's one record (once; `meta` says how it was decided, or what cut it)."""
        meta = flow.metadata.get("cma")
        conn = self.conns.get(flow.client_conn.id)
        if meta is None or meta.get("logged") or conn is None or "rule" not in meta:
            return
        meta["logged"] = True
        request = flow.request
        bytes_up = _head_size(request) + meta["up"]
        bytes_down = (_head_size(flow.response) if flow.response is not None else 0) + meta["down"]
        websocket = "ws_up" in meta
        if websocket:  # everything after the upgrade
            bytes_up += conn.bytes_up - meta["ws_up"]
            bytes_down += conn.bytes_down - meta["ws_down"]
        self.record(conn.sandbox, conn=conn, method=request.method, scheme=meta["scheme"], host=meta["host"], port=meta["port"],
                    path=request.path, decision=meta["decision"], rule=meta["rule"], status=status, at=meta["at"],
                    bytes_up=bytes_up, bytes_down=bytes_down, duration_ms=(time.monotonic() - meta["started"]) * 1000,
                    record_id=meta.get("record_id"))
        if not websocket:  # after a WebSocket the connection carries no more requests: nothing on it is a request head
            conn.expect_head()

    def refuse(self, data: Any, refused: Refused) -> None:
        if isinstance(data, http.HTTPFlow):
            self._refuse(data, refused)
        elif isinstance(data, server_hooks.ServerConnectionHookData):
            data.server.error = f"refused by the egress proxy: {refused.reason}"
        elif isinstance(data, ClientHelloData):
            conn = self.conns.get(data.context.client.id)
            if conn is not None:
                conn.abort(refused.reason)

    def _refuse(self, flow: http.HTTPFlow, refused: Refused) -> None:
        meta = flow.metadata.setdefault("cma", {})
        if meta.get("logged"):
            return
        meta["logged"] = True
        conn = self.conns.get(flow.client_conn.id)
        headers = flow.request.headers
        headers.pop("expect", None)  # no "100 Continue" for a refused request
        body_coming = not meta.get("body_read") and (
            bool(flow.request.stream) or "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0"))
        if body_coming and flow.response is None:
            # mitmproxy would read (or stream) the whole body before answering, and cannot answer
            # a streamed one at all: the answer goes out now and the connection closes
            # (HTTP/2: the stream is reset).
            if conn is not None and not flow.request.is_http2:
                conn.writer.write(_status_bytes(refused.status, refused.reason, refused.rule))
            flow.kill()
        else:
            body = f"jupyter-cma egress: {refused.reason}\n(rule: {refused.rule})\n"
            flow.response = http.Response.make(refused.status, body, {**ERROR_HEADERS, "X-CMA-Egress-Rule": refused.rule})
            flow.response.reason = HTTP_REASONS.get(refused.status, "Refused")
        if conn is None:
            return
        request = flow.request
        self.record(conn.sandbox, conn=conn, method=request.method, scheme=meta.get("scheme", "http"), host=str(meta.get("host") or request.host or "-"),
                    port=meta.get("port", request.port), path=None if request.method == "CONNECT" else request.path,
                    decision="denied", status=refused.status, rule=refused.rule, at=meta.get("at"),
                    duration_ms=(time.monotonic() - meta["started"]) * 1000 if "started" in meta else None)
        conn.expect_head()

    def record(self, sandbox: Sandbox, *, method: str, scheme: str, host: str, decision: str, rule: str,
               port: int | None = None, path: str | None = None, status: int | None = None, at: float | None = None,
               bytes_up: int = 0, bytes_down: int = 0, duration_ms: float | None = None, conn: Conn | None = None,
               record_id: int | None = None) -> None:
        """Queue one log record for the server (which cleans the path and stores it).

        Records go out at the end of the current event-loop turn, all of that
        turn's in one message: a record is never held longer, so one still
        queued when the engine is killed is rare, and a message already sent
        is read by the server even after the engine is gone. Nothing is
        recorded for a connection refused as a whole (`conn.silenced`): its
        one record is written. `record_id`: the record closes what
        `_report_open` announced.
        """
        if conn is not None and conn.silenced and record_id is None:
            return
        row = {
            "at": at or time.time(), "session_id": sandbox.context.session_id, "agent_id": sandbox.context.agent_id,
            "method": method[:16], "scheme": scheme, "host": host[:255], "port": port, "path": clean_path(path), "status": status,
            "bytes_up": bytes_up, "bytes_down": bytes_down, "duration_ms": duration_ms, "decision": decision, "rule": rule,
        }
        if record_id is not None:
            row["record_id"] = record_id
        self._queue(row)

    def _report_open(self, sandbox: Sandbox, *, method: str, scheme: str, host: str, port: int | None, decision: str, rule: str,
                     at: float, path: str | None = None) -> int:
        """Tell the server that a tunnel or WebSocket is open; returns the id its one record (`record(record_id=…)`) closes.

        The server keeps the announcement until that record comes; if the
        engine dies first, the server writes the record itself, marked as cut
        off (`EgressProxy`), so nothing open at a crash goes unrecorded.
        """
        self._last_record_id += 1
        self._queue({"open_id": self._last_record_id, "at": at, "session_id": sandbox.context.session_id,
                     "agent_id": sandbox.context.agent_id, "method": method[:16], "scheme": scheme, "host": host[:255], "port": port,
                     "path": clean_path(path), "decision": decision, "rule": rule})
        return self._last_record_id

    def _queue(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._send_pending)

    def _names_api(self, sandbox: Sandbox, scheme: str, host: str, port: int) -> bool:
        """Whether a worker's sandbox is talking to the API host (the system allowance's)."""
        return sandbox.context.worker is not None and self.resolver.system is not None and self.resolver.system.names(scheme, host, port)

    def _send_pending(self) -> None:
        rows, self._pending = self._pending, []
        for start in range(0, len(rows), LOG_BATCH_ROWS):
            self._send({"op": "log", "rows": rows[start:start + LOG_BATCH_ROWS]})


def _count(meta: dict[str, Any], direction: str, conn: Conn, limit: int, chunk: bytes) -> bytes:
    """Count a streamed body chunk; cut the connection when the body outgrows the limit.

    mitmproxy checks `body_size_limit` against a declared Content-Length only;
    this bounds chunked bodies too.
    """
    meta[direction] += len(chunk)
    if meta[direction] > limit and "refused" not in meta:
        meta.update(decision="denied", rule="limit:body-size", refused=413 if direction == "up" else 502)
        conn.abort(f"body larger than {limit} bytes")
        return b""
    return chunk


def _apply_cut(meta: dict[str, Any], conn: Conn) -> bool:
    """A request or WebSocket under way when a limit (or a policy change) cut its connection is denied with that rule.

    True when it was cut so (and was not refused otherwise already).
    """
    if conn.cut_rule is None or "refused" in meta or meta.get("decision") == "denied":
        return False
    meta.update(decision="denied", rule=conn.cut_rule)
    return True


class _Collector:
    """A response stream that passes every chunk on (through `count`) and keeps a copy, up to WORKER_ANSWER_MAX, for `done`.

    `done(body)` runs when the last chunk has been relayed (mitmproxy calls a
    stream with b"" at the end), before anything else of the event loop: the
    client cannot ask its next question before that. `body` is None when the
    answer was larger than the bound.
    """

    def __init__(self, count: Callable[[bytes], bytes], done: Callable[[bytes | None], None]) -> None:
        self._count, self._done = count, done
        self._chunks: list[bytes] | None = []
        self._size = 0

    def __call__(self, chunk: bytes) -> bytes:
        if self._chunks is not None:
            self._size += len(chunk)
            if self._size > WORKER_ANSWER_MAX:
                self._chunks = None
            elif chunk:
                self._chunks.append(chunk)
        if not chunk:
            try:
                self._done(None if self._chunks is None else b"".join(self._chunks))
            except Exception:  # the answer is relayed regardless; the scope just learns nothing (fail closed)
                log.exception("egress engine: could not read the API's answer about a worker's session")
        return self._count(chunk)


def _carries(request: http.Request, placeholder: str | None) -> bool:
    """Whether any header of the request holds the placeholder (however it is presented)."""
    return placeholder is not None and any(placeholder in value for _, value in request.headers.items(multi=True))


def _readable_target(conn: Conn) -> tuple[str, str, str, int | None, str | None]:
    """(method, scheme, host, port, path) of the request a connection is sending, as far as it can be read yet.

    Inside a tunnel: its destination. On a plain connection: the request
    line, once complete (`CountingReader` keeps its first bytes); a line not
    yet complete gives its method at most.
    """
    tunnel = conn.tunnel
    if tunnel is not None:
        return "-", "https", tunnel.host, tunnel.port, None
    buffered = conn.first_line.lstrip(b"\r\n")
    if b"\n" not in buffered:
        method = buffered.split(b" ", 1)[0] if b" " in buffered else b""
        return (method.decode("ascii", "replace")[:16] or "-"), "http", "-", None, None
    line = buffered.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        host, port, method, scheme, _authority, path, _version = http1_read._read_request_line(line)
        shown = normalize_host(host) if host else "-"
        if method == b"CONNECT":
            return "CONNECT", "https", shown, port or None, None
        return method.decode("ascii", "replace")[:16], scheme.decode("ascii", "replace") or "http", shown, port or None, path.decode("ascii", "replace")
    except (ValueError, PolicyError, UnicodeError):
        return line.split(b" ", 1)[0].decode("ascii", "replace")[:16] or "-", "http", "-", None, None


def _head_size(message: http.Message) -> int:
    """The size of a message's head as sent: start line (for a request: method, target) and headers."""
    start = len(message.method) + len(message.authority) + len(message.path) if isinstance(message, http.Request) else 0
    return start + sum(len(k) + len(v) + 4 for k, v in message.headers.fields) + 32


def _hostport(host: str, port: int, scheme: str = "https") -> str:
    """A canonical host (as `normalize_host` gives it) with its port, the port left out when it is the scheme's default."""
    shown = _display_host(host)
    return shown if port == DEFAULT_PORTS.get(scheme) else f"{shown}:{port}"


def _is_internal(host: str | None) -> bool:
    """Whether a requested host is cma.internal (in any spelling `normalize_host` accepts)."""
    try:
        return bool(host) and normalize_host(host) == INTERNAL_HOST
    except PolicyError:
        return False


def _internal_error(status: int, message: str) -> tuple[int, bytes, str]:
    """An answer of the internal route made by the engine itself: JSON, like the server's."""
    return status, json.dumps({"error": message}).encode(), "application/json"


def _authority_names(authority: str | None, host: str, port: int, scheme: str) -> bool:
    """Whether a Host header (or :authority) names host:port (no port: the scheme's default)."""
    if not authority:
        return False
    try:
        name, named_port = url.parse_authority(authority, check=True)
        return normalize_host(name) == host and (named_port or DEFAULT_PORTS[scheme]) == port
    except (ValueError, PolicyError, KeyError):
        return False


def _status_bytes(status: int, reason: str, rule: str) -> bytes:
    body = f"jupyter-cma egress: {reason}\n(rule: {rule})\n".encode()
    return (f"HTTP/1.1 {status} {HTTP_REASONS.get(status, 'Refused')}\r\nContent-Type: text/plain; charset=utf-8\r\nX-CMA-Egress-Rule: {rule}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


# ---------------------------------------------------------------------- process entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_cma.egress.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--control-fd", type=int, required=True, help="the engine's end of the control channel")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    control = socket.socket(fileno=args.control_fd)
    control.settimeout(30)
    first = control.recv(channel.MESSAGE_BYTES)
    if not first:
        return
    settings = json.loads(first)
    if settings.get("op") != "configure":
        raise SystemExit("egress engine: the first control message must configure it")

    async def run() -> None:
        engine = Engine(control, settings)
        await engine.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
