"""`{base_url}cma/api/agents`: agents on Anthropic's API, each fitted to (and stored with) a tier and a size here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..control.agents import bindings, with_tools
from .base import CMAHandler, known_tier
from .schemas import DEFAULT_MODEL, AgentCreate, AgentPatch, AgentsQuery, NotebookToolRef

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..sandboxes.base import Tier
    from ..store import Store
    from ..tools.kernels import NotebookTool, NotebookTools


def size_arg(tiers: Mapping[str, Tier], tier: str, size: str | None) -> str | None:
    """An instance size, checked against the sizes of the tier the agent runs on (None: unchanged).

    Each tier says what sizes it has (`size_names()`, from `instance_sizes`, a trait of the tier); a tier without
    any takes none.
    """
    if size is None:
        return None
    owner = tiers[tier]
    sizes = sorted(owner.size_names())
    setting = f"{type(owner).__name__}.instance_sizes"
    if not sizes:
        raise tornado.web.HTTPError(400, f"the {tier} tier has no instance sizes on this server ({setting}); leave size out")
    if size not in sizes:
        raise tornado.web.HTTPError(400, f"size must be one of {sizes} on the {tier} tier ({setting} on this server)")
    return size


class _AgentHandler(CMAHandler):
    """What both agent routes use: the API client, the store (tier, size and notebook tools per agent), the tiers
    and the notebook tools kernels registered."""

    def initialize(  # type: ignore[override]
        self, name: str, *, store: Store, client: AsyncAnthropic, tiers: Mapping[str, Tier], default_tier: Callable[[], str],
        notebook_tools: NotebookTools,
    ) -> None:
        super().initialize(name)
        self._store = store
        self._client = client
        self._tiers = tiers
        self._default_tier = default_tier
        self._notebook_tools = notebook_tools

    def _notebook_tools_arg(self, refs: list[NotebookToolRef], taken: set[str]) -> list[NotebookTool]:
        """The registered notebook tools the client named; 400 for one that is not registered, or a name taken."""
        found = []
        for ref in refs:
            tool = self._notebook_tools.get(ref.kernel_id.lower(), ref.name)
            if tool is None:
                raise tornado.web.HTTPError(400, f"kernel {ref.kernel_id} has no tool {ref.name!r}: run the notebook cell that "
                                            "defines it with @cma.tool (GET cma/api/tools lists the registered ones)")
            if tool.name in taken:
                raise tornado.web.HTTPError(400, f"the agent already has a tool named {tool.name!r}; give the notebook tool "
                                            "another name with @cma.tool(name=...)")
            taken.add(tool.name)
            found.append(tool)
        return found

    def _with_tier(self, agent: dict[str, Any]) -> dict[str, Any]:
        return with_row(self._store, agent)

    def _tier_arg(self, tier: str | None) -> str:
        """The tier the client named (None: the server's default tier)."""
        return self._default_tier() if tier is None else known_tier(self._tiers, tier)


class AgentsHandler(_AgentHandler):
    """`GET cma/api/agents` (with their tiers) and `POST` to create one fitted to a tier."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(AgentsQuery)
        page = await self.upstream(self._client.beta.agents.list(limit=query.limit))
        agents = [self._with_tier(a.model_dump(mode="json")) for a in page.data]
        self.finish({"data": agents})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body(AgentCreate)
        tier = self._tier_arg(body.tier)
        size = size_arg(self._tiers, tier, body.size)
        model = body.model if body.model is not None else DEFAULT_MODEL
        # Only what was sent is passed on (exclude_unset): an input schema keeps its own keywords as given.
        tools = self._tiers[tier].tools_for_agent() + [t.model_dump(mode="json", exclude_unset=True) for t in body.tools]
        notebook = self._notebook_tools_arg(body.notebook_tools, {t["name"] for t in tools if t.get("type") == "custom"})
        params: dict[str, Any] = {
            "name": body.name,
            "model": model if isinstance(model, str) else model.model_dump(exclude_none=True),
            "tools": tools + [t.definition() for t in notebook],
        }
        for key in ("system", "description", "metadata"):
            if getattr(body, key) is not None:
                params[key] = getattr(body, key)
        agent = await self.upstream(self._client.beta.agents.create(**params))
        self._store.set_agent(agent.id, tier=tier, name=body.name, size=size)
        self._store.set_agent_notebook_tools(agent.id, bindings(notebook))
        self.set_status(201)
        self.finish(self._with_tier(agent.model_dump(mode="json")))


def with_row(store: Store, agent: dict[str, Any]) -> dict[str, Any]:
    """An agent as the API gives it, with what this server stores: its tier, size and notebook tools."""
    row = store.agent(agent["id"]) or {}
    notebook = [{"name": name, "kernel_id": b.get("kernel_id"), "notebook": b.get("notebook")}
                for name, b in (row.get("notebook_tools") or {}).items()]
    return {**agent, "tier": row.get("tier"), "size": row.get("size"), "notebook_tools": notebook}


class AgentHandler(_AgentHandler):
    """`GET cma/api/agents/{id}`; `PATCH` moves the agent to another tier, gives it another size, or other notebook tools."""

    @tornado.web.authenticated
    @authorized
    async def get(self, agent_id: str) -> None:
        agent = await self.upstream(self._client.beta.agents.retrieve(agent_id))
        self.finish(self._with_tier(agent.model_dump(mode="json")))

    @tornado.web.authenticated
    @authorized
    async def patch(self, agent_id: str) -> None:
        body = self.body(AgentPatch)
        if not body.model_fields_set:
            raise tornado.web.HTTPError(400, "send {\"tier\": …} to change the agent's tier, {\"size\": …} its instance size, "
                                        "{\"notebook_tools\": […]} its notebook tools, or several of them")
        row = self._store.agent(agent_id) or {}
        tier = self._tier_arg(body.tier) if "tier" in body.model_fields_set else (row.get("tier") or self._default_tier())
        size = size_arg(self._tiers, tier, body.size)
        current = await self.upstream(self._client.beta.agents.retrieve(agent_id))
        tools: list[dict[str, Any]] | None = None  # None: the agent's tools stay as they are
        if "tier" in body.model_fields_set:
            # Keep the agent's own custom tools; replace those any tier provides (e.g. the kernel's `python`).
            provided = {t.get("name") for other in self._tiers.values() for t in other.tools_for_agent() if t.get("type") == "custom"}
            own = [t.model_dump(mode="json") for t in current.tools if t.type == "custom" and t.name not in provided]
            tools = self._tiers[tier].tools_for_agent() + own
        notebook: list[NotebookTool] | None = None
        if body.notebook_tools is not None:
            base = tools if tools is not None else [t.model_dump(mode="json", exclude_none=True) for t in current.tools]
            base = with_tools(base, set(row.get("notebook_tools") or {}), [])
            notebook = self._notebook_tools_arg(body.notebook_tools, {t["name"] for t in base if t.get("type") == "custom"})
            tools = base + [t.definition() for t in notebook]
        agent = current
        if tools is not None:
            agent = await self.upstream(self._client.beta.agents.update(agent_id, version=current.version, tools=tools))
        self._store.set_agent(agent_id, tier=tier, name=current.name, size=size)
        if notebook is not None:
            self._store.set_agent_notebook_tools(agent_id, bindings(notebook))
        self.finish(self._with_tier(agent.model_dump(mode="json")))
