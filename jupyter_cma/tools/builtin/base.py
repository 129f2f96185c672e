"""The contract every built-in tool family keeps, and how a call reaches the network as its session.

A *family* is a group of built-in tools enabled together for an agent (`web_fetch`, `call_service`,
`browser`, `email`, `notebook`). Each family is a configurable (its settings are traits, `c.EmailTools.…`),
says whether it can run on this server (`unavailable()`: None, or the reason with the fix), checks the
settings an agent gives it (`check_settings`), names the tools it offers for those settings (`tools`) and
runs a call (`call`). Built-ins run in the Jupyter server, never in a sandbox; a family that touches the
network does so only through `ToolEgress` (the session's own egress path: its policy decides, its log gets
the row, its injections apply). A call's failure the model should read is a `ToolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Float
from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ...egress.policy.resolution import PolicyResolver
    from ...egress.secrets import SecretStore
    from ...store import Store
    from .egress import ToolEgress

# What a call returns: text, or content blocks ({"type": "text" | "image", ...}) as the API takes them.
Content = str | list[dict[str, Any]]


class ToolError(Exception):
    """A failed call, returned to the model as an `is_error` tool result: the message says what happened and what
    to try instead. Never put a secret in it."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool a family offers: what the agent's definition upstream says."""

    name: str
    description: str
    input_schema: dict[str, Any]

    def definition(self) -> dict[str, Any]:
        """The agent's custom tool definition (POST /v1/agents `tools[]`)."""
        return {"type": "custom", "name": self.name, "description": self.description, "input_schema": self.input_schema}


@dataclass(frozen=True)
class ServerParts:
    """What families may use of the server, given to `BuiltinFamily.start` when the server starts."""

    store: Store
    client: Callable[[], AsyncAnthropic]  # the API-key client now (it changes when the server switches to an emulator)
    environment_id: Callable[[], str]  # "" when none is configured
    contents_manager: Any  # the Jupyter server's ContentsManager (async or sync)
    root_dir: str  # the server's root directory
    policies: PolicyResolver  # egress policy resolution (context_for(session_id) → resolve)
    secrets: SecretStore  # egress secrets by name
    data_dir: Path
    egress: ToolEgress


@dataclass(frozen=True)
class CallContext:
    """Who a call is for: the session, its agent, this family's settings for the agent, and its egress path."""

    session_id: str
    agent_id: str | None
    settings: Mapping[str, Any]
    egress: ToolEgress
    extra: Mapping[str, Any] = field(default_factory=dict)


class BuiltinFamily(LoggingConfigurable):
    """A family of built-in tools. Subclasses set `name`, `title`, `summary`, `requires` and implement `tools` and
    `call`; they override `unavailable`, `check_settings`, `end_session` and `close` when they need to."""

    name: str = ""  # the family's key in an agent's `builtins` ({"web_fetch": {}, "notebook": {"mode": "edit"}})
    title: str = ""  # a few words for the catalog and the agent form
    summary: str = ""  # one sentence: what the tools do and where they run
    requires: str = ""  # what the family needs on this server, in words (shown even when it is available)
    # The JSON schema of the settings an agent gives this family (the catalog shows it; the agent form builds on it).
    settings_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}, "additionalProperties": False}
    parts: ServerParts | None = None  # set by `start`

    timeout = Float(60.0, config=True, help="Seconds a call of this family's tools may take; past that the model gets "
                    "a tool error saying it timed out (default 60).")

    async def start(self, parts: ServerParts) -> None:
        """The server is starting: keep what the family uses of it (families that start more call this first)."""
        self.parts = parts

    def unavailable(self) -> str | None:
        """None when the family can run on this server now; else why not, naming the setting or package that fixes it."""
        return None

    def check_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The agent's settings for this family, checked and completed with defaults (stored with the agent).

        ValueError with a message that says what to send instead (the REST API answers it as a 400).
        """
        if settings:
            raise ValueError(f"the {self.name} built-in takes no settings; send {{\"{self.name}\": {{}}}}")
        return {}

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        """The tools an agent with these (checked) settings is given."""
        raise NotImplementedError

    def all_tools(self) -> list[ToolSpec]:
        """Every tool the family can offer, whatever the settings (the catalog lists them; tool names are checked
        unique across families with them). Default: the tools of the default settings; a family whose settings
        add tools (say, an edit mode) overrides it."""
        return self.tools(self.check_settings({}))

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        """Run one call of `tool` for `ctx.session_id`; ToolError for a failure the model should read."""
        raise NotImplementedError

    async def end_session(self, session_id: str) -> None:
        """The session's sandbox has gone (it sleeps or ended): release what its calls held (a browser, a socket)."""

    async def close(self) -> None:
        """The server is stopping: release everything."""
