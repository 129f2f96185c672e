"""mitmproxy layers of the engine's own: `ClosedLayer` (drops everything) and `BoundedWebsocketLayer` (a bound per message)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.proxy import commands as mitm_commands
from mitmproxy.proxy import events as mitm_events
from mitmproxy.proxy import layer as mitm_layer
from mitmproxy.proxy.layers import websocket as mitm_websocket
from wsproto.events import CloseConnection as WsCloseConnection

if TYPE_CHECKING:
    from .core import Engine

WS_FRAGMENT_OVERHEAD = 64  # what one buffered fragment of a WebSocket message costs beyond its payload (counted against the limit)


class ClosedLayer(mitm_layer.Layer):
    """Closes both ends and drops whatever arrives: nothing the client sent goes upstream."""

    def _handle_event(self, event: mitm_events.Event) -> mitm_layer.CommandGenerator[None]:
        if isinstance(event, mitm_events.Start):
            yield mitm_commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield mitm_commands.CloseConnection(self.context.server)


class BoundedWebsocketLayer(mitm_websocket.WebsocketLayer):
    """mitmproxy's WebSocket layer with a bound on each message, which mitmproxy reassembles whole without one.

    A message is relayed only once complete, so its fragments wait in memory:
    after every read the message being reassembled on each side is measured
    (its payload, plus `WS_FRAGMENT_OVERHEAD` per fragment, since a flood of
    tiny fragments costs memory too), and so is every complete message before
    it is relayed. Over `max_websocket_message_bytes`, nothing more of the
    connection is relayed: both ends get a close frame (1009, message too big)
    and are closed, and the engine records the WebSocket as denied.
    Installed in place of mitmproxy's class by the engine (`Engine.__init__`),
    which it asks for the limit and tells about the cut.
    """

    engine: Engine | None = None

    def __init__(self, context: Any, flow: http.HTTPFlow) -> None:
        super().__init__(context, flow)
        self._measured: dict[int, tuple[list[bytes], int, int]] = {}  # per side: (its fragment list, fragments counted, their cost)

    def relay_messages(self, event: mitm_events.Event) -> mitm_layer.CommandGenerator[None]:
        engine = self.engine
        if engine is None:  # pragma: no cover - the engine installs this class
            raise RuntimeError("BoundedWebsocketLayer without an engine")
        limit = engine.limits.max_websocket_message_bytes
        relay = super().relay_messages(event)
        answer: Any = None
        while True:
            try:
                command = relay.send(answer)
            except StopIteration:
                break
            if isinstance(command, mitm_websocket.WebsocketMessageHook):
                assert self.flow.websocket is not None
                size = len(self.flow.websocket.messages[-1].content)
                if size > limit:
                    relay.close()
                    yield from self._cut(engine, size)
                    return
            answer = yield command
        for ws in (self.client_ws, self.server_ws):
            size = self._pending_size(ws)
            if size > limit:
                yield from self._cut(engine, size)
                return

    def _pending_size(self, ws: mitm_websocket.WebsocketConnection) -> int:
        """What the message being reassembled on this side costs, counted incrementally (fragments only grow in place)."""
        fragments = ws.frame_buf
        seen = self._measured.get(id(ws))
        counted, cost = (seen[1], seen[2]) if seen is not None and seen[0] is fragments else (0, 0)
        for fragment in fragments[counted:-1]:
            cost += len(fragment) + WS_FRAGMENT_OVERHEAD
        self._measured[id(ws)] = (fragments, len(fragments) - 1, cost)
        return cost + len(fragments[-1]) + WS_FRAGMENT_OVERHEAD

    def _cut(self, engine: Engine, size: int) -> mitm_layer.CommandGenerator[None]:
        engine.cut_websocket(self.flow, size)
        for ws in (self.client_ws, self.server_ws):
            ws.frame_buf = [b""]
            if ws.state is mitm_websocket.ConnectionState.OPEN:
                yield ws.send2(WsCloseConnection(code=1009, reason="message too big"))
            yield mitm_commands.CloseConnection(ws.conn)
        self._handle_event = self.done
