"""The kernel tier: each session's tool calls run in a dedicated IPython kernel, isolated with bubblewrap.

`KernelTier` holds the tier's settings, starts kernels (one kernel process:
`process.py`), keeps `pool_size` of them warm (`pool.py`) and makes the
sandboxes that serve sessions with them (`sandbox.py`). When it starts, it
kills what a crashed server left in `kernel_dir` (`orphans.py`).

Where bubblewrap works (`KernelTier.isolation`), each kernel runs in its own
sandbox: its own network namespace (nothing reachable but a loopback port
bridged to its egress socket `<kernel dir>/egress.sock`), its own PID
namespace, a read-only view of the host with the server's data directory
hidden, and write access to its own directory and its workspace only (see
`isolation.py`). The tier tells its `egress_hook` when a kernel's egress
socket starts and stops serving a session.

Every kernel directory holds `owner.json` (the server process that started
it) and `kernel.pid`; the kernel and everything it spawns carry
`JUPYTER_CMA_KERNEL_DIR=<its directory>` in their environment. A sandboxed
kernel dies with the server (`--die-with-parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets import Callable as CallableTrait

from .. import isolation as iso
from ..base import ClaimedItem, IsolationStatus, TierStatus, finish_shielded
from ..limits import CgroupHost, Limits, SandboxCgroup
from ..sizes import memory_bytes
from .orphans import _start_time, clean_orphans
from .pool import WarmPool
from .process import (
    _LIVE_DIRS,
    ENV_MARKER,
    INTERRUPT_GRACE,
    KERNEL_ARGV,
    KERNEL_SHUTDOWN_TIMEOUT,
    Kernel,
    KernelStartError,
    _kill_group,
    _manager_class,
    _remove_kernel_dirs,
)
from .results import _plain_error
from .sandbox import PYTHON_INPUT_SCHEMA, SDK_TOOL_TIMEOUT, KernelSandbox, python_tool_description

if TYPE_CHECKING:
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

# Never handed to kernels: they run model-written code. (A custom `*_env` credential
# variable of the server should use one of these prefixes too.)
SCRUBBED_ENV_PREFIXES = ("ANTHROPIC_", "JUPYTER_CMA_", "JUPYTERHUB_", "JPY_")
EGRESS_HOOK_TIMEOUT = 5.0


class KernelIsolationStatus(IsolationStatus, total=False):
    """How kernels are isolated here: the IsolationStatus keys and these (`KernelTier.isolation_status()`)."""

    setting: str  # KernelTier.isolation: "auto", "bubblewrap" or "none"
    required: bool  # KernelTier.require_isolation
    limits: dict[str, Any] | None  # how sandboxes are limited, and each instance size's limits (sandboxed kernels)


class KernelTierStatus(TierStatus, total=False):
    """The kernel tier's own view in `GET cma/api/status` (`tiers.kernel`): the isolation its kernels get."""

    isolation: str  # "bubblewrap" or "none"
    setting: str
    required: bool
    limits: dict[str, Any] | None


class KernelTier(WarmPool):
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
        self._cleaned: list[dict[str, Any]] = []
        self._own_tempdir: Path | None = None
        self._closed = False
        self._started = False
        self.last_start_error: str | None = None
        self._isolation: str | None = None  # "bubblewrap" or "none", once start() has probed
        self._isolation_reason: str | None = None
        self._isolation_error: str | None = None  # kernels are refused with this
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

    # ------------------------------------------------------------------ isolation

    @property
    def effective_isolation(self) -> str | None:
        """"bubblewrap" or "none" (what kernels get); None until start() has probed."""
        return self._isolation

    def status(self) -> KernelTierStatus:
        """The isolation kernels get (what the status API shows of this tier)."""
        return {**self.isolation_status()}

    def isolation_status(self) -> KernelIsolationStatus:
        """For the status API: the isolation kernels get, the setting, why not / why refused, and the limits."""
        probed: KernelIsolationStatus = {} if self._isolation is None else {
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

    def _links(self, workspace: Path) -> bool:
        """Can the kernel reach `workspace` under its own path (it is directly in the workspaces directory)?"""
        root = self._workspaces_dir()
        return root is not None and Path(os.path.realpath(Path(workspace).parent)) == root

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

    # ------------------------------------------------------------------ starting a kernel

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


# A KernelSandbox made without a tier serves with a private KernelTier (no pool).
KernelSandbox.private_tier_class = KernelTier


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
