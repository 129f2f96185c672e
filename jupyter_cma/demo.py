"""`jupyter cma demo`: the README scenario, end to end, offline.

Starts the emulator (a separate process, as the real API would be), creates an
agent with the standard sandbox toolset and a session with the request
"write a Python script that prints the squares of 1..10, run it, report the
result", and serves the session with the SDK's `EnvironmentWorker` in a
fresh working directory. Real `write` and `bash` tool calls run there; the
transcript streams live and the run ends with the reported result.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import Application

PROMPT = "Write a Python script that prints the squares of 1..10, run it, and report the result."


class DemoApp(Application):
    """Run the README scenario against the built-in emulator and print the transcript."""

    name = "jupyter-cma-demo"
    description = "Run the README scenario (squares of 1..10) end to end against the built-in emulator."

    prompt = Unicode(PROMPT, help="What to ask the agent (default: the README scenario).").tag(config=True)
    timeout = Float(120.0, help="Seconds to wait for the agent's turn to end (default 120).").tag(config=True)
    model_delay = Float(0.2, help="Seconds each emulated model request takes, so the transcript reads like a real run (default 0.2).").tag(config=True)
    aliases = {"prompt": "DemoApp.prompt", "timeout": "DemoApp.timeout", "model-delay": "DemoApp.model_delay"}

    def start(self) -> None:
        code = asyncio.run(self._run())
        self.exit(code)

    async def _run(self) -> int:
        from anthropic import AsyncAnthropic
        from anthropic.lib.environments import EnvironmentWorker

        emulator = subprocess.Popen(
            [sys.executable, "-m", "jupyter_cma", "emulator", "--model-delay", str(self.model_delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert emulator.stdout is not None
        try:
            info = json.loads(emulator.stdout.readline())
            print(f"emulator  {info['base_url']}  environment {info['environment_id']}")
            client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
            agent = await client.beta.agents.create(
                name="squares-demo", model="claude-sonnet-4-5", tools=[{"type": "agent_toolset_20260401"}]
            )
            session = await client.beta.sessions.create(agent=agent.id, environment_id=info["environment_id"])
            workdir = tempfile.mkdtemp(prefix="cma-demo-")
            print(f"session   {session.id}  sandbox workdir {workdir}\n")
            worker = EnvironmentWorker(
                client,
                environment_id=info["environment_id"],
                environment_key=info["environment_key"],
                workdir=workdir,
                max_idle=1.0,
            )
            worker_task = asyncio.create_task(worker.run())
            try:
                return await asyncio.wait_for(self._converse(client, session.id), self.timeout)
            except asyncio.TimeoutError:
                print(f"\nno answer within {self.timeout:.0f}s", file=sys.stderr)
                return 1
            finally:
                worker_task.cancel()
                await asyncio.gather(worker_task, return_exceptions=True)
                await client.close()
        finally:
            emulator.terminate()
            emulator.wait(10)

    async def _converse(self, client: Any, session_id: str) -> int:
        stream = await client.beta.sessions.events.stream(session_id)
        sent = time.monotonic()
        await client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": self.prompt}]}]
        )
        first_result: float | None = None
        answer = ""
        async with stream:
            async for event in stream:
                if event.type == "user.message":
                    _show("you", event.content[0].text)
                elif event.type == "agent.message":
                    answer = event.content[0].text
                    _show("agent", answer)
                elif event.type == "agent.tool_use":
                    _show(f"tool {event.name}", json.dumps(event.input))
                elif event.type == "user.tool_result":
                    first_result = first_result or time.monotonic()
                    text = event.content[0].text if event.content else ""
                    _show("  result" + (" (error)" if event.is_error else ""), text)
                elif event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
                    break
        if first_result is not None:
            print(f"\ncold start (message sent → first tool result): {first_result - sent:.2f}s")
        numbers = [line for line in answer.splitlines() if line.strip().isdigit()]
        if not numbers:
            print("the agent did not report a result", file=sys.stderr)
            return 1
        print(f"result: {' '.join(numbers)}")
        return 0


def _show(who: str, text: str) -> None:
    body = textwrap.indent(text.strip(), " " * 12).lstrip()
    print(f"{who:>10}  {body}")
