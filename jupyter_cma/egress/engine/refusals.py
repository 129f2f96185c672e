"""Refusals: a request (or a whole connection) the engine will not forward, answered and recorded exactly once.

A hook raises `Refused`; `fail_closed` turns it into an answer, and any
other error of a hook into a refusal (mitmproxy would log it and let the flow
go on). `Refusals` is the part of `Engine` that answers: `refuse` (a flow, an
upstream connection or a ClientHello), `refuse_connection` (a request that
broke a limit before mitmproxy parsed it). It uses the engine's `conns` and
its `record`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from http.client import responses as HTTP_REASONS
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.net.http.http1 import read as http1_read
from mitmproxy.proxy import server_hooks
from mitmproxy.tls import ClientHelloData

from ..policy import PolicyError, normalize_host
from .connections import Conn

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("jupyter_cma.egress.engine")  # the whole engine logs under one name (the server relays its lines)
ERROR_HEADERS = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}


class Refused(Exception):
    """A request the engine will not forward: answered with `status` and `reason`, logged with `rule`."""

    def __init__(self, status: int, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.rule = status, reason, rule


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


class Refusals:
    """Answering what the engine refuses, and its one `denied` record (a part of `Engine`)."""

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
            conn.writer.write(status_bytes(status, reason, rule))
        except Exception:
            pass
        conn.closing_reason = reason
        conn.writer.close()

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
                conn.writer.write(status_bytes(refused.status, refused.reason, refused.rule))
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


def status_bytes(status: int, reason: str, rule: str) -> bytes:
    """A refusal as raw HTTP/1.1 bytes, for a connection answered before (or without) mitmproxy; it closes the connection."""
    body = f"jupyter-cma egress: {reason}\n(rule: {rule})\n".encode()
    return (f"HTTP/1.1 {status} {HTTP_REASONS.get(status, 'Refused')}\r\nContent-Type: text/plain; charset=utf-8\r\nX-CMA-Egress-Rule: {rule}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
