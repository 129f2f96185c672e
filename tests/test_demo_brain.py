"""The demo brain reads plain-language prompts the way a model would and calls the agent's tools.

The emulator runs for real (`--brain demo`) and the unmodified `anthropic`
SDK is its client. Each test creates an agent whose custom tools have the
schemas a notebook's Python functions would get, sends one message, and
answers every `agent.custom_tool_use` itself, running the tool's real
implementation below, as the app serving those tools does; built-in tools
(bash) are run by the SDK's own environment worker. Assertions are on the
tool calls made and on the agent's messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.lib.environments import EnvironmentWorker

from tests.emulator_fixtures import EmulatorProcess, start_emulator
from tests.helpers import wait_until

# --------------------------------------------------------------------------- the agent's tools

TOOLSET = {"type": "agent_toolset_20260401"}
# The kernel tier's toolset: file tools, no shell, no web.
KERNEL_TOOLSET = {
    "type": "agent_toolset_20260401",
    "configs": [{"name": n, "enabled": False} for n in ("bash", "web_fetch", "web_search")],
}
NO_CODE_TOOLSET = {
    "type": "agent_toolset_20260401",
    "configs": [{"name": n, "enabled": False} for n in ("bash", "web_fetch", "web_search", "write", "edit")],
}


def custom(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "custom",
        "name": name,
        "description": description,
        "input_schema": {"type": "object", "properties": properties, "required": required},
    }


PYTHON = custom(
    "python",
    "Run Python code in the session's kernel; returns what it prints and the traceback if it raises.",
    {"code": {"type": "string", "description": "The Python code to run."}},
    ["code"],
)
LIST_PDFS = custom(
    "list_pdfs",
    "List the PDF documents in the bucket whose keys start with `prefix`.",
    {"prefix": {"type": "string", "description": "Key prefix, e.g. 'reports/'."}},
    ["prefix"],
)
READ_PDF = custom(
    "read_pdf",
    "Extract the text of one PDF document.",
    {"key": {"type": "string", "description": "The document's key."}},
    ["key"],
)
WORD_COUNT = custom("word_count", "Count the words in a text.", {"text": {"type": "string"}}, ["text"])
QUARTERLY_REVENUE = custom(
    "quarterly_revenue",
    "Revenue per quarter, in thousands of euros.",
    {"year": {"type": "integer", "default": 2024}},
    [],
)
CONVERT_TEMPERATURE = custom(
    "convert_temperature",
    "Convert a temperature from Celsius.",
    {
        "value": {"type": "number"},
        "unit": {"enum": ["kelvin", "fahrenheit"], "type": "string"},
        "round_result": {"type": "boolean"},
        "digits": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
    },
    ["value", "unit", "round_result"],
)
REVENUE_TABLE = custom("revenue_table", "Revenue and cost per quarter, as a table.", {}, [])
PLOT_REVENUE = custom("plot_revenue", "A bar chart of revenue per quarter.", {}, [])

DOCUMENTS = {
    "reports/q1.pdf": (
        "Q1 2024 Trading Update\n\n"
        "This update covers trading in the first quarter of 2024 across our European stores.\n"
        "Revenue rose 12% to €4.2m, driven by online orders. Headcount stayed at 1,240 people.\n\n"
        "Supply costs remain a concern for the second half. We expect margins to hold."
    ),
    "reports/q2.pdf": (
        "The second quarter was quiet. Sales were flat. The main risk is a weaker euro, which makes imports dearer."
    ),
    "reports/memo.pdf": "A short note on the office move. Nothing else to report.",
    "archive/2019.pdf": "Old figures: 5% growth.",
}
REVENUE = [
    {"quarter": "Q1", "revenue": 1200},
    {"quarter": "Q2", "revenue": 1350},
    {"quarter": "Q3", "revenue": 1900},
    {"quarter": "Q4", "revenue": 2000},
]
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a")).decode()


class ToolFailed(Exception):
    """A tool implementation's error: answered with `is_error: true`, as an app does."""


def run_python(code: str) -> str:
    """The `python` tool: really runs the code; a non-zero exit is a tool error carrying the traceback."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise ToolFailed(done.stdout + done.stderr)
    return done.stdout + done.stderr


def list_pdfs(prefix: str, style: str = "json") -> str:
    keys = sorted(k for k in DOCUMENTS if k.startswith(prefix))
    if style == "objects":  # the shape of an S3 listing
        return json.dumps([{"Key": k, "Size": len(DOCUMENTS[k])} for k in keys])
    if style == "lines":
        return "\n".join(keys)
    return json.dumps(keys)


def read_pdf(key: str) -> str:
    if key not in DOCUMENTS:
        raise ToolFailed(f"NoSuchKey: {key} is not in the bucket")
    return DOCUMENTS[key]


def convert_temperature(value: float, unit: str, round_result: bool, digits: int | None = None) -> str:
    converted = value + 273.15 if unit == "kelvin" else value * 9 / 5 + 32
    return str(round(converted) if round_result else converted)


IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {
    "python": run_python,
    "list_pdfs": list_pdfs,
    "read_pdf": read_pdf,
    "word_count": lambda text: str(len(text.split())),
    "quarterly_revenue": lambda year=2024: json.dumps(REVENUE),
    "convert_temperature": convert_temperature,
    # What a notebook tool returning a pandas DataFrame answers: its shape, then the frame as text.
    "revenue_table": lambda: (
        "DataFrame: 4 rows × 3 columns\n"
        "  quarter  revenue  cost\n0      Q1     1200   900\n1      Q2     1350  1000\n"
        "2      Q3     1900  1100\n3      Q4     2000  1500"
    ),
    "plot_revenue": lambda: [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}],
}


# --------------------------------------------------------------------------- driving a session


@dataclass
class Transcript:
    """What one turn did: the custom tool calls (name, input), the built-in ones, and the agent's messages."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    builtin_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def final(self) -> str:
        return self.messages[-1]


@pytest.fixture(scope="module")
def demo() -> Iterator[EmulatorProcess]:
    """The emulator with the demo brain, as `jupyter cma emulator --brain demo` runs it."""
    emu = start_emulator("--brain", "demo")
    assert emu.info["brain"] == "jupyter_cma.emulator.brains.DemoBrain"
    yield emu
    emu.stop()


async def events_of(client: anthropic.AsyncAnthropic, session_id: str) -> list[Any]:
    return [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]


def idles(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type == "session.status_idle"]


def result_event(call: Any, implementation: Callable[..., Any], **extra: Any) -> dict[str, Any]:
    """Run a custom tool's implementation on the call's input; its answer as `user.custom_tool_result`."""
    try:
        value = implementation(**call.input, **extra)
    except ToolFailed as exc:
        return {"type": "user.custom_tool_result", "custom_tool_use_id": call.id, "is_error": True,
                "content": [{"type": "text", "text": str(exc)}]}
    content = value if isinstance(value, list) else [{"type": "text", "text": value}]
    return {"type": "user.custom_tool_result", "custom_tool_use_id": call.id, "content": content}


async def converse(
    emu: EmulatorProcess,
    tools: list[dict[str, Any]],
    text: str,
    *,
    environment: tuple[str, str] | None = None,
    workdir: Path | None = None,
    list_style: str = "json",
) -> Transcript:
    """One user message to a new session of an agent with `tools`; every custom call answered, until the turn ends.

    With `environment` and `workdir`, the SDK's `EnvironmentWorker` serves the
    session's work item, so built-in tools (bash) run for real.
    """
    client = emu.client()
    env_id = environment[0] if environment else emu.info["environment_id"]
    agent = await client.beta.agents.create(name="demo brain", model="claude-sonnet-4-5", tools=tools)
    session = await client.beta.sessions.create(agent=agent.id, environment_id=env_id)
    worker_task = None
    if environment is not None:
        worker = EnvironmentWorker(client, environment_id=env_id, environment_key=environment[1], workdir=workdir, max_idle=0.5)
        worker_task = asyncio.create_task(worker.run())
    try:
        await client.beta.sessions.events.send(session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": text}]}])
        handled: set[str] = set()  # calls answered here, or left to the worker

        async def next_stop() -> list[Any] | None:
            events = await events_of(client, session.id)
            if not events or events[-1].type != "session.status_idle":
                return None
            reason = events[-1].stop_reason
            # Still waiting on handled calls: the answers are on their way.
            if reason.type == "requires_action" and set(reason.event_ids) <= handled:
                return None
            return events

        while True:
            events = await wait_until(next_stop, what="the agent to stop")
            reason = events[-1].stop_reason
            if reason.type != "requires_action":
                break
            by_id = {e.id: e for e in events}
            results = []
            for event_id in set(reason.event_ids) - handled:
                call = by_id[event_id]
                handled.add(event_id)
                if call.type == "agent.tool_use":
                    assert worker_task is not None, f"a built-in call with no worker to run it: {call.name}"
                    continue
                extra = {"style": list_style} if call.name == "list_pdfs" else {}
                results.append(result_event(call, IMPLEMENTATIONS[call.name], **extra))
            if results:
                await client.beta.sessions.events.send(session.id, events=results)
    finally:
        if worker_task is not None:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
        await client.close()
    transcript = Transcript(stop_reason=reason.type)
    for e in events:
        if e.type == "agent.custom_tool_use":
            transcript.calls.append((e.name, dict(e.input)))
        elif e.type == "agent.tool_use":
            transcript.builtin_calls.append((e.name, dict(e.input)))
        elif e.type == "agent.message":
            transcript.messages.append("".join(b.text for b in e.content))
    return transcript


# --------------------------------------------------------------------------- 1. run this code


async def test_a_python_block_runs_in_the_python_tool_and_its_output_is_reported(demo: EmulatorProcess) -> None:
    code = "import math\nprint(math.factorial(10))\nprint('done')"
    t = await converse(demo, [KERNEL_TOOLSET, PYTHON], f"Run this code and tell me what it prints:\n\n```python\n{code}\n```")
    assert t.calls == [("python", {"code": code})]
    assert t.builtin_calls == []
    assert t.messages == [
        "I'll run this Python code with the `python` tool.",
        "It ran. The output:\n\n```\n3628800\ndone\n```",
    ]
    assert t.stop_reason == "end_turn"


async def test_a_python_error_is_reported_honestly(demo: EmulatorProcess) -> None:
    t = await converse(demo, [KERNEL_TOOLSET, PYTHON], "What happens here?\n```python\nratio = 1 / 0\n```")
    assert t.calls == [("python", {"code": "ratio = 1 / 0"})]
    assert t.final.startswith("The tool answered with an error:\n\n```\nTraceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in t.final


async def test_code_in_a_fence_is_not_a_request_for_squares(demo: EmulatorProcess) -> None:
    """The README's squares request is prose; numbers in fenced code ("squares[2 - 1]") do not trigger it."""
    code = "squares = [n * n for n in range(1, 4)]\nprint(squares[2 - 1])"
    t = await converse(demo, [KERNEL_TOOLSET, PYTHON], f"```python\n{code}\n```")
    assert t.calls == [("python", {"code": code})]
    assert t.final == "It ran. The output:\n\n```\n4\n```"


async def test_a_python_block_runs_through_bash_when_the_agent_has_no_python_tool(demo: EmulatorProcess, tmp_path: Path) -> None:
    code = "total = sum(range(101))\nprint(f'total={total}')"
    t = await converse(demo, [TOOLSET], f"Please run:\n```python\n{code}\n```", environment=demo.new_environment(), workdir=tmp_path)
    assert t.calls == []
    assert t.builtin_calls == [("bash", {"command": f"python3 - <<'EOF'\n{code}\nEOF"})]
    assert t.messages == ["I'll run this Python code with bash.", "It ran. The output:\n\n```\ntotal=5050\n```"]


async def test_several_blocks_run_in_order_with_bash(demo: EmulatorProcess, tmp_path: Path) -> None:
    message = (
        "Run these two steps:\n```python\nopen('note.txt', 'w').write('EOF\\n')\n```\n"
        "```bash\ncat note.txt && wc -c < note.txt\n```"
    )
    t = await converse(demo, [TOOLSET], message, environment=demo.new_environment(), workdir=tmp_path)
    assert [name for name, _ in t.builtin_calls] == ["bash", "bash"]
    assert t.builtin_calls[1][1] == {"command": "cat note.txt && wc -c < note.txt"}
    assert (tmp_path / "note.txt").read_text() == "EOF\n"
    assert t.messages[0] == "I'll run the 2 code blocks in order."
    assert t.final == (
        "**Block 1** (Python code, with bash): It ran and printed nothing.\n\n"
        "**Block 2** (shell script, with bash): It ran. The output:\n\n```\nEOF\n4\n```"
    )


async def test_a_bash_block_runs_through_the_python_tool_when_there_is_no_bash(demo: EmulatorProcess) -> None:
    t = await converse(demo, [KERNEL_TOOLSET, PYTHON], "```bash\necho hello from the shell\n```")
    ((name, tool_input),) = t.calls
    assert name == "python" and "subprocess.run('echo hello from the shell', shell=True" in tool_input["code"]
    assert t.messages[0] == "I'll run this shell script with the `python` tool (through `subprocess`, as this agent has no bash)."
    assert t.final == "It ran. The output:\n\n```\nhello from the shell\n```"


async def test_no_tool_can_run_the_code(demo: EmulatorProcess) -> None:
    t = await converse(demo, [NO_CODE_TOOLSET], "```python\nprint(1)\n```")
    assert t.calls == [] and t.builtin_calls == []
    assert t.messages == [
        "This agent has no tool that can run Python: enable bash in its toolset, or give it a Python tool that takes "
        "`code` (the kernel tier's `python`)."
    ]


# --------------------------------------------------------------------------- 2. documents to summarise

Q1_SUMMARY = (
    "**reports/q1.pdf**\n"
    "- **Scope:** This update covers trading in the first quarter of 2024 across our European stores.\n"
    "- **Headline number:** Revenue rose 12% to €4.2m, driven by online orders.\n"
    "- **Risks:** Supply costs remain a concern for the second half."
)
Q2_SUMMARY = (
    "**reports/q2.pdf**\n"
    "- **Scope:** The second quarter was quiet.\n"
    "- **Headline number:** no figure stated\n"
    "- **Risks:** The main risk is a weaker euro, which makes imports dearer."
)
MEMO_SUMMARY = (
    "**reports/memo.pdf**\n"
    "- **Scope:** A short note on the office move.\n"
    "- **Headline number:** no figure stated\n"
    "- **Risks:** none stated"
)


@pytest.mark.parametrize("list_style", ["json", "objects", "lines"])
async def test_documents_are_listed_read_and_summarised(demo: EmulatorProcess, list_style: str) -> None:
    message = "Summarise the PDFs under 'reports/': for each one, its scope, the headline number and the risks."
    t = await converse(demo, [TOOLSET, LIST_PDFS, READ_PDF], message, list_style=list_style)
    assert t.calls == [
        ("list_pdfs", {"prefix": "reports/"}),
        ("read_pdf", {"key": "reports/memo.pdf"}),
        ("read_pdf", {"key": "reports/q1.pdf"}),
        ("read_pdf", {"key": "reports/q2.pdf"}),
    ]
    assert t.messages == [
        "I'll list the documents under 'reports/' with `list_pdfs`, then read each one with `read_pdf`.",
        "Here is a summary of the 3 documents under 'reports/':\n\n" + "\n\n".join([MEMO_SUMMARY, Q1_SUMMARY, Q2_SUMMARY]),
    ]


async def test_without_a_quoted_prefix_every_document_is_read(demo: EmulatorProcess) -> None:
    t = await converse(demo, [LIST_PDFS, READ_PDF], "Can you read all the documents and give me a short summary?")
    assert t.calls[0] == ("list_pdfs", {"prefix": ""})
    assert [c[1]["key"] for c in t.calls[1:]] == sorted(DOCUMENTS)
    assert "- **Headline number:** Old figures: 5% growth." in t.final


async def test_a_document_that_cannot_be_read_is_reported_and_the_rest_summarised(demo: EmulatorProcess) -> None:
    # The listing names a document that is gone by the time it is read.
    IMPLEMENTATIONS["list_pdfs"] = lambda prefix, style: json.dumps([k for k in ("reports/gone.pdf", "reports/q1.pdf") if k.startswith(prefix)])
    try:
        t = await converse(demo, [LIST_PDFS, READ_PDF], 'Summarize the reports in "reports/".')
    finally:
        IMPLEMENTATIONS["list_pdfs"] = list_pdfs
    assert t.calls == [
        ("list_pdfs", {"prefix": "reports/"}),
        ("read_pdf", {"key": "reports/gone.pdf"}),
        ("read_pdf", {"key": "reports/q1.pdf"}),
    ]
    assert t.final == (
        "Here is a summary of the 2 documents under 'reports/':\n\n"
        "**reports/gone.pdf** — The tool answered with an error: NoSuchKey: reports/gone.pdf is not in the bucket\n\n"
        + Q1_SUMMARY
    )


async def test_an_empty_listing_is_said_plainly(demo: EmulatorProcess) -> None:
    t = await converse(demo, [LIST_PDFS, READ_PDF], "Summarise the PDFs under 'drafts/'.")
    assert t.calls == [("list_pdfs", {"prefix": "drafts/"})]
    assert t.final == "`list_pdfs` found no documents under 'drafts/'."


async def test_a_listing_error_is_reported(demo: EmulatorProcess) -> None:
    def refuse(prefix: str, style: str) -> str:
        raise ToolFailed("AccessDenied: the bucket policy refuses ListObjects")

    IMPLEMENTATIONS["list_pdfs"] = refuse
    try:
        t = await converse(demo, [LIST_PDFS, READ_PDF], "Summarise the PDFs under 'reports/'.")
    finally:
        IMPLEMENTATIONS["list_pdfs"] = list_pdfs
    assert t.calls == [("list_pdfs", {"prefix": "reports/"})]
    assert t.final == "Listing the documents failed. The tool answered with an error: AccessDenied: the bucket policy refuses ListObjects"


# --------------------------------------------------------------------------- 3. named tools


async def test_a_named_tool_is_called_with_the_quoted_string(demo: EmulatorProcess) -> None:
    t = await converse(demo, [TOOLSET, WORD_COUNT, QUARTERLY_REVENUE], "use word_count on 'the quick brown fox'")
    assert t.calls == [("word_count", {"text": "the quick brown fox"})]
    assert t.messages == [
        "I'll use `word_count`.",
        'I called `word_count` with `{"text": "the quick brown fox"}`. It returned:\n\n> 4',
    ]


async def test_which_quarter_grew_most(demo: EmulatorProcess) -> None:
    t = await converse(demo, [TOOLSET, WORD_COUNT, QUARTERLY_REVENUE], "Call quarterly_revenue and tell me which quarter grew most.")
    assert t.calls == [("quarterly_revenue", {})]
    pretty = json.dumps(REVENUE, indent=2)
    assert t.final == (
        f"I called `quarterly_revenue`. It returned:\n\n```json\n{pretty}\n```\n\n"
        "Q3 grew the most: revenue went from 1,350 to 1,900 (+550)."
    )


async def test_which_quarter_had_the_highest_revenue(demo: EmulatorProcess) -> None:
    t = await converse(demo, [QUARTERLY_REVENUE], "Use quarterly_revenue: which quarter had the highest revenue?")
    assert t.final.endswith("\n\nQ4 has the highest revenue: 2,000.")


async def test_which_row_is_lowest_in_a_text_table(demo: EmulatorProcess) -> None:
    t = await converse(demo, [REVENUE_TABLE], "Look at revenue_table. Which quarter had the lowest cost?")
    assert t.calls == [("revenue_table", {})]
    assert t.final.startswith("I called `revenue_table`. It returned:\n\n> DataFrame: 4 rows × 3 columns\n>   quarter  revenue  cost\n")
    assert t.final.endswith("\n\nQ1 has the lowest cost: 900.")


async def test_tools_are_called_in_the_order_named_and_quoted_names_do_not_count(demo: EmulatorProcess) -> None:
    message = "First use word_count on 'quarterly_revenue comes later', then call quarterly_revenue."
    t = await converse(demo, [QUARTERLY_REVENUE, WORD_COUNT], message)
    assert t.calls == [("word_count", {"text": "quarterly_revenue comes later"}), ("quarterly_revenue", {})]
    assert t.messages[0] == "I'll use `word_count`, then `quarterly_revenue`."
    assert t.final.startswith('I called `word_count` with `{"text": "quarterly_revenue comes later"}`. It returned:\n\n> 3\n\n')
    assert "I called `quarterly_revenue`. It returned:\n\n```json\n" in t.final


async def test_numbers_enums_and_booleans_are_filled_from_the_schema(demo: EmulatorProcess) -> None:
    t = await converse(demo, [CONVERT_TEMPERATURE], "Please convert_temperature 21.5 degrees to fahrenheit.")
    assert t.calls == [("convert_temperature", {"value": 21.5, "unit": "fahrenheit", "round_result": False})]
    assert t.final.endswith("It returned:\n\n> 70.7")
    t = await converse(demo, [CONVERT_TEMPERATURE], "What is 100 with convert_temperature?")
    assert t.calls == [("convert_temperature", {"value": 100, "unit": "kelvin", "round_result": False})]


async def test_an_image_result_is_mentioned(demo: EmulatorProcess) -> None:
    t = await converse(demo, [PLOT_REVENUE], "Show me plot_revenue.")
    assert t.calls == [("plot_revenue", {})]
    assert t.final == "I called `plot_revenue`. It returned an image."


async def test_a_tool_error_is_reported_honestly(demo: EmulatorProcess) -> None:
    t = await converse(demo, [READ_PDF], "Call read_pdf on 'nowhere.pdf'.")
    assert t.calls == [("read_pdf", {"key": "nowhere.pdf"})]
    assert t.final == (
        'I called `read_pdf` with `{"key": "nowhere.pdf"}`. '
        "The tool answered with an error: NoSuchKey: nowhere.pdf is not in the bucket"
    )


async def test_a_required_value_missing_from_the_message_is_asked_for(demo: EmulatorProcess) -> None:
    t = await converse(demo, [WORD_COUNT], "How many words would word_count find?")
    assert t.calls == []
    assert t.messages == ["To call `word_count` I need `text` (a string, in quotes). Put the values in your message, strings in quotes."]


# --------------------------------------------------------------------------- otherwise


async def test_anything_else_gets_the_help_naming_the_agents_tools(demo: EmulatorProcess) -> None:
    t = await converse(demo, [KERNEL_TOOLSET, PYTHON, WORD_COUNT, QUARTERLY_REVENUE], "Hello! What can you do?")
    assert t.calls == [] and t.builtin_calls == []
    (help_text,) = t.messages
    assert help_text.startswith("I am the emulator's demo brain")
    assert "\"use word_count on 'some text'\"" in help_text
    assert "This agent's custom tools: `word_count`, `quarterly_revenue`." in help_text
    assert t.stop_reason == "end_turn"
