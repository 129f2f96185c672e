"""The emulated Managed Agents service: its state and behaviour, with no HTTP.

Everything here follows the wire contract as the `anthropic` SDK uses it; where
the contract is uncertain, the choice is made here once and documented in the
emulator's documentation (docs/emulator.md). The HTTP layer (`http.py`) only parses requests,
checks credentials and renders what this module returns.

The emulator deliberately shares no code with the rest of `jupyter_cma`: it
plays the other side of the wire, and sharing would hide contract bugs.

`Service` is one object made of a part per resource, each in its own module:
`Credentials` (credentials.py), `Environments` (environments.py), `WorkQueue`
(work.py: work items, leases), `Agents` (agents.py), `Sessions` (sessions.py:
sessions and the runs that drive the brain), `Events` (events.py) and `Skills`
(skills.py); what they share on the wire is in wire.py. This module adds the
settings, the lifecycle and webhook notification, which every part uses.

The parts are mixins rather than objects `Service` holds, because the
resources reach into each other in both directions: a session enqueues work,
finishing work frees its session and revokes its sessions tokens, deleting an
environment stops its work, a sessions token is checked against its session.
As held objects each part would need references to most of the others; as
mixins each reaches another through `self`, every method keeps its name, and
`http.py`, `app.py` and a brain's `Turn` still talk to one object. It is
single-threaded (one asyncio loop), so the shared `self` needs no locking.
Each part sets up its own state in its `__init__`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .agents import Agents
from .credentials import Credential, Credentials
from .environments import Environments
from .events import Events
from .sessions import Sessions
from .skills import Skills
from .work import WorkQueue

if TYPE_CHECKING:
    from .turns import Brain
    from .webhooks import WebhookSender

ORGANIZATION_ID = "org_emulator"
WORKSPACE_ID = "wrkspc_emulator"


class Service(Credentials, Environments, WorkQueue, Agents, Sessions, Events, Skills):
    """All emulated state and behaviour. Single-threaded: runs on one asyncio loop."""

    def __init__(
        self,
        *,
        brain: Brain,
        webhooks: WebhookSender | None = None,
        lease_ttl: float = 120.0,
        api_key: str | None = None,
        model_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.brain = brain
        self.webhooks = webhooks
        self.lease_ttl = lease_ttl
        self.model_delay = model_delay
        self.api_key = api_key or "sk-ant-api-emu-" + secrets.token_urlsafe(24)
        self.tokens[self.api_key] = Credential("api_key")
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # small jobs (queue wake-ups): held until done, cancelled by close()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_leases())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a small background job the service owns (close() cancels what is left)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for rec in self.sessions.values():
            if rec.turn and not rec.turn.done():
                rec.turn.cancel()
            for q in rec.subscribers:
                q.put_nowait(None)

    # ----------------------------------------------------------------- webhooks

    def _notify(self, event_type: str, object_id: str, **extra: Any) -> None:
        if self.webhooks is None:
            return
        data = {"type": event_type, "id": object_id, "organization_id": ORGANIZATION_ID, **extra}
        if not event_type.startswith(("user_profile.", "external_key.")):
            data["workspace_id"] = WORKSPACE_ID
        self.webhooks.enqueue(data)
