"""What the engine knows of each attached sandbox and each of its connections.

`AttachedSandbox` is one sandbox's socket as the engine serves it: whom it
serves (its `SessionContext`), its rate buckets, its worker's token, and its
open connections (not `sandboxes.base.Sandbox`, the server's view of a
sandbox). A `Conn` is one client connection: byte counts, the state of the
request head being read, timers, the addresses decisions approved, and the
`Tunnel` a CONNECT opened.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

from ..policy import Decision, SessionContext
from .limits import TokenBucket


@dataclass
class AttachedSandbox:
    """One sandbox's socket: whom it serves, what it may use, what it has open."""

    id: str
    context: SessionContext  # its `worker` (the scope of the token below) is set exactly when `api_token` is
    bucket: TokenBucket  # requests and CONNECTs
    connect_bucket: TokenBucket  # connections opened
    api_token: str | None = None  # the session's real token, swapped for `placeholder` on its worker's own API calls
    placeholder: str | None = None
    # False: the policy's injections are not added through this socket (a browser's: a page must not spend them);
    # every decision, address check and log record is the same.
    inject: bool = True
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

    def __init__(self, sandbox: AttachedSandbox, writer: asyncio.StreamWriter) -> None:
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
