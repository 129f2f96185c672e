"""Serving the sandboxes' sockets: an asyncio Unix server per attached socket, each connection handed to mitmproxy.

`SandboxServing` is the part of `Engine` that listens on an attached socket,
refuses a connection over a limit before reading a byte, runs mitmproxy's
regular-proxy layers over the counting streams, and writes a plain tunnel's
one record when it ends.
"""

from __future__ import annotations

import asyncio
import functools
import time

from mitmproxy.proxy.layers.modes import HttpProxy
from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

from .connections import AttachedSandbox, Conn, Tunnel
from .refusals import status_bytes
from .streams import ConnOptions, CountingReader, CountingWriter


class SandboxServing:
    """Accepting and serving the connections of attached sockets (a part of `Engine`)."""

    async def _listen(self, sandbox: AttachedSandbox) -> None:
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

    async def _serve(self, sandbox: AttachedSandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            writer.write(status_bytes(429, reason, "limit:connections"))
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
