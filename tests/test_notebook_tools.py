"""Notebook tools end to end: `@cma.tool` in a real kernel of the real server, called by real sessions.

A kernel started through the server's session manager (as JupyterLab does) defines tools; agents are given
them through the REST API; sessions served by the emulator's scripted brain call them; the calls run in that
kernel, with its globals. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
from typing import Any

from tornado.httpclient import HTTPClientError

from jupyter_cma.client.signing import authorization
from tests.helpers import wait_until
from tests.notebook_kernels import NotebookKernel, notebook_of
from tests.test_dispatch import Harness, cma_emulator, cma_mode, harness, jp_server_config, script  # noqa: F401

ADD = '''
import jupyter_cma as cma
offset = 41

@cma.tool
def add(n: int) -> int:
    """Add the notebook's offset to n."""
    return n + offset
'''


def call(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"tool": name, "input": tool_input}


def tool_results(events: list[Any]) -> list[tuple[str, bool]]:
    return [("".join(b.text for b in e.content or [] if b.type == "text"), bool(e.is_error))
            for e in events if e.type == "user.custom_tool_result"]


async def agent_with(h: Harness, kernel: NotebookKernel, *names: str, tier: str = "kernel") -> str:
    body = {"name": "nb", "tier": tier, "notebook_tools": [{"kernel_id": kernel.kernel_id, "name": n} for n in names]}
    return (await h.api("POST", "agents", body))["id"]


async def run_session(h: Harness, agent: str, *steps: dict[str, Any]) -> list[tuple[str, bool]]:
    sid = await h.session(agent, script(*steps))
    return tool_results(await h.turn_ends(sid, timeout=120))


async def test_a_tool_runs_in_the_kernel_that_defined_it_with_its_globals_at_call_time(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(ADD)
        listed = await harness.api("GET", "tools")
        (tool,) = [t for t in listed["notebook"] if t["name"] == "add"]
        assert tool["kernel_id"] == notebook.kernel_id and tool["notebook"] == "analysis.ipynb"
        assert tool["input_schema"]["properties"]["n"]["type"] == "integer"
        agent = await agent_with(harness, notebook, "add")
        upstream = await harness.api("GET", f"agents/{agent}")
        assert {"name": "add", "kernel_id": notebook.kernel_id, "notebook": "analysis.ipynb"} in upstream["notebook_tools"]
        assert "add" in [t.get("name") for t in upstream["tools"]]

        assert await run_session(harness, agent, call("add", n=1)) == [("42", False)]
        await notebook.run("offset = 100")  # the notebook's globals as they are at call time
        assert await run_session(harness, agent, call("add", n=1)) == [("101", False)]

        # Running the cell again with another body changes what the next call does; another schema reaches the agent.
        await notebook.run('''
            @cma.tool
            def add(n: int, times: int = 1) -> str:
                """Add the offset to n, `times` times."""
                return f"{n + offset * times}"
        ''')
        assert await run_session(harness, agent, call("add", n=1, times=2)) == [("201", False)]

        async def schema_updated() -> bool:
            tools = (await harness.api("GET", f"agents/{agent}"))["tools"]
            return any(t.get("name") == "add" and "times" in t["input_schema"]["properties"] for t in tools)

        await wait_until(schema_updated, 30, what="the agent to get the tool's new schema")


async def test_failures_timeouts_and_bad_input_are_tool_errors(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run('''
            import asyncio, time
            import jupyter_cma as cma

            @cma.tool
            def divide(a: float, b: float) -> float:
                """a divided by b."""
                return a / b

            @cma.tool(timeout=1)
            async def slow_async() -> str:
                """Sleeps for a minute."""
                await asyncio.sleep(60)
                return "late"

            @cma.tool(timeout=1)
            def slow_sync() -> str:
                """Sleeps well past its timeout and the server's grace (1 + 2 s)."""
                time.sleep(8)
                return "late"
        ''')
        agent = await agent_with(harness, notebook, "divide", "slow_async", "slow_sync")
        results = await run_session(harness, agent, call("divide", a=1, b=0), call("divide", a="x", b=2),
                                    call("slow_async"), call("slow_sync"), call("divide", a=9, b=3))
        assert results[0] == ("ZeroDivisionError: float division by zero", True)
        assert results[1][1] and "a" in results[1][0]
        assert results[2][1] and "did not finish within 1 s" in results[2][0]
        assert results[3][1] and "did not answer within 1 s" in results[3][0]
        assert results[4] == ("3.0", False), "a call after a timed-out one runs (in a new subshell)"


async def test_a_restarted_or_shut_down_kernel_loses_its_tools_and_calls_name_the_notebook(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(ADD)
        agent = await agent_with(harness, notebook, "add")
        await notebook.restart()
        await wait_until(lambda: not harness.ext.notebook_tools.tools(notebook.kernel_id), 30, what="the tools to go")
        [(text, is_error)] = await run_session(harness, agent, call("add", n=1))
        assert is_error and "analysis.ipynb" in text and "restarted" in text and "run the cell" in text

        await notebook.run(ADD)  # defined again: the agent's calls work again
        assert await run_session(harness, agent, call("add", n=1)) == [("42", False)]

        await notebook.shutdown()
        [(text, is_error)] = await run_session(harness, agent, call("add", n=1))
        assert is_error and "'analysis.ipynb' is not running" in text


async def test_only_the_kernel_itself_registers_its_tools(harness):
    async with notebook_of(harness) as notebook:
        other = await NotebookKernel(harness.serverapp, "other.ipynb").start()
        try:
            key = harness.serverapp.kernel_manager.get_kernel(other.kernel_id).session.key
            body = json.dumps({"description": "x", "input_schema": {"type": "object"}}).encode()
            path = f"{harness.serverapp.base_url}cma/api/kernels/{notebook.kernel_id}/tools/stolen"

            async def put(headers: dict[str, str]) -> int:
                try:
                    await harness.fetch("cma", "api", "kernels", notebook.kernel_id, "tools", "stolen", method="PUT", body=body,
                                        headers=headers)
                except HTTPClientError as exc:
                    return exc.code
                return 200

            # Signed by another kernel of this server: refused.
            assert await put({"Authorization": authorization(key, other.kernel_id, "PUT", path, body)}) == 403
            # Claiming to be the kernel, signed with another key: refused.
            assert await put({"Authorization": authorization(key, notebook.kernel_id, "PUT", path, body)}) == 403
            # The user's own token (jp_fetch's): authenticated, but not the kernel.
            assert await put({}) == 403
            # The same signed request twice: the second is a replay.
            own = harness.serverapp.kernel_manager.get_kernel(notebook.kernel_id).session.key
            signed = {"Authorization": authorization(own, notebook.kernel_id, "PUT", path, body)}
            assert await put(signed) == 200
            assert await put(signed) == 403
            # No credential at all.
            assert await put({"Authorization": "token wrong"}) == 403
        finally:
            await other.shutdown()


async def test_a_container_session_calls_the_notebook_tool_through_the_proxy(harness, docker_client):
    async with notebook_of(harness) as notebook:
        await notebook.run(ADD)
        agent = await agent_with(harness, notebook, "add", tier="container")
        await notebook.run("offset = 1000")
        assert await run_session(harness, agent, call("add", n=1)) == [("1001", False)]
