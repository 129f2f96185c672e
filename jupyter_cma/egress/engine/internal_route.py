"""The internal route: a sandbox's plain-http call to cma.internal, answered by the server's tool registry.

It bypasses the policy (no decision, no DNS, no approved address). Its body
is read whole (`ConnOptions`, at most `INTERNAL_MAX_BODY`), then sent over the
control channel with the *sandbox id of the socket* the connection came in
on; the server finds the session from its own attachment of that socket.
`InternalRoute` is the part of `Engine` that checks the call's head and waits
for the server's answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from mitmproxy import http

from ..policy import INTERNAL_HOST
from .connections import AttachedSandbox, Conn
from .names import authority_names
from .refusals import Refused
from .sweeper import SWEEP_SECONDS

INTERNAL_MAX_BODY = 1024 * 1024  # a tool's input: JSON, small; the body is held in memory and sent to the server whole
INTERNAL_METHODS = ("GET", "POST")
INTERNAL_RULE = "internal"
INTERNAL_USE = f"the tool registry is reached with plain http on port 80 only: use http://{INTERNAL_HOST}/ through the proxy (HTTP_PROXY)"


class InternalRoute:
    """Calls to cma.internal: checked by their head, answered by the server (a part of `Engine`)."""

    def _internal_headers(self, flow: http.HTTPFlow, conn: Conn, meta: dict[str, Any], upgrade: bool) -> None:
        """Check a call to cma.internal by its head; `request` answers it once the body is read.

        No policy applies: the name is never a destination. What the request
        says about who sends it (headers, path, body) is passed on as data
        only; the sandbox is the socket's.
        """
        request = flow.request
        meta.update(host=INTERNAL_HOST, port=request.port, scheme=request.scheme or "http")
        if request.scheme != "http" or request.port != 80:
            raise Refused(403, INTERNAL_USE, "internal:http-only")
        if request.host_header is not None and not authority_names(request.host_header, INTERNAL_HOST, 80, "http"):
            raise Refused(421, f"the Host header {request.host_header!r} differs from the URI's host {INTERNAL_HOST}", "invalid:host-mismatch")
        if request.method not in INTERNAL_METHODS:
            raise Refused(405, f"{INTERNAL_HOST} answers GET and POST only", "internal:method")
        if upgrade:
            raise Refused(400, f"{INTERNAL_HOST} does not upgrade connections", "internal:upgrade")
        try:
            length = int(request.headers.get("content-length", "0") or 0)  # validated by mitmproxy (one, a number)
        except ValueError:
            raise Refused(400, "refused: an unreadable Content-Length", "invalid:request") from None
        if length > INTERNAL_MAX_BODY:
            raise Refused(413, f"a call's body may be at most {INTERNAL_MAX_BODY} bytes", "limit:body-size")
        meta.update(internal=True, rule=INTERNAL_RULE, decision="allowed")
        conn.internal = True  # read the body whole, bounded (ConnOptions)
        request.stream = False  # mitmproxy marked it for streaming before this hook

    async def _keep_awake(self, conn: Conn) -> None:
        """A call waiting for the server is not an idle connection: internal_timeout bounds it, not idle_timeout.

        Both idle clocks are fed while it waits: the sweeper's, and mitmproxy's
        watchdog, which a hook disarms only for its *next* sleep, so one already
        under way would close the connection (silently) during a long call.
        """
        tick = max(0.05, min(SWEEP_SECONDS, self.limits.idle_timeout / 4))
        while True:
            conn.last_activity = time.monotonic()
            if conn.handler is not None:
                conn.handler.timeout_watchdog.register_activity()
            await asyncio.sleep(tick)

    async def _call_server(self, sandbox: AttachedSandbox, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """The server's answer (status, body, content type) to a sandbox's call, or why there is none (503, 504).

        The sandbox id is the only identity sent: the server looks the session
        up in its own attachments. Ids are this engine's own; a reply to a
        call that is no longer waited for is dropped.
        """
        if not self._control_open:
            return _internal_error(503, "the server cannot be reached (the egress engine is restarting); try again")
        self._last_call_id += 1
        call_id = self._last_call_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self.outbox.send({"op": "internal", "id": call_id, "sandbox": sandbox.id, "method": method, "path": path,
                              "body": base64.b64encode(body).decode("ascii")})
            reply = await asyncio.wait_for(future, self.internal_timeout)
        except asyncio.TimeoutError:
            return _internal_error(504, f"the server did not answer within {self.internal_timeout:g} s")
        except OSError:  # ConnectionError too: the channel closed while the call waited
            return _internal_error(503, "the server cannot be reached (the egress engine is restarting); try again")
        finally:
            self._calls.pop(call_id, None)
        status = reply.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"the server answered an internal call with status {status!r}")
        content_type = str(reply.get("content_type") or "application/octet-stream")
        if any(ord(c) < 32 or ord(c) == 127 for c in content_type):
            raise ValueError("the server answered an internal call with an unusable content type")
        return status, base64.b64decode(reply.get("body") or "", validate=True), content_type


def _internal_error(status: int, message: str) -> tuple[int, bytes, str]:
    """An answer of the internal route made by the engine itself: JSON, like the server's."""
    return status, json.dumps({"error": message}).encode(), "application/json"
