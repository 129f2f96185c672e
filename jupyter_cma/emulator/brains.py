"""Brains: what the emulated "model" does in a session.

A brain gets one `Turn` per run of a session (a run starts when user input
arrives) and acts through it: `say` emits `agent.message`, `use_tool` emits
`agent.tool_use` / `agent.custom_tool_use`, puts the session into
`requires_action` and waits for the result the sandbox (or the app) posts.
When `run_turn` returns, the session goes idle with `turn.stop_reason`.
A `user.interrupt` cancels the turn wherever it waits.

Brains are pluggable: `EmulatorApp.brain_class` (a `Type` trait; `--brain`
on the command line takes `demo`, `scripted` or a dotted class name).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

from .service import ToolResult

if TYPE_CHECKING:
    from .service import Service, SessionRecord

SCRIPT_KEY = "cma_script"
SCRIPT_FENCE = re.compile(r"```cma-script\s*\n(.*?)```", re.DOTALL)


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


# --------------------------------------------------------------------------- the scripted brain


def find_script(text: str) -> list[dict[str, Any]] | None:
    """A script in a message: a JSON object `{"cma_script": [...]}` or a ```cma-script fence."""
    candidates = [m.group(1) for m in SCRIPT_FENCE.finditer(text)]
    if text.strip().startswith("{"):
        candidates.insert(0, text)
    for raw in candidates:
        try:
            parsed = json.loads(raw)
        except ValueError:
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get(SCRIPT_KEY), list):
            return parsed[SCRIPT_KEY]
        if isinstance(parsed, list):
            return parsed
    return None


class ScriptedBrain(Brain):
    """Does exactly what a script says.

    The script comes from the user message that starts the turn (JSON
    `{"cma_script": [steps]}`, or a ```cma-script fenced block holding the same
    JSON or a bare list of steps), else from a fenced block in the agent's
    `system` prompt (so every turn of that agent runs it). Steps:

    - `{"say": "text"}` — an `agent.message`; `{result}` in the text is replaced
      by the text of the latest tool result.
    - `{"think": true}` — an `agent.thinking` event.
    - `{"tool": "bash", "input": {...}, "permission": "ask"?}` — one tool call,
      waiting for its result (a custom tool of the agent becomes a custom call).
    - `{"tools": [{"tool": ..., "input": ...}, ...]}` — parallel calls.
    - `{"sleep": seconds}` — wait (for testing interrupts and leases).
    - `{"stop": "refusal"}` — end the turn with that stop reason.
    """

    async def run_turn(self, turn: Turn) -> None:
        script = find_script(turn.user_text)
        if script is None:
            for m in SCRIPT_FENCE.finditer(turn.agent.get("system") or ""):
                script = find_script(m.group(0))
                break
        if script is None:
            await turn.say(
                'No script found. Send a user message whose text is {"cma_script": [...]} '
                "(see the emulator section of the README for the step format)."
            )
            return
        last = ""
        for step in script:
            if "say" in step:
                await turn.say(str(step["say"]).replace("{result}", last))
            elif "think" in step:
                await turn.think()
            elif "tool" in step:
                result = await turn.use_tool(step["tool"], step.get("input") or {}, permission=step.get("permission"))
                last = result.text
            elif "tools" in step:
                results = await turn.use_tools([(c["tool"], c.get("input") or {}, c.get("permission")) for c in step["tools"]])
                last = "\n".join(r.text for r in results)
            elif "sleep" in step:
                await asyncio.sleep(float(step["sleep"]))
            elif "stop" in step:
                turn.stop_reason = str(step["stop"])
                return
            else:
                await turn.say(f"Unknown script step {json.dumps(step)}; known: say, think, tool, tools, sleep, stop.")
                return


# --------------------------------------------------------------------------- the demo brain

SQUARES_REQUEST = re.compile(r"squares?\b.*?(\d+)\s*(?:\.\.|to|-|–|through)\s*(\d+)", re.IGNORECASE | re.DOTALL)


class DemoBrain(ScriptedBrain):
    """The README scenario, with tool calls fitting the agent's tools.

    Asked to "write a Python script that prints the squares of 1..10, run it,
    report the result", it writes the script and runs it with whatever the
    agent has: `write` + `bash`, or `bash` alone, or `write` + a custom tool
    that takes Python `code` (the kernel tier), or that tool alone. It reports the real output the sandbox returned. Scripts
    (see `ScriptedBrain`) work too; anything else gets a short explanation.
    """

    async def run_turn(self, turn: Turn) -> None:
        if find_script(turn.user_text) is not None:
            await super().run_turn(turn)
            return
        match = SQUARES_REQUEST.search(turn.user_text)
        if match is None:
            await turn.say(
                "I am the emulator's demo brain. Ask me to \"write a Python script that prints the squares "
                "of 1..10, run it, and report the result\", or send a script for the scripted brain."
            )
            return
        low, high = sorted((int(match.group(1)), int(match.group(2))))
        high = min(high, low + 1000)
        code = f"for n in range({low}, {high + 1}):\n    print(n * n)\n"
        builtin = turn.builtin_tools()
        python_tool = next(
            (name for name, t in turn.custom_tools().items() if "code" in (t["input_schema"].get("properties") or {})),
            None,
        )
        await turn.say(f"I'll write a Python script that prints the squares of {low}..{high}, then run it.")
        if "write" in builtin and "bash" in builtin:
            wrote = await turn.use_tool("write", {"file_path": "squares.py", "content": code})
            if wrote.is_error:
                await turn.say(f"Writing the script failed: {wrote.text}")
                return
            result = await turn.use_tool("bash", {"command": "python3 squares.py"})
        elif "bash" in builtin:
            result = await turn.use_tool("bash", {"command": f"cat > squares.py <<'EOF'\n{code}EOF\npython3 squares.py"})
        elif python_tool is not None and "write" in builtin:
            wrote = await turn.use_tool("write", {"file_path": "squares.py", "content": code})
            if wrote.is_error:
                await turn.say(f"Writing the script failed: {wrote.text}")
                return
            result = await turn.use_tool(python_tool, {"code": 'exec(open("squares.py").read())'})
        elif python_tool is not None:
            result = await turn.use_tool(python_tool, {"code": code})
        else:
            await turn.say("This agent has no tool that can run code: enable bash (and write), or add a Python tool that takes `code`.")
            return
        if result.is_error:
            await turn.say(f"Running the script failed:\n{result.text}")
            return
        numbers = result.text.split()
        await turn.say(
            f"The script ran. It printed the squares of {low}..{high}:\n\n```\n{result.text.strip()}\n```\n"
            f"That is {', '.join(numbers)}."
        )


BRAINS: dict[str, str] = {
    "demo": f"{__name__}.DemoBrain",
    "scripted": f"{__name__}.ScriptedBrain",
}
