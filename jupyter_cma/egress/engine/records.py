"""The log records the engine sends the server: exactly one per request, a tunnel or WebSocket announced when it opens.

`Records` is the part of `Engine` that writes them: `record` queues a row,
`_report_open` announces a tunnel or WebSocket (the server records it as cut
off if the engine dies before its record comes), `_finish` writes a decided
request's one record from what the hooks kept in `flow.metadata["cma"]`.
Rows go out at the end of each event-loop turn, in batches, over the control
channel (the engine's `_send`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mitmproxy import http

from ..log import clean_path
from .connections import AttachedSandbox, Conn
from .streams import head_size

LOG_BATCH_ROWS = 50  # records per control message: with paths capped at 2 KiB, well under the socket's buffer


class Records:
    """Log records for the server, one per request (a part of `Engine`)."""

    def _finish(self, flow: http.HTTPFlow, status: int | None) -> None:
        """A decided request's one record (once; `meta` says how it was decided, or what cut it)."""
        meta = flow.metadata.get("cma")
        conn = self.conns.get(flow.client_conn.id)
        if meta is None or meta.get("logged") or conn is None or "rule" not in meta:
            return
        meta["logged"] = True
        request = flow.request
        bytes_up = head_size(request) + meta["up"]
        bytes_down = (head_size(flow.response) if flow.response is not None else 0) + meta["down"]
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

    def record(self, sandbox: AttachedSandbox, *, method: str, scheme: str, host: str, decision: str, rule: str,
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

    def _report_open(self, sandbox: AttachedSandbox, *, method: str, scheme: str, host: str, port: int | None, decision: str, rule: str,
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

    def _send_pending(self) -> None:
        rows, self._pending = self._pending, []
        for start in range(0, len(rows), LOG_BATCH_ROWS):
            self._send({"op": "log", "rows": rows[start:start + LOG_BATCH_ROWS]})
