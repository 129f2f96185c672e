"""The egress side of a sandbox's lifecycle: which session each sandbox's socket serves.

The tiers report (through the `EgressHook` contract) when a sandbox starts and
stops serving a session; this tells the egress proxy, with what policies match
on (the session's agent and metadata, as stored when its work item was claimed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sandboxes.base import EgressHook

if TYPE_CHECKING:
    from ..egress.proxy import EgressProxy
    from ..store import Store


class SessionEgress(EgressHook):
    """Attaches sandboxes' sockets to the egress proxy as the sessions they serve."""

    def __init__(self, *, store: Store, proxy: EgressProxy) -> None:
        self.store = store
        self.proxy = proxy

    async def attach(self, sandbox_id: str, socket_path: str, *, session_id: str, api_token: str | None = None,
                     work_id: str | None = None, environment_id: str | None = None, socket_mode: int = 0o600,
                     internal_route: bool = True, inject: bool = True) -> str | None:
        row = self.store.session(session_id) or {}
        return self.proxy.attach(sandbox_id, socket_path, session_id=session_id, agent_id=row.get("agent_id"),
                                 metadata=row.get("metadata") or {}, api_token=api_token, work_id=work_id,
                                 environment_id=environment_id, socket_mode=socket_mode, internal_route=internal_route,
                                 inject=inject)

    async def detach(self, sandbox_id: str, socket_path: str, *, session_id: str) -> None:
        self.proxy.detach(sandbox_id)
