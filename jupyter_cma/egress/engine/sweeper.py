"""The sweeper: once a second, cut the connections that outlive a limit, and plain tunnels a policy change no longer allows.

A limit's cut is recorded `denied` with its rule (`limit:idle`,
`limit:connection-time`, `limit:header-time`); a plain tunnel carries no
requests to decide, so a change of the policies is applied to the tunnel
itself. `Sweeper` is the part of `Engine` that does it.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("jupyter_cma.egress.engine")  # the whole engine logs under one name (the server relays its lines)
SWEEP_SECONDS = 1.0


class Sweeper:
    """Cutting connections by time and by policy changes (a part of `Engine`)."""

    async def _sweep_forever(self) -> None:
        """Cut connections that idle, dawdle over a request head, live too long, or lost their policy."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            try:
                self._redecide_tunnels(self.store.egress_revision())
            except Exception:
                log.exception("egress engine: could not re-decide open tunnels")
            for conn in list(self.conns.values()):
                if now - conn.opened > self.limits.max_connection_seconds:
                    conn.abort("connection time limit", rule="limit:connection-time")
                elif now - conn.last_activity > self.limits.idle_timeout:
                    conn.abort("idle", rule="limit:idle")
                elif conn.awaiting_head and conn.head_started is not None and now - conn.head_started > self.limits.header_timeout:
                    self.refuse_connection(conn, 408, "limit:header-time",
                                           f"request head not complete within {self.limits.header_timeout:g} s")

    def _redecide_tunnels(self, revision: int) -> None:
        """A plain tunnel carries no requests to decide, so a policy change is applied to the tunnel itself:
        one that would now be denied, or would now have to be opened, is closed."""
        for conn in list(self.conns.values()):
            tunnel = conn.tunnel
            if tunnel is None or not tunnel.passthrough or tunnel.revision == revision:
                continue
            effective = self.resolver.resolve(conn.sandbox.context)
            decision = effective.decide("CONNECT", "https", tunnel.host, tunnel.port, None)
            injects = bool(decision.injections) and conn.sandbox.inject  # a socket attached without injections never needs them
            if decision.allowed and not injects and not effective.needs_inspection(tunnel.host, tunnel.port):
                tunnel.revision = revision
                continue
            # The tunnel's one record (written as it ends) is denied, with the rule that now refuses it.
            conn.abort("the egress policy changed", rule=decision.rule if not decision.allowed else "policy:changed:needs-inspection")
