"""The notebook API end to end: `cma.Agent`, `cma.Session` and `%%cma`, run as a user runs them.

Every call is code run inside a real notebook kernel of the real server under test (started through its session
manager, as JupyterLab does), signed with that kernel's key; sessions are served by the extension on the kernel
tier against the emulator, whose scripted brain calls the notebook's tools. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
from textwrap import dedent
from typing import Any

from tests.notebook_kernels import CellError, NotebookKernel, notebook_of
from tests.test_dispatch import Harness, cma_emulator, cma_mode, harness, jp_server_config, script  # noqa: F401

# A cell every test runs first: the API, a notebook tool with a global it reads, and a way to write scripts.
SETUP = '''
import json, time
import jupyter_cma as cma

offset = 41
calls = []

@cma.tool
def add(n: int) -> str:
    """Add the notebook's offset to n."""
    calls.append(n)
    return f"{n + offset}"

def script(*steps):
    return json.dumps({"cma_script": list(steps)})

def call(name, **tool_input):
    return {"tool": name, "input": tool_input}
'''

# A 1×1 PNG, for a tool that returns an image.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


async def outputs(kernel: NotebookKernel, code: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every output of a cell as the frontend gets it, display updates included; CellError if it raised."""
    msg_id = kernel.client.execute(dedent(code), store_history=True)
    found: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        msg = await kernel.client.get_iopub_msg(timeout=max(left, 0.1))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("stream", "display_data", "update_display_data", "execute_result", "error"):
            found.append({"type": kind, **content})
        if kind == "status" and content["execution_state"] == "idle":
            break
    errors = [o for o in found if o["type"] == "error"]
    if errors:
        raise CellError(f"{errors[0]['ename']}: {errors[0]['evalue']}")
    return found


async def test_an_agent_with_a_notebook_tool_answers_and_the_tool_runs_in_this_kernel(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP)
        described = await notebook.run('''
            agent = cma.Agent.create("analyst", tier="kernel", tools=[add, "read"], description="counts")
            assert agent.id.startswith("agent_") and agent.name == "analyst" and agent.tier == "kernel"
            assert {"add", "read", "python"} <= set(agent.tools) and "bash" not in agent.tools, agent.tools
            from jupyter_cma.client.connection import connection
            kernel_id = connection().kernel.kernel_id
            assert agent.notebook_tools == [{"name": "add", "kernel_id": kernel_id, "notebook": "analysis.ipynb"}]
            print(repr(agent))
        ''')
        assert "'analyst'" in described and "kernel tier" in described and "add (analysis.ipynb)" in described

        # start + wait: the final text; the tool ran here, with this notebook's globals as they are at call time.
        answer = await notebook.run('''
            session = agent.start(script(call("add", n=1), {"say": "done: {result}"}), title="first")
            print(session.wait())
            offset = 100
            print(session.send(script(call("add", n=2), {"say": "then: {result}"})).wait())
            print(calls)
        ''')
        assert answer.splitlines() == ["done: 42", "then: 102", "[1, 2]"]

        # The session read back: events, transcript, repr and HTML hold the calls and their results.
        await notebook.run('''
            types = [e["type"] for e in session.events]
            assert types.count("user.message") == 2 and types.count("agent.custom_tool_use") == 2, types
            tools = [i for i in session.transcript() if i.kind == "tool"]
            assert [(t.name, t.input, t.result_text, t.is_error, t.turn) for t in tools] == [
                ("add", {"n": 1}, "42", False, 1), ("add", {"n": 2}, "102", False, 2)]
            agent_says = [i.text for i in session.transcript() if i.kind == "agent"]
            assert agent_says == ["done: 42", "then: 102"], agent_says
            text, page = repr(session), session._repr_html_()
            assert 'add({"n": 1})' in text and "→ 42" in text and "done: 42" in text, text
            assert "<code>add</code>" in page and "<pre" in page and "102" in page and "<script" not in page, page
            assert cma.Session.get(session.id).events == session.events
            row = session.status
            assert row["tier"] == "kernel" and row["agent_id"] == agent.id, row
        ''')

        # Finding agents: by id, by name (the latest of that name), in the list; update replaces notebook tools.
        await notebook.run('''
            newer = cma.Agent.create("analyst", tier="kernel", tools=[add])
            assert cma.Agent.get(agent.id) == agent and cma.Agent.get("analyst") == newer
            assert {agent.id, newer.id} <= {a.id for a in cma.Agent.list()}
            newer.update(tools=[])
            assert newer.notebook_tools == [] and "add" not in newer.tools, newer.tools
            newer.update(tools=[add, "grep"])
            assert [t["name"] for t in newer.notebook_tools] == ["add"] and "add" in cma.Agent.get(newer.id).tools
            assert "cma.Agent" in newer._repr_html_() and "<code>add</code>" in newer._repr_html_()
        ''')

        # Past the API's page of 100: agents are found and listed however many the account has.
        await notebook.run('''
            from jupyter_cma.client.connection import connection
            for i in range(100):
                connection().request("POST", "agents", {"name": f"filler-{i}", "tier": "kernel"})
            late = cma.Agent.create("late", tier="kernel")
            assert cma.Agent.get("late") == late and cma.Agent.get("analyst") == newer
            listed = [a.id for a in cma.Agent.list()]
            assert len(listed) == len(set(listed)) >= 103 and late.id in listed, len(listed)
            try:
                cma.Agent.get("nobody")
            except cma.CMAError as exc:
                assert "and 82 more" in str(exc) and len(str(exc)) < 600, str(exc)  # 102 names: 20 shown
        ''')


async def test_one_cell_defines_the_tool_creates_the_agent_starts_and_waits(harness):
    async with notebook_of(harness) as notebook:
        answer = await notebook.run('''
            import json
            import jupyter_cma as cma

            rows = {"orders": [1, 2, 3]}

            @cma.tool
            def row_count(table: str) -> int:
                """How many rows a table of this notebook has."""
                return len(rows[table])

            agent = cma.Agent.create("counter", tier="kernel", tools=[row_count])
            steps = [{"tool": "row_count", "input": {"table": "orders"}}, {"say": "orders has {result} rows"}]
            print(agent.start(json.dumps({"cma_script": steps})).wait(timeout=120))
        ''')
        assert answer.strip() == "orders has 3 rows"


async def test_a_tool_runs_while_another_long_cell_of_its_kernel_runs(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP + dedent('''
            long_cell_done = False

            @cma.tool
            def peek(n: int) -> str:
                """n plus the offset, and whether the long cell has ended."""
                return f"{n + offset} long_cell_done={long_cell_done}"

            agent = cma.Agent.create("peeker", tier="kernel", tools=[peek])
        '''))
        agent_id = (await notebook.run("print(agent.id)")).strip()
        long_cell = notebook.submit("time.sleep(20)\nlong_cell_done = True")
        sid = await harness.session(agent_id, script({"tool": "peek", "input": {"n": 1}}, {"say": "{result}"}))
        events = await harness.turn_ends(sid, timeout=60)
        results = ["".join(b.text for b in e.content or [] if b.type == "text")
                   for e in events if e.type == "user.custom_tool_result"]
        assert results == ["42 long_cell_done=False"], "the call ran while the long cell was still running"
        await notebook.finish(long_cell, timeout=60)
        assert (await notebook.run("print(long_cell_done)")).strip() == "True"


async def test_the_html_transcript_shows_images_escapes_text_and_highlights_errors(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP + dedent(f'''
            import base64

            @cma.tool
            def picture() -> bytes:
                """A tiny picture."""
                return base64.b64decode("{PNG}")

            @cma.tool
            def shout(text: str) -> str:
                """Echo some text."""
                return text

            @cma.tool
            def fail() -> str:
                """Always fails."""
                raise RuntimeError("the warehouse is closed")

            agent = cma.Agent.create("renderer", tier="kernel", tools=[picture, shout, fail])
            session = agent.start(script(call("picture"), call("shout", text="<script>alert(1)</script>"), call("fail"),
                                         {{"say": "<b>bold</b> & done"}}))
            session.wait()
            page = session._repr_html_()
        '''))
        await notebook.run('''
            assert '<img' in page and 'src="data:image/png;base64,' in page, page
            assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, page
            assert "&lt;b&gt;bold&lt;/b&gt; &amp; done" in page, page
            assert "RuntimeError: the warehouse is closed" in page and "#fff0f0" in page, page
            (failed,) = [i for i in session.transcript() if i.kind == "tool" and i.is_error]
            assert failed.name == "fail", failed
        ''')


async def test_the_session_notebook_holds_its_python_calls_and_a_session_without_them_says_so(harness, tmp_path):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP + dedent(f'''
            import nbformat
            from pathlib import Path

            agent = cma.Agent.create("coder", tier="kernel", tools=[add])
            worked = agent.start(script(call("python", code="x = 6 * 7\\nprint(x)"), {{"say": "{{result}}"}}))
            assert worked.wait().strip() == "42"
            written = worked.notebook(Path({str(tmp_path)!r}))
            assert written == Path({str(tmp_path)!r}) / f"{{worked.id}}.ipynb", written
            nb = nbformat.read(written, as_version=4)
            nbformat.validate(nb)
            code = [c for c in nb.cells if c.cell_type == "code"]
            assert any("x = 6 * 7" in c.source for c in code), nb.cells
            assert any("42" in o.get("text", "") for c in code for o in c.outputs), nb.cells

            idle = agent.start(script(call("add", n=1), {{"say": "{{result}}"}}))
            idle.wait()
        '''))
        message = (await notebook.run(f'''
            try:
                idle.notebook({str(tmp_path / "none.ipynb")!r})
            except cma.CMAError as exc:
                print(exc)
        ''')).strip()
        assert "has no recorded cells" in message and "kernel tier" in message, message
        assert not (tmp_path / "none.ipynb").exists()


async def test_errors_say_what_went_wrong_and_what_to_do(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP)

        async def error_of(code: str) -> str:
            return (await notebook.run(f"try:\n{_indent(code)}\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")).strip()

        said = await error_of('cma.Agent.get("no-such-agent")')
        assert said.startswith("CMAError") and "no agent has the id or name 'no-such-agent'" in said, said
        assert "Agent.create" in said

        # A timeout beyond what the worker gives a call is refused in the cell that defines the tool.
        said = await error_of('''
@cma.tool(timeout=7200)
def slow() -> str:
    """Takes its time."""
    return "late"''')
        assert said.startswith("ValueError") and "at most 140 s" in said, said

        # A tool the server does not have (never registered) cannot be given.
        said = await error_of('''
from jupyter_cma.tools.notebook import NotebookTool
def local() -> str:
    """Only here."""
    return "here"
cma.Agent.create("refused", tier="kernel", tools=[NotebookTool(local)])''')
        assert said.startswith("CMAError") and "tool 'local' is not registered with the server" in said, said

        # A tool withdrawn from the server: the server's refusal names the kernel and what to run.
        said = await error_of('cma.unregister("add")\ncma.Agent.create("withdrawn", tier="kernel", tools=[add])')
        assert said.startswith("CMAError") and "has no tool 'add'" in said and "@cma.tool" in said, said

        said = await error_of('cma.Agent.create("shell", tier="kernel", tools=["bash"])')
        assert said.startswith("CMAError") and "'bash' is not a standard tool of the kernel tier" in said, said
        assert "python, read, write, edit, glob, grep" in said, said
        said = await error_of('cma.Agent.create("odd", tools=["teleport"])')
        assert said.startswith("CMAError") and "web_search" in said and "python" in said, said
        said = await error_of('cma.Agent.create("plain", tools=[print])')
        assert said.startswith("TypeError") and "@cma.tool" in said, said

        await notebook.run('''
            @cma.tool
            def add(n: int) -> str:
                """Add the notebook's offset to n."""
                return f"{n + offset}"

            agent = cma.Agent.create("errors", tier="kernel", tools=[add])
        ''')
        said = await error_of('agent.start(script({"sleep": 30})).wait(timeout=1)')
        assert said.startswith("TimeoutError") and "did not finish its turn within 1 s" in said, said
        assert "session.wait() again" in said and "session.stop()" in said, said

        said = await error_of('agent.start(script({"say": "trying"}, {"sleep": "never"})).wait()')
        assert said.startswith("CMAError") and "reported an error" in said and "emulator brain failed" in said, said
        said = await error_of('agent.start(script({"say": "no"}, {"stop": "refusal"})).wait()')
        assert said.startswith("CMAError") and "refusal" in said and "'no'" in said, said
        said = await error_of('agent.start().wait()')
        assert said.startswith("CMAError") and "send(text) first" in said, said


async def test_a_terminated_session_ends_the_wait_with_an_error(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP + dedent('''
            agent = cma.Agent.create("ended", tier="kernel", tools=[add])
            session = agent.start(script({"sleep": 60}))
        '''))
        sid = (await notebook.run("print(session.id)")).strip()
        waiting = notebook.submit('''
            try:
                session.wait(timeout=120)
            except cma.CMAError as exc:
                print("CMAError", exc)
        ''')
        client = harness.emulator.client()
        async with client:
            await client.beta.sessions.archive(sid)
        said = "".join(o.get("text", "") for o in await notebook.finish(waiting, timeout=120))
        assert said.startswith("CMAError") and "was terminated" in said, said


async def test_the_cma_cell_magic_streams_the_transcript_and_continues_its_session(harness):
    async with notebook_of(harness) as notebook:
        await notebook.run("%load_ext jupyter_cma")
        # IPython shows a UsageError as a short message, without a traceback.
        assert "UsageError: %%cma: which agent? Name one" in await notebook.run("%%cma\nhello")
        await notebook.run(SETUP + 'agent = cma.Agent.create("magician", tier="kernel", tools=[add])')
        assert "UsageError: %%cma: no agent has the id or name 'nobody'" in await notebook.run("%%cma nobody\nhello")
        assert "UsageError: %%cma: the cell is empty" in await notebook.run("%%cma magician\n   \n")

        first = await outputs(notebook, "%%cma magician\n" + script({"tool": "add", "input": {"n": 1}}, {"say": "done: {result}"}))
        pages = [o["data"]["text/html"] for o in first if o["type"] in ("display_data", "update_display_data")]
        assert pages and first[0]["type"] == "display_data", first
        assert "<code>add</code>" in pages[-1] and "42" in pages[-1] and "done: 42" in pages[-1], pages[-1]
        assert any(o["type"] == "update_display_data" for o in first), "the transcript is updated as it goes"
        (value,) = [o for o in first if o["type"] == "execute_result"]
        assert value["data"]["text/plain"] == "done: 42"

        # Without a name: the agent used last, in the same session; only this turn is shown.
        second = await outputs(notebook, "%%cma\n" + script({"tool": "add", "input": {"n": 2}}, {"say": "then: {result}"}))
        last_page = [o["data"]["text/html"] for o in second if o["type"] in ("display_data", "update_display_data")][-1]
        assert "then: 43" in last_page and "done: 42" not in last_page, last_page
        assert [o for o in second if o["type"] == "execute_result"][0]["data"]["text/plain"] == "then: 43"
        said = await notebook.run('''
            from jupyter_cma.client.magic import session_for
            print([e["type"] for e in session_for(agent).events].count("user.message"), _)
        ''')
        assert said.strip() == "2 then: 43"


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.strip("\n").splitlines())
