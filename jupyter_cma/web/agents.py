"""`{base_url}cma/api/agents`: agents on Anthropic's API, each fitted to (and stored with) a tier and a size here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler, known_tier
from .schemas import DEFAULT_MODEL, AgentCreate, AgentPatch, AgentsQuery

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..sandboxes.base import Tier
    from ..store import Store


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
    """What both agent routes use: the API client, the store (tier and size per agent) and the tiers."""

    def initialize(  # type: ignore[override]
        self, name: str, *, store: Store, client: AsyncAnthropic, tiers: Mapping[str, Tier], default_tier: Callable[[], str],
    ) -> None:
        super().initialize(name)
        self._store = store
        self._client = client
        self._tiers = tiers
        self._default_tier = default_tier

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
        params: dict[str, Any] = {
            "name": body.name,
            "model": model if isinstance(model, str) else model.model_dump(exclude_none=True),
            # Only what was sent is passed on (exclude_unset): an input schema keeps its own keywords as given.
            "tools": self._tiers[tier].tools_for_agent() + [t.model_dump(mode="json", exclude_unset=True) for t in body.tools],
        }
        for key in ("system", "description", "metadata"):
            if getattr(body, key) is not None:
                params[key] = getattr(body, key)
        agent = await self.upstream(self._client.beta.agents.create(**params))
        self._store.set_agent(agent.id, tier=tier, name=body.name, size=size)
        self.set_status(201)
        self.finish(self._with_tier(agent.model_dump(mode="json")))

    def _with_tier(self, agent: dict[str, Any]) -> dict[str, Any]:
        row = self._store.agent(agent["id"]) or {}
        return {**agent, "tier": row.get("tier"), "size": row.get("size")}


class AgentHandler(_AgentHandler):
    """`GET cma/api/agents/{id}`; `PATCH` `{"tier": …}` moves the agent to another tier."""

    @tornado.web.authenticated
    @authorized
    async def get(self, agent_id: str) -> None:
        agent = await self.upstream(self._client.beta.agents.retrieve(agent_id))
        row = self._store.agent(agent_id)
        self.finish({**agent.model_dump(mode="json"), "tier": row["tier"] if row else None})

    @tornado.web.authenticated
    @authorized
    async def patch(self, agent_id: str) -> None:
        body = self.body(AgentPatch)
        if not body.model_fields_set:
            raise tornado.web.HTTPError(400, "send {\"tier\": …} to change the agent's tier, {\"size\": …} its instance size, or both")
        if "tier" not in body.model_fields_set:
            row = self._store.agent(agent_id)
            tier = (row or {}).get("tier") or self._default_tier()
            size = size_arg(self._tiers, tier, body.size)
            current = await self.upstream(self._client.beta.agents.retrieve(agent_id))
            self._store.set_agent(agent_id, tier=tier, name=current.name, size=size)
            self.finish({**current.model_dump(mode="json"), "tier": self._store.agent(agent_id)["tier"], "size": size})
            return
        tier = self._tier_arg(body.tier)
        size = size_arg(self._tiers, tier, body.size)
        current = await self.upstream(self._client.beta.agents.retrieve(agent_id))
        # Keep the agent's own custom tools; replace those any tier provides (e.g. the kernel's `python`).
        tier_tools = self._tiers[tier].tools_for_agent()
        provided = {t.get("name") for other in self._tiers.values() for t in other.tools_for_agent() if t.get("type") == "custom"}
        own = [t.model_dump(mode="json") for t in current.tools if t.type == "custom" and t.name not in provided]
        agent = await self.upstream(self._client.beta.agents.update(agent_id, version=current.version, tools=tier_tools + own))
        self._store.set_agent(agent_id, tier=tier, name=current.name, size=size)
        self.finish({**agent.model_dump(mode="json"), "tier": tier, "size": self._store.agent(agent_id)["size"]})
