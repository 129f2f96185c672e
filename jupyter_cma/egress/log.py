"""The egress log: one record per request a sandbox made, and the decision taken on it.

The proxy calls `EgressLog.record` once per request (or refusal). A record
holds when, which session and agent, method, scheme, host, port, the path
*without* its query or fragment (queries carry tokens and personal data far
too often to be kept), the status, bytes each way, the duration, the
decision (`allowed`, `denied` or `injected`) and the rule that decided.
Records go to SQLite (kept `egress_log_retention_days`), to live
subscribers (the dashboard's feed), and out as JSON lines for a SIEM.

Nothing secret can reach a record: injected header values are never passed
in, and paths lose their query strings here, in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

DECISIONS = ("allowed", "denied", "injected")
MAX_PATH = 2048
FEED_QUEUE_SIZE = 1000


def clean_path(raw: str | None) -> str | None:
    """The path of a request target without query or fragment, capped in length."""
    if raw is None:
        return None
    path = urlsplit(raw).path if "://" in raw else raw.split("?", 1)[0].split("#", 1)[0]
    return path[:MAX_PATH]


def _row(
    *,
    method: str,
    scheme: str,
    host: str,
    decision: str,
    port: int | None = None,
    path: str | None = None,
    session_id: str | None = None,
    agent_id: str | None = None,
    status: int | None = None,
    bytes_up: int = 0,
    bytes_down: int = 0,
    duration_ms: float | None = None,
    rule: str | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """One record as stored: checked, capped, and with the path's query and fragment removed."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
    return {
        "at": time.time() if at is None else float(at),
        "session_id": session_id,
        "agent_id": agent_id,
        "method": str(method).upper()[:16],
        "scheme": str(scheme).lower()[:16],
        "host": str(host).lower()[:255],
        "port": None if port is None else int(port),
        "path": clean_path(path),
        "status": None if status is None else int(status),
        "bytes_up": max(0, int(bytes_up)),
        "bytes_down": max(0, int(bytes_down)),
        "duration_ms": None if duration_ms is None else float(duration_ms),
        "decision": decision,
        "rule": None if rule is None else str(rule)[:200],
    }


class EgressLog:
    """Records egress decisions and hands them to storage and live subscribers."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def record(self, **fields: Any) -> dict[str, Any]:
        """Store one record and publish it; returns the stored record (with its id). Fields: see `_row`."""
        return self.record_many([fields])[0]

    def record_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store records in one transaction (the proxy sends them in batches) and publish each."""
        rows = [_row(**r) for r in records]
        for row, row_id in zip(rows, self._store.log_egress_many(rows)):
            row["id"] = row_id
        for row in rows:
            for queue in list(self._subscribers):
                try:
                    queue.put_nowait(row)
                except asyncio.QueueFull:
                    # A subscriber that stopped reading loses records, never the proxy's time.
                    log.warning("egress feed subscriber is %d records behind; dropping one", queue.qsize())
        return rows

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A live feed of new records (for the dashboard); call `unsubscribe` when done."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=FEED_QUEUE_SIZE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Stored records, newest first (see `Store.egress_log` for the filters)."""
        return self._store.egress_log(**filters)

    def export_jsonl(self, *, page: int = 500, **filters: Any) -> Iterator[str]:
        """Every matching record as one JSON line each, oldest page last, for a SIEM."""
        before = None
        while True:
            rows = self._store.egress_log(before=before, limit=page, **filters)
            for row in rows:
                yield json.dumps(row, separators=(",", ":")) + "\n"
            if len(rows) < page:
                return
            before = rows[-1]["id"]

    def prune(self, retention_days: float) -> int:
        return self._store.prune_egress(time.time() - retention_days * 86400)
