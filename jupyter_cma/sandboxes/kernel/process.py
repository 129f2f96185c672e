"""One kernel process: an ipykernel this server started, the code it runs, and its end.

Kernels are ipykernel processes started with jupyter_client's
`AsyncKernelManager` over the `ipc` transport: the connection file and the
five unix sockets live in a per-kernel directory under `kernel_dir` (mode
0700), never on a TCP port. The tier (`tier.py`) lays out that directory and
starts the process; from then on a `Kernel` owns it: `execute` runs code like a
notebook cell and returns an `Execution` (its nbformat v4 outputs and how the
call ended), `shutdown` kills the process group and removes the directory.

The kernel and everything it spawns carry `JUPYTER_CMA_KERNEL_DIR=<its
directory>` (`ENV_MARKER`) in their environment, and `_LIVE_DIRS` names the
directories kernels of this process hold, so that what a crashed server left
can be told apart and killed (`orphans.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import isolation as iso
from ..limits import Counters, Limits, SandboxCgroup, frozen

if TYPE_CHECKING:
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

log = logging.getLogger(__package__)  # the tier's one logger, as named before its modules were split

INTERRUPT_GRACE = 5.0  # seconds an interrupted call gets to stop before the kernel is replaced
RECORD_LIMIT = 1024 * 1024  # characters of one stream output kept in a recorded cell
DEATH_POLL = 0.1  # seconds between checks that the kernel process still runs during a call
KERNEL_SHUTDOWN_TIMEOUT = 10.0
ENV_MARKER = "JUPYTER_CMA_KERNEL_DIR"
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--HistoryManager.enabled=False"]
_LIVE_DIRS: set[str] = set()  # kernel directories held by a KernelTier of this process


class KernelStartError(RuntimeError):
    """A kernel could not be started or did not become ready."""


@dataclass


class Execution:
    """What one execute request produced, as nbformat v4 outputs."""

    code: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"  # ok | error | timeout | lost (timed out, then ignored the interrupt) | died | failed
    execution_count: int | None = None
    error: dict[str, Any] | None = None  # the error output when status is "error"
    detail: str = ""  # why the channels failed (status "failed")
    _clear_pending: bool = False

    def add(self, msg: dict[str, Any]) -> None:
        """output_hook for execute_interactive: every IOPub message of this request."""
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self.outputs.clear()
            return
        if kind not in ("stream", "display_data", "execute_result", "error"):
            return  # status, execute_input, update_display_data, comm messages
        if self._clear_pending:
            self.outputs.clear()
            self._clear_pending = False
        if kind == "stream":
            last = self.outputs[-1] if self.outputs else None
            if last is not None and last["output_type"] == "stream" and last["name"] == content["name"]:
                last["text"] = _keep_tail(last["text"] + content["text"], RECORD_LIMIT)
            else:
                self.outputs.append({"output_type": "stream", "name": content["name"], "text": _keep_tail(content["text"], RECORD_LIMIT)})
        elif kind == "display_data":
            self.outputs.append({"output_type": "display_data", "data": dict(content.get("data", {})), "metadata": dict(content.get("metadata", {}))})
        elif kind == "execute_result":
            self.outputs.append({
                "output_type": "execute_result",
                "execution_count": content.get("execution_count"),
                "data": dict(content.get("data", {})),
                "metadata": dict(content.get("metadata", {})),
            })
        else:
            self.error = {
                "output_type": "error",
                "ename": str(content.get("ename", "")),
                "evalue": str(content.get("evalue", "")),
                "traceback": [str(line) for line in content.get("traceback", [])],
            }
            self.outputs.append(self.error)


class Kernel:
    """One ipykernel process over ipc, with its connection file and sockets in `directory`.

    A sandboxed kernel (`isolation == "bubblewrap"`) also has a host-only
    `companion` directory (`<directory>.ws`: its workspace mount, links and
    adoption marker), works in `workdir` (the path of its workspace inside the
    sandbox) and reaches the network only through `egress_socket`.
    """

    def __init__(
        self,
        directory: Path,
        manager: AsyncKernelManager,
        client: AsyncKernelClient,
        *,
        isolation: str = "none",
        companion: Path | None = None,
        workspace: Path | None = None,
        size: str | None = None,
        limits: Limits | None = None,
        cgroup: SandboxCgroup | None = None,
    ) -> None:
        self.directory = directory
        self.origin = "new"  # "pool" once a warm pool hands it to a session
        self.manager = manager
        self.client = client
        self.isolation = isolation
        self.companion = companion
        self.workspace = workspace  # the session workspace its working directory is, once known
        self.size = size  # the instance size whose limits are in force (sandboxed kernels)
        self.limits = limits
        self.cgroup = cgroup  # its control group, where the host offers them (else rlimits hold)
        self.egress_session: str | None = None  # the session egress_hook was told this kernel serves
        self.started_at = time.time()
        self.returncode: int | None = None
        self._shut = False

    @property
    def workdir(self) -> str | None:
        """The kernel's working directory as the kernel sees it (None: not sandboxed, it enters the workspace itself)."""
        return None if self.companion is None else str(iso.companion_paths(self.companion)[0])

    @property
    def egress_socket(self) -> Path | None:
        """The host Unix socket the sandbox's proxy port (127.0.0.1:3128 inside) is bridged to."""
        return None if self.companion is None else self.directory / iso.EGRESS_SOCKET

    @property
    def id(self) -> str:
        return self.directory.name

    @property
    def pid(self) -> int | None:
        provisioner = self.manager.provisioner
        return getattr(provisioner, "pid", None)

    @property
    def connection_file(self) -> Path:
        return Path(self.manager.connection_file)

    @property
    def connection_info(self) -> dict[str, Any]:
        info = dict(self.manager.get_connection_info())
        info.pop("key", None)
        info.pop("session", None)
        return info

    def alive(self) -> bool:
        """Is the kernel process still running? (A non-blocking waitpid; cheap.)"""
        process = getattr(self.manager.provisioner, "process", None)
        if process is None:
            return False
        code = process.poll()
        if code is not None:
            self.returncode = code
            return False
        return True

    async def execute(self, code: str, *, timeout: float, silent: bool = False) -> Execution:
        """Run `code` like a notebook cell; never raises for what the code or the kernel does.

        The result's status says how it ended: "ok"/"error" (the code ran),
        "timeout" (interrupted after `timeout`, the kernel survived), "lost"
        (it ignored the interrupt), "died" (the process exited), "failed" (the
        channels broke). After "lost", "died" or "failed" the kernel is unusable.
        """
        ex = Execution(code)
        task = asyncio.ensure_future(
            self.client.execute_interactive(
                code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=False, output_hook=ex.add
            )
        )
        try:
            outcome = await self._race(task, timeout)
            if outcome == "timeout":
                with contextlib.suppress(Exception):
                    await self.manager.interrupt_kernel()
                outcome = await self._race(task, INTERRUPT_GRACE)
                ex.status = {"done": "timeout", "timeout": "lost"}.get(outcome, outcome)
            elif outcome != "done":
                ex.status = outcome
        except BaseException:
            # Cancelled from outside (a stop, or the SDK's own tool timeout): stop the code too,
            # so the kernel is idle for whoever uses it next.
            task.cancel()
            with contextlib.suppress(Exception):
                if self.alive():
                    await self.manager.interrupt_kernel()
            raise
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return ex
        if task.cancelled() or task.exception() is not None:
            if ex.status == "running" or ex.status == "timeout":
                exc = None if task.cancelled() else task.exception()
                ex.status = "died" if not self.alive() else "failed"
                ex.detail = f"{type(exc).__name__}: {exc}" if exc else "cancelled"
            return ex
        reply = task.result()["content"]
        ex.execution_count = reply.get("execution_count")
        if ex.status == "running":
            ex.status = "ok" if reply.get("status") == "ok" else "error"
            if ex.status == "error" and ex.error is None:
                # An error reply without an error output (e.g. an aborted request).
                ex.error = {"output_type": "error", "ename": str(reply.get("ename", "Error")), "evalue": str(reply.get("evalue", "")), "traceback": list(reply.get("traceback", []))}
                ex.outputs.append(ex.error)
        return ex

    async def _race(self, task: asyncio.Future[Any], timeout: float) -> str:
        """Wait for `task` until `timeout`, watching the process: "done", "died" or "timeout"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return "timeout"
            done, _ = await asyncio.wait({task}, timeout=min(DEATH_POLL, remaining))
            if done:
                return "done"
            if not self.alive():
                # The reply may have been on its way; give the channels a moment before calling it dead.
                done, _ = await asyncio.wait({task}, timeout=DEATH_POLL)
                return "done" if done else "died"

    async def shutdown(self) -> None:
        """Kill the kernel (and its process group) and remove its directory. Idempotent, bounded."""
        if self._shut:
            return
        self._shut = True
        try:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
            try:
                await asyncio.wait_for(self.manager.shutdown_kernel(now=True), KERNEL_SHUTDOWN_TIMEOUT)
            except Exception:
                _kill_group(self.pid)
        finally:
            _LIVE_DIRS.discard(str(self.directory))
            await asyncio.to_thread(_remove_kernel_dirs, self.directory, self.companion, self.cgroup)

    def counters(self) -> Counters:
        """How often this sandbox ran into its limits so far (only with a control group; else all 0)."""
        return self.cgroup.counters() if self.cgroup is not None else Counters()

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """Nothing in this kernel's sandbox runs inside the block (see limits.frozen). Raises OSError."""
        return frozen(self.cgroup, self.pid)


def _remove_kernel_dirs(directory: Path, companion: Path | None, cgroup: SandboxCgroup | None = None) -> None:
    """The companion first (putting back a half-moved workspace), so it never outlives the kernel directory."""
    if cgroup is not None:
        cgroup.remove()
    if companion is not None:
        try:
            iso.release_companion(companion)
        except OSError as exc:  # the files stay in the companion; nothing is deleted
            log.error("could not put back the workspace files left in %s: %s", companion, exc)
    shutil.rmtree(directory, ignore_errors=True)


@functools.cache


def _manager_class() -> type[AsyncKernelManager]:
    """AsyncKernelManager running this interpreter's ipykernel, whatever kernelspecs are installed.

    Its `kernel_argv` (set per instance before start_kernel) is the command:
    the plain kernel, or the kernel inside its sandbox.
    """
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class SandboxKernelManager(AsyncKernelManager):
        kernel_argv: list[str] = KERNEL_ARGV
        # "message" for sandboxed kernels: an interrupt_request on the control channel (the kernel then
        # signals itself); a SIGINT to the launcher's process group would not reach a sandbox in its own session.
        cma_interrupt_mode: str = "signal"
        _cma_spec: KernelSpec | None = None

        @property
        def kernel_spec(self) -> KernelSpec:  # type: ignore[override]
            if self._cma_spec is None or self._cma_spec.argv != self.kernel_argv:
                self._cma_spec = KernelSpec(
                    argv=list(self.kernel_argv),
                    display_name="Python 3 (ipykernel)",
                    language="python",
                    interrupt_mode=self.cma_interrupt_mode,
                )
            return self._cma_spec

    return SandboxKernelManager


def _kill_group(pid: int | None) -> None:
    """SIGKILL `pid` and, when it leads one, its process group."""
    if not pid:
        return
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _keep_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = "[output truncated]\n"
    tail = text[len(text) - limit:]
    return tail if tail.startswith(marker) else marker + tail
