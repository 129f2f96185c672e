"""Webhooks: `POST {base_url}cma/webhooks` receives them, `GET {base_url}cma/api/webhooks` lists those received.

The receiving route is the one route without Jupyter authentication. It is
guarded by its signature instead (see `control/webhooks.py`). The body
is streamed so an oversized delivery is refused before it is read into memory.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from tornado import web

from ..control.webhooks import WebhookIngest
from ..jsonbody import JSONBodyError, read_json
from .base import CMAHandler
from .schemas import DeliveriesQuery

if TYPE_CHECKING:
    from ..store import Store


@web.stream_request_body
class WebhookHandler(web.RequestHandler):
    """Receives Standard Webhooks deliveries from the Managed Agents API."""

    def initialize(self, *, ingest: WebhookIngest, max_bytes: int) -> None:
        self._ingest = ingest
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            self.set_header("Connection", "close")  # the body is not read, so the connection cannot be reused
            self._reply(413, {"message": f"the body is larger than {self._max_bytes} bytes"})

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._max_bytes:
            self._chunks.append(chunk)

    def check_xsrf_cookie(self) -> None:  # no cookies here: the signature is the guard
        return None

    @allow_unauthenticated
    async def post(self) -> None:
        if self._size > self._max_bytes:
            self._reply(413, {"message": f"the body is larger than {self._max_bytes} bytes"})
            return
        status, body = self._ingest.receive(b"".join(self._chunks), self.request.headers)
        self._reply(status, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._reply(status_code, {"message": self._reason})


class WebhookDeliveriesHandler(CMAHandler):
    """`GET cma/api/webhooks`: received deliveries, newest first; pass `next_before` back as `before` for the next page."""

    def initialize(self, name: str, *, store: Store) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store

    @web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(DeliveriesQuery)
        rows = self._store.deliveries(limit=query.limit, before=query.before)
        data = []
        for row in rows:
            try:
                body = read_json(row.pop("body"), max_bytes=None)
            except JSONBodyError:
                body = None  # stored as received (by an older version, which took any JSON); shown as null
            data.append({**row, "body": body})
        self.finish({"data": data, "next_before": rows[-1]["seq"] if rows else None})
