"""`cma.Agent`: an agent on Anthropic's API, fitted to a tier of this Jupyter server, made from a notebook.

    @cma.tool
    def lookup(customer: str) -> dict:
        "The account of one customer."
        return accounts.loc[customer].to_dict()

    agent = cma.Agent.create("analyst", tier="kernel", tools=[lookup, "read"])
    session = agent.start("Which of our customers is most at risk?")
    print(session.wait())

`tools` takes `@cma.tool` functions of this kernel (they run here, in this kernel, when the agent calls them)
and names of the tier's standard tools; the server gives an agent all standard tools of its tier anyway, so a
name is a check that the tier has it. `builtins` enables built-in tool families, which run in the Jupyter
server (`cma.tool_catalog()` lists them, with whether each can run there):

    agent = cma.Agent.create("researcher", builtins={"web_fetch": {}, "notebook": {"mode": "read"}})

Everything goes through the server's REST API (`cma/api/agents`, `cma/api/tools`).
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .connection import CMAError, connection
from .sessions import Session, widget_view

__all__ = ["STANDARD_TOOLS", "Agent", "tool_catalog"]

# What each tier gives every agent (the server's `tools_for_agent`): names a user may list in `tools`.
STANDARD_TOOLS: dict[str, tuple[str, ...]] = {
    "container": ("bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"),
    "kernel": ("python", "read", "write", "edit", "glob", "grep"),
}
_TOOLSET_NAMES = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
_AGENT_ID = re.compile(r"^agent_[A-Za-z0-9]+$")
# How many names a "no such agent" error lists (cma.Agent.list() has them all).
KNOWN_NAMES_SHOWN = 20

# The agent this kernel used last (created, fetched by %%cma, or started): `%%cma` without a name talks to it.
_last_used: Agent | None = None


def last_used() -> Agent | None:
    """The agent this kernel used last (created or started here, or named in `%%cma`), or None."""
    return _last_used


def _use(agent: Agent) -> Agent:
    global _last_used
    _last_used = agent
    return agent


class Agent:
    """An agent of this server. Make one with `Agent.create(...)`, find one with `Agent.get(id_or_name)`.

    Attributes: `id`, `name`, `version`, `tier`, `size`, `model` (its id), `system`, `description`, `metadata`,
    `tools` (the names of every tool it has), `notebook_tools` (`[{"name", "kernel_id", "notebook"}]`: the
    notebook tools it has and where each runs), `builtins` (`{family: settings}`: the built-in tool families it
    has), `data` (the agent as the REST API gave it).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._set(data)

    def _set(self, data: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(data)
        self.id: str = str(data["id"])
        self.name: str = str(data.get("name") or "")
        self.version: int | None = data.get("version")
        self.tier: str | None = data.get("tier")
        self.size: str | None = data.get("size")
        model = data.get("model")
        self.model: str | None = model.get("id") if isinstance(model, Mapping) else model
        self.system: str | None = data.get("system")
        self.description: str | None = data.get("description")
        self.metadata: dict[str, str] = dict(data.get("metadata") or {})
        self.tools: list[str] = _tool_names(data.get("tools") or [])
        self.notebook_tools: list[dict[str, Any]] = [dict(t) for t in data.get("notebook_tools") or []]
        self.builtins: dict[str, dict[str, Any]] = {str(k): dict(v or {}) for k, v in (data.get("builtins") or {}).items()}

    # ------------------------------------------------------------------ making and finding

    @classmethod
    def create(cls, name: str, *, model: str | None = None, tier: str | None = None, size: str | None = None,
               system: str | None = None, description: str | None = None, tools: Iterable[Any] = (),
               metadata: Mapping[str, str] | None = None,
               builtins: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None) -> Agent:
        """Create an agent on the server's account, fitted to a tier of this server.

        Args:
            name: the agent's name (`Agent.get(name)` finds the latest of that name).
            model: a model name (default: the server's, e.g. claude-sonnet-4-5).
            tier: `kernel` or `container` (default: the server's default tier).
            size: an instance size of that tier (`GET cma/api/status` lists them).
            system: the system prompt.
            description, metadata: stored with the agent.
            tools: `@cma.tool` functions of this kernel (they run here) and names of standard tools of the tier
                (kernel: python, read, write, edit, glob, grep; container: bash, read, write, edit, glob, grep,
                web_fetch, web_search — the agent gets all of them anyway).
            builtins: built-in tool families to enable, each with its settings, e.g.
                `{"web_fetch": {}, "notebook": {"mode": "edit", "paths": ["reports/**"]}}`; a list of names
                enables each with its default settings. `cma.tool_catalog()["builtin"]` lists the families.

        Raises:
            CMAError: a tool that is not registered with the server, a name the tier has not, a built-in family that
                is unknown, unavailable on the server or given bad settings, or the server's refusal.
        """
        body: dict[str, Any] = {"name": name, "notebook_tools": _notebook_refs(tools, tier)}
        for key, value in (("tier", tier), ("size", size), ("model", model), ("system", system),
                           ("description", description)):
            if value is not None:
                body[key] = value
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if builtins is not None:
            body["builtins"] = _builtins_arg(builtins)
        return _use(cls(connection().request("POST", "agents", body)))

    @classmethod
    def get(cls, id_or_name: str) -> Agent:
        """The agent with this id, or the most recent agent of this name."""
        if not isinstance(id_or_name, str) or not id_or_name:
            raise TypeError(f"Agent.get takes an agent id ('agent_…') or name, not {id_or_name!r}")
        if _AGENT_ID.match(id_or_name):
            try:
                return cls(connection().request("GET", f"agents/{id_or_name}"))
            except CMAError as exc:
                if exc.status != 404:
                    raise
        agents = cls._list_data()
        named = [a for a in agents if a.get("name") == id_or_name]
        if not named:
            known = sorted({str(a.get("name")) for a in agents})
            shown = ", ".join(known[:KNOWN_NAMES_SHOWN]) + (f" and {len(known) - KNOWN_NAMES_SHOWN} more" if len(known) > KNOWN_NAMES_SHOWN else "")
            listing = f" (the server's agents: {shown})" if known else " (the server has no agents yet)"
            raise CMAError(f"no agent has the id or name {id_or_name!r}{listing}: create it with "
                           f"cma.Agent.create({id_or_name!r}, ...)", 404)
        return cls(max(named, key=lambda a: str(a.get("created_at") or "")))

    @classmethod
    def list(cls) -> list[Agent]:
        """The server account's agents, newest first."""
        return [cls(a) for a in sorted(cls._list_data(), key=lambda a: str(a.get("created_at") or ""), reverse=True)]

    @staticmethod
    def _list_data() -> list[dict[str, Any]]:
        """Every agent of the account, page after page (the API gives at most 100 at a time)."""
        agents: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            answer = connection().request("GET", "agents", params=params) or {}
            agents.extend(answer.get("data") or [])
            next_page = answer.get("next_page")
            if not next_page or next_page == params.get("page"):
                return agents
            params["page"] = next_page

    def refresh(self) -> Agent:
        """Read the agent again from the server."""
        self._set(connection().request("GET", f"agents/{self.id}"))
        return self

    def update(self, *, tools: Iterable[Any] | None = None, tier: str | None = None, size: str | None = None,
               builtins: Mapping[str, Mapping[str, Any]] | Iterable[str] | None = None) -> Agent:
        """Change the agent's notebook tools, built-in tools, tier or instance size (None: unchanged).

        `tools` replaces all of its notebook tools: `@cma.tool` functions of this kernel, entries of
        `agent.notebook_tools` (to keep tools of other notebooks) and names of standard tools of its tier.
        `builtins` replaces all of its built-in tool families (`{}` for none); a tier change keeps them.
        """
        body: dict[str, Any] = {}
        if tier is not None:
            body["tier"] = tier
        if size is not None:
            body["size"] = size
        if tools is not None:
            body["notebook_tools"] = _notebook_refs(tools, tier or self.tier)
        if builtins is not None:
            body["builtins"] = _builtins_arg(builtins)
        if not body:
            raise TypeError("agent.update() changes something: give tools=[...], builtins={...}, tier=... or size=...")
        self._set(connection().request("PATCH", f"agents/{self.id}", body))
        return self

    # ------------------------------------------------------------------ sessions

    def start(self, prompt: str | None = None, *, title: str | None = None,
              metadata: Mapping[str, str] | None = None) -> Session:
        """Start a session of this agent, with `prompt` as its first message; `session.wait()` gives the answer."""
        body: dict[str, Any] = {"agent_id": self.id}
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("start(prompt) needs a non-empty message, or no prompt (then session.send(text))")
            body["message"] = prompt
        if title is not None:
            body["title"] = title
        if metadata is not None:
            body["metadata"] = dict(metadata)
        created = connection().request("POST", "sessions", body) or {}
        session = Session(str(created["id"]), agent_id=self.id, title=created.get("title") or title)
        if prompt is not None:
            session._min_user_messages = 1
        _use(self)
        return session

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        where = f"{self.tier} tier" + (f", size {self.size}" if self.size else "") if self.tier else "tier unknown here"
        notebook = [f"{t['name']} ({t.get('notebook') or t.get('kernel_id')})" for t in self.notebook_tools]
        tools = ", ".join(self.tools) or "none"
        more = f"; notebook tools: {', '.join(notebook)}" if notebook else ""
        more += f"; built-ins: {', '.join(self.builtins)}" if self.builtins else ""
        return f"<cma.Agent {self.name!r} {self.id}, {where}, model {self.model}; tools: {tools}{more}>"

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = [("id", f"<code>{esc(self.id)}</code>"),
                ("tier", esc(f"{self.tier or 'unknown here'}" + (f", size {self.size}" if self.size else ""))),
                ("model", esc(str(self.model))),
                ("tools", ", ".join(f"<code>{esc(t)}</code>" for t in self.tools) or "none")]
        if self.notebook_tools:
            rows.append(("notebook tools", ", ".join(
                f"<code>{esc(str(t['name']))}</code> in {esc(str(t.get('notebook') or t.get('kernel_id')))}"
                for t in self.notebook_tools)))
        if self.builtins:
            rows.append(("built-ins", ", ".join(f"<code>{esc(name)}</code>" for name in self.builtins)))
        if self.description:
            rows.append(("description", esc(self.description)))
        if self.system:
            rows.append(("system", f"<pre style=\"white-space:pre-wrap;margin:0\">{esc(self.system)}</pre>"))
        body = "".join(f'<tr><th style="text-align:left;padding-right:1em;vertical-align:top">{k}</th>'
                       f'<td style="text-align:left">{v}</td></tr>' for k, v in rows)
        return f"<div><b>cma.Agent</b> {esc(self.name)}<table>{body}</table></div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Displayed in a notebook: the live table of this agent's sessions (a widget), with the text and HTML
        above wherever widgets are not shown."""
        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        return {**bundle, **widget_view(include, exclude, agent=self.id)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agent) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def tool_catalog() -> dict[str, Any]:
    """The server's tool catalog (`GET cma/api/tools`): `standard` (each tier's standard tools, on or off, and where
    they run), `builtin` (the built-in tool families: available or why not, settings schema, timeout, tools),
    `notebook` (the tools kernels registered with @cma.tool) and `server` (the server's own custom tools)."""
    return dict(connection().request("GET", "tools") or {})


def _builtins_arg(builtins: Mapping[str, Mapping[str, Any]] | Iterable[str]) -> dict[str, dict[str, Any]]:
    """`builtins` for the REST API: a mapping family → settings as it is, or family names with default settings."""
    if isinstance(builtins, Mapping):
        return {str(name): dict(settings or {}) for name, settings in builtins.items()}
    if isinstance(builtins, (str, bytes)):
        builtins = [builtins]  # one family where a list was meant
    names = list(builtins)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"builtins takes {{family: settings}} or a list of family names, not {builtins!r}")
    return {name: {} for name in names}


def _tool_names(tools: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the tools an agent has: the enabled tools of its toolset, then its custom tools."""
    names: list[str] = []
    for tool in tools:
        if str(tool.get("type", "")).startswith("agent_toolset"):
            default = (tool.get("default_config") or {}).get("enabled")
            configs = {str(c.get("name")): c for c in tool.get("configs") or []}
            for name in [*_TOOLSET_NAMES, *(n for n in configs if n not in _TOOLSET_NAMES)]:
                enabled = (configs.get(name) or {}).get("enabled")
                if enabled is None:
                    enabled = default if default is not None else True
                if enabled and name not in names:
                    names.append(name)
        elif tool.get("name") and tool["name"] not in names:
            names.append(str(tool["name"]))
    return names


def _notebook_refs(tools: Iterable[Any], tier: str | None) -> list[dict[str, str]]:
    """`notebook_tools` for the REST API from what a user passed as `tools`; standard tool names are checked."""
    # Not imported: `tools.notebook` uses this package, and an object can only be a NotebookTool once it is loaded.
    notebook = sys.modules.get("jupyter_cma.tools.notebook")
    NotebookTool: Any = getattr(notebook, "NotebookTool", ())  # noqa: N806  (a class, named as in its module)

    if isinstance(tools, (str, bytes)) or isinstance(tools, NotebookTool):
        tools = [tools]  # a single tool where a list was meant
    refs: list[dict[str, str]] = []
    for item in tools:
        if isinstance(item, NotebookTool):
            if item.registered is not None:
                raise CMAError(f"tool {item.name!r} is not registered with the server, so no agent can call it: "
                               f"{item.registered}")
            kernel = connection().kernel
            if kernel is None:
                raise CMAError(f"tool {item.name!r} runs in the kernel that defined it, and this connection is not that "
                               "kernel's (cma.connect(...) was called?): give notebook tools to agents from the "
                               "notebook that defines them")
            refs.append({"kernel_id": kernel.kernel_id, "name": item.name})
        elif isinstance(item, str):
            allowed = STANDARD_TOOLS.get(tier or "") or tuple(dict.fromkeys(t for ts in STANDARD_TOOLS.values() for t in ts))
            if item not in allowed:
                which = f"the {tier} tier" if tier in STANDARD_TOOLS else "the tiers"
                raise CMAError(f"{item!r} is not a standard tool of {which}, which has: {', '.join(allowed)}; "
                               "a function of this notebook becomes a tool with @cma.tool")
        elif isinstance(item, Mapping) and {"kernel_id", "name"} <= set(item):
            refs.append({"kernel_id": str(item["kernel_id"]), "name": str(item["name"])})
        elif callable(item):
            raise TypeError(f"{getattr(item, '__name__', item)!r} is a plain function: decorate it with @cma.tool to "
                            "make it a tool")
        else:
            raise TypeError(f"tools takes @cma.tool functions and names of standard tools, not {item!r}")
    return refs
