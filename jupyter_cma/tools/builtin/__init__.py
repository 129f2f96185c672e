"""Built-in tools: custom tools that run in the Jupyter server, grouped in families enabled per agent.

`BuiltinTools` holds the families this server loaded (`CMAApp.builtin_families`) and is what the rest of the
server sees of them: it checks what an agent asks for (`check`), gives the definitions that go upstream (`specs`)
and to a session (`definitions`), runs a call with the family's timeout (`call`), and releases what a session's
calls held when its sandbox goes (`end_session`). The registry (`tools/registry.py`) lists and dispatches them
for both tiers; `tools/catalog.py` describes them (`GET cma/api/tools`).

An agent's built-ins are a mapping family name → that family's settings, as the store keeps them
(`agents.builtins`): `{"web_fetch": {}, "notebook": {"mode": "edit", "paths": ["reports/**"]}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ...tasks import BackgroundTasks
from .base import BuiltinFamily, CallContext, Content, ServerParts, ToolError, ToolSpec

if TYPE_CHECKING:
    from .egress import ToolEgress

__all__ = ["BuiltinFamily", "BuiltinTools", "CallContext", "Content", "ServerParts", "ToolError", "ToolSpec"]

log = logging.getLogger("jupyter_cma.tools.builtin")

# agent id → its built-ins as stored (family name → settings)
AgentBuiltins = Callable[[str], Mapping[str, Mapping[str, Any]]]


class BuiltinTools:
    """The families this server loaded, and everything done with them on behalf of agents and sessions."""

    def __init__(self, families: Iterable[BuiltinFamily], egress: ToolEgress | None,
                 agent_builtins: AgentBuiltins, *, close_timeout: float = 10.0) -> None:
        """ValueError when two families have one name, or offer a tool of one name (whoever loads them must fix
        the list: the model could not tell which one it calls)."""
        self.families: dict[str, BuiltinFamily] = {}
        owners: dict[str, str] = {}  # tool name → family
        for family in families:
            if not family.name:
                raise ValueError(f"the built-in family {type(family).__name__} has no name; set its class attribute `name`")
            if family.name in self.families:
                raise ValueError(f"two built-in families are named {family.name!r} ({type(self.families[family.name]).__name__} "
                                 f"and {type(family).__name__}); load only one of them")
            self.families[family.name] = family
            for tool in _offered(family):
                if tool in owners:
                    raise ValueError(f"the built-in families {owners[tool]!r} and {family.name!r} both offer a tool named "
                                     f"{tool!r}; load only one of them")
                owners[tool] = family.name
        self.egress = egress
        self._agent_builtins = agent_builtins
        self._start_errors: dict[str, str] = {}
        self._ending = BackgroundTasks("jupyter-cma built-ins")  # end_session runs started by session_released
        self._close_timeout = close_timeout

    # ------------------------------------------------------------------ what can run

    def unavailable(self, name: str) -> str | None:
        """Why family `name` cannot run on this server now (with the fix), or None when it can."""
        family = self.families[name]
        if name in self._start_errors:
            return self._start_errors[name]
        try:
            return family.unavailable()
        except Exception as exc:  # a broken check means the family is not usable: say so instead of failing the caller
            log.warning("jupyter-cma: the %s built-in could not tell whether it is available: %r", name, exc)
            return f"its availability check failed ({type(exc).__name__}); see the server log"

    def check(self, builtins: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The built-ins an agent asked for, checked and completed with each family's defaults (what is stored).

        ValueError naming the problem: an unknown family (the known ones are listed), one unavailable here (its
        reason), settings the family refuses (its message), or two families offering one tool name.
        """
        checked: dict[str, dict[str, Any]] = {}
        owners: dict[str, str] = {}
        for name, settings in builtins.items():
            family = self.families.get(name)
            if family is None:
                known = ", ".join(sorted(self.families)) or "none are loaded on this server"
                raise ValueError(f"no built-in family named {name!r}; the families are: {known} (GET cma/api/tools lists them)")
            reason = self.unavailable(name)
            if reason is not None:
                raise ValueError(f"the {name} built-in is unavailable on this server: {reason}")
            if not isinstance(settings, Mapping):
                raise ValueError(f"the settings of the {name} built-in must be an object, such as {{}}")
            try:
                checked[name] = dict(family.check_settings(settings))
            except ValueError as exc:
                raise ValueError(f"the {name} built-in's settings: {exc}") from None
            for spec in family.tools(checked[name]):
                if spec.name in owners:
                    raise ValueError(f"the {owners[spec.name]} and {name} built-ins both offer a tool named {spec.name!r}; "
                                     "enable only one of them")
                owners[spec.name] = name
        return checked

    def specs(self, builtins: Mapping[str, Mapping[str, Any]]) -> list[ToolSpec]:
        """The tools an agent with these (checked) built-ins is given, family by family; families not loaded here,
        or whose settings no longer give tools, give none (logged)."""
        return [spec for _, spec in self._bound(builtins)]

    def tool_names(self, builtins: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Every tool name these built-ins may have put on an agent: their tools for these settings, and whatever
        else their families can offer (so replacing an agent's built-ins takes out all of the old ones)."""
        names = {spec.name for spec in self.specs(builtins)}
        for name in builtins:
            family = self.families.get(name)
            if family is not None:
                names.update(_offered(family))
        return names

    def definitions(self, agent_id: str | None) -> list[dict[str, Any]]:
        """The agent's built-in tools as the registry lists them: name, description, input_schema."""
        if agent_id is None:
            return []
        return [{"name": s.name, "description": s.description, "input_schema": s.input_schema}
                for s in self.specs(self._agent_builtins(agent_id))]

    def _bound(self, builtins: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, ToolSpec]]:
        bound: list[tuple[str, ToolSpec]] = []
        for name, settings in builtins.items():
            family = self.families.get(name)
            if family is None:
                log.info("jupyter-cma: built-in family %r is not loaded on this server; its tools are left out", name)
                continue
            try:
                bound.extend((name, spec) for spec in family.tools(settings))
            except Exception as exc:
                log.warning("jupyter-cma: the %s built-in gives no tools for its stored settings: %r", name, exc)
        return bound

    # ------------------------------------------------------------------ calls

    async def call(self, session_id: str, agent_id: str | None, tool: str, input: dict[str, Any]) -> dict[str, Any]:
        """Run one call for a session: {"content": str or content blocks, "is_error": bool}.

        LookupError when `tool` is none of the agent's built-ins. A family's `ToolError` is the model's error
        text; a call past the family's `timeout` is cancelled and says so; any other failure is logged here
        and the model gets a generic error (its text could hold what the model must not see).
        """
        builtins = self._agent_builtins(agent_id) if agent_id is not None else {}
        found = next(((name, spec) for name, spec in self._bound(builtins) if spec.name == tool), None)
        if found is None:
            raise LookupError(f"no built-in tool named {tool!r} for this session's agent")
        name = found[0]
        family = self.families[name]
        reason = self.unavailable(name)
        if reason is not None:
            return _error(f"the {name} built-in is unavailable on this server now: {reason}")
        if self.egress is None:
            return _error(f"the {name} built-in has no egress path on this server; it cannot run")
        ctx = CallContext(session_id=session_id, agent_id=agent_id, settings=builtins[name], egress=self.egress)
        timeout = float(family.timeout)
        try:
            content = await asyncio.wait_for(family.call(ctx, tool, dict(input)), timeout)
        except ToolError as exc:
            return _error(str(exc) or f"{tool} failed")
        except asyncio.TimeoutError:
            return _error(f"{tool} timed out after {timeout:g} s (the {name} built-in's limit, "
                          f"c.{type(family).__name__}.timeout); try a smaller request")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("jupyter-cma: built-in tool %s (%s) failed for session %s", tool, name, session_id)
            return _error(f"{tool} failed inside the server (the server log has the details); try again, or another way")
        try:
            return {"content": _content(content), "is_error": False}
        except (TypeError, ValueError):
            log.warning("jupyter-cma: built-in tool %s (%s) returned %s, not text or content blocks", tool, name,
                        type(content).__name__)
            return _error(f"{tool} returned a result the server cannot send; this is a bug in the {name} built-in")

    # ------------------------------------------------------------------ lifecycle

    async def start(self, parts: ServerParts) -> None:
        """Start every family with the server's parts; one that fails is unavailable, with why."""
        for name, family in self.families.items():
            try:
                await family.start(parts)
            except Exception as exc:
                log.exception("jupyter-cma: the %s built-in did not start", name)
                self._start_errors[name] = (f"it did not start ({type(exc).__name__}: {exc}); see the server log, fix "
                                            "its settings and restart the server")[:500]

    def session_released(self, session_id: str) -> None:
        """The session's sandbox was released: run `end_session` in the background (callers must not wait)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no server loop (a store used on its own): nothing of a session can be held then
            return
        self._ending.spawn(self.end_session(session_id))

    async def end_session(self, session_id: str) -> None:
        """Every family's `end_session` (each bounded by its timeout; failures logged), then the session's egress
        path is released."""
        for name, family in self.families.items():
            try:
                await asyncio.wait_for(family.end_session(session_id), float(family.timeout))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("jupyter-cma: the %s built-in did not end session %s cleanly: %r", name, session_id, exc)
        if self.egress is not None:
            try:
                await self.egress.release(session_id)
            except Exception as exc:
                log.warning("jupyter-cma: the built-ins' egress path of session %s was not released cleanly: %r", session_id, exc)

    async def close(self) -> None:
        """Let pending `end_session` runs finish, then close every family and the egress path; all of it within
        `close_timeout` seconds (what is left then is logged and abandoned)."""
        try:
            await asyncio.wait_for(self._close(), self._close_timeout)
        except asyncio.TimeoutError:
            log.warning("jupyter-cma: the built-in tools did not all close within %.0f s", self._close_timeout)

    async def _close(self) -> None:
        await self._ending.close(self._close_timeout, cancel=False)
        for name, family in self.families.items():
            try:
                await family.close()
            except Exception as exc:
                log.warning("jupyter-cma: the %s built-in did not close cleanly: %r", name, exc)
        if self.egress is not None:
            try:
                await self.egress.close()
            except Exception as exc:
                log.warning("jupyter-cma: the built-ins' egress path did not close cleanly: %r", exc)


def _offered(family: BuiltinFamily) -> list[str]:
    """The tool names a family can offer (its `all_tools`), or none when it cannot say (logged)."""
    try:
        return [spec.name for spec in family.all_tools()]
    except Exception as exc:
        log.info("jupyter-cma: the %s built-in does not list its tools without settings: %r", family.name, exc)
        return []


def _content(result: Any) -> Content:
    """A family's result as a tool result's content: text, or content blocks as they are."""
    if isinstance(result, str):
        return result
    if isinstance(result, list) and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in result):
        json.dumps(result)  # TypeError if a block is not JSON
        return result
    raise TypeError(f"not text or content blocks: {type(result).__name__}")


def _error(message: str) -> dict[str, Any]:
    return {"content": message, "is_error": True}
