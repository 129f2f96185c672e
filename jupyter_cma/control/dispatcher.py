"""Learning of work: webhook-triggered drains, a safety drain on a timer, or a long-poll loop.

Both modes claim items with the SDK's own poller (which acks each item) and
hand every claimed item to one router. Drains never overlap: a request that
arrives while a drain runs makes that drain go round once more, so a burst of
duplicate webhooks costs one extra pass, not one pass each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..anthropic_api import Secret

log = logging.getLogger(__name__)

Router = Callable[[Any], Awaitable[None]]


class Dispatcher:
    """Claims work items of one environment and routes each one."""

    def __init__(
        self,
        *,
        client: AsyncAnthropic,
        environment_id: str,
        environment_key: Secret,
        route: Router,
        reclaim_older_than_ms: int = 5000,
        worker_id: str | None = None,
    ) -> None:
        self._client = client
        self._environment_id = environment_id
        self._environment_key = environment_key
        self._route = route
        self._reclaim_older_than_ms = reclaim_older_than_ms
        self._worker_id = worker_id
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_again = False
        self.drains = 0  # completed passes, for status and tests
        self.claimed = 0

    def _poller(self, **kw: Any) -> Any:
        return self._client.beta.environments.work.poller(
            environment_id=self._environment_id,
            environment_key=self._environment_key.reveal(),
            auto_stop=False,  # each sandbox owns its item's stop
            worker_id=self._worker_id,
            **kw,
        )

    def request_drain(self) -> asyncio.Task[None]:
        """Drain the queue in the background; coalesces with a drain already running."""
        self._drain_again = True
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.ensure_future(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        while self._drain_again:
            self._drain_again = False
            try:
                async for item in self._poller(drain=True, block_ms=None, reclaim_older_than_ms=self._reclaim_older_than_ms):
                    self.claimed += 1
                    await self._route_safely(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed pass is retried by the next request or the safety timer
                log.warning("drain of environment %s failed: %s", self._environment_id, exc)
            self.drains += 1

    async def _route_safely(self, item: Any) -> None:
        try:
            await self._route(item)
        except Exception:
            log.exception("routing work item %s failed", getattr(item, "id", "?"))

    async def safety_drains(self, interval: float) -> None:
        """Drain every `interval` seconds, so a lost webhook delivery costs seconds, not a stuck session."""
        while True:
            await asyncio.sleep(interval)
            await self.request_drain()

    async def poll_forever(self) -> None:
        """Poll mode: long-poll the queue and route items as they come (the SDK sleeps between empty polls)."""
        while True:
            try:
                async for item in self._poller(drain=False, reclaim_older_than_ms=self._reclaim_older_than_ms):
                    self.claimed += 1
                    await self._route_safely(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. a 401 ends the SDK's poller: report, back off, try again
                log.error("polling environment %s failed: %s; retrying in 30 s", self._environment_id, exc)
                await asyncio.sleep(30)

    async def close(self) -> None:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
