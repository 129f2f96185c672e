"""The Sandbox protocol: what every tier implements.

The control plane claims a work item and hands it to the tier chosen for the
session's agent. The tier makes a `Sandbox` for that one claimed item; the
sandbox serves the session until the worker flow ends (the session went idle
for `max_idle`, the lease was lost or stopped, the session terminated) and
then releases what it holds. The session's *workspace* outlives sandboxes:
the next item of the same session gets a new sandbox on the same workspace.

Tiers are `Type` traits on `CMAApp` (`kernel_tier_class`, …), so tests and
users swap implementations by configuration. `Tier` and `Sandbox` state the
whole contract: a caller outside `sandboxes/` uses only what is declared here,
and what a tier cannot do it answers with `NotSupported` (one clear message
naming the tier), never with a missing attribute. What crosses this seam is
typed (`TierStatus`, `SandboxStatus`, `WorkspaceTransfer`, …).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, TypedDict, TypeVar

from traitlets import Instance, Unicode
from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..anthropic_api import Secret


T = TypeVar("T")

# Seconds between handing out a pooled sandbox and starting its replacement: a start costs
# about half a second (kernel) to a second (container) of CPU, which would otherwise compete
# with the session that just took the sandbox (its first requests and tool call).
REFILL_DELAY = 1.0


_FILES_IN_DATA_DIR = "its sessions keep their files in the server's data directory"


class NotSupported(Exception):
    """What a tier answers for a part of the contract it does not offer (e.g. workspace archives on the kernel tier)."""

    def __init__(self, tier: str, what: str, hint: str = "") -> None:
        self.tier = tier
        super().__init__(f"the {tier} tier does not support {what}" + (f": {hint}" if hint else ""))


class WorkspaceArchiveError(ValueError):
    """An archive offered as a workspace is not acceptable; the message names the entry and says why."""


class WorkspaceBusy(RuntimeError):
    """A sandbox uses the workspace (or its session ended); an import would write under a running session."""


class ObjectStoreError(RuntimeError):
    """The workspace object store could not be used; the message says why without any credential."""


class ObjectStoreNotConfigured(ObjectStoreError):
    """A push or pull was asked of a server with no object store; the message says which settings to set."""

    def __init__(self) -> None:
        super().__init__("no object store is configured on this server: set WorkspaceObjectStore.url (s3://bucket/prefix) "
                         "and, for an S3-compatible service, WorkspaceObjectStore.endpoint_url")


class TierStatus(TypedDict, total=False):
    """A tier's own view of now, merged over the machine probe in `GET cma/api/status` (`tiers.<name>`).

    Each tier adds its own keys (see its `status()`); these are the ones every view may rely on.
    """

    available: bool | None  # None: not known yet
    reason: str | None  # why not available (or why degraded)
    error: str | None


class IsolationStatus(TypedDict, total=False):
    """How a tier's sandboxes are kept apart from the host and from each other."""

    isolation: str  # e.g. "bubblewrap", "docker", "none"
    available: bool
    reason: str | None
    error: str | None


class SandboxStatus(TypedDict, total=False):
    """What one sandbox is doing (REST `GET cma/api/sessions/{id}`: `sandbox`); tiers add their own keys."""

    tier: str
    state: str  # "created", "starting", "serving", "stopping", "stopped", "failed", …
    session_id: str
    work_id: str
    size: str | None
    error: str | None
    start: str | None  # how it got its kernel or container ("pool", "new", "standby", …)
    isolation: str  # "container", or a kernel's isolation ("bubblewrap" or "none")


class SandboxSummary(TypedDict):
    """What a list of sessions shows of a live sandbox."""

    state: str | None
    start: str | None  # how the sandbox got its kernel or container: "pool", "new", "standby", …
    isolation: str | None  # "container", or the kernel tier's isolation ("bubblewrap", "none")
    tool_calls: int
    last_activity: float | None  # time.time() of its latest tool result


class WorkspaceTransfer(TypedDict, total=False):
    """What a workspace export, import, push or pull moved."""

    volume: str
    files: int
    directories: int
    links: int
    bytes: int
    skipped: list[str]
    object: str  # push and pull: where in the object store


@dataclass(frozen=True)
class TerminalCommand:
    """How to open a shell in a live sandbox: the command a terminal runs, and the names to show for it."""

    argv: list[str]
    name: str  # e.g. the container's name
    short_id: str


class TerminalUnavailable(RuntimeError):
    """A sandbox that offers terminals cannot open one now (e.g. the client program is missing); says how to fix it."""


class EgressHook(abc.ABC):
    """Where tiers tell the egress proxy which session a sandbox's socket serves.

    A sandbox's only way out is a Unix socket the server owns (`socket_path`); while attached, the egress proxy
    serves it, and the socket a request arrives on identifies the session. The server implements this
    (`control/egress.py`); tests and benchmarks may pass stand-ins.
    """

    @abc.abstractmethod
    async def attach(self, sandbox_id: str, socket_path: str, *, session_id: str, api_token: str | None = None,
                     work_id: str | None = None, environment_id: str | None = None, socket_mode: int = 0o600,
                     internal_route: bool = True, inject: bool = True) -> str | None:
        """The sandbox now serves `session_id`. With `api_token` (a worker that holds no credential), returns the
        placeholder the sandbox gets instead: the proxy spends the token only on that worker's calls for its item.

        `internal_route=False`: calls to http://cma.internal/ through the socket are refused (the server's built-ins
        attach so: a web page they load must not run the session's tools). `inject=False`: the policy's injections
        are not added to requests through it (a browser's socket: a page must not spend the session's credentials).
        Tiers leave both on."""

    @abc.abstractmethod
    async def detach(self, sandbox_id: str, socket_path: str, *, session_id: str) -> None:
        """The sandbox no longer serves `session_id`: its socket stops being served."""


class CustomTools(abc.ABC):
    """The custom tools a session may call beyond its tier's own: the server's registry (`tools/registry.py`),
    with the notebook tools of the session's agent. The container tier's sandboxes reach it through the egress
    proxy's internal route; the kernel tier's sandboxes call it directly."""

    @abc.abstractmethod
    def definitions(self, session_id: str | None, agent_id: str | None = None) -> list[dict[str, Any]]:
        """The tools the session may call: name, description, input_schema."""

    @abc.abstractmethod
    async def call(self, session_id: str, name: str, input: dict[str, Any], agent_id: str | None = None) -> dict[str, Any]:
        """Run one: {"content": str or content blocks, "is_error": bool}; LookupError if the session has no such tool."""


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
        self.tool_results = 0  # tool calls answered in this sandbox
        self.last_tool_at: float | None = None  # time.time() of the latest tool result: the session's last activity here
        self.on_tool_result: Callable[[Sandbox], None] | None = None  # e.g. the live channel's `session.tool`

    def note_tool_result(self) -> None:
        """Tiers call this after each tool result; the first one marks the end of the cold start."""
        self.tool_results += 1
        self.last_tool_at = time.time()
        if self.first_result_at is None:
            self.first_result_at = time.monotonic()
            if self.on_first_result is not None:
                self.on_first_result(self.first_result_at)
        if self.on_tool_result is not None:
            self.on_tool_result(self)

    def summary(self) -> SandboxSummary:
        """The few facts a list of sessions shows (REST `GET cma/api/sessions` rows: `sandbox`)."""
        status = self.status()
        return {
            "state": status.get("state"),
            "start": status.get("start"),
            "isolation": status.get("isolation"),
            "tool_calls": self.tool_results,
            "last_activity": self.last_tool_at,
        }

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
    def status(self) -> SandboxStatus:
        """What the sandbox is doing, for the REST API and the dashboard (no secrets)."""

    @property
    def capabilities(self) -> frozenset[str]:
        """What the sandbox offers, e.g. {"python", "files", "bash", "terminal"}."""
        return frozenset()

    def terminal_command(self) -> TerminalCommand:
        """How to open a login shell in this sandbox while it serves.

        Raises NotSupported (the tier has no terminals) or TerminalUnavailable (not now, and why).
        """
        raise NotSupported(self.tier, "terminals", "its sandbox is not a Linux machine")


class Tier(LoggingConfigurable):
    """A kind of sandbox: makes sandboxes, may keep warm resources between them.

    The whole contract a caller may use: `start`/`close`, `create`, `tools_for_agent`, `status`,
    `isolation_status`, `size_names`, the `ca_bundle` and `egress_hook` settings, `remove_workspace`, and the
    workspace archive protocol (`has_workspace`, `export_workspace`, `import_workspace`, `push_workspace`,
    `pull_workspace`), which a tier either implements or answers with `NotSupported`.
    """

    name: ClassVar[str]

    ca_bundle = Unicode(
        "",
        config=True,
        help="A CA bundle (PEM) this tier's sandboxes trust for TLS through the egress proxy (default: none; the "
        "server sets the egress proxy's bundle unless one is configured).",
    )
    egress_hook = Instance(
        EgressHook,
        allow_none=True,
        help="Told when a sandbox's egress socket starts and stops serving a session (the server sets the egress "
        "proxy's; default none: sandboxes get no way out).",
    )

    custom_tools = Instance(
        CustomTools,
        allow_none=True,
        help="The custom tools sessions may call beyond the tier's own (the server sets its registry, with the "
        "notebook tools of each session's agent; default none).",
    )

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

    def status(self) -> TierStatus:
        """The tier's own view of now (image, pool, isolation …), for the status API. No secrets."""
        return {}

    def isolation_status(self) -> IsolationStatus:
        """How this tier's sandboxes are isolated (and, when they cannot be, why)."""
        return {"isolation": "none", "available": True, "reason": None, "error": None}

    def size_names(self) -> list[str]:
        """The instance sizes an agent on this tier may have (none: the tier is not sized)."""
        return []

    # ------------------------------------------------------------------ workspaces

    async def remove_workspace(self, session_id: str) -> bool:
        """Remove what the tier keeps of an ended session's workspace beyond `<data dir>/workspaces/<id>` (which the
        control plane removes); False when it keeps nothing or it is in use."""
        return False

    async def has_workspace(self, session_id: str) -> bool:
        """Whether the tier keeps a workspace for the session that `export_workspace` can read."""
        raise NotSupported(self.name, "workspace archives", _FILES_IN_DATA_DIR)

    async def export_workspace(self, session_id: str, fileobj: IO[bytes]) -> WorkspaceTransfer:
        """Write the session's workspace to `fileobj` as a tar.gz; LookupError if it has none."""
        raise NotSupported(self.name, "workspace archives", _FILES_IN_DATA_DIR)

    async def import_workspace(self, session_id: str, fileobj: IO[bytes], *, replace: bool = False,
                               max_bytes: int | None = None) -> WorkspaceTransfer:
        """Check an archive, then put its files into the session's workspace (with `replace`, instead of what is there).

        The caller (the control plane) has recorded the session; raises WorkspaceArchiveError for a refused archive
        (nothing written) and WorkspaceBusy while a sandbox serves it.
        """
        raise NotSupported(self.name, "workspace archives", _FILES_IN_DATA_DIR)

    async def push_workspace(self, session_id: str) -> WorkspaceTransfer:
        """Put the session's workspace into the object store; LookupError if it has none here."""
        raise NotSupported(self.name, "the workspace object store")

    async def pull_workspace(self, session_id: str) -> WorkspaceTransfer | None:
        """Replace the session's workspace here by the object store's copy; None when the store has none."""
        raise NotSupported(self.name, "the workspace object store")


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
