"""Brains: what the emulated "model" does in a session.

Each brain overrides `Brain.run_turn` and acts through the `Turn` it gets
(both in turns.py): `ScriptedBrain` does what a script says, `DemoBrain`
plays the README scenario and the plain-language requests of the example
notebooks (scenarios.py).

Brains are pluggable: `EmulatorApp.brain_class` (a `Type` trait; `--brain`
on the command line takes `demo`, `scripted` or a dotted class name).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from .scenarios import SCENARIOS, python_tool, without_fences
from .turns import Brain, Turn

__all__ = ["BRAINS", "Brain", "DemoBrain", "ScriptedBrain", "Turn"]

SCRIPT_KEY = "cma_script"
SCRIPT_FENCE = re.compile(r"```cma-script\s*\n(.*?)```", re.DOTALL)


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
                "(see docs/emulator.md, Brains, for the step format)."
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
    """A stand-in model for demos and example notebooks, offline and deterministic.

    Asked to "write a Python script that prints the squares of 1..10, run it,
    report the result", it writes the script and runs it with whatever the
    agent has: `write` + `bash`, or `bash` alone, or `write` + a custom tool
    that takes Python `code` (the kernel tier), or that tool alone. Otherwise it
    tries the scenarios of scenarios.py in order: run a fenced code block,
    summarise documents through `list_…`/`read_…` tools, call the custom tools
    the message names. It reports the real results the tools returned. Scripts
    (see `ScriptedBrain`) work too; anything else gets a short explanation.
    """

    async def run_turn(self, turn: Turn) -> None:
        if find_script(turn.user_text) is not None:
            await super().run_turn(turn)
            return
        # The request is prose: numbers in a fenced block of code are no request for squares.
        match = SQUARES_REQUEST.search(without_fences(turn.user_text))
        if match is None:
            for scenario in SCENARIOS:
                if await scenario(turn):
                    return
            await turn.say(self.help(turn))
            return
        low, high = sorted((int(match.group(1)), int(match.group(2))))
        high = min(high, low + 1000)
        code = f"for n in range({low}, {high + 1}):\n    print(n * n)\n"
        builtin = turn.builtin_tools()
        python = python_tool(turn)
        await turn.say(f"I'll write a Python script that prints the squares of {low}..{high}, then run it.")
        if "write" in builtin and "bash" in builtin:
            wrote = await turn.use_tool("write", {"file_path": "squares.py", "content": code})
            if wrote.is_error:
                await turn.say(f"Writing the script failed: {wrote.text}")
                return
            result = await turn.use_tool("bash", {"command": "python3 squares.py"})
        elif "bash" in builtin:
            result = await turn.use_tool("bash", {"command": f"cat > squares.py <<'EOF'\n{code}EOF\npython3 squares.py"})
        elif python is not None and "write" in builtin:
            wrote = await turn.use_tool("write", {"file_path": "squares.py", "content": code})
            if wrote.is_error:
                await turn.say(f"Writing the script failed: {wrote.text}")
                return
            result = await turn.use_tool(python, {"code": 'exec(open("squares.py").read())'})
        elif python is not None:
            result = await turn.use_tool(python, {"code": code})
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

    @staticmethod
    def help(turn: Turn) -> str:
        """What the demo brain can do, naming the agent's own custom tools."""
        tools = [name for name in turn.custom_tools() if name != "python"]
        lines = [
            "I am the emulator's demo brain, a stand-in for a model that works offline. I can:",
            "- write and run a script: \"write a Python script that prints the squares of 1..10, run it, and report "
            "the result\";",
            "- run a fenced code block (python or bash) in your message and report its output;",
            "- summarise documents when the agent has a `list_…` and a `read_…` tool: \"summarise the PDFs under "
            "'reports/'\";",
            f"- call the custom tools you name, with strings in quotes: \"use {tools[0] if tools else 'word_count'} on "
            "'some text'\".",
        ]
        if tools:
            lines.append(f"This agent's custom tools: {', '.join(f'`{n}`' for n in tools)}.")
        lines.append("A script for the scripted brain works too (docs/emulator.md, Brains).")
        return "\n".join(lines)


BRAINS: dict[str, str] = {
    "demo": f"{__name__}.DemoBrain",
    "scripted": f"{__name__}.ScriptedBrain",
}
