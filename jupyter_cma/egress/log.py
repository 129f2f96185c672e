"""The egress log: one record per request a sandbox made, and the decision taken on it.

The proxy calls `EgressLog.record` once per request (or refusal). A record
holds when, which session and agent, method, scheme, host, port, the path
*without* its query or fragment (queries carry tokens and personal data far
too often to be kept), the status, bytes each way, the duration, the
decision (`allowed`, `denied` or `injected`) and the rule that decided.
Records go to SQLite (kept `egress_log_retention_days`), to the live
channel once committed (`on_rows`, the views' `egress.row`), and out as
JSON lines for a SIEM.

Nothing secret can reach a record: injected header values are never passed
in, and paths lose their query strings here, in one place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

DECISIONS = ("allowed", "denied", "injected")
MAX_PATH = 2048


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
    """Records egress decisions and hands them to storage and the live channel.

    Args:
        store: where rows are kept.
        on_rows: called with each batch of rows once committed (each with its id), e.g. the live channel's
            `egress.row`. It must not block (the proxy's records wait behind it); one that raises is logged.
    """

    def __init__(self, store: Store, *, on_rows: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self._store = store
        self.on_rows = on_rows

    def record(self, **fields: Any) -> dict[str, Any]:
        """Store one record and publish it; returns the stored record (with its id). Fields: see `_row`."""
        return self.record_many([fields])[0]

    def record_many(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store records in one transaction (the proxy sends them in batches), then hand the batch to `on_rows`."""
        rows = [_row(**r) for r in records]
        for row, row_id in zip(rows, self._store.log_egress_many(rows)):
            row["id"] = row_id
        if self.on_rows is not None and rows:
            try:
                self.on_rows(rows)
            except Exception:  # stored already: a listener's failure must not lose the proxy's next records
                log.exception("jupyter-cma: a listener of %d new egress rows failed", len(rows))
        return rows

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
