"""The kernel tier: each session's tool calls run in a dedicated IPython kernel.

A `KernelSandbox` serves one claimed work item with the SDK's own worker flow
(`EnvironmentWorker.handle_item`) in this process. The agent gets the SDK's
file tools (`read`, `write`, `edit`, `glob`, `grep`, confined to the session's
workspace) and a custom `python` tool that runs code in the session's kernel
like a notebook cell: variables persist between calls, the kernel's working
directory is the workspace, rich output (images) comes back as image blocks.

Kernels are ipykernel processes started with jupyter_client's
`AsyncKernelManager` over the `ipc` transport: the connection file and the
five unix sockets live in a per-kernel directory under `kernel_dir` (mode
0700), never on a TCP port. The tier keeps `pool_size` kernels warm so a
session does not wait for Python to start.

Where bubblewrap works (`KernelTier.isolation`), each kernel runs in its own
sandbox: its own network namespace (nothing reachable but a loopback port
bridged to its egress socket `<kernel dir>/egress.sock`), its own PID
namespace, a read-only view of the host with the server's data directory
hidden, and write access to its own directory and its workspace only (see
`isolation.py`). A pooled kernel is started before its session is known: its
working directory is an empty directory bound into the sandbox, and taking
the kernel for a session moves the session's files into that directory and
renames it to the session's workspace path (`isolation.adopt_workspace`), so
the workspace stays one real directory at one path, seen by the file tools
(in this process) and the kernel alike.

Every kernel directory holds `owner.json` (the server process that started
it) and `kernel.pid`; the kernel and everything it spawns carry
`JUPYTER_CMA_KERNEL_DIR=<its directory>` in their environment. A sandboxed
kernel dies with the server (`--die-with-parent`); besides, when a server
starts, kernels left in `kernel_dir` by a server process that no longer runs
are killed (with their children) and their directories removed.

Every python call is recorded as an nbformat code cell and every `write` /
`edit` as a markdown cell, through a `recorder(session_id, cell)` callback,
so a session can be exported as a notebook (see `notebook.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets import Callable as CallableTrait

from . import isolation as iso
from .base import REFILL_DELAY, ClaimedItem, IsolationStatus, Sandbox, TierStatus, WorkerSettings, finish_shielded
from .limits import CgroupHost, Counters, Limits, SandboxCgroup, frozen, human_bytes
from .sizes import SizedTier, memory_bytes

if TYPE_CHECKING:
    from anthropic.lib.tools import BetaAsyncFunctionTool
    from anthropic.lib.tools.agent_toolset import AgentToolContext
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

Recorder = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)

# The SDK's per-call bound (anthropic.lib.tools._beta_session_runner.TOOL_TIMEOUT).
# A python call must end (including the interrupt grace) before it fires, or
# the SDK cancels the call and posts a bare "timed out" instead of our error.
SDK_TOOL_TIMEOUT = 150.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted call gets to stop before the kernel is replaced
OUTPUT_LIMIT = 100 * 1024  # characters of text a python result carries (the tail is kept), like the SDK's bash
RECORD_LIMIT = 1024 * 1024  # characters of one stream output kept in a recorded cell
IMAGE_LIMIT = 5 * 1024 * 1024  # base64 bytes of one image block (the SDK's read tool cap)
MAX_IMAGES = 10  # image blocks per python result
DEATH_POLL = 0.1  # seconds between checks that the kernel process still runs during a call
KERNEL_SHUTDOWN_TIMEOUT = 10.0
ENV_MARKER = "JUPYTER_CMA_KERNEL_DIR"
# Never handed to kernels: they run model-written code. (A custom `*_env` credential
# variable of the server should use one of these prefixes too.)
SCRUBBED_ENV_PREFIXES = ("ANTHROPIC_", "JUPYTER_CMA_", "JUPYTERHUB_", "JPY_")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
FILE_TOOLS = ("read", "write", "edit", "glob", "grep")

STOP_TIMEOUT = 30.0  # seconds a stop waits for the worker flow to post its last result and end
STOPPED = "the session's sandbox was stopped while this call ran; its Python kernel was shut down"
KERNEL_DIED = (
    "the Python kernel died while running this call; its state is lost — "
    "the next call starts a fresh kernel in the same workspace"
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_KERNEL_DIR_NAME = re.compile(r"^[0-9a-f]{12}$")
_COMPANION_NAME = re.compile(r"^([0-9a-f]{12})" + re.escape(iso.COMPANION_SUFFIX) + "$")
KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--HistoryManager.enabled=False"]
EGRESS_HOOK_TIMEOUT = 5.0
_LIVE_DIRS: set[str] = set()  # kernel directories held by a KernelTier of this process


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


class KernelStartError(RuntimeError):
    """A kernel could not be started or did not become ready."""


# --------------------------------------------------------------------------- one kernel


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


# --------------------------------------------------------------------------- the tier


class KernelTier(SizedTier):
    """Sandboxes that are dedicated IPython kernels, with a pool of warm kernels."""

    name: ClassVar[str] = "kernel"

    pool_size = Integer(
        2,
        config=True,
        help="Warm kernels kept started and ready, so a session does not wait for Python to start (default 2); "
        "0 disables the pool and starts each kernel on demand.",
    )
    kernel_dir = Unicode(
        "",
        config=True,
        help="Directory for the per-kernel directories (connection file, ipc sockets, pid file); kernels a "
        "crashed server left there are killed on start. Default: a new temporary directory, removed on close "
        "(the server sets <data_dir>/kernels). Keep it short: unix socket paths are limited to about 100 bytes.",
    )
    startup_timeout = Float(
        30.0, config=True, help="Seconds a kernel may take from launch to answering kernel_info (default 30)."
    )
    execute_timeout = Float(
        120.0,
        config=True,
        help="Seconds one python tool call may run before it is interrupted (default 120). Must stay below the "
        f"SDK's per-call limit of {SDK_TOOL_TIMEOUT:g} s minus {INTERRUPT_GRACE:g} s for the interrupt.",
    )
    recorder = CallableTrait(
        None,
        allow_none=True,
        help="Called as recorder(session_id, cell) with an nbformat v4 cell (a dict) for every python call "
        "and every write/edit, for notebook export (the server passes Store.add_cell). Default: none.",
    )
    isolation = Enum(
        ["auto", "bubblewrap", "none"],
        "auto",
        config=True,
        help="How kernels are isolated. 'auto' (default) and 'bubblewrap': each kernel in its own bubblewrap sandbox "
        "(an unprivileged user with no capabilities in a user namespace of its own; its own network namespace with "
        "only a loopback port bridged to its egress socket; its own PID, IPC and UTS namespaces; a file system built "
        "from an allowlist: the system's runtime and the kernel's Python read-only, private /tmp and home, its "
        "workspace and kernel directory writable, nothing else of the host); where bwrap does not work, kernels are "
        "refused with the reason. 'none': plain kernel processes with the server's user, network and files — for "
        "debugging on a machine of your own only.",
    )
    require_isolation = Bool(
        False,
        config=True,
        help="Also refuse isolation='none': with this set, kernels run isolated or not at all (default False; "
        "kernels are refused anyway where isolation is wanted but bwrap does not work).",
    )
    bwrap = Unicode(
        "bwrap", config=True, help="The bubblewrap executable: a name looked up on PATH, or a path (default 'bwrap')."
    )
    data_dir = Unicode(
        config=True,
        help="The server's data directory (database, workspaces, kernels). Sandboxed kernels do not see it: they "
        "see their own directory and their own workspace, <data_dir>/workspaces/<session id>, only. Default: the "
        "data_dir of the application this tier belongs to (the server's), else none.",
    )
    hidden_paths = List(
        Unicode(),
        config=True,
        help="Host paths sandboxed kernels must not see even where they lie inside a directory they are given (the "
        "Python environment, extra_read_only_paths): each directory is replaced by an empty read-only tmpfs, each "
        "file by /dev/null. data_dir, kernel_dir and the Jupyter runtime directory are always hidden. Nothing else "
        "of the host needs hiding: sandboxes see only what is allowed (default: none).",
    )
    extra_read_only_paths = List(
        Unicode(),
        config=True,
        help="Host directories or files every sandboxed kernel sees read-only at the same path, e.g. a shared "
        "dataset directory (default: none). A path that does not exist makes kernels fail to start with its name.",
    )
    tmp_size = Unicode(
        "512m",
        config=True,
        help="Size of a sandboxed kernel's private /tmp (default 512m); /var/tmp, /dev/shm and the home directory "
        "get a quarter each. With cgroups, what is stored there also counts against the memory limit.",
    )
    cgroup_parent = Unicode(
        "",
        config=True,
        help="On cgroup v2: a control group delegated to this server, holding no processes of its own, under which "
        "each sandboxed kernel gets its group (default: the server's own group, which works on cgroup v1 and where "
        "v2 lets it hand memory, pids and cpu to children). Without usable cgroups the limits fall back to rlimits.",
    )
    ca_bundle = Unicode(
        "",
        config=True,
        help="A CA bundle (PEM) sandboxed kernels trust for TLS through the egress proxy: SSL_CERT_FILE, "
        "REQUESTS_CA_BUNDLE, PIP_CERT, NODE_EXTRA_CA_CERTS and CURL_CA_BUNDLE point at it (bound read-only into "
        "the sandbox). Default: none (the tier sets none of them; unsandboxed kernels never get them).",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        value = getattr(self.parent, "data_dir", None)
        return value if isinstance(value, str) else ""

    @validate("execute_timeout")
    def _check_execute_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0 < value <= SDK_TOOL_TIMEOUT - INTERRUPT_GRACE - 1:
            raise TraitError(
                f"execute_timeout must be between 0 and {SDK_TOOL_TIMEOUT - INTERRUPT_GRACE - 1:g} s (the SDK cancels "
                f"a tool call after {SDK_TOOL_TIMEOUT:g} s and an interrupted call needs up to {INTERRUPT_GRACE:g} s "
                f"to stop); got {value:g}"
            )
        return value

    @validate("pool_size")
    def _check_pool_size(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise TraitError("pool_size must be 0 (no pool) or more")
        return int(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: list[Kernel] = []
        self._in_use: set[Kernel] = set()
        self._filling: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[Kernel]] = []
        self._cleaned: list[dict[str, Any]] = []
        self._own_tempdir: Path | None = None
        self._closed = False
        self._started = False
        self._refill_handle: asyncio.TimerHandle | None = None
        self._fill_failures = 0
        self.last_start_error: str | None = None
        self._isolation: str | None = None  # "bubblewrap" or "none", once start() has probed
        self._isolation_reason: str | None = None
        self._isolation_error: str | None = None  # kernels are refused with this
        self._warned_cross_device = False
        self._cgroups: CgroupHost | None = None  # where sandboxes get control groups, once start() has looked
        self._cgroups_reason: str | None = None  # why they get rlimits instead

    # ------------------------------------------------------------------ directories

    @property
    def directory(self) -> Path:
        if not self.kernel_dir:
            if self._own_tempdir is None:
                self._own_tempdir = Path(tempfile.mkdtemp(prefix="cma-kernels-"))
            return self._own_tempdir
        return Path(self.kernel_dir).expanduser().absolute()

    def _ensure_directory(self) -> Path:
        path = self.directory
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.chmod(0o700)
        return path

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ isolation

    @property
    def effective_isolation(self) -> str | None:
        """"bubblewrap" or "none" (what kernels get); None until start() has probed."""
        return self._isolation

    def status(self) -> TierStatus:
        """The isolation kernels get (what the status API shows of this tier)."""
        return self.isolation_status()  # type: ignore[return-value]

    def isolation_status(self) -> IsolationStatus:  # type: ignore[override]
        """For the status API: the isolation kernels get, the setting, why not / why refused, and the limits."""
        probed = {} if self._isolation is None else {
            "available": self._isolation_error is None,
            "limits": self.limits_status() if self._isolation == "bubblewrap" else None,
        }
        return {
            **probed,
            "isolation": self._isolation or "none",
            "setting": self.isolation,
            "required": self.require_isolation,
            "reason": self._isolation_reason,
            "error": self._isolation_error,
        }

    async def _resolve_isolation(self) -> None:
        if self.isolation == "none":
            mode, reason = "none", "KernelTier.isolation is 'none'"
        else:
            problem = await asyncio.to_thread(iso.probe_bubblewrap, self.bwrap)
            mode, reason = ("bubblewrap", None) if problem is None else ("none", problem)
        self._isolation, self._isolation_reason, self._isolation_error = mode, reason, None
        if mode == "bubblewrap":
            return
        if self.require_isolation or self.isolation != "none":
            why = "KernelTier.require_isolation is set" if self.require_isolation else "kernels run isolated or not at all"
            self._isolation_error = (
                f"kernels are refused: {why}, but they cannot be isolated here ({reason}); install bubblewrap and allow "
                "user namespaces, or (for debugging on a machine of your own only) set KernelTier.isolation='none'"
            )
            self.log.error("kernel tier: %s", self._isolation_error)
        else:
            self.log.warning("kernel tier: kernels run WITHOUT isolation (KernelTier.isolation is 'none'): they have the "
                             "server's user, network and files")

    def _hidden(self, base: Path) -> list[Path]:
        """What sandboxes never see, even inside a directory they are given: the server's own directories first."""
        from jupyter_core.paths import jupyter_runtime_dir

        paths = [base, Path(jupyter_runtime_dir()), *(Path(p) for p in self.hidden_paths if p)]
        if self.data_dir:
            paths.append(Path(self.data_dir))
        return paths

    def _workspaces_dir(self) -> Path | None:
        """Where session workspaces live (the server's convention: <data_dir>/workspaces)."""
        return Path(os.path.realpath(Path(self.data_dir) / "workspaces")) if self.data_dir else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Probe isolation, clean up kernels a crashed server left, then fill the pool in the background."""
        if self._started:
            return
        self._started = True
        await self._resolve_isolation()
        directory = await asyncio.to_thread(self._ensure_directory)
        self._cleaned = await asyncio.to_thread(clean_orphans, directory)
        if self._isolation == "bubblewrap":
            await asyncio.to_thread(self._find_cgroups)
        if self._cleaned:
            summary = ", ".join(f"{c['dir']} (killed {c['killed'] or 'nothing'})" for c in self._cleaned)
            self.log.warning("kernel tier: removed %d kernel director%s left by an earlier server: %s",
                             len(self._cleaned), "y" if len(self._cleaned) == 1 else "ies", summary)
        self._refill()

    def _find_cgroups(self) -> None:
        self._cgroups, self._cgroups_reason = CgroupHost.detect(self.cgroup_parent)
        if self._cgroups is None:
            self.log.warning(
                "kernel tier: no control groups for kernel sandboxes (%s); their limits fall back to rlimits: memory "
                "per process, processes%s, no CPU quota", self._cgroups_reason,
                " not limited (the server runs as root)" if os.geteuid() == 0 else "",
            )
        else:
            self._cgroups.remove_groups([cleaned["dir"] for cleaned in self._cleaned])

    def limits_status(self) -> dict[str, Any]:
        """For the status API: how sandboxes are limited here, and each instance size's limits."""
        if self._cgroups is not None:
            enforced: dict[str, Any] = {"mechanism": self._cgroups.describe()["cgroups"], "memory": True, "cpu": True,
                                        "pids": True, "freezer": True}
        else:
            enforced = {"mechanism": "rlimits", "memory": "per process", "cpu": False, "pids": os.geteuid() != 0,
                        "freezer": "SIGSTOP", "reason": self._cgroups_reason}
        return {
            **enforced,
            "default_size": self.default_size,
            "sizes": {name: Limits.from_spec(spec).describe() for name, spec in self.instance_sizes.items()},
        }

    def cleaned_orphans(self) -> list[dict[str, Any]]:
        """What start() cleaned: [{"dir": name, "killed": [pids]}] for each leftover kernel directory."""
        return list(self._cleaned)

    async def close(self) -> None:
        """Shut down every kernel, pooled and in use; bounded. The tier cannot be used afterwards."""
        self._closed = True
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        for task in list(self._filling):
            task.cancel()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        if self._filling:
            await asyncio.wait(list(self._filling), timeout=KERNEL_SHUTDOWN_TIMEOUT)
        kernels = [*self._pool, *self._in_use]
        self._pool.clear()
        self._in_use.clear()
        if kernels:
            done, pending = await asyncio.wait([asyncio.ensure_future(k.shutdown()) for k in kernels], timeout=KERNEL_SHUTDOWN_TIMEOUT + 2)
            for k in kernels:
                if k.alive():
                    _kill_group(k.pid)
            if pending:
                self.log.warning("kernel tier: %d kernel(s) did not shut down in time; killed them", len(pending))
        if self._own_tempdir is not None:
            await asyncio.to_thread(shutil.rmtree, self._own_tempdir, True)

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
                            return kernel
                        self._in_use.discard(kernel)
                        self._pool.append(kernel)
            kernel = await self._start_kernel(workspace, size)
            self._in_use.add(kernel)
            return kernel
        finally:
            self._schedule_refill(REFILL_DELAY)

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

    def _links(self, workspace: Path) -> bool:
        """Can the kernel reach `workspace` under its own path (it is directly in the workspaces directory)?"""
        root = self._workspaces_dir()
        return root is not None and Path(os.path.realpath(Path(workspace).parent)) == root

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

    async def _start_kernel(self, workspace: Path | None = None, size: str | None = None) -> Kernel:
        if self._isolation_error:
            raise KernelStartError(self._isolation_error)
        isolated = self._isolation == "bubblewrap"
        size = size or self.default_size
        base = await asyncio.to_thread(self._ensure_directory)
        directory = base / uuid.uuid4().hex[:12]
        # The ipc sockets in a directory of their own: the only part of the kernel directory a sandbox may write.
        socket_prefix = directory / iso.IPC_DIR / "k"
        if len(str(socket_prefix)) + 4 > 100:
            raise KernelStartError(
                f"kernel_dir {base} is too long for unix socket paths (about 100 bytes in all); set "
                "KernelTier.kernel_dir to a shorter path"
            )
        if isolated and self.ca_bundle and not os.path.isfile(self.ca_bundle):
            raise KernelStartError(f"KernelTier.ca_bundle {self.ca_bundle} is not a file")
        directory.mkdir(mode=0o700)
        (directory / iso.IPC_DIR).mkdir(mode=0o700)
        _LIVE_DIRS.add(str(directory))
        _write_json(directory / "owner.json", {"server_pid": os.getpid(), "server_start": _start_time(os.getpid())})
        (directory / "kernel.pid").write_text("")  # filled in once the process runs (read-only inside the sandbox)

        env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV_PREFIXES)}
        env[ENV_MARKER] = str(directory)
        env["IPYTHONDIR"] = str(directory / "ipython")  # no user profile, startup files or shared history
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        argv = KERNEL_ARGV
        companion: Path | None = None
        limits: Limits | None = None
        cgroup: SandboxCgroup | None = None
        if isolated:
            companion = directory.with_name(directory.name + iso.COMPANION_SUFFIX)
            limits = Limits.from_spec(self.instance_sizes[size])
            try:
                if self._cgroups is not None:
                    cgroup = await asyncio.to_thread(self._cgroups.create, directory.name, limits)
                argv = self._sandbox_argv(directory, companion, workspace, env, limits, cgroup)
            except (OSError, ValueError) as exc:
                _LIVE_DIRS.discard(str(directory))
                await asyncio.to_thread(_remove_kernel_dirs, directory, companion, cgroup)
                raise KernelStartError(f"could not prepare the kernel's sandbox: {exc}") from exc
            env.update(iso.proxy_environment(self.ca_bundle or None))
            env.update(iso.sandbox_environment())  # (IPYTHONDIR in its private home, too)
        manager = _manager_class()(
            transport="ipc",
            ip=str(socket_prefix),
            connection_file=str(directory / "kernel.json"),
            kernel_name="python3",
            log=self.log,
        )
        manager.kernel_argv = argv
        if isolated:
            manager.cma_interrupt_mode = "message"
        client: AsyncKernelClient | None = None
        kernel: Kernel | None = None
        try:
            with open(directory / "kernel.log", "ab") as log_file:
                await manager.start_kernel(env=env, cwd=str(directory), stdout=log_file, stderr=log_file)
            pid = manager.provisioner.pid if manager.provisioner else None  # type: ignore[attr-defined]
            (directory / "kernel.pid").write_text(f"{pid}\n")
            client = manager.client()
            client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
            kernel = Kernel(
                directory, manager, client, isolation="bubblewrap" if isolated else "none", companion=companion,
                workspace=Path(workspace) if isolated and workspace is not None else None,
                size=size if isolated else None, limits=limits, cgroup=cgroup,
            )
            await asyncio.wait_for(client.wait_for_ready(timeout=self.startup_timeout), self.startup_timeout + 1)
            # The first execution in a fresh kernel costs several ms more than later ones: pay it here, not in a session.
            warm = await kernel.execute("pass", timeout=self.startup_timeout, silent=True)
            if warm.status != "ok":
                raise KernelStartError(f"the kernel failed its first execution ({warm.status}): {_plain_error(warm)}")
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                raise  # the coroutine is being closed without a loop: nothing can be awaited
            tail = _log_tail(directory / "kernel.log")
            await finish_shielded(self._discard_failed_start(directory, manager, client, companion, cgroup))
            if not isinstance(exc, Exception):
                raise
            self.last_start_error = f"{type(exc).__name__}: {exc}"
            raise KernelStartError(f"the Python kernel did not start: {exc}{tail}") from exc
        self.last_start_error = None
        return kernel

    async def _discard_failed_start(
        self, directory: Path, manager: AsyncKernelManager, client: AsyncKernelClient | None, companion: Path | None = None,
        cgroup: SandboxCgroup | None = None,
    ) -> None:
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop_channels()
        try:
            await asyncio.wait_for(manager.shutdown_kernel(now=True), KERNEL_SHUTDOWN_TIMEOUT)
        except Exception:
            _kill_group(getattr(manager.provisioner, "pid", None))
        _LIVE_DIRS.discard(str(directory))
        await asyncio.to_thread(_remove_kernel_dirs, directory, companion, cgroup)

    def _sandbox_argv(
        self, directory: Path, companion: Path, workspace: Path | None, env: dict[str, str], limits: Limits,
        cgroup: SandboxCgroup | None,
    ) -> list[str]:
        """Lay out the kernel's companion directory and return the sandboxed kernel's argv.

        Without `workspace` (a pool kernel) the mount is an empty directory,
        adopted as the session's workspace when the kernel is taken; with it,
        the workspace itself is bound and linked at once. The launcher joins
        `cgroup`, or sets rlimits for `limits` where there is none.
        """
        mount, links, _ = iso.companion_paths(companion)
        companion.mkdir(mode=0o700)
        links.mkdir(mode=0o700)
        if workspace is None:
            mount.mkdir(mode=0o700)
            source = mount
        else:
            source = Path(os.path.abspath(workspace))
            source.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.symlink(source, mount)
            if self._links(source):
                iso.link_workspace(links, source, mount)
        if cgroup is not None:
            launcher = [arg for path in cgroup.procs_files for arg in ("--cgroup", path)]
        else:
            launcher = ["--rlimit", f"data={limits.memory}", "--rlimit", f"nproc={limits.pids}"]
        return iso.bwrap_argv(
            bwrap=shutil.which(self.bwrap) or self.bwrap,
            command=KERNEL_ARGV,
            kernel_dir=directory,
            mount_source=source,
            mount_point=mount,
            hidden=self._hidden(directory.parent),
            generated_etc=iso.write_generated_etc(companion / "etc"),
            links=links,
            workspaces_dir=self._workspaces_dir(),
            ca_bundle=self.ca_bundle or None,
            python=iso.python_paths(env),
            extra_read_only=[Path(p) for p in self.extra_read_only_paths if p],
            tmp_size=memory_bytes(self.tmp_size),
            launcher=launcher,
        )

    async def _egress_event(self, event: str, kernel: Kernel, session_id: str) -> None:
        """Tell egress_hook (when set) that a sandboxed kernel's socket now serves / no longer serves a session."""
        if self.egress_hook is None or kernel.egress_socket is None:
            return
        if event == "detach":
            if kernel.egress_session is None:
                return  # never attached
            kernel.egress_session = None
        else:
            kernel.egress_session = session_id
        try:
            hook = self.egress_hook.attach if event == "attach" else self.egress_hook.detach
            await asyncio.wait_for(hook(kernel.id, str(kernel.egress_socket), session_id=session_id), EGRESS_HOOK_TIMEOUT)
        except Exception:
            self.log.exception("kernel tier: egress_hook(%r) failed for kernel %s of session %s", event, kernel.id, session_id)

    # ------------------------------------------------------------------ sandboxes

    def create(self, item: ClaimedItem, workspace: Path) -> KernelSandbox:
        return KernelSandbox(item, workspace, tier=self, recorder=self.recorder)

    def tools_for_agent(self) -> list[dict[str, Any]]:
        """The SDK's file tools (no bash, no web tools: the kernel tier runs no shell tool) plus `python`."""
        return [
            {
                "type": "agent_toolset_20260401",
                "configs": [
                    {"name": "bash", "enabled": False},
                    {"name": "web_fetch", "enabled": False},
                    {"name": "web_search", "enabled": False},
                ],
            },
            {
                "type": "custom",
                "name": "python",
                "description": python_tool_description(self.execute_timeout),
                "input_schema": json.loads(json.dumps(PYTHON_INPUT_SCHEMA)),
            },
        ]


# --------------------------------------------------------------------------- the sandbox


class KernelSandbox(Sandbox):
    """Serves one claimed item: the SDK's worker flow in this process, tool calls in a kernel."""

    tier: ClassVar[str] = "kernel"

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

    def status(self) -> dict[str, Any]:
        kernel = self._kernel
        return {
            "tier": self.tier,
            "state": self._state,
            "session_id": self.session_id,
            "work_id": self.item.work_id,
            "workspace": str(self.workspace),
            "isolation": self.isolation,
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
            self._tier = KernelTier(pool_size=0)
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
        return tools

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

        timeout = self._tier.execute_timeout if self._tier is not None else KernelTier.execute_timeout.default_value

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


# --------------------------------------------------------------------------- helpers


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



def _tool_error(content: Any) -> Exception:
    from anthropic.lib.tools import ToolError

    return ToolError(content)


def _keep_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = "[output truncated]\n"
    tail = text[len(text) - limit:]
    return tail if tail.startswith(marker) else marker + tail


def _plain_error(ex: Execution) -> str:
    if ex.error is None:
        return ex.detail or ex.status
    return _ANSI.sub("", f"{ex.error['ename']}: {ex.error['evalue']}")


def _text_of(output: dict[str, Any]) -> str | None:
    kind = output["output_type"]
    if kind == "stream":
        return output["text"]
    if kind == "error":
        return _ANSI.sub("", "\n".join(output["traceback"])) or f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    if "text/plain" in data:
        return _joined(data["text/plain"])
    for mime in ("text/markdown", "text/html", "text/latex", "image/svg+xml"):
        if mime in data:
            return _joined(data[mime])
    for mime, value in data.items():
        if mime.endswith("json"):
            return json.dumps(value)
    return None


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _tool_content(outputs: list[dict[str, Any]], *, as_blocks: bool = False, note: str | None = None) -> Any:
    """Outputs as tool-result content: text (capped, tail kept) and image blocks, in output order.

    Returns a plain string when there is only text (and not `as_blocks`);
    `note` (why the call ended) goes first.
    """
    blocks: list[dict[str, Any]] = []
    images = 0

    def add_text(text: str) -> None:
        if not text:
            return
        if blocks and blocks[-1]["type"] == "text":
            previous = blocks[-1]["text"]
            blocks[-1]["text"] = previous + ("" if previous.endswith("\n") else "\n") + text
        else:
            blocks.append({"type": "text", "text": text})

    for output in outputs:
        data = output.get("data", {})
        image = next((m for m in IMAGE_TYPES if m in data), None) if output["output_type"] != "stream" else None
        if image is not None:
            payload = "".join(_joined(data[image]).split())
            if len(payload) > IMAGE_LIMIT:
                add_text(f"[{image} image of {len(payload)} base64 bytes omitted: over the {IMAGE_LIMIT}-byte limit]")
            elif images >= MAX_IMAGES:
                add_text(f"[{image} image omitted: more than {MAX_IMAGES} images in one call]")
            else:
                images += 1
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": image, "data": payload}})
            continue
        text = _text_of(output)
        if text:
            add_text(text)

    # Cap the text, keeping the tail (the end of the output and the traceback matter most).
    budget = OUTPUT_LIMIT
    kept: list[dict[str, Any]] = []
    truncated = False
    for block in reversed(blocks):
        if block["type"] != "text":
            kept.append(block)
            continue
        if truncated:
            continue
        text = block["text"]
        if len(text) > budget:
            text = "[output truncated]\n" + text[len(text) - budget:]
            truncated = True
        budget -= len(text)
        kept.append({"type": "text", "text": text})
    blocks = list(reversed(kept))
    if note:
        blocks.insert(0, {"type": "text", "text": note + ("\n\noutput before it stopped:" if blocks else "")})
    if not as_blocks and all(b["type"] == "text" for b in blocks):
        return "\n".join(b["text"] for b in blocks)
    return blocks or [{"type": "text", "text": "(no output)"}]


def _code_cell(ex: Execution, kernel: Kernel) -> dict[str, Any]:
    """The call as an nbformat v4 code cell (no id: build_notebook assigns them)."""
    metadata: dict[str, Any] = {"cma": {"status": ex.status, "kernel": kernel.id}}
    outputs = [dict(o) for o in ex.outputs]
    if ex.status in ("timeout", "lost", "died", "failed", "stopped"):
        reason = {
            "stopped": "the sandbox was stopped during this call",
            "timeout": "the call timed out and was interrupted",
            "lost": "the call timed out and ignored the interrupt; the kernel was shut down",
            "died": "the kernel died during this call; the next call ran in a fresh kernel",
            "failed": "the connection to the kernel failed; the next call ran in a fresh kernel",
        }[ex.status]
        if ex.status != "timeout" or ex.error is None:
            ename = {"timeout": "Timeout", "stopped": "Stopped"}.get(ex.status, "KernelDied")
            outputs.append({"output_type": "error", "ename": ename, "evalue": reason, "traceback": [reason]})
    if ex.status != "ok":
        metadata["tags"] = ["raises-exception"]  # nbclient keeps going past it when the notebook is re-run
    return {
        "cell_type": "code",
        "execution_count": ex.execution_count,
        "metadata": metadata,
        "source": ex.code,
        "outputs": outputs,
    }


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _preview(text: str, *, lines: int = 20, chars: int = 2000) -> str:
    cut = text.split("\n")
    out = "\n".join(cut[:lines])
    if len(out) > chars:
        out = out[:chars]
    if out != text:
        out += "\n…"
    return out


def _block(text: str) -> str:
    preview = _preview(text)
    fence = _fence(preview)
    return f"{fence}\n{preview}\n{fence}"


def _describe_write(args: dict[str, Any], result: str) -> dict[str, Any]:
    path = str(args.get("file_path", ""))
    content = str(args.get("content", ""))
    lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
    source = f"**write** `{path}` ({len(content.encode())} bytes, {lines} line{'s' if lines != 1 else ''})\n\n{_block(content)}"
    return {"cell_type": "markdown", "metadata": {"cma": {"tool": "write", "file_path": path}}, "source": source}


def _describe_edit(args: dict[str, Any], result: str) -> dict[str, Any]:
    path = str(args.get("file_path", ""))
    old, new = str(args.get("old_string", "")), str(args.get("new_string", ""))
    every = " (every occurrence)" if args.get("replace_all") else ""
    source = f"**edit** `{path}`{every}: {result}\n\nreplaced\n\n{_block(old)}\n\nwith\n\n{_block(new)}"
    return {"cell_type": "markdown", "metadata": {"cma": {"tool": "edit", "file_path": path}}, "source": source}


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    if not text:
        return ""
    return "; kernel log: " + " | ".join(text.splitlines()[-lines:])


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value) + "\n")


# --------------------------------------------------------------------------- orphans


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int) -> bool:
    if Path("/proc").is_dir():
        fields = _proc_stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _marked_processes() -> dict[str, set[int]]:
    """Kernel directory → pids of this user's processes whose environment names it (kernels and their children)."""
    found: dict[str, set[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    needle = f"{ENV_MARKER}=".encode()
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if needle not in environ:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                found.setdefault(var[len(needle):].decode(errors="replace"), set()).add(int(entry.name))
    return found


def _is_our_kernel(pid: int, directory: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [a.decode(errors="replace") for a in argv]
    return any("ipykernel_launcher" in a for a in text) and any(a.startswith(str(directory)) for a in text)


def clean_orphans(kernel_dir: Path, *, wait: float = 5.0) -> list[dict[str, Any]]:
    """Kill kernels (and their children) left in `kernel_dir` by a server process that is gone; remove their dirs.

    A directory is left over when the server process named in its owner.json
    no longer runs (same pid and start time), or it is this process but no
    live tier here holds it. Directories of another live server are kept.
    Waits at most `wait` seconds in all for the killed processes to exit.
    A sandboxed kernel's companion directory (`<dir>.ws`) goes with it, after
    a workspace whose move into the kernel was interrupted is put back.
    """
    if not kernel_dir.is_dir():
        return []
    me = os.getpid()
    leftover: list[Path] = []
    entries = sorted(kernel_dir.iterdir())
    for entry in entries:
        # A companion whose kernel directory is gone (a crash between removing the two) is left over too.
        match = _COMPANION_NAME.match(entry.name)
        if match and not (kernel_dir / match.group(1)).exists() and str(kernel_dir / match.group(1)) not in _LIVE_DIRS:
            with contextlib.suppress(OSError):
                iso.release_companion(entry)
    for directory in entries:
        if not _KERNEL_DIR_NAME.match(directory.name) or not directory.is_dir() or str(directory) in _LIVE_DIRS:
            continue
        owner: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads((directory / "owner.json").read_text())
        server = owner.get("server_pid")
        if isinstance(server, int) and server != me and _alive(server) and _start_time(server) == owner.get("server_start"):
            continue  # another server that still runs owns it
        leftover.append(directory)
    if not leftover:
        return []
    marked = _marked_processes()
    victims: dict[Path, set[int]] = {}
    for directory in leftover:
        pids = set(marked.get(str(directory), set()))
        with contextlib.suppress(OSError, ValueError):
            pid = int((directory / "kernel.pid").read_text().strip())
            if _alive(pid) and _is_our_kernel(pid, directory):
                pids.add(pid)
        for pid in sorted(pids):
            _kill_group(pid)
        victims[directory] = pids
    everyone = set().union(*victims.values())
    deadline = time.monotonic() + wait
    while any(_alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.02)
    for directory in leftover:
        companion = directory.with_name(directory.name + iso.COMPANION_SUFFIX)
        _remove_kernel_dirs(directory, companion if os.path.lexists(companion) else None)
    return [{"dir": d.name, "killed": sorted(victims[d])} for d in leftover]


def kernel_processes(kernel_dir: Path) -> dict[str, set[int]]:
    """Live processes that belong to kernels under `kernel_dir` (by their environment marker)."""
    prefix = str(kernel_dir.absolute()) + os.sep
    return {d: pids for d, pids in _marked_processes().items() if d.startswith(prefix) and any(_alive(p) for p in pids)}

