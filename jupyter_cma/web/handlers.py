"""REST handlers under `{base_url}cma/api/`, and the route table.

Every REST handler is `@tornado.web.authenticated` and `@authorized` with the
`cma` auth resource, so a JupyterHub or custom authorizer can grant or deny
jupyter-cma separately from the rest of the server. The webhook route is the
one exception, guarded by its signature (`web/webhooks.py`). Dependencies
arrive through the handler tuple (an `ApiContext`), never through globals.

Errors are JSON `{"message": …}` with a message that says what to do.
Ids are checked before any call to Anthropic's API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from .webhooks import WebhookHandler

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..control.sessions import SessionManager
    from ..control.webhooks import WebhookIngest
    from ..sandboxes.base import Tier
    from ..store import Store

AUTH_RESOURCE = "cma"
ID_PATTERN = r"[A-Za-z0-9_-]{1,128}"
SESSION_STATES = ("claimed", "starting", "running", "idle", "sleeping", "resumed", "stopped", "failed")


@dataclass
class ApiContext:
    """What the REST handlers need; built once by the app."""

    store: Store
    sessions: SessionManager
    tiers: dict[str, Tier]
    client: AsyncAnthropic
    environment_id: str
    default_tier: Callable[[], str]
    status: Callable[[], dict[str, Any]]
    webhooks: WebhookIngest
    max_webhook_bytes: int


class CMAHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-cma REST handler: JSON in, JSON out, `cma` auth resource."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, name: str, ctx: ApiContext) -> None:  # type: ignore[override]
        super().initialize(name)
        self.ctx = ctx

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, "the request body is not JSON; send a JSON object") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, "the request body must be a JSON object")
        return body

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, f"{name} must be an integer between {low} and {high}") from None
        if not low <= value <= high:
            raise tornado.web.HTTPError(400, f"{name} must be between {low} and {high}")
        return value

    def float_arg(self, name: str) -> float | None:
        raw = self.get_argument(name, None)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, f"{name} must be a number (the previous page's last timestamp)") from None

    def require_environment(self) -> None:
        if not self.ctx.environment_id:
            raise tornado.web.HTTPError(409, "no environment_id is configured; set c.CMAApp.environment_id (see README)")

    async def upstream(self, call: Any) -> Any:
        """Await a call to Anthropic's API, turning its failures into clear JSON errors."""
        import anthropic

        try:
            return await call
        except anthropic.AuthenticationError:
            raise tornado.web.HTTPError(502, "Anthropic's API rejected this server's API key; check the api_key setting") from None
        except anthropic.NotFoundError as exc:
            raise tornado.web.HTTPError(404, f"not found upstream: {_upstream_message(exc)}") from None
        except anthropic.APIStatusError as exc:
            status = exc.status_code if 400 <= exc.status_code < 500 else 502
            raise tornado.web.HTTPError(status, f"Anthropic's API answered {exc.status_code}: {_upstream_message(exc)}") from None
        except anthropic.APIConnectionError:
            raise tornado.web.HTTPError(502, "could not reach the Managed Agents API; check api_base_url and the network") from None


def _upstream_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return type(exc).__name__


def _tier_arg(ctx: ApiContext, tier: Any) -> str:
    if tier is None:
        return ctx.default_tier()
    if tier not in ctx.tiers:
        raise tornado.web.HTTPError(400, f"tier must be one of {sorted(ctx.tiers)} on this server")
    return str(tier)


class StatusHandler(CMAHandler):
    """`GET cma/api/status`: version, mode, missing settings (names only), tiers, counters."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.ctx.status())


class AgentsHandler(CMAHandler):
    """`GET cma/api/agents` (with their tiers) and `POST` to create one fitted to a tier."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        limit = self.int_arg("limit", 20, 1, 100)
        page = await self.upstream(self.ctx.client.beta.agents.list(limit=limit))
        agents = [self._with_tier(a.model_dump(mode="json")) for a in page.data]
        self.finish({"data": agents})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise tornado.web.HTTPError(400, "name is required: a non-empty string")
        tier = _tier_arg(self.ctx, body.get("tier"))
        extra = body.get("tools") or []
        if not isinstance(extra, list) or not all(isinstance(t, dict) and t.get("type") == "custom" for t in extra):
            raise tornado.web.HTTPError(400, "tools may only add custom tools: a list of {\"type\": \"custom\", \"name\", \"description\", \"input_schema\"}")
        params: dict[str, Any] = {
            "name": name,
            "model": body.get("model") or "claude-sonnet-4-5",
            "tools": self.ctx.tiers[tier].tools_for_agent() + extra,
        }
        for key in ("system", "description", "metadata"):
            if body.get(key) is not None:
                params[key] = body[key]
        agent = await self.upstream(self.ctx.client.beta.agents.create(**params))
        self.ctx.store.set_agent(agent.id, tier=tier, name=name)
        self.set_status(201)
        self.finish(self._with_tier(agent.model_dump(mode="json")))

    def _with_tier(self, agent: dict[str, Any]) -> dict[str, Any]:
        row = self.ctx.store.agent(agent["id"])
        return {**agent, "tier": row["tier"] if row else None}


class AgentHandler(CMAHandler):
    """`GET cma/api/agents/{id}`; `PATCH` `{"tier": …}` moves the agent to another tier."""

    @tornado.web.authenticated
    @authorized
    async def get(self, agent_id: str) -> None:
        agent = await self.upstream(self.ctx.client.beta.agents.retrieve(agent_id))
        row = self.ctx.store.agent(agent_id)
        self.finish({**agent.model_dump(mode="json"), "tier": row["tier"] if row else None})

    @tornado.web.authenticated
    @authorized
    async def patch(self, agent_id: str) -> None:
        body = self.json_body()
        if "tier" not in body:
            raise tornado.web.HTTPError(400, "send {\"tier\": …} to change the agent's tier")
        tier = _tier_arg(self.ctx, body["tier"])
        current = await self.upstream(self.ctx.client.beta.agents.retrieve(agent_id))
        # Keep the agent's own custom tools; replace those any tier provides (e.g. the kernel's `python`).
        tier_tools = self.ctx.tiers[tier].tools_for_agent()
        provided = {t.get("name") for other in self.ctx.tiers.values() for t in other.tools_for_agent() if t.get("type") == "custom"}
        own = [t.model_dump(mode="json") for t in current.tools if t.type == "custom" and t.name not in provided]
        agent = await self.upstream(self.ctx.client.beta.agents.update(agent_id, version=current.version, tools=tier_tools + own))
        self.ctx.store.set_agent(agent_id, tier=tier, name=current.name)
        self.finish({**agent.model_dump(mode="json"), "tier": tier})


class SessionsHandler(CMAHandler):
    """`GET cma/api/sessions` (filters: status, agent_id, tier; paged by `before`) and `POST` to start one."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        statuses = [s for s in (self.get_argument("status", "") or "").split(",") if s]
        unknown = set(statuses) - set(SESSION_STATES)
        if unknown:
            raise tornado.web.HTTPError(400, f"unknown status {sorted(unknown)}; use any of {list(SESSION_STATES)}, comma-separated")
        agent_id = self.get_argument("agent_id", None)
        if agent_id is not None and not re.fullmatch(ID_PATTERN, agent_id):
            raise tornado.web.HTTPError(400, "agent_id is not a valid id")
        rows = self.ctx.store.sessions(
            statuses=statuses,
            agent_id=agent_id,
            tier=self.get_argument("tier", None),
            limit=self.int_arg("limit", 50, 1, 500),
            before=self.float_arg("before"),
        )
        self.finish({"data": rows, "next_before": rows[-1]["updated_at"] if rows else None})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_environment()
        body = self.json_body()
        agent_id = body.get("agent_id")
        if not isinstance(agent_id, str) or not re.fullmatch(ID_PATTERN, agent_id):
            raise tornado.web.HTTPError(400, "agent_id is required: the id of an agent (create one with POST cma/api/agents)")
        message = body.get("message")
        if message is not None and (not isinstance(message, str) or not message.strip()):
            raise tornado.web.HTTPError(400, "message, when given, must be non-empty text")
        params: dict[str, Any] = {"agent": agent_id, "environment_id": self.ctx.environment_id}
        if isinstance(body.get("title"), str):
            params["title"] = body["title"]
        if message:
            params["initial_events"] = [{"type": "user.message", "content": [{"type": "text", "text": message}]}]
        session = await self.upstream(self.ctx.client.beta.sessions.create(**params))
        self.set_status(201)
        self.finish(session.model_dump(mode="json"))


class SessionHandler(CMAHandler):
    """`GET cma/api/sessions/{id}`: lifecycle, transitions and the live sandbox (if any)."""

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        row = self.ctx.store.session(session_id)
        if row is None:
            raise tornado.web.HTTPError(404, f"no session {session_id} has been served here")
        self.finish({**row, "transitions": self.ctx.store.transitions(session_id), "sandbox": self.ctx.sessions.describe(session_id)})


class SessionEventsHandler(CMAHandler):
    """`GET cma/api/sessions/{id}/events`: the session's events from Anthropic's API, one page."""

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        params: dict[str, Any] = {"limit": self.int_arg("limit", 100, 1, 1000)}
        page_arg = self.get_argument("page", None)
        if page_arg:
            params["page"] = page_arg
        page = await self.upstream(self.ctx.client.beta.sessions.events.list(session_id, **params))
        self.finish({"data": [e.model_dump(mode="json") for e in page.data], "next_page": page.next_page})


class SessionStopHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/stop`: stop its sandbox here; the worker force-stops the work item."""

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        user = self.current_user.username if self.current_user else "unknown"
        stopped = await self.ctx.sessions.stop(session_id, f"stopped through the API by {user}")
        if not stopped:
            raise tornado.web.HTTPError(409, f"no sandbox is serving session {session_id} on this server")
        self.finish({"id": session_id, "stopped": True})


class SessionNotebookHandler(CMAHandler):
    """`GET cma/api/sessions/{id}/notebook`: the session's executed calls as a `.ipynb`."""

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        import nbformat

        from ..sandboxes.notebook import build_notebook

        cells = self.ctx.store.cells(session_id)
        if not cells and self.ctx.store.session(session_id) is None:
            raise tornado.web.HTTPError(404, f"no session {session_id} has been served here")
        notebook = build_notebook(cells, session_id=session_id)
        self.set_header("Content-Disposition", f'attachment; filename="{session_id}.ipynb"')
        self.finish(nbformat.writes(notebook), set_content_type="application/x-ipynb+json")


class WebhookDeliveriesHandler(CMAHandler):
    """`GET cma/api/webhooks`: received deliveries, newest first; pass `next_before` back as `before` for the next page."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        before = self.get_argument("before", None)
        rows = self.ctx.store.deliveries(limit=self.int_arg("limit", 50, 1, 500), before=None if before is None else self.int_arg("before", 0, 1, 2**63 - 1))
        data = []
        for row in rows:
            try:
                body = json.loads(row.pop("body"))
            except ValueError:
                body = None  # stored as received; a malformed body stays visible as null
            data.append({**row, "body": body})
        self.finish({"data": data, "next_before": rows[-1]["seq"] if rows else None})


def handlers(ctx: ApiContext) -> list[tuple[str, type, dict[str, Any]]]:
    """The extension's routes, relative to the server's base_url."""
    api = r"/cma/api"
    sid = f"(?P<session_id>{ID_PATTERN})"
    kw = {"ctx": ctx}
    return [
        (rf"{api}/status", StatusHandler, kw),
        (rf"{api}/agents", AgentsHandler, kw),
        (rf"{api}/agents/(?P<agent_id>{ID_PATTERN})", AgentHandler, kw),
        (rf"{api}/sessions", SessionsHandler, kw),
        (rf"{api}/sessions/{sid}", SessionHandler, kw),
        (rf"{api}/sessions/{sid}/events", SessionEventsHandler, kw),
        (rf"{api}/sessions/{sid}/stop", SessionStopHandler, kw),
        (rf"{api}/sessions/{sid}/notebook", SessionNotebookHandler, kw),
        (rf"{api}/webhooks", WebhookDeliveriesHandler, kw),
        (r"/cma/webhooks", WebhookHandler, {"ingest": ctx.webhooks, "max_bytes": ctx.max_webhook_bytes}),
    ]
