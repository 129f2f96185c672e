"""A session's recorded cells as a notebook.

The kernel tier records every python call as an nbformat v4 code cell (its
source, real outputs and execution count) and every `write` / `edit` as a
markdown cell. `build_notebook` turns those records, in order, into a notebook
that `nbformat.validate` accepts and that re-runs with any python3 kernel
(cells whose call failed are tagged `raises-exception`, so a re-run goes on
past them).
"""

from __future__ import annotations

from typing import Any

import nbformat
from nbformat import v4

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def build_notebook(cells: list[dict[str, Any]], *, session_id: str) -> nbformat.NotebookNode:
    """A valid nbformat v4 notebook of the recorded `cells`; its metadata names the session."""
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
