"""A session's work as notebook cells: what the kernel tier records, and the notebook built from the records.

Every python call is recorded as an nbformat v4 code cell (its source, real
outputs and execution count) and every `write` / `edit` as a markdown cell,
through a `recorder(session_id, cell)` callback (the server passes
`Store.add_cell`), so a session can be exported as a notebook.
`build_notebook` turns those records, in order, into a notebook that
`nbformat.validate` accepts and that re-runs with any python3 kernel (cells
whose call failed are tagged `raises-exception`, so a re-run goes on past
them). This module owns that cell format, both ways.

nbformat is imported only when a notebook is built: importing it takes
seconds, which loading the tier need not pay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import nbformat

    from .process import Execution, Kernel

Recorder = Callable[[str, dict[str, Any]], None]  # recorder(session_id, cell)


# --------------------------------------------------------------------------- recording


def _code_cell(ex: Execution, kernel: Kernel) -> dict[str, Any]:
    """The call as an nbformat v4 code cell (no id: build_notebook assigns them)."""
    metadata: dict[str, Any] = {"cma": {"status": ex.status, "kernel": kernel.id}}
    outputs = [dict(o) for o in ex.outputs]
    if ex.status in ("timeout", "lost", "died", "failed", "stopped"):
        reason = {
            "stopped": "the sandbox was stopped during this call",
            "timeout": "the call timed out and was interrupted",
            "lost": "the call timed out and ignored the interrupt; the kernel was shut down",
            "died": "the kernel died during this call; the next call ran in a fresh kernel",
            "failed": "the connection to the kernel failed; the next call ran in a fresh kernel",
        }[ex.status]
        if ex.status != "timeout" or ex.error is None:
            ename = {"timeout": "Timeout", "stopped": "Stopped"}.get(ex.status, "KernelDied")
            outputs.append({"output_type": "error", "ename": ename, "evalue": reason, "traceback": [reason]})
    if ex.status != "ok":
        metadata["tags"] = ["raises-exception"]  # nbclient keeps going past it when the notebook is re-run
    return {
        "cell_type": "code",
        "execution_count": ex.execution_count,
        "metadata": metadata,
        "source": ex.code,
        "outputs": outputs,
    }


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _preview(text: str, *, lines: int = 20, chars: int = 2000) -> str:
    cut = text.split("\n")
    out = "\n".join(cut[:lines])
    if len(out) > chars:
        out = out[:chars]
    if out != text:
        out += "\n…"
    return out


def _block(text: str) -> str:
    preview = _preview(text)
    fence = _fence(preview)
    return f"{fence}\n{preview}\n{fence}"


def _describe_write(args: dict[str, Any], result: str) -> dict[str, Any]:
    path = str(args.get("file_path", ""))
    content = str(args.get("content", ""))
    lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
    source = f"**write** `{path}` ({len(content.encode())} bytes, {lines} line{'s' if lines != 1 else ''})\n\n{_block(content)}"
    return {"cell_type": "markdown", "metadata": {"cma": {"tool": "write", "file_path": path}}, "source": source}


def _describe_edit(args: dict[str, Any], result: str) -> dict[str, Any]:
    path = str(args.get("file_path", ""))
    old, new = str(args.get("old_string", "")), str(args.get("new_string", ""))
    every = " (every occurrence)" if args.get("replace_all") else ""
    source = f"**edit** `{path}`{every}: {result}\n\nreplaced\n\n{_block(old)}\n\nwith\n\n{_block(new)}"
    return {"cell_type": "markdown", "metadata": {"cma": {"tool": "edit", "file_path": path}}, "source": source}


# --------------------------------------------------------------------------- the notebook

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def build_notebook(cells: list[dict[str, Any]], *, session_id: str) -> nbformat.NotebookNode:
    """A valid nbformat v4 notebook of the recorded `cells`; its metadata names the session."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["title"] = f"Managed Agents session {session_id}"
    nb.metadata["cma"] = {"session_id": session_id}
    for cell in cells:
        nb.cells.append(_cell(cell))
    nbformat.validate(nb)
    return nb


def _cell(record: dict[str, Any]) -> nbformat.NotebookNode:
    from nbformat import v4

    kind = record.get("cell_type")
    source = _text(record.get("source", ""))
    metadata = dict(record.get("metadata") or {})
    if kind == "code":
        return v4.new_code_cell(
            source=source,
            execution_count=record.get("execution_count"),
            outputs=[_output(o) for o in record.get("outputs") or []],
            metadata=metadata,
        )
    if kind == "raw":
        return v4.new_raw_cell(source=source, metadata=metadata)
    if kind == "markdown":
        return v4.new_markdown_cell(source=source, metadata=metadata)
    raise ValueError(f"a recorded cell must be a code, markdown or raw cell, not {kind!r}")


def _output(record: dict[str, Any]) -> nbformat.NotebookNode:
    from nbformat import v4

    kind = record.get("output_type")
    if kind == "stream":
        return v4.new_output("stream", name=record.get("name", "stdout"), text=_text(record.get("text", "")))
    if kind == "error":
        return v4.new_output(
            "error",
            ename=str(record.get("ename", "")),
            evalue=str(record.get("evalue", "")),
            traceback=[str(line) for line in record.get("traceback") or []],
        )
    if kind in ("display_data", "execute_result"):
        out = v4.new_output(kind, data=dict(record.get("data") or {}), metadata=dict(record.get("metadata") or {}))
        if kind == "execute_result":
            out["execution_count"] = record.get("execution_count")
        return out
    raise ValueError(f"unknown output type {kind!r}")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)
