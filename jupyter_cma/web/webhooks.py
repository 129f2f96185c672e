"""`POST {base_url}cma/webhooks`: the one route without Jupyter authentication.

It is guarded by its signature instead (see `control/webhooks.py`). The body
is streamed so an oversized delivery is refused before it is read into memory.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from ..control.webhooks import WebhookIngest


@web.stream_request_body
class WebhookHandler(web.RequestHandler):
    """Receives Standard Webhooks deliveries from the Managed Agents API."""

    def initialize(self, ingest: WebhookIngest, max_bytes: int) -> None:
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
