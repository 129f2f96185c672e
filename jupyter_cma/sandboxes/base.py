"""The Sandbox protocol: what every tier implements.

The control plane claims a work item and hands it to the tier chosen for the
session's agent. The tier makes a `Sandbox` for that one claimed item; the
sandbox serves the session until the worker flow ends (the session went idle
for `max_idle`, the lease was lost or stopped, the session terminated) and
then releases what it holds. The session's *workspace* outlives sandboxes:
the next item of the same session gets a new sandbox on the same workspace.

Tiers are `Type` traits on `CMAApp` (`kernel_tier_class`, …), so tests and
users swap implementations by configuration.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..anthropic_api import Secret


T = TypeVar("T")

# Seconds between handing out a pooled sandbox and starting its replacement: a start costs
# about half a second (kernel) to a second (container) of CPU, which would otherwise compete
# with the session that just took the sandbox (its first requests and tool call).
REFILL_DELAY = 1.0


@dataclass(frozen=True)
class ClaimedItem:
    """A work item this server has claimed (polled and acked). `secret` is never shown."""

    work_id: str
    environment_id: str
    session_id: str
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WorkerSettings:
    """What a tier needs to run the SDK's worker flow for an item.

    `client` talks to the Managed Agents API (base URL set; its own API key is
    never used by the worker flow, which authenticates with the item's
    sessions token or the environment key).
    """

    client: AsyncAnthropic
    environment_key: Secret | None
    max_idle: float


class Sandbox(abc.ABC):
    """One sandbox serving one claimed work item of one session."""

    tier: ClassVar[str]

    def __init__(self, item: ClaimedItem, workspace: Path) -> None:
        self.item = item
        self.workspace = workspace
        self.first_result_at: float | None = None  # time.monotonic() of the first tool result
        self.on_first_result: Callable[[float], None] | None = None

    def note_tool_result(self) -> None:
        """Tiers call this after each tool result; the first one marks the end of the cold start."""
        if self.first_result_at is None:
            self.first_result_at = time.monotonic()
            if self.on_first_result is not None:
                self.on_first_result(self.first_result_at)

    @property
    def session_id(self) -> str:
        return self.item.session_id

    @abc.abstractmethod
    async def serve(self, worker: WorkerSettings) -> None:
        """Serve the session until the worker flow ends; release everything before returning.

        Raises on failure (the caller records the session as failed with the
        error's message); returns normally when the flow ended on its own.
        Cancellation (a stop) must also release everything.
        """

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """What the sandbox is doing, for the REST API and the dashboard (no secrets)."""

    @property
    def capabilities(self) -> frozenset[str]:
        """What the sandbox offers, e.g. {"python", "files", "bash", "terminal"}."""
        return frozenset()


class Tier(LoggingConfigurable):
    """A kind of sandbox: makes sandboxes, may keep warm resources between them."""

    name: ClassVar[str]

    async def start(self) -> None:
        """Start background work (e.g. fill a warm pool). Called once when the server starts."""

    async def close(self) -> None:
        """Release everything the tier holds. Called once when the server stops."""

    def create(self, item: ClaimedItem, workspace: Path) -> Sandbox:
        """A sandbox for `item`, not yet serving."""
        raise NotImplementedError

    def tools_for_agent(self) -> list[dict[str, Any]]:
        """The agent `tools` definition that fits this tier (what its sandboxes can run)."""
        return [{"type": "agent_toolset_20260401"}]


async def finish_shielded(aw: Awaitable[T]) -> T:
    """Run `aw` to completion even if the calling task is cancelled (again) meanwhile; then re-raise that."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                if task.cancelled():
                    raise
                result = task.result()
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
