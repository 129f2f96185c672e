"""A connection as mitmproxy sees it: a reader, a writer and options wrapped to count and bound it.

`CountingReader` counts the bytes a sandbox sends and bounds a request head
(bytes and time) before mitmproxy, which has no such limit, buffers it;
`CountingWriter` counts what goes back; `ConnOptions` reads a call to
cma.internal whole. `head_size` is the size of a parsed head as sent.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import http, options
from mitmproxy.net.http.http1 import read as http1_read

from .connections import Conn
from .internal_route import INTERNAL_MAX_BODY

if TYPE_CHECKING:
    from .core import Engine

HEAD_END = re.compile(rb"\n\r?\n")  # where mitmproxy's parser ends a request head (leading blank lines skipped)
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS handshake record: a ClientHello, not a request line
HEAD_SLACK = 1024 * 1024  # inside a tunnel the bytes before a parsed head include TLS and maybe some body


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


def head_size(message: http.Message) -> int:
    """The size of a message's head as sent: start line (for a request: method, target) and headers."""
    start = len(message.method) + len(message.authority) + len(message.path) if isinstance(message, http.Request) else 0
    return start + sum(len(k) + len(v) + 4 for k, v in message.headers.fields) + 32
