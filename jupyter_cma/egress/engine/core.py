"""The `Engine`: mitmproxy's master plus this addon, assembled from its parts, and its run.

`Engine.__init__` reads the settings the server sent (`configure`), opens the
policies (read-only), the secrets and the resolver, installs
`BoundedWebsocketLayer` in place of mitmproxy's WebSocket layer, and sets up
mitmproxy's master with no listener of its own. `run` serves until the server
closes the control channel. What the engine does is in its parts, one module
each: `PolicyHooks` (hooks), `InternalRoute` (internal_route), `ControlChannel`
(control), `SandboxServing` (serving), `Sweeper` (sweeper), `Refusals`
(refusals) and `Records` (records); they share the state set up here.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from mitmproxy import options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy import server as mitm_server
from mitmproxy.proxy.layers import websocket as mitm_websocket

from ...store import Store
from .. import channel
from ..policy import PolicyError, PolicyResolver, PolicyStore, load_middleware
from ..secrets import SecretStore
from .addresses import Resolver
from .connections import AttachedSandbox, Conn
from .control import ControlChannel
from .hooks import PolicyHooks
from .internal_route import InternalRoute
from .layers import BoundedWebsocketLayer
from .limits import Limits
from .records import Records
from .refusals import Refusals
from .serving import SandboxServing
from .sweeper import SWEEP_SECONDS, Sweeper


class Engine(PolicyHooks, InternalRoute, ControlChannel, SandboxServing, Sweeper, Refusals, Records):
    """mitmproxy's master plus this addon: decisions, pins, injections, limits and log records."""

    def __init__(self, control: socket.socket, settings: dict[str, Any]) -> None:
        self.control = control
        self.outbox = channel.Outbox(control)
        self.inbox = channel.Inbox()
        self.limits = Limits(**settings["limits"])
        self.internal_timeout = float(settings.get("internal_timeout") or 300.0)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}  # internal calls awaiting the server, by id
        self._last_call_id = 0
        self._control_open = True
        data_dir = Path(settings["data_dir"])
        self.store = Store.read_only(data_dir / "cma.sqlite3")
        try:
            middleware, setup_error = load_middleware(settings.get("middleware", [])), None
        except PolicyError as exc:
            middleware, setup_error = [], str(exc)
        self.resolver = PolicyResolver(PolicyStore(self.store), api_base_url=settings["api_base_url"],
                                       middleware=middleware, setup_error=setup_error)
        self.secrets = SecretStore(data_dir / "secrets")
        self.addresses = Resolver()
        self.sandboxes: dict[str, AttachedSandbox] = {}
        self.conns: dict[str, Conn] = {}  # by mitmproxy client id
        self._pending: list[dict[str, Any]] = []  # log records of this event-loop turn
        self._last_record_id = 0  # of the tunnels and WebSockets reported open (see `_report_open`)
        self._mode = mode_specs.ProxyMode.parse("regular")
        # mitmproxy's own idle watchdog closes connections silently; ours (the sweeper) records what it cuts, so it acts first.
        mitm_server.TCP_TIMEOUT = int(self.limits.idle_timeout + 2 * SWEEP_SECONDS) + 1
        BoundedWebsocketLayer.engine = self
        mitm_websocket.WebsocketLayer = BoundedWebsocketLayer  # type: ignore[misc]  # mitmproxy's HTTP layer makes it by this name
        opts = options.Options()
        self.master = Master(opts)
        self.proxyserver = proxyserver.Proxyserver()
        self.master.addons.add(core.Core(), self.proxyserver, next_layer.NextLayer(), self, tlsconfig.TlsConfig(),
                               disable_h2c.DisableH2C())
        opts.update(
            mode=[],  # no listening server of mitmproxy's own: the sockets come from the control channel
            confdir=settings["confdir"],
            connection_strategy="eager",
            upstream_cert=False,
            http3=False,
            websocket=True,
            rawtcp=True,
            ssl_insecure=False,
            ssl_verify_upstream_trusted_ca=settings.get("upstream_ca") or None,
            stream_large_bodies="1",  # stream every body: nothing is buffered, bytes are counted
            body_size_limit=str(self.limits.max_body_bytes),
            validate_inbound_headers=True,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._on_control)
        sweeper = asyncio.ensure_future(self._sweep_forever())
        self._send({"op": "ready", "ca_cert": str(Path(self.master.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"),
                    "setup_error": self.resolver.setup_error})
        try:
            await self.master.run()
        finally:
            sweeper.cancel()
            self._send_pending()
