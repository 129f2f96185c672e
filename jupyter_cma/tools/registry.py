"""The server's registry of custom tools, and the internal route that lets sandboxes call them.

A tool is a handler in the Jupyter server (never in a sandbox) with a name,
a description and a JSON schema of its input; it may be offered to every
session or to some only. Code in a sandbox reaches the registry through the
egress proxy at `http://cma.internal/` (`EgressProxy.internal_handler` is
`ToolRegistry.handle_internal`):

    GET  /v1/tools          → 200 {"tools": [{"name", "description", "input_schema"}, ...]}
    POST /v1/tools/<name>   body: the tool's input, a JSON object
                            → 200 {"content": <str or list>, "is_error": <bool>}

Errors are JSON too: {"error": "<what to do>"} with 403 (the sandbox serves no
session), 404 (no such route, or no tool of that name for this session), 405
(wrong method) or 400 (the body is not a JSON object). A tool that fails is
not an HTTP error: its call answers 200 with `is_error` true, as a tool
result for the model.

The session a call is made for comes from the proxy (the sandbox's socket),
never from the request: nothing in the path or body names it.

Besides the server's own tools, a session sees its agent's built-in tools
(`tools/builtin/`: they run in this server, each family with its own timeout),
then the notebook tools its agent was given (`@cma.tool` in a notebook; `tools/kernels.py` runs them in the
notebook's kernel): `agent_tools(agent_id)` says which, as the store keeps them.
The kernel tier's sandboxes use the same registry (`Tier.custom_tools`).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..sandboxes.base import CustomTools

if TYPE_CHECKING:
    from .builtin import BuiltinTools
    from .kernels import NotebookTools

log = logging.getLogger("jupyter_cma.tools")

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ROUTE = "/v1/tools"
JSON = "application/json"
USAGE = f"GET {ROUTE} lists the tools; POST {ROUTE}/<name> with the tool's input (a JSON object) calls one"

# (session_id, input) → a str, JSON-able value, or content blocks; sync or async.
ToolHandler = Callable[[str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Tool:
    name: str
    handler: ToolHandler
    description: str
    input_schema: dict[str, Any]
    sessions: frozenset[str] | None  # the sessions that may see and call it; None: every session

    def visible_to(self, session_id: str | None) -> bool:
        return self.sessions is None or session_id in self.sessions

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


# agent id → its notebook tools: name → {"kernel_id", "notebook", "definition"} (see control/agents.py)
AgentTools = Callable[[str], dict[str, dict[str, Any]]]


class ToolRegistry(CustomTools):
    """Custom tools by name; each visible to every session or to the sessions it was registered for; and the
    built-in and notebook tools of each session's agent."""

    def __init__(self, notebook: NotebookTools | None = None, agent_tools: AgentTools | None = None, *,
                 builtins: BuiltinTools | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._notebook = notebook
        self._agent_tools = agent_tools
        self._builtins = builtins

    def register(self, name: str, handler: ToolHandler, *, description: str, input_schema: dict[str, Any],
                 sessions: Iterable[str] | None = None) -> None:
        """Offer a tool (a tool of the same name is replaced).

        `handler(session_id, input)` gets the calling session and the input
        (a dict) and returns a str, content blocks (a list of {"type": ...}
        dicts), or any JSON-able value (sent as JSON text). It may be async;
        a plain function runs on the server's event loop, so it must be quick.
        `sessions`: the session ids that may see and call it; None for all.
        """
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise ValueError(f"a tool name is 1-64 letters, digits, '_' or '-', not {name!r}")
        if not callable(handler):
            raise ValueError(f"the handler of tool {name!r} is not callable")
        if not isinstance(description, str):
            raise ValueError(f"the description of tool {name!r} must be a string")
        if not isinstance(input_schema, dict):
            raise ValueError(f"the input_schema of tool {name!r} must be a JSON schema (a dict), such as {{\"type\": \"object\"}}")
        try:
            json.dumps(input_schema)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the input_schema of tool {name!r} is not JSON: {exc}") from None
        if isinstance(sessions, str):
            raise ValueError("sessions is a collection of session ids, not one string")
        allowed = None if sessions is None else frozenset(sessions)
        self._tools[name] = Tool(name, handler, description, input_schema, allowed)

    def unregister(self, name: str) -> bool:
        """Withdraw a tool; False if there was none of that name."""
        return self._tools.pop(name, None) is not None

    def definitions(self, session_id: str | None, agent_id: str | None = None) -> list[dict[str, Any]]:
        """The tools this session may call: name, description, input_schema (the server's in the order they were
        registered, then the built-in tools of the session's agent, then its notebook tools); a name listed once."""
        own = [tool.definition() for tool in self._tools.values() if tool.visible_to(session_id)]
        taken = {d["name"] for d in own}
        builtin = [d for d in self._builtin_definitions(agent_id) if d["name"] not in taken]
        taken.update(d["name"] for d in builtin)
        notebook = [{k: b["definition"][k] for k in ("name", "description", "input_schema")}
                    for name, b in self._notebook_bindings(agent_id).items() if name not in taken]
        return own + builtin + notebook

    def _builtin_definitions(self, agent_id: str | None) -> list[dict[str, Any]]:
        if agent_id is None or self._builtins is None:
            return []
        return self._builtins.definitions(agent_id)

    def _notebook_bindings(self, agent_id: str | None) -> dict[str, dict[str, Any]]:
        if agent_id is None or self._agent_tools is None or self._notebook is None:
            return {}
        return self._agent_tools(agent_id)

    def _visible(self, session_id: str | None, name: str) -> Tool | None:
        tool = self._tools.get(name)
        return tool if tool is not None and tool.visible_to(session_id) else None

    async def call(self, session_id: str, name: str, input: dict[str, Any], agent_id: str | None = None) -> dict[str, Any]:
        """Run a tool for a session: {"content": str or list, "is_error": bool}.

        A handler that raises gives `is_error` with the exception's message; a
        built-in runs here with its family's timeout; a notebook tool runs in
        its notebook's kernel. LookupError if this session has no tool of that name.
        """
        tool = self._visible(session_id, name)
        if tool is None and any(d["name"] == name for d in self._builtin_definitions(agent_id)):
            assert self._builtins is not None
            return await self._builtins.call(session_id, agent_id, name, input)
        if tool is None:
            binding = self._notebook_bindings(agent_id).get(name)
            if binding is None or self._notebook is None:
                raise LookupError(f"no tool named {name!r}")
            return await self._notebook.call(binding["kernel_id"], name, input, notebook=binding.get("notebook"))
        try:
            result = tool.handler(session_id, input)
            if inspect.isawaitable(result):
                result = await result
            return {"content": _content(result), "is_error": False}
        except Exception as exc:
            log.info("jupyter-cma: tool %s failed for session %s: %r", name, session_id, exc)
            return {"content": str(exc) or type(exc).__name__, "is_error": True}

    async def handle_internal(self, session_id: str | None, agent_id: str | None, method: str, path: str,
                              body: bytes) -> tuple[int, bytes, str]:
        """The internal route (see the module's docstring): (status, body, content type).

        `session_id` and `agent_id` are those of the calling sandbox's
        attachment, given by the egress proxy; the request cannot change them.
        """
        if session_id is None:
            return _error(403, "this sandbox is not serving a session, so it has no tools")
        route = path.split("?", 1)[0]
        if route.rstrip("/") == ROUTE:
            if method != "GET":
                return _error(405, USAGE)
            return _answer(200, {"tools": self.definitions(session_id, agent_id)})
        if not route.startswith(ROUTE + "/"):
            return _error(404, f"no such route; {USAGE}")
        name = route[len(ROUTE) + 1:]
        if not TOOL_NAME.fullmatch(name) or name not in {d["name"] for d in self.definitions(session_id, agent_id)}:
            return _error(404, f"no tool named {name[:100]!r}; GET {ROUTE} lists this session's tools")
        if method != "POST":
            return _error(405, USAGE)
        try:
            tool_input = json.loads(body) if body.strip() else {}
        except ValueError:
            tool_input = None
        if not isinstance(tool_input, dict):
            return _error(400, f"send the tool's input as a JSON object in the body, such as {{}} or "
                               f"{{\"query\": \"...\"}} (the tool's input_schema says which fields; GET {ROUTE} lists it)")
        try:
            return _answer(200, await self.call(session_id, name, tool_input, agent_id))
        except LookupError:  # withdrawn while the body was read
            return _error(404, f"no tool named {name!r}; GET {ROUTE} lists this session's tools")


def _content(result: Any) -> str | list[Any]:
    """A tool result as content: a str as is, content blocks as they are, anything else as JSON text."""
    if isinstance(result, str):
        return result
    if isinstance(result, list) and result and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in result):
        json.dumps(result)  # TypeError if a block is not JSON
        return result
    return json.dumps(result)


def _answer(status: int, value: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(value).encode(), JSON


def _error(status: int, message: str) -> tuple[int, bytes, str]:
    return _answer(status, {"error": message})
