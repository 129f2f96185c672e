"""The kernel tier's warm pool: kernels started before a session needs one, and handing one over to a session.

The tier keeps `pool_size` kernels warm so a session does not wait for Python
to start. A pooled kernel is started before its session is known: a
sandboxed one works in an empty directory bound into its sandbox, and taking
the kernel for a session moves the session's files into that directory and
renames it to the session's workspace path (`isolation.adopt_workspace`), so
the workspace stays one real directory at one path, seen by the file tools
(in this process) and the kernel alike. Kernels are never reused across
sessions: a taken kernel is replaced `REFILL_DELAY` seconds later.

`WarmPool` is that part of `KernelTier`: the tier (`tier.py`) holds the
settings, probes the isolation and says how one kernel starts
(`_start_kernel`); the pool decides when kernels start and which one a
session gets.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import isolation as iso
from ..base import REFILL_DELAY, finish_shielded
from ..limits import Limits
from ..sizes import SizedTier
from .process import Kernel, KernelStartError

if TYPE_CHECKING:
    from ..limits import CgroupHost


class WarmPool(SizedTier):
    """The warm pool of `KernelTier`: `take_kernel` hands out a ready kernel (or starts one), `release_kernel` ends it."""

    # What the tier (tier.py) provides: its settings, and what start() found out.
    pool_size: int
    kernel_dir: str
    last_start_error: str | None
    _own_tempdir: Path | None
    _started: bool
    _closed: bool
    _isolation_error: str | None  # kernels are refused with this
    _cgroups: CgroupHost | None  # where sandboxes get control groups (pool kernels can then be resized)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: list[Kernel] = []
        self._in_use: set[Kernel] = set()
        self._filling: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[Kernel]] = []
        self._refill_handle: asyncio.TimerHandle | None = None
        self._fill_failures = 0
        self._warned_cross_device = False

    async def _start_kernel(self, workspace: Path | None = None, size: str | None = None) -> Kernel:
        """A new ready kernel (working in `workspace` when given, with the limits of `size`): the tier's to say how."""
        raise NotImplementedError

    def _links(self, workspace: Path) -> bool:
        """Can the kernel reach `workspace` under its own path? (The tier's sandbox layout says.)"""
        raise NotImplementedError

    # ------------------------------------------------------------------ the pool

    def pool_status(self) -> dict[str, Any]:
        return {
            "pool_size": self.pool_size,
            "ready": len(self._pool),
            "starting": len(self._filling),
            "in_use": len(self._in_use),
            "kernel_dir": self.kernel_dir or (str(self._own_tempdir) if self._own_tempdir else None),
            "last_start_error": self.last_start_error,
            **self.isolation_status(),
        }

    @property
    def pooled(self) -> list[Kernel]:
        """The warm kernels now in the pool (read-only view)."""
        return list(self._pool)

    async def wait_pool(self, timeout: float = 60.0) -> bool:
        """Wait until the pool holds `pool_size` ready kernels; False if that did not happen in time."""
        deadline = time.monotonic() + timeout
        while len(self._pool) < self.pool_size:
            if time.monotonic() > deadline or self._closed:
                return False
            await asyncio.sleep(0.02)
        return True

    def _schedule_refill(self, delay: float) -> None:
        if self._closed:
            return
        when = asyncio.get_running_loop().time() + delay
        if self._refill_handle is not None:
            if self._refill_handle.when() <= when:
                return
            self._refill_handle.cancel()
        self._refill_handle = asyncio.get_running_loop().call_at(when, self._refill)

    def _refill(self) -> None:
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        if self._closed or not self._started or self._isolation_error:
            return
        missing = self.pool_size + len(self._waiters) - len(self._pool) - len(self._filling)
        for _ in range(max(0, missing)):
            task = asyncio.ensure_future(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            kernel = await self._start_kernel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fill_failures += 1
            retry = min(60.0, 2.0**self._fill_failures)
            self.log.warning("kernel tier: could not start a pool kernel (retrying in %g s): %s", retry, exc)
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(KernelStartError(str(exc)))
            self._waiters.clear()
            self._schedule_refill(retry)
            return
        self._fill_failures = 0
        if self._closed:
            await kernel.shutdown()
            return
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                self._in_use.add(kernel)
                waiter.set_result(kernel)
                return
        self._pool.append(kernel)

    async def take_kernel(self, workspace: Path | None = None, size: str | None = None) -> Kernel:
        """A ready kernel: from the pool when one is warm, else a new one.

        With `workspace`, a sandboxed kernel's working directory becomes that
        workspace (a pool kernel's mount is adopted as the workspace; a new
        kernel is started with the workspace bound). Kernels that are not
        sandboxed enter the workspace themselves (KernelSandbox does that).
        `size` (default: default_size) is the instance size whose limits the
        sandbox gets: pool kernels have default_size and are resized when
        they have a control group; without one, another size starts a kernel
        of its own. The pool is refilled REFILL_DELAY seconds later.
        """
        size = size or self.default_size
        if self._closed:
            raise RuntimeError("the kernel tier is closed")
        if not self._started:
            await self.start()
        if self._isolation_error:
            raise KernelStartError(self._isolation_error)
        try:
            while self._pool and (size == self.default_size or self._cgroups is not None):
                kernel = self._pool.pop(0)
                if kernel.alive():
                    self._in_use.add(kernel)
                    if await self._hand_over_or_release(kernel, workspace, size):
                        kernel.origin = "pool"
                        return kernel
                    self._in_use.discard(kernel)
                    self._pool.insert(0, kernel)  # still good for a workspace on its own file system
                    break
                self.log.warning("kernel tier: pool kernel %s had exited (code %s); discarded", kernel.id, kernel.returncode)
                await kernel.shutdown()
            else:
                if self._filling and len(self._waiters) < len(self._filling) and (size == self.default_size or self._cgroups is not None):
                    # A pool kernel is already starting: take it when ready rather than start one more.
                    waiter: asyncio.Future[Kernel] = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        kernel = await waiter
                    except KernelStartError:
                        pass  # that start failed; try one of our own below
                    except asyncio.CancelledError:
                        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                            await self.release_kernel(waiter.result())
                        raise
                    else:
                        if await self._hand_over_or_release(kernel, workspace, size):
                            kernel.origin = "pool"
                            return kernel
                        self._in_use.discard(kernel)
                        self._pool.append(kernel)
            kernel = await self._start_kernel(workspace, size)
            self._in_use.add(kernel)
            return kernel
        finally:
            self._schedule_refill(REFILL_DELAY)

    # ------------------------------------------------------------------ handing a kernel over

    async def _hand_over(self, kernel: Kernel, workspace: Path | None) -> bool:
        """Make `workspace` a pooled sandboxed kernel's working directory; False when it cannot be moved there.

        False (the kernel is untouched) when the workspace is on another file
        system than kernel_dir: the caller starts a kernel with it bound instead.
        """
        if workspace is None or kernel.companion is None or kernel.workspace is not None:
            return True
        try:
            # Never abandoned half-way (a cancel waits for it): the files are either moved or not.
            await finish_shielded(asyncio.to_thread(
                iso.adopt_workspace, kernel.companion, Path(os.path.abspath(workspace)), link=self._links(workspace)
            ))
        except iso.CrossDevice as exc:
            if not self._warned_cross_device:
                self._warned_cross_device = True
                self.log.warning(
                    "kernel tier: workspaces cannot be moved into pooled kernels (%s); such sessions get a kernel "
                    "started on demand. Put kernel_dir on the same file system as the workspaces to use the pool.", exc
                )
            return False
        except OSError as exc:
            await finish_shielded(kernel.shutdown())
            raise KernelStartError(f"could not give the kernel its workspace: {exc}") from exc
        kernel.workspace = Path(workspace)
        return True

    async def _hand_over_or_release(self, kernel: Kernel, workspace: Path | None, size: str) -> bool:
        """Hand the session's workspace over to a ready kernel, with the limits of `size`; False if it cannot move
        there (the kernel stays good for another workspace). A failure releases the kernel."""
        try:
            if kernel.cgroup is not None and kernel.size != size:
                limits = Limits.from_spec(self.instance_sizes[size])
                await asyncio.to_thread(kernel.cgroup.apply, limits)
                kernel.size, kernel.limits = size, limits
            return await self._hand_over(kernel, workspace)
        except BaseException:
            await finish_shielded(self.release_kernel(kernel))
            raise

    async def release_kernel(self, kernel: Kernel) -> None:
        """Shut down a kernel taken with take_kernel (kernels are never reused across sessions)."""
        self._in_use.discard(kernel)
        await kernel.shutdown()
