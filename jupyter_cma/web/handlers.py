"""REST handlers under `{base_url}cma/api/`, and the route table.

Every REST handler is `@tornado.web.authenticated` and `@authorized` with the
`cma` auth resource, so a JupyterHub or custom authorizer can grant or deny
jupyter-cma separately from the rest of the server. The webhook route is the
one exception, guarded by its signature (`web/webhooks.py`). Dependencies
arrive through the handler tuple (an `ApiContext`), never through globals.

Errors are JSON `{"message": …}` with a message that says what to do. Every
input is checked before any call to Anthropic's API or write to the store: a
JSON body is read by `jsonbody.read_json` (one way for every route) and
validated with the route's model in `web/schemas.py`, as is each query string;
path parameters are held to their patterns by the route table. Bad input gets a
4xx, never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, ValidationError

from ..jsonbody import JSONBodyError, read_json
from .schemas import (
    DEFAULT_MODEL,
    ID_PATTERN,
    AgentCreate,
    AgentPatch,
    AgentsQuery,
    DecideBody,
    DeliveriesQuery,
    EgressLogQuery,
    EmptyBody,
    EventsQuery,
    SecretPut,
    SessionCreate,
    SessionsQuery,
    explain,
)
from .webhooks import WebhookHandler

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..egress.log import EgressLog

    from ..control.sessions import SessionManager
    from ..control.webhooks import WebhookIngest
    from ..egress.policy import PolicyResolver, PolicyStore
    from ..egress.secrets import SecretStore
    from ..sandboxes.base import Tier
    from ..store import Store

AUTH_RESOURCE = "cma"
M = TypeVar("M", bound=BaseModel)


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
    policies: PolicyStore
    egress: PolicyResolver
    secrets: SecretStore
    egress_log: EgressLog


class CMAHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-cma REST handler: JSON in, JSON out, `cma` auth resource."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, name: str, ctx: ApiContext) -> None:  # type: ignore[override]
        super().initialize(name)
        self.ctx = ctx

    def json_object(self) -> dict[str, Any]:
        """The request body as a JSON object (no body: `{}`); 400 (413 when too large) saying what to send.

        The Content-Type is not checked: `curl -d` labels JSON as a form, and the body decides.
        """
        if not self.request.body:
            return {}
        try:
            value = read_json(self.request.body)
        except JSONBodyError as exc:
            raise tornado.web.HTTPError(exc.status, exc.message) from None
        if not isinstance(value, dict):
            raise tornado.web.HTTPError(400, f"the body must be a JSON object ({{…}}), not {_json_kind(value)}")
        return value

    def body(self, model: type[M]) -> M:
        """The request body validated by the route's model (`web/schemas.py`)."""
        data = self.json_object()
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise tornado.web.HTTPError(400, explain(model, exc)) from None

    def query(self, model: type[M]) -> M:
        """The query string validated by the route's model; only its own parameters are read (the last of repeated ones)."""
        # get_query_argument refuses text that is not UTF-8 with a 400; body arguments of a form never count here.
        values = {name: self.get_query_argument(name) for name in model.model_fields if name in self.request.query_arguments}
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise tornado.web.HTTPError(400, explain(model, exc)) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """APIHandler's JSON error, with the message as it was raised.

        APIHandler shows `HTTPError.log_message`, which tornado escapes for logging (a `%` in a message that
        quotes the client's input came out doubled); `get_message()` is the message itself.
        """
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, tornado.web.HTTPError) or not exc.get_message():
            super().write_error(status_code, **kwargs)  # "Unhandled error", never the exception's text
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": exc.get_message(), "reason": exc.reason}))

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


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _size_arg(ctx: ApiContext, tier: str, size: str | None) -> str | None:
    """An instance size, checked against the sizes of the tier the agent runs on (None: unchanged).

    Each tier says what sizes it has (`instance_sizes`, a trait of the tier); a tier without any takes none.
    """
    if size is None:
        return None
    owner = ctx.tiers[tier]
    sizes = sorted(getattr(owner, "instance_sizes", None) or {})
    setting = f"{type(owner).__name__}.instance_sizes"
    if not sizes:
        raise tornado.web.HTTPError(400, f"the {tier} tier has no instance sizes on this server ({setting}); leave size out")
    if size not in sizes:
        raise tornado.web.HTTPError(400, f"size must be one of {sizes} on the {tier} tier ({setting} on this server)")
    return size


def _tier_arg(ctx: ApiContext, tier: str | None) -> str:
    if tier is None:
        return ctx.default_tier()
    if tier not in ctx.tiers:
        raise tornado.web.HTTPError(400, f"tier must be one of {sorted(ctx.tiers)} on this server")
    return tier


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
        query = self.query(AgentsQuery)
        page = await self.upstream(self.ctx.client.beta.agents.list(limit=query.limit))
        agents = [self._with_tier(a.model_dump(mode="json")) for a in page.data]
        self.finish({"data": agents})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body(AgentCreate)
        tier = _tier_arg(self.ctx, body.tier)
        size = _size_arg(self.ctx, tier, body.size)
        model = body.model if body.model is not None else DEFAULT_MODEL
        params: dict[str, Any] = {
            "name": body.name,
            "model": model if isinstance(model, str) else model.model_dump(exclude_none=True),
            # Only what was sent is passed on (exclude_unset): an input schema keeps its own keywords as given.
            "tools": self.ctx.tiers[tier].tools_for_agent() + [t.model_dump(mode="json", exclude_unset=True) for t in body.tools],
        }
        for key in ("system", "description", "metadata"):
            if getattr(body, key) is not None:
                params[key] = getattr(body, key)
        agent = await self.upstream(self.ctx.client.beta.agents.create(**params))
        self.ctx.store.set_agent(agent.id, tier=tier, name=body.name, size=size)
        self.set_status(201)
        self.finish(self._with_tier(agent.model_dump(mode="json")))

    def _with_tier(self, agent: dict[str, Any]) -> dict[str, Any]:
        row = self.ctx.store.agent(agent["id"]) or {}
        return {**agent, "tier": row.get("tier"), "size": row.get("size")}


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
        body = self.body(AgentPatch)
        if not body.model_fields_set:
            raise tornado.web.HTTPError(400, "send {\"tier\": …} to change the agent's tier, {\"size\": …} its instance size, or both")
        if "tier" not in body.model_fields_set:
            row = self.ctx.store.agent(agent_id)
            tier = (row or {}).get("tier") or self.ctx.default_tier()
            size = _size_arg(self.ctx, tier, body.size)
            current = await self.upstream(self.ctx.client.beta.agents.retrieve(agent_id))
            self.ctx.store.set_agent(agent_id, tier=tier, name=current.name, size=size)
            self.finish({**current.model_dump(mode="json"), "tier": self.ctx.store.agent(agent_id)["tier"], "size": size})
            return
        tier = _tier_arg(self.ctx, body.tier)
        size = _size_arg(self.ctx, tier, body.size)
        current = await self.upstream(self.ctx.client.beta.agents.retrieve(agent_id))
        # Keep the agent's own custom tools; replace those any tier provides (e.g. the kernel's `python`).
        tier_tools = self.ctx.tiers[tier].tools_for_agent()
        provided = {t.get("name") for other in self.ctx.tiers.values() for t in other.tools_for_agent() if t.get("type") == "custom"}
        own = [t.model_dump(mode="json") for t in current.tools if t.type == "custom" and t.name not in provided]
        agent = await self.upstream(self.ctx.client.beta.agents.update(agent_id, version=current.version, tools=tier_tools + own))
        self.ctx.store.set_agent(agent_id, tier=tier, name=current.name, size=size)
        self.finish({**agent.model_dump(mode="json"), "tier": tier, "size": self.ctx.store.agent(agent_id)["size"]})


class SessionsHandler(CMAHandler):
    """`GET cma/api/sessions` (filters: status, agent_id, tier; paged by `before`) and `POST` to start one."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(SessionsQuery)
        if query.tier is not None:
            _tier_arg(self.ctx, query.tier)
        rows = self.ctx.store.sessions(statuses=query.status, agent_id=query.agent_id, tier=query.tier, limit=query.limit, before=query.before)
        self.finish({"data": rows, "next_before": rows[-1]["updated_at"] if rows else None})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_environment()
        body = self.body(SessionCreate)
        params: dict[str, Any] = {"agent": body.agent_id, "environment_id": self.ctx.environment_id}
        if body.title is not None:
            params["title"] = body.title
        if body.metadata is not None:
            params["metadata"] = body.metadata
        if body.message is not None:
            params["initial_events"] = [{"type": "user.message", "content": [{"type": "text", "text": body.message}]}]
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
        query = self.query(EventsQuery)
        params: dict[str, Any] = {"limit": query.limit}
        if query.page is not None:
            params["page"] = query.page
        page = await self.upstream(self.ctx.client.beta.sessions.events.list(session_id, **params))
        self.finish({"data": [e.model_dump(mode="json") for e in page.data], "next_page": page.next_page})


class SessionStopHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/stop`: stop its sandbox here; the worker force-stops the work item."""

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        self.body(EmptyBody)
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


# ---------------------------------------------------------------------- container sessions: terminal, workspace

# What the docker CLI of a terminal keeps of the server's environment; the rest (API keys among it) is dropped.
# `docker exec` passes none of its own environment into the container anyway.
_TERMINAL_ENV_KEEP = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM", "COLUMNS", "LINES",
                                "XDG_RUNTIME_DIR"})


def _terminal_env(manager: Any) -> dict[str, str | None]:
    """terminado's `extra_env` that removes every variable of the server's environment but the few the docker CLI needs."""
    import os

    names = set(os.environ) | set(getattr(manager, "extra_env", None) or {})
    return {name: None for name in names if name not in _TERMINAL_ENV_KEEP and not name.startswith(("DOCKER_", "LC_"))}


def _container_tier(ctx: ApiContext) -> Any:
    tier = ctx.tiers.get("container")
    if tier is None:
        raise tornado.web.HTTPError(503, "this server runs no container tier (CMAApp.container_tier_class)")
    return tier


class SessionTerminalHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/terminal`: a JupyterLab terminal running a login shell in the session's container.

    Answers 201 `{"name", "url": "terminals/<name>", "container", "container_id", "session_id"}`; open it in
    JupyterLab with the `terminal:open` command and that name (it is listed in the Running panel too).
    """

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        import shutil

        self.body(EmptyBody)
        manager = self.settings.get("terminal_manager")
        if manager is None or not self.settings.get("terminals_available", False):
            raise tornado.web.HTTPError(503, "terminals are disabled on this server: enable the jupyter_server_terminals extension "
                                        "(c.ServerApp.jpserver_extensions = {'jupyter_server_terminals': True}) and keep "
                                        "c.ServerApp.terminals_enabled = True, then restart the server")
        live = self.ctx.sessions.live.get(session_id)
        sandbox = live.sandbox if live is not None else None
        row = self.ctx.store.session(session_id)
        tier_name = getattr(sandbox, "tier", None) or (row or {}).get("tier")
        if tier_name == "kernel":
            agent = (row or {}).get("agent_id") or "{agent_id}"
            raise tornado.web.HTTPError(409, f"session {session_id} runs on the kernel tier, and the kernel tier has no terminal "
                                        "(its sandbox is a Python kernel, not a Linux machine); move the agent to the container tier "
                                        f"(PATCH cma/api/agents/{agent} {{\"tier\": \"container\"}}) and its sessions get one")
        container_id = getattr(sandbox, "container_id", None)
        if sandbox is None or container_id is None or sandbox.status().get("state") != "serving":
            now = f" (it is {row['status']})" if row else " (no session of that id has been served here)"
            raise tornado.web.HTTPError(409, f"no container is serving session {session_id} now{now}; a terminal needs a live "
                                        "container: send the session a message to wake it, wait until it runs, then try again")
        tier = _container_tier(self.ctx)
        docker_cli = shutil.which(tier.docker_cli)
        if docker_cli is None:
            raise tornado.web.HTTPError(503, f"the docker client {tier.docker_cli!r} was not found; install it or set "
                                        "c.ContainerTier.docker_cli to its path")
        argv = [docker_cli, *(["-H", tier.docker_url] if tier.docker_url else []),
                "exec", "-it", "-w", "/workspace", container_id, "/bin/bash", "-l"]
        model = manager.create(shell_command=argv, extra_env=_terminal_env(manager))
        name = model["name"]
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: terminal %s opened into session %s's container %s by %s", name, session_id, sandbox.container_name, user)
        self.set_status(201)
        self.finish({"name": name, "url": f"terminals/{name}", "container": sandbox.container_name,
                     "container_id": container_id[:12], "session_id": session_id})


class _QueueWriter:
    """A file for a thread to write into; each write waits its turn in a small asyncio queue (back-pressure)."""

    def __init__(self, loop: Any, queue: Any) -> None:
        self.loop, self.queue, self.cancelled = loop, queue, False

    def write(self, data: bytes) -> int:
        import asyncio

        if self.cancelled:
            raise BrokenPipeError("the client went away")
        if data:
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(bytes(data)), self.loop).result(timeout=300)
            except TimeoutError:
                raise BrokenPipeError("the client stopped reading for 5 minutes") from None
        return len(data)

    def flush(self) -> None:
        pass


async def _drain(queue: Any, end: object) -> None:
    while await queue.get() is not end:
        pass


class SessionWorkspaceHandler(CMAHandler):
    """`GET cma/api/sessions/{id}/workspace`: the session's workspace volume as a tar.gz (streamed);
    `PUT` a tar or tar.gz body: its files go into the session's volume (made and recorded if missing), which the
    session's next container mounts. Refused while a container serves the session."""

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        import asyncio

        from tornado.iostream import StreamClosedError

        tier = _container_tier(self.ctx)
        if await tier.workspace_volume(session_id, create=False) is None:
            raise tornado.web.HTTPError(404, f"session {session_id} has no container workspace on this server (a kernel-tier "
                                        "session keeps its files in the data directory; a new session has none until it runs)")
        end = object()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
        writer = _QueueWriter(asyncio.get_running_loop(), queue)

        async def produce() -> dict[str, Any]:
            try:
                return await tier.export_workspace(session_id, writer)
            finally:
                await queue.put(end)

        producer = asyncio.ensure_future(produce())
        chunk = await queue.get()
        if chunk is end:  # nothing was written: the export failed before its first byte (or the workspace is empty)
            try:
                await producer
            except LookupError as exc:
                raise tornado.web.HTTPError(404, f"{exc}; nothing to export") from None
            except Exception as exc:
                raise tornado.web.HTTPError(503, f"could not read the workspace: {exc}") from None
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Content-Disposition", f'attachment; filename="{session_id}-workspace.tar.gz"')
        try:
            while chunk is not end:
                self.write(chunk)
                await self.flush()
                chunk = await queue.get()
        except StreamClosedError:
            pass
        finally:
            if chunk is not end:  # the client went away (or the server is stopping): let the export end and remove its helper
                writer.cancelled = True
                asyncio.ensure_future(_drain(queue, end))
        if chunk is not end:
            return
        await asyncio.gather(producer, return_exceptions=True)
        if producer.exception() is not None:
            # The headers are gone: end the connection without the last chunk, so the client sees a broken download.
            self.log.error("jupyter-cma: exporting session %s's workspace failed: %s", session_id, producer.exception())
            self.request.connection.close()
            return
        tornado.web.RequestHandler.finish(self)  # APIHandler.finish would relabel the body as JSON

    @tornado.web.authenticated
    @authorized
    async def put(self, session_id: str) -> None:
        import io

        from ..sandboxes.workspace import WorkspaceArchiveError, WorkspaceBusy

        tier = _container_tier(self.ctx)
        _refuse_while_served(self.ctx, session_id, "import")
        if not self.request.body:
            raise tornado.web.HTTPError(400, "send the archive as the request body: a tar or tar.gz of the workspace's contents "
                                        "(`tar -czf ws.tar.gz -C DIR .`, or what GET cma/api/sessions/{id}/workspace gave)")
        try:
            result = await tier.import_workspace(session_id, io.BytesIO(self.request.body))
        except WorkspaceArchiveError as exc:
            raise tornado.web.HTTPError(400, f"the archive was refused, nothing was written: {exc}") from None
        except WorkspaceBusy as exc:
            raise tornado.web.HTTPError(409, f"the workspace was not imported: {exc}") from None
        except Exception as exc:
            raise tornado.web.HTTPError(503, f"could not write the workspace: {type(exc).__name__}: {exc}") from None
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: workspace of session %s imported by %s: %s", session_id, user, result)
        self.finish({"session_id": session_id, **result})


def _refuse_while_served(ctx: ApiContext, session_id: str, what: str) -> None:
    """409 while a sandbox serves the session: its workspace must not be replaced under it."""
    if session_id in ctx.sessions.live:
        raise tornado.web.HTTPError(409, f"a sandbox is serving session {session_id} now; stop it first "
                                    f"(POST cma/api/sessions/{session_id}/stop) or wait until it sleeps, then {what}")


class SessionWorkspaceSyncHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/workspace/push`: the session's workspace into the object store
    (`WorkspaceObjectStore.url`); `…/pull`: the store's object for the session into its volume here (refused while a
    sandbox serves it). How a session moves to another host: push here, pull there (or `WorkspaceObjectStore.sync`)."""

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str, action: str) -> None:
        from ..sandboxes.objectstore import ObjectStoreError
        from ..sandboxes.workspace import WorkspaceArchiveError, WorkspaceBusy

        self.body(EmptyBody)
        tier = _container_tier(self.ctx)
        if not tier.object_store.enabled:
            raise tornado.web.HTTPError(409, "no object store is configured on this server: set WorkspaceObjectStore.url "
                                        "(s3://bucket/prefix) and, for an S3-compatible service, WorkspaceObjectStore.endpoint_url")
        if action == "pull":
            _refuse_while_served(self.ctx, session_id, "pull")
        try:
            if action == "push":
                result = await tier.push_workspace(session_id)
            else:
                result = await tier.pull_workspace(session_id)
                if result is None:
                    raise tornado.web.HTTPError(404, f"the object store has no workspace for session {session_id} "
                                                f"({tier.object_store.location(session_id)}); push it from the host it ran on")
        except tornado.web.HTTPError:
            raise
        except LookupError as exc:
            raise tornado.web.HTTPError(404, f"{exc}; nothing to push") from None
        except WorkspaceBusy as exc:
            raise tornado.web.HTTPError(409, f"the workspace was not pulled: {exc}") from None
        except WorkspaceArchiveError as exc:
            raise tornado.web.HTTPError(502, f"the store's object was refused, nothing was written: {exc}") from None
        except ObjectStoreError as exc:
            raise tornado.web.HTTPError(502, str(exc)) from None
        except Exception as exc:  # the Docker engine or the image, not the store
            raise tornado.web.HTTPError(503, f"could not {action} the workspace: {type(exc).__name__}: {exc}") from None
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: workspace of session %s: %s by %s: %s", session_id, action, user, result)
        self.finish({"session_id": session_id, "action": action, **result})


class WebhookDeliveriesHandler(CMAHandler):
    """`GET cma/api/webhooks`: received deliveries, newest first; pass `next_before` back as `before` for the next page."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(DeliveriesQuery)
        rows = self.ctx.store.deliveries(limit=query.limit, before=query.before)
        data = []
        for row in rows:
            try:
                body = read_json(row.pop("body"), max_bytes=None)
            except JSONBodyError:
                body = None  # stored as received (by an older version, which took any JSON); shown as null
            data.append({**row, "body": body})
        self.finish({"data": data, "next_before": rows[-1]["seq"] if rows else None})


# ---------------------------------------------------------------------- egress policies and secrets


def _policy_problem(exc: Exception) -> tornado.web.HTTPError:
    return tornado.web.HTTPError(400, f"the policy is not valid: {exc}")


class EgressHandler(CMAHandler):
    """Base of the egress policy handlers (no routes of its own)."""

    def _warnings(self, policy: Any) -> list[str]:
        notes = policy.warnings()
        for rule in policy.inject:
            name = rule.injection.secret_name
            if _secret_set(self.ctx, name) is False:
                notes.append(f"secret {name} is not set yet; set it with PUT cma/api/egress/secrets/{name}")
        return notes


def _secret_set(ctx: ApiContext, name: str) -> bool | None:
    """Whether a secret exists; None when the secrets file cannot be read (the status says why)."""
    from ..egress.secrets import SecretStoreError

    try:
        return name in ctx.secrets
    except SecretStoreError:
        return None


class EgressPoliciesHandler(EgressHandler):
    """`GET cma/api/egress/policies` (most specific scope first; corrupt ones show their error) and `POST` to create one."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"data": [r.to_json() for r in self.ctx.policies.list()]})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from ..egress.policy import PolicyConflict, PolicyError

        body = self.json_object()  # the document's own rules are egress/policy.py's
        try:
            record = self.ctx.policies.create(body)
        except PolicyError as exc:
            raise _policy_problem(exc) from None
        except PolicyConflict as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        self.log.info("jupyter-cma: egress policy %s (%s) created", record.id, record.policy.name)
        self.set_status(201)
        self.finish({**record.to_json(), "warnings": self._warnings(record.policy)})


class EgressPolicyValidateHandler(EgressHandler):
    """`POST cma/api/egress/policies/validate`: check a document without storing it."""

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from ..egress.policy import PolicyError

        body = self.json_object()
        try:
            policy = self.ctx.policies.validate(body)
        except PolicyError as exc:
            self.finish({"valid": False, "errors": exc.problems, "warnings": [], "policy": None})
            return
        self.finish({"valid": True, "policy": policy.to_document(), "warnings": self._warnings(policy), "errors": []})


class EgressPolicyHandler(EgressHandler):
    """`GET`, `PUT` (replace the whole document) and `DELETE cma/api/egress/policies/{id}`."""

    def _record(self, policy_id: str) -> Any:
        record = self.ctx.policies.get(policy_id)
        if record is None:
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}; list them with GET cma/api/egress/policies")
        return record

    @tornado.web.authenticated
    @authorized
    async def get(self, policy_id: str) -> None:
        self.finish(self._record(policy_id).to_json())

    @tornado.web.authenticated
    @authorized
    async def put(self, policy_id: str) -> None:
        from ..egress.policy import PolicyConflict, PolicyError

        body = self.json_object()
        if body.get("id", policy_id) != policy_id:
            raise tornado.web.HTTPError(400, f"the body's id {str(body.get('id'))[:140]!r} is not {policy_id}; drop it or send it to its own URL")
        self._record(policy_id)
        try:
            record = self.ctx.policies.update(policy_id, body)
        except PolicyError as exc:
            raise _policy_problem(exc) from None
        except PolicyConflict as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        if record is None:
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}")
        self.log.info("jupyter-cma: egress policy %s (%s) updated", record.id, record.policy.name)
        self.finish({**record.to_json(), "warnings": self._warnings(record.policy)})

    @tornado.web.authenticated
    @authorized
    async def delete(self, policy_id: str) -> None:
        if not self.ctx.policies.delete(policy_id):
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}; list them with GET cma/api/egress/policies")
        self.log.info("jupyter-cma: egress policy %s deleted", policy_id)
        self.finish({"id": policy_id, "deleted": True})


class EgressDecideHandler(CMAHandler):
    """`POST cma/api/egress/decide`: explain what the proxy would do with one request of one session.

    Body: `{"session_id"?, "agent_id"?, "metadata"?: {…}, "method"?: "GET", "url": "https://…", "websocket"?: false}`.
    A CONNECT is `{"method": "CONNECT", "url": "https://host:port"}`.
    """

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from urllib.parse import urlsplit

        from ..egress.policy import DEFAULT_PORTS

        body = self.body(DecideBody)
        method, websocket, url = body.method.upper(), body.websocket, body.url
        if "\\" in url or any(c.isspace() for c in url):
            raise tornado.web.HTTPError(400, "the url contains a backslash or whitespace; such requests are refused, send a plain URL")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket, a host that NFKC normalization changes
            raise tornado.web.HTTPError(400, f"the url cannot be parsed ({exc}); send an absolute URL such as https://pypi.org/simple/") from None
        if parts.scheme.lower() not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise tornado.web.HTTPError(400, "url must be an absolute http, https, ws or wss URL, such as https://pypi.org/simple/")
        if "@" in parts.netloc:
            raise tornado.web.HTTPError(400, "the url has userinfo ('user@host'); such requests are refused, send the URL without it")
        try:
            port = parts.port
        except ValueError:
            raise tornado.web.HTTPError(400, "the url's port must be a number 1-65535") from None
        host = parts.netloc.rsplit(":", 1)[0] if parts.port is not None or parts.netloc.endswith(":") else parts.netloc
        path = None if method == "CONNECT" else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # metadata absent: the stored session's own metadata
        context = self.ctx.egress.context_for(body.session_id, agent_id=body.agent_id, metadata=body.metadata)
        effective = self.ctx.egress.resolve(context)
        decision = effective.decide(method, parts.scheme, host, port, path, websocket=websocket)
        answer = decision.to_json()
        for injection in answer["injections"]:
            injection["secret_set"] = _secret_set(self.ctx, injection["secret"])
        self.finish({
            "decision": answer,
            "request": {"method": method, "scheme": parts.scheme.lower(), "host": host, "port": port or DEFAULT_PORTS.get(parts.scheme.lower()),
                        "path": path, "websocket": websocket},
            "context": context.to_json(),
            "resolution": effective.describe(),
        })


class EgressSecretsHandler(CMAHandler):
    """`GET cma/api/egress/secrets`: names, times and fingerprints — never values."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        from ..egress.secrets import SecretStoreError

        try:
            secrets = self.ctx.secrets.list()
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        self.finish({"data": [s.to_json() for s in secrets]})


class EgressSecretHandler(CMAHandler):
    """`PUT cma/api/egress/secrets/{name}` `{"value"}` (the answer never echoes it) and `DELETE`."""

    def _name(self, name: str) -> str:
        from ..egress.secrets import SecretValueError, check_name

        try:
            return check_name(name)
        except SecretValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None

    @tornado.web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        from ..egress.secrets import SecretStoreError, SecretValueError

        name = self._name(name)
        body = self.body(SecretPut)
        try:
            info, created = self.ctx.secrets.set(name, body.value)
        except SecretValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        self.log.info("jupyter-cma: egress secret %s %s", name, "created" if created else "replaced")
        self.set_status(201 if created else 200)
        self.finish(info.to_json())

    @tornado.web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        from ..egress.secrets import SecretStoreError

        name = self._name(name)
        try:
            deleted = self.ctx.secrets.delete(name)
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        if not deleted:
            raise tornado.web.HTTPError(404, f"no secret {name}; list them with GET cma/api/egress/secrets")
        self.log.info("jupyter-cma: egress secret %s deleted", name)
        self.finish({"name": name, "deleted": True})


class EgressLogHandler(CMAHandler):
    """`GET cma/api/egress/log`: egress records, newest first, filtered; `?format=jsonl` exports them all.

    Filters: session_id, agent_id, host, decision (allowed|denied|injected), since/until (Unix times);
    JSON pages by `before` (the previous page's `next_before`); JSON lines stream every match.
    """

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(EgressLogQuery)
        filters: dict[str, Any] = {name: getattr(query, name) for name in ("session_id", "agent_id", "decision", "since", "until")
                                   if getattr(query, name) is not None}
        if query.host is not None:
            filters["host"] = query.host.lower()
        if query.format == "jsonl":
            self.set_header("Content-Disposition", 'attachment; filename="egress-log.jsonl"')
            self.set_header("Content-Type", "application/x-ndjson")
            for n, line in enumerate(self.ctx.egress_log.export_jsonl(**filters), start=1):
                self.write(line)
                if n % 500 == 0:
                    await self.flush()
            # APIHandler.finish would relabel the body as JSON: finish as the plain handler does.
            tornado.web.RequestHandler.finish(self)
            return
        rows = self.ctx.egress_log.query(limit=query.limit, before=query.before, **filters)
        self.finish({"data": rows, "next_before": rows[-1]["id"] if rows else None})


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
        (rf"{api}/sessions/{sid}/terminal", SessionTerminalHandler, kw),
        (rf"{api}/sessions/{sid}/workspace", SessionWorkspaceHandler, kw),
        (rf"{api}/sessions/{sid}/workspace/(?P<action>push|pull)", SessionWorkspaceSyncHandler, kw),
        (rf"{api}/webhooks", WebhookDeliveriesHandler, kw),
        (rf"{api}/egress/log", EgressLogHandler, kw),
        (rf"{api}/egress/policies", EgressPoliciesHandler, kw),
        (rf"{api}/egress/policies/validate", EgressPolicyValidateHandler, kw),
        (rf"{api}/egress/policies/(?P<policy_id>{ID_PATTERN})", EgressPolicyHandler, kw),
        (rf"{api}/egress/decide", EgressDecideHandler, kw),
        (rf"{api}/egress/secrets", EgressSecretsHandler, kw),
        (rf"{api}/egress/secrets/(?P<name>[^/]{{1,200}})", EgressSecretHandler, kw),
        (r"/cma/webhooks", WebhookHandler, {"ingest": ctx.webhooks, "max_bytes": ctx.max_webhook_bytes}),
    ]
