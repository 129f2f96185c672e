"""Turns: what a brain gets and acts through, and the `Brain` base class.

A brain gets one `Turn` per run of a session (a run starts when user input
arrives) and acts through it: `say` emits `agent.message`, `use_tool` emits
`agent.tool_use` / `agent.custom_tool_use`, puts the session into
`requires_action` and waits for the result the sandbox (or the app) posts.
When `run_turn` returns, the session goes idle with `turn.stop_reason`.
A `user.interrupt` cancels the turn wherever it waits.

The service (sessions.py) creates a `Turn` per run and brains (brains.py)
drive it; both import this module, which imports neither at run time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import Service
    from .sessions import SessionRecord


@dataclass
class ToolResult:
    """What the brain gets back for one tool call."""

    text: str
    is_error: bool
    content: list[dict[str, Any]]
    denied: bool = False


class Brain:
    """Base class: override `run_turn`."""

    async def run_turn(self, turn: Turn) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Turn:
    """One run of a session, as a brain sees and drives it."""

    def __init__(self, service: Service, rec: SessionRecord, inputs: list[dict[str, Any]]) -> None:
        self._service = service
        self._rec = rec
        self.inputs = inputs
        self.stop_reason = "end_turn"

    @property
    def session(self) -> dict[str, Any]:
        return self._rec.data

    @property
    def agent(self) -> dict[str, Any]:
        return self._rec.data["agent"]

    @property
    def user_text(self) -> str:
        """The text of the user messages that started this turn."""
        parts = []
        for ev in self.inputs:
            for block in ev.get("content") or []:
                if block.get("type") == "text":
                    parts.append(block["text"])
        return "\n".join(parts)

    def builtin_tools(self) -> dict[str, str]:
        """Enabled sandbox tools of the agent's toolset: name -> permission policy type."""
        out: dict[str, str] = {}
        for tool in self.agent["tools"]:
            if tool["type"] == "agent_toolset_20260401":
                for cfg in tool["configs"]:
                    if cfg["enabled"]:
                        out[cfg["name"]] = cfg["permission_policy"]["type"]
        return out

    def custom_tools(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in self.agent["tools"] if t["type"] == "custom"}

    async def _model_request(self, output_tokens: int) -> None:
        start = self._service.emit(self._rec, {"type": "span.model_request_start"})
        if self._service.model_delay:
            await asyncio.sleep(self._service.model_delay)
        usage = {"input_tokens": 200 + 10 * len(self._rec.events), "output_tokens": output_tokens, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        self._service.emit(self._rec, {"type": "span.model_request_end", "model_request_start_id": start["id"], "model_usage": usage, "is_error": False})
        total = self._rec.data["usage"]
        total["input_tokens"] += usage["input_tokens"]
        total["output_tokens"] += usage["output_tokens"]

    async def think(self) -> None:
        await self._model_request(20)
        self._service.emit(self._rec, {"type": "agent.thinking"})

    async def say(self, text: str) -> None:
        """Emit an `agent.message`."""
        await self._model_request(max(1, len(text) // 4))
        self._service.emit(self._rec, {"type": "agent.message", "content": [{"type": "text", "text": text}]})

    async def use_tool(self, name: str, input: dict[str, Any], *, permission: str | None = None) -> ToolResult:
        """Call one tool and wait for its result."""
        return (await self.use_tools([(name, input, permission)]))[0]

    async def use_tools(self, calls: list[tuple[str, dict[str, Any], str | None]]) -> list[ToolResult]:
        """Call several tools at once (one model response), then wait for all results.

        A name the agent defines as a custom tool becomes `agent.custom_tool_use`;
        any other name becomes `agent.tool_use`. `permission` overrides the
        agent's policy for that call ("allow", "ask" or "deny").
        """
        await self._model_request(30 * len(calls))
        custom = self.custom_tools()
        policies = self.builtin_tools()
        loop = asyncio.get_running_loop()
        ids: list[str] = []
        for name, tool_input, permission in calls:
            if name in custom:
                ev = self._service.emit(self._rec, {"type": "agent.custom_tool_use", "name": name, "input": tool_input})
            else:
                verdict = permission or {"always_ask": "ask"}.get(policies.get(name, ""), "allow")
                evaluation = {"type": "always_ask"} if verdict == "ask" else {"type": "always_allow"}
                ev = self._service.emit(self._rec, {"type": "agent.tool_use", "name": name, "input": tool_input, "evaluated_permission": verdict, "evaluation": evaluation})
                if verdict == "ask":
                    self._rec.awaiting_confirmation.add(ev["id"])
                elif verdict == "deny":
                    self._rec.answered.add(ev["id"])
            fut: asyncio.Future[ToolResult] = loop.create_future()
            if verdict_is_deny(ev):
                fut.set_result(ToolResult(text="This tool call was denied by policy.", is_error=True, content=[], denied=True))
            self._rec.waiting[ev["id"]] = fut
            ids.append(ev["id"])
        results: dict[str, ToolResult] = {}
        while True:
            pending = [i for i in ids if not self._rec.waiting[i].done()]
            for i in ids:
                if i not in results and self._rec.waiting[i].done():
                    results[i] = self._rec.waiting[i].result()
            if not pending:
                break
            # Idle until the sandbox answers; fewer answers than calls re-idles with the rest.
            self._service.go_idle(self._rec, {"type": "requires_action", "event_ids": pending})
            await asyncio.wait([self._rec.waiting[i] for i in pending], return_when=asyncio.FIRST_COMPLETED)
        for i in ids:
            self._rec.waiting.pop(i, None)
        self._service.begin_run(self._rec)
        return [results[i] for i in ids]


def verdict_is_deny(ev: dict[str, Any]) -> bool:
    return ev.get("evaluated_permission") == "deny"
