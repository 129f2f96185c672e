"""`{base_url}cma/api/agents`: agents on Anthropic's API, each fitted to (and stored with) a tier and a size here.

An agent may also be given built-in tools (`builtins`: family → settings; they run in this server, see
`tools/builtin/`) and notebook tools (`notebook_tools`: `@cma.tool` functions; they run in their kernel). Both
go upstream as custom tools, and this server stores which ones the agent has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..control.agents import bindings, with_tools
from ..tools.catalog import TOOLSET_TYPE, with_standard_off
from .base import CMAHandler, known_tier
from .schemas import DEFAULT_MODEL, AgentCreate, AgentPatch, AgentsQuery, NotebookToolRef

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..sandboxes.base import Tier
    from ..store import Store
    from ..tools.builtin import BuiltinTools
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
    """What both agent routes use: the API client, the store (tier, size, built-ins and notebook tools per agent),
    the tiers, the built-in tool families and the notebook tools kernels registered."""

    def initialize(  # type: ignore[override]
        self, name: str, *, store: Store, client: AsyncAnthropic, tiers: Mapping[str, Tier], default_tier: Callable[[], str],
        notebook_tools: NotebookTools, builtins: BuiltinTools | None = None,
    ) -> None:
        super().initialize(name)
        self._store = store
        self._client = client
        self._tiers = tiers
        self._default_tier = default_tier
        self._notebook_tools = notebook_tools
        self._builtins = builtins

    def _builtins_arg(self, requested: Mapping[str, Mapping[str, Any]], taken: set[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The built-ins the client asked for, checked (what is stored), and their definitions for upstream; 400 for
        an unknown, unavailable or badly set family, or a tool name the agent already has."""
        if not requested:
            return {}, []
        if self._builtins is None or not self._builtins.families:
            raise tornado.web.HTTPError(400, "this server loaded no built-in tool families (c.CMAApp.builtin_families); "
                                        "leave builtins out")
        try:
            checked = self._builtins.check(requested)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        definitions = [spec.definition() for spec in self._builtins.specs(checked)]
        for definition in definitions:
            if definition["name"] in taken:
                raise tornado.web.HTTPError(400, f"the agent already has a tool named {definition['name']!r}, which the built-in "
                                            "tools also use; rename the agent's own tool, or leave that built-in out")
            taken.add(definition["name"])
        return checked, definitions

    def _builtin_names(self, builtins: Mapping[str, Mapping[str, Any]], *, all_offered: bool = False) -> set[str]:
        """The tool names these built-ins give an agent (`all_offered`: any their families may have given it)."""
        if self._builtins is None or not builtins:
            return set()
        if all_offered:
            return self._builtins.tool_names(builtins)
        return {spec.name for spec in self._builtins.specs(builtins)}

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
        params: dict[str, Any] = {"limit": query.limit}
        if query.page is not None:
            params["page"] = query.page
        page = await self.upstream(self._client.beta.agents.list(**params))
        agents = [self._with_tier(a.model_dump(mode="json")) for a in page.data]
        self.finish({"data": agents, "next_page": page.next_page})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.body(AgentCreate)
        tier = self._tier_arg(body.tier)
        size = size_arg(self._tiers, tier, body.size)
        model = body.model if body.model is not None else DEFAULT_MODEL
        # Only what was sent is passed on (exclude_unset): an input schema keeps its own keywords as given.
        tools = self._tiers[tier].tools_for_agent() + [t.model_dump(mode="json", exclude_unset=True) for t in body.tools]
        taken = {t["name"] for t in tools if t.get("type") == "custom"}
        builtins, builtin_tools = self._builtins_arg(body.builtins, taken)
        # A built-in named like a tool of the standard toolset (web_fetch) replaces it: the toolset's own is turned off.
        tools = with_standard_off(tools + builtin_tools, {t["name"] for t in builtin_tools})
        notebook = self._notebook_tools_arg(body.notebook_tools, taken)
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
        self._store.set_agent_builtins(agent.id, builtins)
        self.set_status(201)
        self.finish(self._with_tier(agent.model_dump(mode="json")))


def with_row(store: Store, agent: dict[str, Any]) -> dict[str, Any]:
    """An agent as the API gives it, with what this server stores: its tier, size, built-ins and notebook tools."""
    row = store.agent(agent["id"]) or {}
    notebook = [{"name": name, "kernel_id": b.get("kernel_id"), "notebook": b.get("notebook")}
                for name, b in (row.get("notebook_tools") or {}).items()]
    return {**agent, "tier": row.get("tier"), "size": row.get("size"), "notebook_tools": notebook,
            "builtins": row.get("builtins") or {}}


class AgentHandler(_AgentHandler):
    """`GET cma/api/agents/{id}`; `PATCH` moves the agent to another tier, gives it another size, other built-ins or
    other notebook tools."""

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
                                        "{\"builtins\": {…}} its built-in tools, {\"notebook_tools\": […]} its notebook tools, "
                                        "or several of them")
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
        stored_builtins = row.get("builtins") or {}
        builtins: dict[str, dict[str, Any]] | None = None  # None: the agent's built-ins stay as they are
        notebook: list[NotebookTool] | None = None
        if body.builtins is not None or body.notebook_tools is not None:
            base = tools if tools is not None else [t.model_dump(mode="json", exclude_none=True) for t in current.tools]
            if body.builtins is not None:
                base = with_tools(base, self._builtin_names(stored_builtins, all_offered=True), [])
                # The toolset as the tier gives it, so a standard tool a former built-in replaced is back.
                toolset = [t for t in self._tiers[tier].tools_for_agent() if t.get("type") == TOOLSET_TYPE]
                base = toolset + [t for t in base if t.get("type") != TOOLSET_TYPE]
            if body.notebook_tools is not None:
                base = with_tools(base, set(row.get("notebook_tools") or {}), [])
            taken = {t["name"] for t in base if t.get("type") == "custom"}
            if body.builtins is not None:
                builtins, builtin_tools = self._builtins_arg(body.builtins, taken)
                base = base + builtin_tools
            if body.notebook_tools is not None:
                notebook = self._notebook_tools_arg(body.notebook_tools, taken)
                base = base + [t.definition() for t in notebook]
            tools = base
        if tools is not None:
            # A refitted or rebuilt toolset: the standard tools the agent's built-ins replace stay off.
            tools = with_standard_off(tools, self._builtin_names(builtins if builtins is not None else stored_builtins))
        agent = current
        if tools is not None:
            agent = await self.upstream(self._client.beta.agents.update(agent_id, version=current.version, tools=tools))
        self._store.set_agent(agent_id, tier=tier, name=current.name, size=size)
        if notebook is not None:
            self._store.set_agent_notebook_tools(agent_id, bindings(notebook))
        if builtins is not None:
            self._store.set_agent_builtins(agent_id, builtins)
        self.finish(self._with_tier(agent.model_dump(mode="json")))
