"""The kernel tier's sandbox: one claimed work item served by the SDK's worker flow, its tool calls in a kernel.

A `KernelSandbox` serves one claimed work item with the SDK's own worker flow
(`EnvironmentWorker.handle_item`) in this process. The agent gets the SDK's
file tools (`read`, `write`, `edit`, `glob`, `grep`, confined to the session's
workspace) and a custom `python` tool that runs code in the session's kernel
like a notebook cell: variables persist between calls, the kernel's working
directory is the workspace, rich output (images) comes back as image blocks
(`results.py`). A kernel that dies is replaced by a fresh one in the same
workspace at the next call. Every python call and every `write` / `edit` is
recorded as a notebook cell (`recording.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from ..base import ClaimedItem, Sandbox, SandboxStatus, WorkerSettings, finish_shielded
from ..limits import Counters, human_bytes
from .process import INTERRUPT_GRACE, Execution, Kernel, KernelStartError
from .recording import Recorder, _code_cell, _describe_edit, _describe_write
from .results import _plain_error, _tool_content, _tool_error

if TYPE_CHECKING:
    from anthropic.lib.tools import BetaAsyncFunctionTool
    from anthropic.lib.tools.agent_toolset import AgentToolContext

    from .tier import KernelTier

log = logging.getLogger(__package__)  # the tier's one logger, as named before its modules were split

# The SDK's per-call bound (anthropic.lib.tools._beta_session_runner.TOOL_TIMEOUT).
# A python call must end (including the interrupt grace) before it fires, or
# the SDK cancels the call and posts a bare "timed out" instead of our error.
SDK_TOOL_TIMEOUT = 150.0
FILE_TOOLS = ("read", "write", "edit", "glob", "grep")

STOP_TIMEOUT = 30.0  # seconds a stop waits for the worker flow to post its last result and end
STOPPED = "the session's sandbox was stopped while this call ran; its Python kernel was shut down"
KERNEL_DIED = (
    "the Python kernel died while running this call; its state is lost — "
    "the next call starts a fresh kernel in the same workspace"
)


def python_tool_description(execute_timeout: float) -> str:
    return (
        "Run Python code in a persistent IPython kernel, like a notebook cell. Variables, imports and "
        "functions persist between calls. The working directory is the session's workspace: the same "
        "files the read, write and edit tools see. Returns what the code prints (stdout and stderr), the "
        "value of the last expression, rich display output (images, e.g. matplotlib figures, come back as "
        "images) and the traceback if it raises. IPython syntax (%magics, !shell commands) works. A call "
        f"that runs longer than {execute_timeout:g} s is interrupted (the kernel and its variables are kept). "
        "If the kernel dies, the next call starts a fresh one: files stay, variables are lost."
    )


PYTHON_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {
            "type": "string",
            "description": "The Python code to run. The value of the last expression is shown, as in a notebook cell.",
        }
    },
    "required": ["code"],
}


class KernelProcessStatus(TypedDict):
    """The kernel a sandbox runs its python calls in."""

    id: str
    pid: int | None
    alive: bool


class KernelSandboxStatus(SandboxStatus, total=False):
    """What a kernel sandbox is doing (REST `GET cma/api/sessions/{id}`: `sandbox`): the SandboxStatus keys and these."""

    workspace: str
    egress_socket: str | None  # the host Unix socket its proxy port is bridged to (sandboxed kernels)
    kernel: KernelProcessStatus | None
    limits: dict[str, Any] | None  # the limits of `size` in force, and what enforces them ("cgroup" or "rlimits")
    limit_hits: list[str]  # what the last calls that ran into a limit were told (at most 10)
    calls: int
    errors: int
    kernels_started: int
    kernel_restarts: int
    kernel_deaths: int
    restarted: bool
    kernel_error: str | None


class KernelSandbox(Sandbox):
    """Serves one claimed item: the SDK's worker flow in this process, tool calls in a kernel."""

    tier: ClassVar[str] = "kernel"
    # The tier a sandbox made without one serves with, privately (no pool): KernelTier, set by tier.py. The tier
    # makes sandboxes, so it imports this module; this module names it only for type checking.
    private_tier_class: ClassVar[type[KernelTier]]

    def __init__(
        self,
        item: ClaimedItem,
        workspace: Path,
        *,
        tier: KernelTier | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        super().__init__(item, Path(workspace))
        self._tier = tier
        self._own_tier = tier is None  # a private tier (no pool) for a sandbox made without one
        self.recorder = recorder
        self._state = "created"
        self._kernel: Kernel | None = None
        self._preparing: asyncio.Task[Kernel] | None = None
        self._lock = asyncio.Lock()
        self._file_lock = asyncio.Lock()
        self._calls = 0
        self._how_started: str | None = None  # "pool" or "new": how the session's first kernel came
        self._errors = 0
        self._kernels_started = 0
        self._kernel_deaths = 0
        self._kernel_error: str | None = None
        self._limit_hits: list[str] = []  # what each call that ran into a limit was told
        self._size: str | None = None  # the instance size of its (latest) kernel, and the limits in force
        self._limits: dict[str, Any] | None = None
        self._error: str | None = None
        self._served = False
        self._stopping = False
        self._flow: asyncio.Future[None] | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"python", "files"})

    @property
    def kernel(self) -> Kernel | None:
        return self._kernel

    @property
    def isolation(self) -> str:
        """"bubblewrap" or "none": how this sandbox's kernel runs (or will, before it has one)."""
        if self._kernel is not None:
            return self._kernel.isolation
        return (self._tier.effective_isolation if self._tier is not None else None) or "none"

    def status(self) -> KernelSandboxStatus:
        kernel = self._kernel
        return {
            "tier": self.tier,
            "state": self._state,
            "session_id": self.session_id,
            "work_id": self.item.work_id,
            "workspace": str(self.workspace),
            "isolation": self.isolation,
            "start": self._how_started,
            "egress_socket": None if kernel is None or kernel.egress_socket is None else str(kernel.egress_socket),
            "kernel": None if kernel is None else {"id": kernel.id, "pid": kernel.pid, "alive": kernel.alive()},
            "size": self._size,
            "limits": self._limits,
            "limit_hits": list(self._limit_hits[-10:]),
            "calls": self._calls,
            "errors": self._errors,
            "kernels_started": self._kernels_started,
            "kernel_restarts": max(0, self._kernels_started - 1),
            "kernel_deaths": self._kernel_deaths,
            "restarted": self._kernels_started > 1,
            "kernel_error": self._kernel_error,
            "error": self._error,
        }

    # ------------------------------------------------------------------ serving

    async def serve(self, worker: WorkerSettings) -> None:
        from anthropic.lib.environments import EnvironmentWorker

        if self._served:
            raise RuntimeError("a KernelSandbox serves one work item; create a new one")
        self._served = True
        self._state = "starting"
        if self._tier is None:
            self._tier = self.private_tier_class(pool_size=0)
        try:
            await asyncio.to_thread(self.workspace.mkdir, mode=0o700, parents=True, exist_ok=True)
            # The kernel gets ready while the worker flow connects; the first python call waits for it.
            self._preparing = asyncio.ensure_future(self._prepare_kernel())
            key = worker.environment_key.reveal() if worker.environment_key is not None else None
            flow = EnvironmentWorker(
                worker.client,
                environment_key=key,
                workdir=self.workspace,
                tools=self._tools_for,
                max_idle=worker.max_idle,
            )
            self._state = "serving"
            self._flow = asyncio.ensure_future(flow.handle_item(
                work_id=self.item.work_id,
                environment_id=self.item.environment_id,
                session_id=self.item.session_id,
                environment_key=key,
                work_secret=self.item.secret,
            ))
            # Shielded so a cancel of serve() lands here at once; _stop_flow then ends the flow.
            await asyncio.shield(self._flow)
            self._state = "ended"
        except asyncio.CancelledError:
            self._state = "stopped"
            await finish_shielded(self._stop_flow())
            raise
        except BaseException as exc:
            self._state = "failed"
            self._error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await finish_shielded(self._release())

    async def _stop_flow(self) -> None:
        """serve() was cancelled: end the worker flow promptly.

        The SDK shields a running tool call from cancellation (so its result is
        still posted), which would hold a stop for up to execute_timeout; ending
        the kernel makes the call return at once.
        """
        self._stopping = True
        if self._kernel is not None:
            await self._kernel.shutdown()
        if self._flow is not None and not self._flow.done():
            self._flow.cancel()
            _, pending = await asyncio.wait([self._flow], timeout=STOP_TIMEOUT)
            if pending:
                log.warning("session %s: the worker flow did not end within %g s of the stop", self.session_id, STOP_TIMEOUT)
        if self._flow is not None and self._flow.done() and not self._flow.cancelled() and self._flow.exception() is not None:
            log.warning("session %s: the worker flow ended with %r after the stop", self.session_id, self._flow.exception())

    async def _release(self) -> None:
        preparing, self._preparing = self._preparing, None
        if preparing is not None:
            if not preparing.done():
                preparing.cancel()
            with contextlib.suppress(BaseException):
                await preparing  # (also retrieves a failed start's exception, already reported)
        await self._drop_kernel()
        if self._own_tier and self._tier is not None:
            await self._tier.close()

    async def _drop_kernel(self) -> None:
        kernel, self._kernel = self._kernel, None
        if kernel is not None and self._tier is not None:
            await self._release_kernel(kernel)

    async def _release_kernel(self, kernel: Kernel) -> None:
        assert self._tier is not None
        await self._tier._egress_event("detach", kernel, self.session_id)
        await self._tier.release_kernel(kernel)

    async def _prepare_kernel(self) -> Kernel:
        """Take a kernel whose working directory is the workspace (a sandboxed one is given it; others enter it)."""
        assert self._tier is not None
        size = await asyncio.to_thread(self._tier.size_of_session, self.session_id)
        kernel = await self._tier.take_kernel(self.workspace, size)
        self._how_started = self._how_started or kernel.origin
        try:
            if kernel.workdir is None:
                path = os.path.abspath(self.workspace)
                ex = await kernel.execute(f"__import__('os').chdir({path!r})", timeout=self._tier.startup_timeout, silent=True)
                if ex.status != "ok":
                    raise KernelStartError(f"could not enter the workspace in the kernel ({ex.status}): {_plain_error(ex)}")
            await self._tier._egress_event("attach", kernel, self.session_id)
        except BaseException:
            await finish_shielded(self._release_kernel(kernel))
            raise
        self._kernel = kernel
        if kernel.limits is not None:
            self._size = kernel.size
            self._limits = {**kernel.limits.describe(), "enforced_by": "cgroup" if kernel.cgroup is not None else "rlimits"}
        self._kernels_started += 1
        self._kernel_error = None
        return kernel

    async def _kernel_for_call(self) -> Kernel:
        """The session's kernel; a fresh one (same workspace) when there is none or it died."""
        if self._stopping:
            raise _tool_error(STOPPED)
        if self._kernel is not None:
            if self._kernel.alive():
                return self._kernel
            log.warning("kernel %s of session %s exited between calls (code %s)", self._kernel.id, self.session_id, self._kernel.returncode)
            self._kernel_deaths += 1
            await self._drop_kernel()
        if self._preparing is None or self._preparing.done():
            self._preparing = asyncio.ensure_future(self._prepare_kernel())
        try:
            # Shielded: a cancelled call leaves the kernel starting for the next call (or for _release).
            return await asyncio.shield(self._preparing)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._kernel_error = str(exc)
            log.warning("session %s: could not start a Python kernel: %s", self.session_id, exc)
            raise _tool_error(f"could not start a Python kernel: {exc}") from exc

    def _tools_for(self, ctx: AgentToolContext) -> list[Any]:
        from anthropic.lib.tools.agent_toolset import beta_agent_toolset_20260401

        tools: list[Any] = []
        for tool in beta_agent_toolset_20260401(ctx):
            if tool.name not in FILE_TOOLS:
                continue
            tools.append(self._wrap_file_tool(tool))
        tools.append(self.python_tool())
        return tools + self._custom_tools([t.name for t in tools])

    def _custom_tools(self, taken: list[str]) -> list[BetaAsyncFunctionTool[Any]]:
        """The session's custom tools from the server's registry (its own and the agent's notebook tools)."""
        from anthropic.lib.tools import BetaAsyncFunctionTool

        registry = self._tier.custom_tools if self._tier is not None else None
        if registry is None:
            return []
        row = self._tier.store.session(self.session_id) if self._tier is not None and self._tier.store is not None else None
        agent_id = row.get("agent_id") if row else None

        def bound(name: str) -> Any:
            async def call(**kwargs: Any) -> Any:
                try:
                    answer = await registry.call(self.session_id, name, kwargs, agent_id)
                except LookupError as exc:
                    raise _tool_error(f"{exc}; it was withdrawn from this session") from None
                finally:
                    self._note_result()
                if answer["is_error"]:
                    raise _tool_error(answer["content"])
                return answer["content"]

            return call

        return [BetaAsyncFunctionTool(bound(d["name"]), name=d["name"], description=d.get("description") or "",
                                      input_schema=d["input_schema"])
                for d in registry.definitions(self.session_id, agent_id) if d["name"] not in taken]

    def _wrap_file_tool(self, tool: BetaAsyncFunctionTool[Any]) -> BetaAsyncFunctionTool[Any]:
        """The SDK's tool as is, run while the sandbox is frozen, plus recording (write/edit) and the first-result mark.

        The SDK's file tools run here, on the host, against the workspace the
        sandbox can write: between their path check and the file operation,
        code in the sandbox could swap a directory for a symlink leading out.
        So nothing in the sandbox runs while a file tool does (its control
        group frozen, or its processes stopped): the check and the operation
        see the same tree. A sandbox that cannot be frozen gets no file tool.
        """
        from anthropic.lib.tools import BetaAsyncFunctionTool

        describe = {"write": _describe_write, "edit": _describe_edit}.get(tool.name)

        async def call(**kwargs: Any) -> Any:
            try:
                result = await self._run_file_tool(tool, kwargs)
            finally:
                self._note_result()
            if describe is not None:
                self._record(describe(kwargs, str(result)))
            return result

        return BetaAsyncFunctionTool(call, name=tool.name, description=tool.description, input_schema=tool.input_schema)

    async def _run_file_tool(self, tool: BetaAsyncFunctionTool[Any], kwargs: dict[str, Any]) -> Any:
        kernel = self._kernel
        if kernel is None or kernel.companion is None:
            if self.isolation == "bubblewrap":  # its kernel is starting: nothing of the sandbox runs yet
                kernel = await self._kernel_for_call()
            else:
                return await tool.call(kwargs)  # an unsandboxed kernel has the server's own access anyway
        # One file tool at a time per sandbox: a thaw must never end another call's freeze.
        async with self._file_lock:
            try:
                freeze = kernel.frozen()
                await asyncio.to_thread(freeze.__enter__)
            except OSError as exc:
                raise _tool_error(f"{tool.name}: the sandbox could not be paused for the file operation ({exc.strerror or exc}); "
                                  "nothing was read or written") from exc
            try:
                return await tool.call(kwargs)
            finally:
                await finish_shielded(asyncio.to_thread(freeze.__exit__, None, None, None))

    def python_tool(self) -> BetaAsyncFunctionTool[Any]:
        """The `python` tool bound to this sandbox's kernel."""
        from anthropic.lib.tools import beta_async_tool

        timeout = self._tier.execute_timeout if self._tier is not None else self.private_tier_class.execute_timeout.default_value

        @beta_async_tool(name="python", description=python_tool_description(timeout), input_schema=PYTHON_INPUT_SCHEMA)
        async def python(code: str) -> Any:
            try:
                return await self.run_python(code)
            finally:
                self._note_result()

        return python

    async def run_python(self, code: str) -> Any:
        """One python call: the tool's result content, or raises the SDK's ToolError (is_error)."""
        async with self._lock:
            self._calls += 1
            began = time.monotonic()
            kernel = await self._kernel_for_call()
            assert self._tier is not None
            # Waiting for a kernel counts against the SDK's own per-call limit too.
            waited = time.monotonic() - began
            timeout = max(1.0, min(self._tier.execute_timeout, SDK_TOOL_TIMEOUT - INTERRUPT_GRACE - 1 - waited))
            before = kernel.counters()
            ex = await kernel.execute(code, timeout=timeout)
            hit = _limits_hit(kernel, before, kernel.counters(), ex)
            if hit:
                self._limit_hits.append(hit)
                ex.outputs.append({"output_type": "stream", "name": "stderr", "text": f"\n[{hit}]\n"})
            if self._stopping and ex.status not in ("ok", "error"):
                ex.status = "stopped"
            self._record(_code_cell(ex, kernel))
            if ex.status == "stopped":
                raise _tool_error(_tool_content(ex.outputs, note=STOPPED))
            if ex.status == "ok":
                return _tool_content(ex.outputs)
            self._errors += 1
            if ex.status == "error":
                raise _tool_error(_tool_content(ex.outputs))
            if ex.status == "timeout":
                raise _tool_error(_tool_content(ex.outputs, note=(
                    f"the call timed out after {timeout:g} s and was interrupted; the kernel and its variables are kept"
                )))
            # lost / died / failed: this kernel is gone; get the next one ready now.
            self._kernel_deaths += 1
            self._log_kernel_end(kernel, ex)
            await self._drop_kernel()
            self._preparing = asyncio.ensure_future(self._prepare_kernel())
            if ex.status == "lost":
                note = (
                    f"the call timed out after {timeout:g} s and did not stop when interrupted, so the Python kernel "
                    "was shut down; its state is lost — the next call starts a fresh kernel in the same workspace"
                )
            else:
                note = KERNEL_DIED
            raise _tool_error(_tool_content(ex.outputs, note=note))

    def _log_kernel_end(self, kernel: Kernel, ex: Execution) -> None:
        log.warning(
            "kernel %s of session %s ended during a call (%s; exit code %s%s)",
            kernel.id, self.session_id, ex.status, kernel.returncode, f"; {ex.detail}" if ex.detail else "",
        )

    # ------------------------------------------------------------------ recording

    def _record(self, cell: dict[str, Any]) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder(self.session_id, cell)
        except Exception:
            log.exception("recording a cell of session %s failed", self.session_id)

    def _note_result(self) -> None:
        note = getattr(self, "note_tool_result", None)  # the cold-start mark, where the Sandbox base has it
        if note is not None:
            note()


def _limits_hit(kernel: Kernel, before: Counters, after: Counters, ex: Execution) -> str | None:
    """What the sandbox ran into during a call, in words for the agent (None: no limit was reached).

    With a control group its counters say; with rlimits, the error the code
    got does (MemoryError, or EAGAIN from a fork). The CPU limit slows a
    sandbox down rather than failing anything: it is named when a call that
    was held to it ran out of time.
    """
    limits = kernel.limits
    if limits is None:
        return None
    if kernel.cgroup is None and ex.error is not None:
        failed = ex.error["ename"]
        after = Counters(oom_kills=before.oom_kills + (failed == "MemoryError"),
                         pids_refused=before.pids_refused + (failed == "BlockingIOError" and "Errno 11" in ex.error["evalue"]))
    timed_out = ex.status in ("timeout", "lost")
    found = []
    if after.oom_kills > before.oom_kills:
        found.append(f"the sandbox reached its memory limit of {human_bytes(limits.memory)}"
                     + (" and its largest process was killed" if kernel.cgroup is not None else ""))
    if after.pids_refused > before.pids_refused:
        found.append(f"the sandbox reached its process limit of {limits.pids} processes: starting another failed")
    if timed_out and after.cpu_throttled > before.cpu_throttled:
        found.append(f"the sandbox used its whole CPU limit of {limits.cpus:g} CPU{'s' if limits.cpus != 1 else ''} "
                     "and was slowed down to it")
    return "; ".join(found) + f" (instance size {kernel.size!r})" if found else None
