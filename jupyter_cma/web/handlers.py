"""The route table: every route of the extension under `{base_url}`, with what each handler is given.

`CMAApp.initialize_handlers` builds one `ApiContext` of what it wired and registers `handlers(ctx)`. Each handler
receives only what it uses, as keyword arguments of its `initialize` (the route's third item); the handlers
themselves live in a module per resource:

- `web/status.py`: `status`;
- `web/setup.py`: `setup` (the checks and their fixes) and `setup/emulator` (start the local emulator and serve it);
- `web/agents.py`: `agents`, `agents/{id}`;
- `web/sessions.py`: `sessions`, `sessions/{id}`, its `events`, `messages`, `stop` and `notebook`;
- `web/tools.py`: `tools` (the tool catalog), `kernels/{id}/tools` and `kernels/{id}/tools/{name}` (notebook tools);
- `web/terminals.py`: `sessions/{id}/terminal`;
- `web/workspaces.py`: `sessions/{id}/workspace` and its `push`/`pull`;
- `web/egress.py`: `egress/log`, `egress/policies…`, `egress/decide`, `egress/secrets…`;
- `web/webhooks.py`: `webhooks` (the deliveries received) and the unauthenticated `{base_url}cma/webhooks`;
- `web/notebook_edits.py`: `notebook-edits` (agents' edits of the user's notebooks) and `notebook-edits/{id}/undo`;
- `web/mail.py`: `mail` (the mail the email built-ins sent, received and refused);
- `web/live.py`: `live`, the live channel's websocket.

`web/base.py` holds what they share (`CMAHandler`: authentication, input checking, errors, calls upstream).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .agents import AgentHandler, AgentsHandler
from .egress import (
    EgressDecideHandler,
    EgressLogHandler,
    EgressPoliciesHandler,
    EgressPolicyHandler,
    EgressPolicyValidateHandler,
    EgressSecretHandler,
    EgressSecretsHandler,
)
from .live import LiveSocket
from .mail import MailHandler
from .notebook_edits import NotebookEditsHandler, NotebookEditUndoHandler
from .schemas import ID_PATTERN
from .sessions import (
    SessionEventsHandler,
    SessionHandler,
    SessionMessagesHandler,
    SessionNotebookHandler,
    SessionsHandler,
    SessionStopHandler,
)
from .setup import SetupEmulatorHandler, SetupHandler
from .status import StatusHandler
from .terminals import SessionTerminalHandler
from .tools import KernelToolHandler, KernelToolsHandler, ToolsHandler
from .webhooks import WebhookDeliveriesHandler, WebhookHandler
from .workspaces import SessionWorkspaceHandler, SessionWorkspaceSyncHandler

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from tornado.web import RequestHandler

    from ..control.sessions import SessionManager
    from ..control.webhooks import WebhookIngest
    from ..egress.log import EgressLog
    from ..egress.policy import PolicyResolver, PolicyStore
    from ..egress.secrets import SecretStore
    from ..live import LiveHub
    from ..sandboxes.base import Tier
    from ..store import Store
    from ..tools.builtin import BuiltinTools
    from ..tools.kernels import NotebookTools
    from ..tools.registry import ToolRegistry


@dataclass
class ApiContext:
    """What the app wired and the routes hand out; built once by the app. No handler sees it whole."""

    store: Store
    sessions: SessionManager
    tiers: Mapping[str, Tier]
    client: AsyncAnthropic
    environment_id: Callable[[], str]  # read per request: the local emulator may set it while the server runs
    default_tier: Callable[[], str]
    status: Callable[[], dict[str, Any]]
    webhooks: WebhookIngest
    max_webhook_bytes: int
    policies: PolicyStore
    egress: PolicyResolver
    secrets: SecretStore
    egress_log: EgressLog
    notebook_tools: NotebookTools
    registry: ToolRegistry
    builtins: BuiltinTools | None  # the built-in tool families this server loaded (None: none)
    tool_catalog: Callable[[], dict[str, Any]]  # GET tools: the catalog document (tools/catalog.py)
    setup: Callable[[], dict[str, Any]]
    start_emulator: Callable[[], Awaitable[dict[str, Any]]]
    live: LiveHub
    notebook_undone: Callable[[str, list[int]], None]  # told of each undo (the live channel's notebook.undone)


def handlers(ctx: ApiContext) -> list[tuple[str, type[RequestHandler], dict[str, Any]]]:
    """The extension's routes, relative to the server's base_url, each with its handler's `initialize` arguments."""
    api = r"/cma/api"
    sid = f"(?P<session_id>{ID_PATTERN})"
    kid = r"(?P<kernel_id>[0-9a-fA-F-]{1,64})"
    agents = {"store": ctx.store, "client": ctx.client, "tiers": ctx.tiers, "default_tier": ctx.default_tier,
              "notebook_tools": ctx.notebook_tools, "builtins": ctx.builtins}
    workspaces = {"store": ctx.store, "sessions": ctx.sessions, "tiers": ctx.tiers}
    policies = {"policies": ctx.policies, "secrets": ctx.secrets}
    return [
        (rf"{api}/status", StatusHandler, {"status": ctx.status}),
        (rf"{api}/live", LiveSocket, {"hub": ctx.live}),
        (rf"{api}/setup", SetupHandler, {"setup": ctx.setup}),
        (rf"{api}/setup/emulator", SetupEmulatorHandler, {"start_emulator": ctx.start_emulator}),
        (rf"{api}/agents", AgentsHandler, agents),
        (rf"{api}/agents/(?P<agent_id>{ID_PATTERN})", AgentHandler, agents),
        (rf"{api}/sessions", SessionsHandler,
         {"store": ctx.store, "sessions": ctx.sessions, "tiers": ctx.tiers, "client": ctx.client, "environment_id": ctx.environment_id}),
        (rf"{api}/sessions/{sid}", SessionHandler, {"store": ctx.store, "sessions": ctx.sessions}),
        (rf"{api}/sessions/{sid}/events", SessionEventsHandler, {"client": ctx.client}),
        (rf"{api}/sessions/{sid}/messages", SessionMessagesHandler, {"client": ctx.client}),
        (rf"{api}/sessions/{sid}/stop", SessionStopHandler, {"sessions": ctx.sessions}),
        (rf"{api}/sessions/{sid}/notebook", SessionNotebookHandler, {"store": ctx.store}),
        (rf"{api}/sessions/{sid}/terminal", SessionTerminalHandler, {"store": ctx.store, "sessions": ctx.sessions}),
        (rf"{api}/sessions/{sid}/workspace", SessionWorkspaceHandler, workspaces),
        (rf"{api}/sessions/{sid}/workspace/(?P<action>push|pull)", SessionWorkspaceSyncHandler, workspaces),
        (rf"{api}/tools", ToolsHandler, {"catalog": ctx.tool_catalog}),
        (rf"{api}/kernels/{kid}/tools", KernelToolsHandler, {"notebook_tools": ctx.notebook_tools}),
        (rf"{api}/kernels/{kid}/tools/(?P<tool_name>[A-Za-z0-9_-]{{1,64}})", KernelToolHandler, {"notebook_tools": ctx.notebook_tools}),
        (rf"{api}/webhooks", WebhookDeliveriesHandler, {"store": ctx.store}),
        (rf"{api}/notebook-edits", NotebookEditsHandler, {"store": ctx.store}),
        (rf"{api}/notebook-edits/(?P<edit_id>[0-9]{{1,18}})/undo", NotebookEditUndoHandler,
         {"store": ctx.store, "on_undone": ctx.notebook_undone}),
        (rf"{api}/mail", MailHandler, {"store": ctx.store}),
        (rf"{api}/egress/log", EgressLogHandler, {"egress_log": ctx.egress_log}),
        (rf"{api}/egress/policies", EgressPoliciesHandler, policies),
        (rf"{api}/egress/policies/validate", EgressPolicyValidateHandler, policies),
        (rf"{api}/egress/policies/(?P<policy_id>{ID_PATTERN})", EgressPolicyHandler, policies),
        (rf"{api}/egress/decide", EgressDecideHandler, {"egress": ctx.egress, "secrets": ctx.secrets}),
        (rf"{api}/egress/secrets", EgressSecretsHandler, {"secrets": ctx.secrets}),
        (rf"{api}/egress/secrets/(?P<name>[^/]{{1,200}})", EgressSecretHandler, {"secrets": ctx.secrets}),
        (r"/cma/webhooks", WebhookHandler, {"ingest": ctx.webhooks, "max_bytes": ctx.max_webhook_bytes}),
    ]
