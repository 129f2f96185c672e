"""What the demo brain understands beyond the README scenario.

Example notebooks run offline against the emulator and online against a real
model with the same plain-language prompts, so the demo brain reads those
prompts the way a model would and calls the agent's tools accordingly. Each
scenario is an async function `scenario(turn) -> bool`: it returns False
without acting when the message is not for it, else plays the whole turn:

- `run_code`: a fenced ```python or ```bash block is run with the tool that
  can, and its real output (or error) reported.
- `summarise_documents`: with a `list_…` and a `read_…` custom tool and a
  message asking to summarise or read, it lists the documents, reads each and
  answers with three extractive bullets per document.
- `call_named_tools`: the custom tools the message names are called once
  each, in the order named, with inputs built from their schemas and the
  message's quoted strings, numbers and ```json lists; a "which … most"
  question about a table of numbers gets a one-line answer.

Everything is deterministic and extractive: the same message and the same
tool results give the same transcript.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .turns import ToolResult, Turn

__all__ = [
    "SCENARIOS",
    "Values",
    "answer_which",
    "build_input",
    "call_named_tools",
    "document_keys",
    "find_code_blocks",
    "mentioned_tools",
    "python_tool",
    "run_code",
    "summarise_document",
    "summarise_documents",
    "without_fences",
]

TEXT_LIMIT = 4000  # characters of one tool result quoted back; the rest is elided
OUTPUT_LIMIT = 10_000  # characters of a code run's output shown (the tail: errors come last)
SENTENCE_LIMIT = 400  # characters of one extracted sentence
MAX_DOCUMENTS = 20  # documents read per turn; more are named, not read


# --------------------------------------------------------------------------- reading a message

ANY_FENCE = re.compile(r"```[^\n]*\n.*?```", re.DOTALL)
CODE_FENCE = re.compile(r"```[ \t]*(python3?|py|ipython|bash|sh|shell|zsh)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
# "double", “curly”, ‘curly’ and 'single' quotes; a single quote only where no letter touches it from outside,
# so the apostrophes of "don't" and "what's" never open or close a quoted string.
QUOTED = re.compile(r'"([^"\n]*)"|“([^”\n]*)”|‘([^’\n]*)’|(?<!\w)\'([^\'\n]*)\'(?!\w)')
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
JSON_FENCE = re.compile(r"```[ \t]*json[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span replaced by spaces (positions stay where they were)."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def without_fences(text: str) -> str:
    """The prose of a message: fenced blocks blanked out."""
    return _blank(text, [m.span() for m in ANY_FENCE.finditer(text)])


def quoted_strings(text: str) -> list[tuple[int, int, str]]:
    """Quoted strings outside fenced blocks: (start, end, value), in order."""
    return [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in QUOTED.finditer(without_fences(text))]


def _number(raw: str) -> int | float:
    value = float(raw.replace(",", ""))
    return int(value) if value.is_integer() and "." not in raw else value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _mentions(text: str, word: str) -> re.Match[str] | None:
    return re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", text)


def mentioned_tools(text: str, names: list[str]) -> list[str]:
    """The tool names a message's prose mentions (exact, whole word, not inside quotes), in order of mention."""
    prose = _blank(without_fences(text), [(s, e) for s, e, _ in quoted_strings(text)])
    found = [(m.start(), name) for name in names if (m := _mentions(prose, name)) is not None]
    return [name for _, name in sorted(found)]


@dataclass
class Values:
    """What a message offers for tool inputs: its quoted strings, its numbers and the lists of its ```json
    blocks, handed out in order.

    Values are shared by the tools of one message, so "use a on 'x' and b on
    'y'" gives 'x' to a and 'y' to b; a tool that starts when a kind is used
    up reads it again from the first ("use a and b on 'x'" gives 'x' to both).
    """

    strings: list[str]
    numbers: list[int | float]
    text: str
    lists: list[list[Any]] = field(default_factory=list)  # ```json blocks holding a list, for list-of-objects parameters
    _next_string: int = 0
    _next_number: int = 0
    _next_list: int = 0

    @classmethod
    def of(cls, text: str, tool_names: Iterable[str] = ()) -> Values:
        """The values in a message; tool names and quoted strings are not searched for numbers."""
        quotes = quoted_strings(text)
        prose = _blank(without_fences(text), [(s, e) for s, e, _ in quotes])
        for name in tool_names:
            prose = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", lambda m: " " * len(m.group(0)), prose)
        numbers = [_number(m.group(0)) for m in NUMBER.finditer(prose)]
        lists = [value for m in JSON_FENCE.finditer(text) if isinstance(value := _json_value(m.group(1)), list)]
        return cls(strings=[q for _, _, q in quotes], numbers=numbers, text=without_fences(text), lists=lists)

    def start_tool(self) -> None:
        """A new tool takes values: a kind that is used up starts again from its first value."""
        if self._next_string >= len(self.strings):
            self._next_string = 0
        if self._next_number >= len(self.numbers):
            self._next_number = 0
        if self._next_list >= len(self.lists):
            self._next_list = 0

    def string(self) -> str | None:
        """The next quoted string, or None when they are used up."""
        if self._next_string >= len(self.strings):
            return None
        self._next_string += 1
        return self.strings[self._next_string - 1]

    def number(self) -> int | float | None:
        """The next number, or None when they are used up."""
        if self._next_number >= len(self.numbers):
            return None
        self._next_number += 1
        return self.numbers[self._next_number - 1]

    def json_list(self) -> list[Any] | None:
        """The next ```json block's list, or None when they are used up."""
        if self._next_list >= len(self.lists):
            return None
        self._next_list += 1
        return self.lists[self._next_list - 1]

    def rest_of_strings(self) -> list[str]:
        """Every quoted string not handed out yet (for an array parameter)."""
        rest, self._next_string = self.strings[self._next_string :], len(self.strings)
        return rest

    def rest_of_numbers(self) -> list[int | float]:
        """Every number not handed out yet (for an array parameter)."""
        rest, self._next_number = self.numbers[self._next_number :], len(self.numbers)
        return rest


# --------------------------------------------------------------------------- a tool's input from its schema


def _resolve(node: Any) -> dict[str, Any]:
    """A property's schema with `anyOf`/`oneOf` (an `Optional[...]`, say) narrowed to the first non-null branch.

    Tool schemas carry no `$ref`s to follow: the API refuses them.
    """
    for _ in range(10):  # bounded: nesting is shallow in practice
        if not isinstance(node, dict):
            return {}
        branches = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
        if isinstance(branches, list) and "type" not in node:
            node = next((b for b in branches if isinstance(b, dict) and b.get("type") != "null"), {})
            continue
        return node
    return {}


def _type_of(prop: dict[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and prop.get("enum"):
        kind = {str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(prop["enum"][0]), "")
    return kind if isinstance(kind, str) else ""


def _choice(values: list[Any], text: str) -> Any:
    """The value the message mentions first, else the first value."""
    mentioned = [(m.start(), i) for i, v in enumerate(values) if (m := _mentions(text.lower(), str(v).lower())) is not None]
    return values[min(mentioned)[1]] if mentioned else values[0]


def build_input(schema: dict[str, Any], values: Values) -> tuple[dict[str, Any], list[str]]:
    """A tool's input from its JSON schema and the message's values, and the required parameters left unfilled.

    Required parameters only, in the schema's order: strings from quoted
    strings, integers and numbers from numbers, booleans false, enums (and
    `Literal`s) the value the message mentions else their first, arrays of
    strings or numbers every value left, arrays of objects the next ```json
    block's list. Optional parameters are left out.
    """
    values.start_tool()
    props = schema.get("properties") or {}
    required = [n for n in props if n in (schema.get("required") or [])]
    out: dict[str, Any] = {}
    missing: list[str] = []
    for name in required:
        prop = _resolve(props[name])
        kind = _type_of(prop)
        value: Any = None
        if "const" in prop:
            value = prop["const"]
        elif isinstance(prop.get("enum"), list) and prop["enum"]:
            value = _choice(prop["enum"], values.text)
        elif kind == "string":
            value = values.string()
        elif kind in ("integer", "number"):
            number = values.number()
            if number is not None:
                value = round(number) if kind == "integer" else number
        elif kind == "boolean":
            value = False
        elif kind == "array":
            items = _type_of(_resolve(prop.get("items")))
            if items in ("integer", "number"):
                value = [round(n) if items == "integer" else n for n in values.rest_of_numbers()] or None
            elif items in ("string", ""):
                value = values.rest_of_strings() or None
            elif items == "object":
                value = values.json_list()
        if value is None:
            missing.append(name)
        else:
            out[name] = value
    return out, missing


HINTS = {"string": "a string, in quotes", "integer": "a whole number", "number": "a number", "array": "a list"}


def _needs(schema: dict[str, Any], names: list[str]) -> str:
    """What to put in the message for each unfilled parameter: `text` (a string, in quotes), …"""
    props = schema.get("properties") or {}
    parts = []
    for name in names:
        prop = _resolve(props.get(name))
        kind = _type_of(prop) or "value"
        hint = HINTS.get(kind, kind)
        if kind == "array" and _type_of(_resolve(prop.get("items"))) == "object":
            hint = "a list of objects, in a ```json block"
        parts.append(f"`{name}` ({hint})")
    return ", ".join(parts)


# --------------------------------------------------------------------------- saying what came back


def fenced(text: str, language: str = "") -> str:
    """`text` in a fenced block whose fence no line of the text can close."""
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _clip(text: str, limit: int = TEXT_LIMIT, *, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    if tail:
        return f"[… {len(text) - limit} characters before this]\n" + text[-limit:]
    return text[:limit] + f"\n[… {len(text) - limit} more characters]"


def _inline(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _images(result: ToolResult) -> int:
    return sum(1 for block in result.content if isinstance(block, dict) and block.get("type") == "image")


def _an_image(count: int) -> str:
    return "an image" if count == 1 else f"{count} images"


def parse_json(text: str) -> Any:
    """A JSON object or array in a tool result, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def describe_result(result: ToolResult) -> str:
    """A successful tool result for the user: JSON pretty-printed, text quoted, images named."""
    text = result.text.strip()
    images = _images(result)
    parts: list[str] = []
    if text:
        parsed = parse_json(text)
        if parsed is not None:
            parts.append(fenced(_clip(json.dumps(parsed, indent=2, ensure_ascii=False)), "json"))
        else:
            parts.append("\n".join(f"> {line}".rstrip() for line in _clip(text).splitlines()))
    if images and parts:
        return f"It returned {_an_image(images)} and this:\n\n" + parts[0]
    if images:
        return f"It returned {_an_image(images)}."
    if parts:
        return "It returned:\n\n" + parts[0]
    return "It returned nothing."


def describe_error(result: ToolResult) -> str:
    """A failed tool call, told as it is."""
    if result.denied:
        return f"The call was denied: {result.text.strip() or 'no reason given'}"
    text = result.text.strip() or "(no message)"
    if "\n" in text:
        return "The tool answered with an error:\n\n" + fenced(_clip(text, tail=True))
    return f"The tool answered with an error: {text}"


# --------------------------------------------------------------------------- 1. run this code


@dataclass
class CodeBlock:
    """A fenced block of a user message that asks to be run."""

    language: str  # "python" or "bash"
    code: str


def find_code_blocks(text: str) -> list[CodeBlock]:
    """The ```python / ```bash (also py, python3, ipython, sh, shell, zsh) blocks of a message, in order."""
    blocks = []
    for m in CODE_FENCE.finditer(text):
        code = textwrap.dedent(m.group(2)).strip("\n")
        if code.strip():
            language = "python" if m.group(1).lower() in ("python", "python3", "py", "ipython") else "bash"
            blocks.append(CodeBlock(language, code))
    return blocks


def python_tool(turn: Turn) -> str | None:
    """The agent's custom tool that runs Python `code`: one named `python`, else one that takes `code` and says
    Python in its name or description, else any that takes `code`."""
    takes_code = {
        name: tool
        for name, tool in turn.custom_tools().items()
        if "code" in ((tool.get("input_schema") or {}).get("properties") or {})
    }
    if "python" in takes_code:
        return "python"
    for name, tool in takes_code.items():
        if "python" in f"{name} {tool.get('description') or ''}".lower():
            return name
    return next(iter(takes_code), None)


def _heredoc(code: str) -> str:
    """`python3 -` fed `code` through a quoted heredoc whose delimiter no line of the code is."""
    lines = set(code.splitlines())
    delimiter = "EOF"
    while delimiter in lines:
        delimiter = "PY_" + delimiter
    return f"python3 - <<'{delimiter}'\n{code}\n{delimiter}"


def _shell_from_python(script: str) -> str:
    """Python that runs a shell script and prints what it printed, for an agent with no bash tool."""
    return (
        "import subprocess\n"
        f"_run = subprocess.run({script!r}, shell=True, capture_output=True, text=True)\n"
        'print(_run.stdout + _run.stderr, end="")\n'
        'if _run.returncode:\n    print(f"(exit status {_run.returncode})")\n'
    )


@dataclass
class CodeCall:
    """The tool call that runs one block, and how to say which tool it is."""

    tool: str
    input: dict[str, Any]
    how: str


def _code_call(block: CodeBlock, python: str | None, has_bash: bool) -> CodeCall | None:
    """The call that runs a block; None when the agent has no tool that can."""
    if block.language == "python":
        if python is not None:
            return CodeCall(python, {"code": block.code}, f"the `{python}` tool")
        if has_bash:
            return CodeCall("bash", {"command": _heredoc(block.code)}, "bash")
    else:
        if has_bash:
            return CodeCall("bash", {"command": block.code}, "bash")
        if python is not None:
            how = f"the `{python}` tool (through `subprocess`, as this agent has no bash)"
            return CodeCall(python, {"code": _shell_from_python(block.code)}, how)
    return None


def _describe_run(result: ToolResult) -> str:
    if result.is_error:
        return describe_error(result)
    text = result.text.rstrip()
    images = _images(result)
    shown = f" It displayed {_an_image(images)}." if images else ""
    if not text.strip() or text.strip() == NO_OUTPUT:
        return f"It ran and printed nothing.{shown}"
    return f"It ran.{shown} The output:\n\n" + fenced(_clip(text, OUTPUT_LIMIT, tail=True))


KINDS = {"python": "Python code", "bash": "shell script"}
NO_OUTPUT = "(no output)"  # what the SDK's bash tool answers for a command that printed nothing


async def run_code(turn: Turn) -> bool:
    """Run the message's fenced ```python / ```bash blocks, in order, and report each one's real output or error.

    Python runs in the agent's Python tool (`python_tool`), else through bash
    as `python3 - <<'EOF' … EOF`; shell runs in bash, else through the Python
    tool with `subprocess`.
    """
    blocks = find_code_blocks(turn.user_text)
    if not blocks:
        return False
    python, has_bash = python_tool(turn), "bash" in turn.builtin_tools()
    calls: list[tuple[CodeBlock, CodeCall]] = []
    for block in blocks:
        call = _code_call(block, python, has_bash)
        if call is None:
            needed = "Python" if block.language == "python" else "shell commands"
            await turn.say(
                f"This agent has no tool that can run {needed}: enable bash in its toolset, or give it a Python "
                "tool that takes `code` (the kernel tier's `python`)."
            )
            return True
        calls.append((block, call))
    if len(calls) == 1:
        block, call = calls[0]
        await turn.say(f"I'll run this {KINDS[block.language]} with {call.how}.")
    else:
        await turn.say(f"I'll run the {len(calls)} code blocks in order.")
    reports = []
    for i, (block, call) in enumerate(calls, 1):
        report = _describe_run(await turn.use_tool(call.tool, call.input))
        reports.append(report if len(calls) == 1 else f"**Block {i}** ({KINDS[block.language]}, with {call.how}): {report}")
    await turn.say("\n\n".join(reports))
    return True


# --------------------------------------------------------------------------- 2. documents to summarise

SUMMARISE = re.compile(
    r"\b(summar(?:y|ies|ise|ize|ised|ized|ising|izing)|tl;?dr|read|digest|overview|go through|skim)\b", re.IGNORECASE
)
KEY_FIELDS = ("key", "name", "path", "filename", "file", "id", "title")
TEXT_FIELDS = ("text", "content", "body")
BULLET = re.compile(r"^(?:[-*•▪]|\d+[.)])\s+")
TERMINAL = re.compile(r"[.!?:;)\"”'’]$")
STOP_WORDS = {"a", "an", "and", "at", "by", "for", "from", "in", "of", "on", "or", "the", "to", "with"}
SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’)]))\s+(?=[\"“‘(]?[A-Z0-9$€£])")
ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|approx|incl|Mr|Mrs|Ms|Dr|Prof|Inc|Ltd|Co|No|Fig|St)|(?<!\w)[A-Z])\.$")
FIGURE = re.compile(
    r"[$€£]\s?\d"  # money
    r"|\d\s?%|\d\s?(?:percent|per cent)\b"  # shares
    r"|\b(?:USD|EUR|GBP|CHF|JPY)\s?\d|\d\s?(?:USD|EUR|GBP|CHF|JPY)\b"
    r"|(?<![\d.])\d{1,3}(?:,\d{3})+(?!\d)"  # thousands
    r"|(?<![\w.])\d+(?:\.\d+)?\s?(?:x|k|m|bn|mn|million|billion|thousand|trillion|kg|tonnes?|km|miles?|kwh|mwh|gwh"
    r"|kw|mw|gw|hours?|days?|weeks?|months?|years?|employees|staff|people|customers|users|units|stores|sites"
    r"|pp|bps|basis points)\b",
    re.IGNORECASE,
)
RISK = re.compile(r"\b(?:risks?|risky|concerns?|uncertain|uncertainty|uncertainties)\b", re.IGNORECASE)


def _stem(word: str) -> str:
    return word.lower().removesuffix("s")


def _document_tools(turn: Turn) -> tuple[str, str] | None:
    """The list tool and read tool to use: ones the message names, else a pair on the same noun
    (`list_pdfs`/`read_pdf`), else the first of each."""
    names = list(turn.custom_tools())
    lists = [n for n in names if n.startswith("list_")]
    reads = [n for n in names if n.startswith("read_")]
    if not lists or not reads:
        return None
    named = mentioned_tools(turn.user_text, names)
    lists.sort(key=lambda n: n not in named)
    reads.sort(key=lambda n: n not in named)
    for lister in lists:
        for reader in reads:
            if _stem(lister[5:]) == _stem(reader[5:]):
                return lister, reader
    return lists[0], reads[0]


def _string_params(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties") or {}
    return [n for n, p in props.items() if _type_of(_resolve(p)) == "string" and "enum" not in _resolve(p)]


def document_keys(text: str) -> list[str]:
    """The documents a list tool returned: a JSON list of strings or of objects with a key/name/path field
    (also such a list inside an object), else one per line."""
    parsed = parse_json(text)
    if isinstance(parsed, dict):
        parsed = next((v for v in parsed.values() if isinstance(v, list)), None)
    if isinstance(parsed, list):
        keys = []
        for item in parsed:
            if isinstance(item, str):
                keys.append(item)
            elif isinstance(item, dict):
                fields = {k.lower(): v for k, v in item.items() if isinstance(v, str)}
                key = next((fields[f] for f in KEY_FIELDS if f in fields), None)
                if key is not None:
                    keys.append(key)
        return keys
    lines = (BULLET.sub("", line.strip()).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.endswith(":")]


def _document_text(text: str) -> str:
    """A read tool's result as text: a JSON object's text/content/body field, else the result itself."""
    parsed = parse_json(text)
    if isinstance(parsed, dict):
        for field_name in TEXT_FIELDS:
            if isinstance(parsed.get(field_name), str):
                return parsed[field_name]
    return text


def _is_heading(line: str, next_line: str | None) -> bool:
    """A title line: markdown `#`, or short, unpunctuated and followed by a capitalised line (or nothing)."""
    if line.startswith("#"):
        return True
    words = line.split()
    if TERMINAL.search(line) or len(words) > 8 or words[-1].lower() in STOP_WORDS:
        return False
    return next_line is None or next_line[:1].isupper() or next_line[:1].isdigit()


def _split_sentences(paragraph: str) -> list[str]:
    pieces: list[str] = []
    for piece in SENTENCE_END.split(paragraph):
        if pieces and ABBREVIATION.search(pieces[-1]):
            pieces[-1] += " " + piece
        else:
            pieces.append(piece)
    return [p.strip() for p in pieces if p.strip()]


def sentences(text: str) -> list[str]:
    """A document's sentences in order: paragraphs (lines joined) split at sentence ends, each bullet its own,
    headings left out."""
    out: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.extend(_split_sentences(" ".join(paragraph)))
            paragraph.clear()

    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not line:
            flush()
        elif BULLET.match(line):
            flush()
            out.append(BULLET.sub("", line))
        elif not paragraph and _is_heading(line, following or None):
            continue
        else:
            paragraph.append(line)
    flush()
    # A text of headings only (a one-line note, say) still has something to show.
    return out or [line for line in lines if line]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SENTENCE_LIMIT else text[: SENTENCE_LIMIT - 1].rstrip() + "…"


def summarise_document(text: str) -> tuple[str, str, str]:
    """Scope, headline number and risks of a document: its first sentence, the first sentence with a figure
    (money, a percentage, thousands, a number with a unit), the first sentence about risk — each verbatim."""
    found = sentences(_document_text(text))
    scope = _sentence(found[0]) if found else "the document has no text"
    figure = next((_sentence(s) for s in found if FIGURE.search(s)), "no figure stated")
    risks = next((_sentence(s) for s in found if RISK.search(s)), "none stated")
    return scope, figure, risks


async def summarise_documents(turn: Turn) -> bool:
    """List the documents with the agent's `list_…` tool, read each with its `read_…` tool, and answer with
    three extractive bullets per document (Scope, Headline number, Risks)."""
    tools = _document_tools(turn)
    prose = _blank(without_fences(turn.user_text), [(s, e) for s, e, _ in quoted_strings(turn.user_text)])
    if tools is None or not SUMMARISE.search(prose):
        return False
    lister, reader = tools
    custom = turn.custom_tools()
    list_schema = custom[lister].get("input_schema") or {}
    read_schema = custom[reader].get("input_schema") or {}
    quotes = quoted_strings(turn.user_text)
    prefix = quotes[0][2] if quotes else ""
    list_input, _ = build_input(list_schema, Values.of(turn.user_text, list(custom)))
    string_params = _string_params(list_schema)
    if string_params:
        list_input[string_params[0]] = prefix
    key_param = next((n for n in _string_params(read_schema) if n in (read_schema.get("required") or [])), None)
    key_param = key_param or next(iter(_string_params(read_schema)), None)
    if key_param is None:
        await turn.say(f"`{reader}` takes no string to name a document by, so I can't read the documents with it.")
        return True
    where = f" under '{prefix}'" if string_params and prefix else ""
    await turn.say(f"I'll list the documents{where} with `{lister}`, then read each one with `{reader}`.")
    listed = await turn.use_tool(lister, list_input)
    if listed.is_error:
        await turn.say(f"Listing the documents failed. {describe_error(listed)}")
        return True
    keys = document_keys(listed.text)
    if not keys:
        await turn.say(f"`{lister}` found no documents{where}.")
        return True
    sections = []
    for key in keys[:MAX_DOCUMENTS]:
        read_input, _ = build_input(read_schema, Values.of(turn.user_text, list(custom)))
        read_input[key_param] = key
        result = await turn.use_tool(reader, read_input)
        if result.is_error:
            sections.append(f"**{key}** — {describe_error(result)}")
            continue
        scope, figure, risks = summarise_document(result.text)
        sections.append(f"**{key}**\n- **Scope:** {scope}\n- **Headline number:** {figure}\n- **Risks:** {risks}")
    count = f"{len(keys)} document{'s' if len(keys) != 1 else ''}"
    head = f"Here is a summary of the {count}{where}:" if len(keys) <= MAX_DOCUMENTS else (
        f"There are {count}{where}; here are the first {MAX_DOCUMENTS}:"
    )
    unread = keys[MAX_DOCUMENTS:]
    tail = f"\n\nNot read: {', '.join(unread)}." if unread else ""
    await turn.say(head + "\n\n" + "\n\n".join(sections) + tail)
    return True


# --------------------------------------------------------------------------- 3. named tools

WHICH = re.compile(
    r"\b(?:which|what)\b[^.?!]*?"
    r"\b(most|highest|largest|biggest|greatest|max(?:imum)?|least|lowest|smallest|fewest|min(?:imum)?)\b",
    re.IGNORECASE,
)
GROWTH = re.compile(r"\b(?:grew|grow|grows|growing|growth|increase[ds]?|rose|rise|jump(?:ed)?)\b", re.IGNORECASE)
CHANGE_COLUMN = re.compile(r"growth|change|delta|increase|diff", re.IGNORECASE)
ID_COLUMN = re.compile(r"^(?:id|year|index|rank|no|number)$", re.IGNORECASE)
CELL_NUMBER = re.compile(r"^[-+]?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s?%?$")
# A line's cells are split at the first of these it holds (a comma between thousands is none).
CELL_SEPARATORS = ("|", "\t", ";", ":", ",")
THOUSANDS = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\d,])")


@dataclass
class Table:
    """Labelled rows of numbers read from a tool result."""

    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)

    def columns(self) -> list[str]:
        if not self.rows:
            return []
        first = list(self.rows[0][1])
        return [c for c in first if all(c in values for _, values in self.rows)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table_from_json(value: Any) -> Table | None:
    if isinstance(value, dict):
        if value and all(_is_number(v) for v in value.values()):
            return Table([(str(k), {"value": float(v)}) for k, v in value.items()])
        if value and all(isinstance(v, dict) for v in value.values()):
            return Table([(str(k), {c: float(x) for c, x in v.items() if _is_number(x)}) for k, v in value.items()])
        lists = [v for v in value.values() if isinstance(v, list)]
        return _table_from_json(lists[0]) if len(lists) == 1 else None
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        rows = []
        for row in value:
            label = next((v for v in row.values() if isinstance(v, str)), None)
            if label is None:
                return None
            rows.append((label, {c: float(x) for c, x in row.items() if _is_number(x)}))
        return Table(rows)
    return None


def _cell_number(cell: str) -> float | None:
    if not CELL_NUMBER.match(cell):
        return None
    return float(re.sub(r"[^\d.\-]", "", cell))


def _cells(line: str) -> list[str]:
    # A figure's thousands separators are no cell separators ("Europe: 1,200"; but "Q1,100" is two cells).
    bare = THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), line)
    separator = next((sep for sep in CELL_SEPARATORS if sep in bare), None)
    parts = line.split(separator) if separator else re.split(r"\s{2,}", line) if "  " in line else line.split()
    return [p.strip() for p in parts if p.strip()]


def _table_from_text(text: str) -> Table | None:
    """Rows of a text table (CSV, markdown, `label: value` lines…): a label, then numbers; a header names them."""
    header: list[str] = []
    rows: list[tuple[str, dict[str, float]]] = []
    for raw in text.splitlines():
        line = raw.strip().strip("|").strip()
        if not line.strip("-|:+= "):
            continue  # blank, or a markdown table's rule
        cells = _cells(line)
        numbers = [_cell_number(c) for c in cells]
        if all(n is None for n in numbers):
            # Column names: the last line of plain names before the rows (a line with digits is a caption, such as
            # a shape); a lone name after them is an index's name.
            if not rows and not any(ch.isdigit() for ch in line) and (len(cells) > 1 or not header):
                header = cells
            continue
        if len(cells) > 2 and numbers[0] is not None and numbers[0].is_integer() and numbers[1] is None:
            cells, numbers = cells[1:], numbers[1:]  # a pandas row number before the label
        if numbers[0] is not None:
            continue  # a row starts with its label
        found = [(i, n) for i, n in enumerate(numbers) if n is not None]
        if len(header) == len(cells):
            names = header
        elif len(header) > 1 and len(header) == len(cells) - 1:
            names = ["", *header]  # the label column (an index) has no name in the header
        elif len(found) == 1:
            names = ["value"] * len(cells)
        else:
            names = [f"column {i + 1}" for i in range(len(cells))]
        rows.append((cells[0], {names[i]: n for i, n in found}))
    return Table(rows) if len(rows) >= 2 else None


def _number_text(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")


def answer_which(question: str, result_text: str) -> str | None:
    """A one-line answer to "which … most/highest/…" from a table of numbers, or None.

    The column is the one the question names, else the only one, else the first
    that is not an id or a year. A question about growth ranks a growth/change
    column if there is one, else the rise from each row to the next.
    """
    asked = WHICH.search(question)
    if asked is None:
        return None
    parsed = parse_json(result_text)
    table = _table_from_json(parsed) if parsed is not None else _table_from_text(result_text)
    if table is None or len(table.rows) < 2:
        return None
    columns = table.columns()
    lowest = asked.group(1).lower() in ("least", "lowest", "smallest", "fewest", "min", "minimum")
    growth = GROWTH.search(question) is not None
    # A column the question itself names ("which … the lowest cost"), the first it names.
    asking = question[asked.start() :].replace("_", " ")
    spots = [
        (m.start(), c)
        for c in columns
        if c and (m := re.search(rf"\b{re.escape(c.replace('_', ' '))}\b", asking, re.IGNORECASE))
    ]
    named = [c for _, c in sorted(spots)]
    changes = [c for c in columns if CHANGE_COLUMN.search(c)] if growth else []
    plain = [c for c in columns if not ID_COLUMN.match(c)]
    column = (named or changes or (columns if len(columns) == 1 else plain) or [None])[0]
    if column is None:
        return None
    pick = min if lowest else max
    if growth and column not in changes:
        steps = [(cur[1][column] - prev[1][column], prev, cur) for prev, cur in zip(table.rows, table.rows[1:])]
        delta, prev, cur = pick(steps, key=lambda s: s[0])
        what = "" if column == "value" else f"{column} went "
        return (
            f"{cur[0]} grew the {'least' if lowest else 'most'}: {what}from {_number_text(prev[1][column])} "
            f"to {_number_text(cur[1][column])} ({'+' if delta >= 0 else '-'}{_number_text(abs(delta))})."
        )
    label, values = pick(table.rows, key=lambda r: r[1][column])
    return f"{label} has the {'lowest' if lowest else 'highest'} {column or 'value'}: {_number_text(values[column])}."


async def call_named_tools(turn: Turn) -> bool:
    """Call each custom tool the message names, once, in the order named, and report what each returned.

    The agent's `python` tool is left out: in prose, "python" names the
    language (fenced code is `run_code`'s).
    """
    custom = turn.custom_tools()
    candidates = [n for n in custom if n != "python"]
    named = mentioned_tools(turn.user_text, candidates)
    if not named:
        return False
    values = Values.of(turn.user_text, list(custom))
    plans: list[tuple[str, dict[str, Any]]] = []
    unfilled: list[str] = []
    for name in named:
        schema = custom[name].get("input_schema") or {}
        tool_input, missing = build_input(schema, values)
        if missing:
            unfilled.append(f"To call `{name}` I need {_needs(schema, missing)}.")
        else:
            plans.append((name, tool_input))
    cannot = " ".join(unfilled) + " Put the values in your message, strings in quotes." if unfilled else ""
    if not plans:
        await turn.say(cannot)
        return True
    await turn.say("I'll use " + ", then ".join(f"`{n}`" for n, _ in plans) + ".")
    reports: list[str] = []
    answer: str | None = None
    for name, tool_input in plans:
        result = await turn.use_tool(name, tool_input)
        called = f"I called `{name}`" + (f" with `{_inline(tool_input)}`." if tool_input else ".")
        if result.is_error:
            reports.append(f"{called} {describe_error(result)}")
            continue
        reports.append(f"{called} {describe_result(result)}")
        if answer is None:
            answer = answer_which(without_fences(turn.user_text), result.text)
    if answer:
        reports.append(answer)
    if cannot:
        reports.append(cannot)
    await turn.say("\n\n".join(reports))
    return True


SCENARIOS: tuple[Callable[[Turn], Awaitable[bool]], ...] = (run_code, summarise_documents, call_named_tools)
"""Tried in this order after the README scenario; the first that recognises the message plays the turn."""
