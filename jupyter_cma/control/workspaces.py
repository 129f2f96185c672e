"""Workspaces moved in from outside (an archive, the object store): the lifecycle that goes with them.

A session this server has never served may be given its files before its first
work item arrives here (a move from another host). It is recorded as sleeping,
so its next work item resumes it on those files; if nothing was moved in, it is
forgotten again. The tiers move the files; the lifecycle is the control
plane's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, TypeVar

from ..sandboxes.base import Tier, WorkspaceTransfer

if TYPE_CHECKING:
    from ..store import Store

T = TypeVar("T")

ADOPTED = "workspace imported; its next work item starts a container on it"


async def import_workspace(store: Store, tier: Tier, session_id: str, fileobj: IO[bytes], *, replace: bool = False,
                           max_bytes: int | None = None) -> WorkspaceTransfer:
    """Put an archive's files into the session's workspace on `tier` (see `Tier.import_workspace`)."""
    return await _adopting(store, session_id, lambda: tier.import_workspace(session_id, fileobj, replace=replace, max_bytes=max_bytes))


async def pull_workspace(store: Store, tier: Tier, session_id: str) -> WorkspaceTransfer | None:
    """Replace the session's workspace on `tier` by the object store's copy; None when the store has none."""
    return await _adopting(store, session_id, lambda: tier.pull_workspace(session_id))


async def _adopting(store: Store, session_id: str, transfer: Callable[[], Awaitable[T]]) -> T:
    adopted = store.session(session_id) is None
    if adopted:
        store.transition(session_id, "sleeping", ADOPTED)
    try:
        result = await transfer()
    except BaseException:
        if adopted:
            store.forget_session(session_id)
        raise
    if result is None and adopted:
        store.forget_session(session_id)
    return result
