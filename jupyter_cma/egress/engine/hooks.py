"""The mitmproxy hooks: where the policy decides each CONNECT and request, and what an allowed one becomes.

`PolicyHooks` is the part of `Engine` that mitmproxy calls (see the order in
the package's docstring): `http_connect`, `next_layer`, `tls_clienthello`,
`requestheaders`, `request`, `responseheaders`, `response`, `error`,
`http_connect_error`, `server_connect` and the WebSocket hooks. Each async
hook is wrapped by `fail_closed`. Decisions become actions here: the pinned
destination, the injections, the worker's token swapped for its placeholder,
byte counts on every body, and the scope a worker learns from the API's
answer about its session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.net import encoding as mitm_encoding
from mitmproxy.proxy import layers as mitm_layers
from mitmproxy.proxy import server_hooks
from mitmproxy.tls import ClientHelloData

from ..policy import INTERNAL_HOST, SYSTEM_API_RULE, WORKER_SCOPE_RULE, Decision, PolicyError, is_ip_literal, normalize_host
from .connections import AttachedSandbox, Conn, Tunnel
from .internal_route import INTERNAL_USE
from .layers import ClosedLayer
from .names import authority_names, hostport, is_internal_host
from .refusals import Refused, fail_closed
from .streams import head_size

log = logging.getLogger("jupyter_cma.egress.engine")  # the whole engine logs under one name (the server relays its lines)
WORKER_ANSWER_MAX = 4 * 1024 * 1024  # the API's answer to the worker's retrieve of its session, read for its skills and memory stores


class PolicyHooks:
    """mitmproxy's hooks with the policy in them (a part of `Engine`)."""

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        conn = self._conn(flow)
        started, at = time.monotonic(), time.time()
        flow.metadata["cma"] = {"started": started, "at": at, "host": flow.request.host, "port": flow.request.port, "scheme": "https"}
        if not conn.sandbox.bucket.take():
            raise Refused(429, "this sandbox is over its request rate; slow down", "limit:rate")
        if is_internal_host(flow.request.host):
            # The route is answered by the proxy itself, in plain http; a tunnel would have to go somewhere.
            flow.metadata["cma"]["host"] = INTERNAL_HOST
            raise Refused(403, INTERNAL_USE, "internal:http-only")
        revision = self.store.egress_revision()
        effective = self.resolver.resolve(conn.sandbox.context)
        decision = _for(conn.sandbox, effective.decide("CONNECT", "https", flow.request.host, flow.request.port, None))
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
            if not is_ip_literal(tunnel.host):
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
        if tunnel is None and is_internal_host(request.host):
            self._internal_headers(flow, conn, meta, upgrade)
            return
        if tunnel is not None:
            if head_size(request) > self.limits.max_header_bytes:
                raise Refused(431, f"request head larger than {self.limits.max_header_bytes} bytes", "limit:header-size")
            scheme = "https" if flow.client_conn.tls_established else "http"
            host, port = tunnel.host, tunnel.port
            meta.update(scheme=scheme, host=host, port=port)
            if not authority_names(request.host_header, host, port, scheme):
                raise Refused(421, f"the Host header {request.host_header!r} differs from the CONNECT target {hostport(host, port)}; "
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
            if request.host_header is not None and not authority_names(request.host_header, host, port, scheme):
                raise Refused(421, f"the Host header {request.host_header!r} differs from the URI's host {hostport(host, port)}",
                              "invalid:host-mismatch")
        sandbox = conn.sandbox
        effective = self.resolver.resolve(sandbox.context)
        decision = _for(sandbox, effective.decide(request.method, scheme, host, port, request.path, websocket=upgrade))
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
        request.host_header = hostport(host, port, scheme)
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

    def _learn(self, sandbox: AttachedSandbox, content_encoding: str | None, body: bytes | None) -> None:
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
            flow.response.text = f"jupyter-cma egress: {hostport(tunnel.host, tunnel.port)} could not be reached\n"

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
        if tunnel is not None and not is_ip_literal(tunnel.host):
            data.server.sni = tunnel.host  # the CONNECT name, never the client's choice

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

    def _names_api(self, sandbox: AttachedSandbox, scheme: str, host: str, port: int) -> bool:
        """Whether a worker's sandbox is talking to the API host (the system allowance's)."""
        return sandbox.context.worker is not None and self.resolver.system is not None and self.resolver.system.names(scheme, host, port)


def _for(sandbox: AttachedSandbox, decision: Decision) -> Decision:
    """The decision as it applies to this socket: without the policy's injections where it was attached with them off."""
    if sandbox.inject or not decision.injections:
        return decision
    return dataclasses.replace(decision, injections=())


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
