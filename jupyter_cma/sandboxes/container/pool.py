"""Containers started before a session asks for one: the warm pool, and standby containers.

The warm pool keeps `pool_size` started containers (imports done, each with a
fresh volume) for sessions that have no volume yet: the pool container's volume
becomes the session's. A resumed session needs its own volume, and a running
container cannot be given another one: with `standby_seconds`, when a
session's container ends idle, another is started on its volume at once and
waits for the session's next turn, which then starts as fast as from the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, TypedDict

from ...tasks import BackgroundTasks
from ..base import finish_shielded
from .engine import DockerEngine
from .slots import ContainerFailed, Slot, describe_exit

if TYPE_CHECKING:
    from ...store import Store

log = logging.getLogger(__name__)


class PoolStatus(TypedDict):
    """The warm pool now (`GET cma/api/status`: `tiers.container.pool`)."""

    size: int
    ready: int
    starting: int
    last_error: str | None


class StandbyStatus(TypedDict):
    """Standby containers now (`GET cma/api/status`: `tiers.container.standby`)."""

    seconds: float
    max: int
    ready: int
    starting: int


class WarmPool(DockerEngine):
    """A part of `ContainerTier` (a mixin, see `tier.py`): keeps `pool_size` warm containers."""

    # What this part uses of the tier (its settings and state, set in ContainerTier).
    pool_size: int
    default_size: str
    last_start_error: str | None
    _pool: list[Slot]
    _filling: int
    _closed: bool
    _chores: BackgroundTasks  # clean-ups started from callbacks; close() lets them finish
    _wake: asyncio.Event | None
    _refill_not_before: float

    async def _fill(self) -> None:
        """Keep `pool_size` warm containers; back off while starting them fails."""
        delay = 1.0
        while not self._closed:
            # A take has just started a session: its container gets the engine first (the periodic tick too waits).
            if (wait := self._refill_not_before - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            while len(self._pool) + self._filling < self.pool_size and not self._closed:
                self._filling += 1
                try:
                    slot = await self._new_slot(self.default_size)
                    await self._start(slot)
                    await self._wait_ready(slot)
                    if slot.exited.done():
                        raise ContainerFailed(f"a pooled container ended: {describe_exit(slot.exited.result())}")
                    self._pool.append(slot)
                    slot.exited.add_done_callback(lambda _, s=slot: self._drop_from_pool(s))
                    delay = 1.0
                    self.last_start_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.last_start_error = str(exc)[:1000]
                    log.warning("container tier: could not start a pooled container: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                finally:
                    self._filling -= 1
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)

    def _drop_from_pool(self, slot: Slot) -> None:
        if slot in self._pool:
            self._pool.remove(slot)
            log.warning("container tier: pooled container %s ended while waiting: %s", slot.name, describe_exit(slot.exited.result()))
            self._chores.spawn(self._discard(slot, keep_volume=False))
            if self._wake is not None:
                self._wake.set()

    def pool_status(self) -> PoolStatus:
        return {"size": self.pool_size, "ready": len(self._pool), "starting": self._filling, "last_error": self.last_start_error}

    async def wait_pool(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._pool) >= self.pool_size:
                return True
            await asyncio.sleep(0.05)
        return False


class Standby(DockerEngine):
    """A part of `ContainerTier` (a mixin, see `tier.py`): a container kept started on a sleeping session's volume."""

    # What this part uses of the tier (its settings and state, set in ContainerTier).
    standby_seconds: float
    standby_max: int
    store: Store | None
    _standby: dict[str, asyncio.Task[Slot]]  # session id → its standby container, started or starting
    _closed: bool
    _chores: BackgroundTasks  # clean-ups started from callbacks; close() lets them finish

    def keep_standby(self, session_id: str, size: str) -> None:
        """The session's container ended idle: with `standby_seconds`, start one on its volume for its next turn."""
        if self.standby_seconds <= 0 or self._closed or session_id in self._standby:
            return
        row = self.store.session(session_id) if self.store is not None else None
        if row is None or row["status"] == "ended" or not row.get("workspace_volume"):
            return
        while len(self._standby) >= self.standby_max:
            oldest = self._standby.pop(next(iter(self._standby)))
            self._chores.spawn(self._let_go(oldest))
        self._standby[session_id] = asyncio.ensure_future(self._start_standby(session_id, size, row["workspace_volume"]))

    async def _start_standby(self, session_id: str, size: str, volume: str) -> Slot:
        task = asyncio.current_task()
        try:
            slot = await self._new_slot(size, volume=volume, session_id=session_id, standby=True)
        except Exception as exc:
            self._failed_standby(session_id, task, exc)
            raise
        try:
            await self._start(slot)
            await self._wait_ready(slot)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._failed_standby(session_id, task, exc)
            await finish_shielded(self._discard(slot))
            raise
        slot.expiry = asyncio.get_running_loop().call_later(
            self.standby_seconds, lambda: self._chores.spawn(self._drop_standby(session_id, only=task)))
        slot.exited.add_done_callback(lambda _: self._chores.spawn(self._drop_standby(session_id, only=task)))
        return slot

    def _failed_standby(self, session_id: str, task: asyncio.Task[Any] | None, exc: Exception) -> None:
        """A standby container that could not start: the session resumes on a new one, as without standby."""
        log.warning("container tier: session %s: no standby container: %s", session_id, exc)
        if self._standby.get(session_id) is task:
            del self._standby[session_id]

    async def _take_standby(self, session_id: str, size: str, volume: str) -> Slot | None:
        """The session's standby container (waited for if still starting) when it is on `volume` and of `size`."""
        task = self._standby.pop(session_id, None)
        if task is None:
            return None
        try:
            slot = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                return None  # the standby container was let go meanwhile
            self._chores.spawn(self._let_go(task))  # this take was cancelled (a stop): not left running
            raise
        except Exception:
            return None  # logged where it failed
        if slot.expiry is not None:
            slot.expiry.cancel()
        if slot.exited.done() or slot.volume != volume or slot.size != size:
            await self._discard(slot)
            return None
        slot.standby_for, slot.session_id = None, session_id
        return slot

    async def _drop_standby(self, session_id: str, only: asyncio.Task[Slot] | None = None) -> None:
        """Let the session's standby container go (its volume stays); with `only`, just if it is that one."""
        task = self._standby.get(session_id)
        if task is None or (only is not None and task is not only):
            return
        del self._standby[session_id]
        await self._let_go(task)

    async def _let_go(self, task: asyncio.Task[Slot]) -> None:
        if not task.done():
            task.cancel()  # it removes what it made
            return
        if task.cancelled() or task.exception() is not None:
            return
        slot = task.result()
        if slot.expiry is not None:
            slot.expiry.cancel()
        await self._discard(slot)

    def standby_status(self) -> StandbyStatus:
        ready = [t for t in self._standby.values() if t.done() and not t.cancelled() and t.exception() is None]
        return {"seconds": self.standby_seconds, "max": self.standby_max, "ready": len(ready),
                "starting": len(self._standby) - len(ready)}
