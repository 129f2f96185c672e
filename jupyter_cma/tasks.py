"""Background tasks with an owner: each one is held until it ends, and its owner ends them all when it closes.

A bare `asyncio.ensure_future` is a task nobody can stop (and that asyncio may collect while it runs); every
part of the server that starts work it does not await itself holds it in a `BackgroundTasks` instead, and
closes that in its own `close()`: the extension's, the session manager's, a tier's, the egress proxy's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class BackgroundTasks:
    """A set of tasks one owner started; `close()` cancels (or lets finish) and awaits them, bounded."""

    def __init__(self, owner: str) -> None:
        self.owner = owner  # named in the warning about tasks that would not end
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, aw: Awaitable[T]) -> asyncio.Task[T]:
        """Run `aw` as a task held here until it ends."""
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: a background task failed: %r", self.owner, task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 10.0, *, cancel: bool = True) -> None:
        """End every task (and any they start meanwhile): cancelled, or with `cancel=False` (clean-ups that must
        not stop half-way) let run to their end; either way awaited for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            tasks = list(self._tasks)
            if cancel:
                for task in tasks:
                    task.cancel()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
        if self._tasks:
            log.warning("%s: %d background task(s) did not end within %.0f s", self.owner, len(self._tasks), timeout)
