"""`{base_url}cma/api/live`: the live channel, one websocket per page shared by all its views.

Only the Jupyter identity opens it: the login cookie (with the browser's Origin the server's own, which
`WebSocketMixin.check_origin` holds to), `Authorization: token …`, or `?token=`. It checks what every REST
route checks (`read` on the `cma` auth resource), so whoever may read the REST API may read the channel and
nobody else. A kernel's signature is not accepted here: `LiveSocket` is not a `CMAHandler`.

The protocol (docs/rest-api.md, "Live updates"): a `hello` frame first; then arrays of messages, one frame
carrying everything queued since the last write (at most `FRAME_BYTES`); control frames `gap`, `subscribed`
and `error`. The client may send `{"op": "subscribe", …}` (`web/schemas.py: LiveSubscribe`) to replace its
filter. The sender awaits each write, so tornado never holds more than one frame of a subscriber; the rest
waits in the hub's bounded queue (`live.py`), which a subscriber that stops reading overflows into a gap.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from pydantic import ValidationError
from tornado import websocket

from ..jsonbody import JSONBodyError, read_json
from ..live import LiveFilter, LiveHub, Subscriber
from .base import AUTH_RESOURCE
from .schemas import LiveSubscribe, explain

__all__ = ["FRAME_BYTES", "MAX_CLIENT_MESSAGE", "LiveSocket"]

FRAME_BYTES = 256 * 1024  # one frame's bound: a browser parses it in one go, on its UI thread
MAX_CLIENT_MESSAGE = 16 * 1024  # a client sends a filter, not a document


class LiveSocket(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """The `cma/api/live` websocket: a hub subscriber and the task that sends its queue.

    `WebSocketMixin` comes first so that its `prepare` refuses an unauthenticated upgrade with a 403 (never
    the login redirect of a page), keeps the Origin check, and pings the peer (a dead one is closed).
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, *, hub: LiveHub) -> None:  # type: ignore[override]
        self._hub = hub
        self._sub: Subscriber | None = None
        self._sender: asyncio.Task[None] | None = None

    @property
    def max_message_size(self) -> int:  # type: ignore[override]
        return MAX_CLIENT_MESSAGE

    @ws_authenticated
    @authorized
    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self._hub.full:
            # Before the upgrade, so the client sees a status it can back off on rather than a socket that closes.
            raise tornado.web.HTTPError(503, f"the live channel has {self._hub.max_subscribers} subscribers already "
                                        "(c.CMAApp.live_max_subscribers); try again later")
        # No await between this check and open()'s subscribe (tornado upgrades and opens in one step), so sockets
        # upgrading at the same moment cannot pass the cap together.
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open(*args, **kwargs)
        # Subscribed before hello, so nothing published after the hello's seq is missed.
        self._sub = sub = self._hub.subscribe()
        self.write_message(json.dumps({"kind": "hello", "seq": self._hub.seq, "epoch": self._hub.epoch, "max_queue": sub.maxlen}))
        self._sender = asyncio.ensure_future(self._send_loop(sub))

    def on_message(self, message: str | bytes) -> None:
        sub = self._sub
        if sub is None or self.ws_connection is None or self.ws_connection.is_closing():
            return  # closing (say, a bad message was refused): a message still in flight is dropped
        try:
            wanted = LiveSubscribe.model_validate(read_json(message, max_bytes=MAX_CLIENT_MESSAGE))
        except JSONBodyError as exc:
            self._refuse(f"the message is not JSON: {exc.message}")
            return
        except ValidationError as exc:
            self._refuse(f"send {{\"op\": \"subscribe\", \"kinds\", \"sessions\", \"egress\"}}: {explain(LiveSubscribe, exc)}")
            return
        refused = self._hub.set_filter(sub, LiveFilter(
            kinds=None if wanted.kinds is None else frozenset(wanted.kinds),
            sessions=frozenset(wanted.sessions or ()),
            egress_session=wanted.egress.session_id if wanted.egress is not None else None,
        ))
        answer: dict[str, Any] = {"kind": "subscribed", "filter": sub.filter.to_json()}
        if refused:
            answer["refused"] = refused
            answer["message"] = ("the server watches as many sessions as it may (c.CMAApp.live_max_watched_sessions); "
                                 "these get no session.event messages: refetch their events from REST")
        self.write_message(json.dumps(answer))

    def _refuse(self, message: str) -> None:
        """A bad client message: say why, then close with 1008 (policy violation)."""
        self.write_message(json.dumps({"kind": "error", "message": message}))
        self.close(1008, "bad message")

    async def _send_loop(self, sub: Subscriber) -> None:
        try:
            while not sub.closed:
                await sub.wake.wait()
                sub.wake.clear()
                while not sub.closed:
                    dropped = sub.take_gap()
                    if dropped is not None:
                        await self.write_message(json.dumps({"kind": "gap", "seq": self._hub.seq, "dropped": dropped}))
                        continue
                    frame = sub.take(FRAME_BYTES)
                    if frame is None:
                        break
                    # Awaited: while this frame is on its way, later messages wait in the bounded queue, not in tornado.
                    await self.write_message(frame)
            self.close(1001, "the server is stopping")
        except (websocket.WebSocketClosedError, asyncio.CancelledError):
            pass

    def on_close(self) -> None:
        if self._sub is not None:
            self._hub.unsubscribe(self._sub)
            self._sub = None
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None
        if self.ping_callback is not None:
            self.ping_callback.stop()
