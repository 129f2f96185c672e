"""The user's notebooks as tools: `notebook_read(path)` and, for an agent given `"mode": "edit"`, `notebook_edit`.

Both go through the Jupyter server's contents manager (sync or async: every call is wrapped in `ensure_async`),
so they see what JupyterLab sees, and they run in the server, never in a sandbox. A path is an API path
relative to the server's root, and it is confined twice over:

- to the root: no absolute path, no `..`, no hidden file or folder (a name starting with "."), and when the
  root is a directory on this machine, the path with every symlink resolved must still be inside it (and
  neither hidden nor outside the agent's globs once resolved);
- to the agent's `paths` (glob patterns relative to the root: `*` and `?` within a name, `**` across folders).

The contents manager follows links, and another process (a kernel, a shell) may swap one in at any moment, so
where a path leads is checked again inside the notebook's lock right before each contents-manager call that
opens the file (the read, the checkpoint, the save; the undo's restore or save) and after the read: a path that
leads elsewhere than when it was first checked is refused, and nothing is written.

The event loop: the tools' own work on a notebook (copying it, applying the operations, the copy kept for undo
and reading it back, rendering a read) runs in worker threads, since for a notebook near `max_notebook_bytes`
it takes seconds that would stall every request the server serves. The contents manager itself is called on
the loop, as JupyterLab's own requests call it: the default (async) one reads and writes its files in threads;
a synchronous one (FileContentsManager) cannot be moved off the loop's thread, since its notebook-trust
database (an SQLite connection) and the event listeners it notifies belong to that thread.

An edit is a list of operations applied in order to the notebook as it is on disk, all checked before anything
is written. Then, in this order: the contents manager's `create_checkpoint` (what JupyterLab's "Revert Notebook
to Checkpoint" goes back to), a copy of the notebook as it was kept beside the server's database, the save, and a
`notebook_edits` row (session, agent, path, checkpoint id, summary). New cells get ids (the notebook is moved to
nbformat 4.5 when it is older).

`undo_edit` (for `POST cma/api/notebook-edits/{id}/undo`) puts the notebook back as it was before an edit and
marks that edit and every later edit of the same notebook undone. The default contents manager keeps ONE
checkpoint per file (JupyterLab replaces it on every save), so the checkpoint is restored only while it is
still the one taken before that edit (the edit is the notebook's latest and the checkpoint has not been
replaced since); otherwise the copy kept at edit time is saved back through the contents manager.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import nbformat
from jupyter_core.utils import ensure_async
from tornado.web import HTTPError
from traitlets import Int

from .base import BuiltinFamily, CallContext, Content, ServerParts, ToolError, ToolSpec

if TYPE_CHECKING:
    from ...store import Store

__all__ = ["EditUndoError", "NotebookFileTools", "edit_document", "path_matches", "undo_edit"]

MODES = ("read", "edit")
OPS = ("insert", "replace", "delete")
CELL_TYPES = ("code", "markdown")
MAX_PATTERNS = 50
MAX_OPERATIONS = 100
MAX_SOURCE_CHARS = 100_000  # one cell's source, as an edit may set it
SNAPSHOTS_KEPT = 50  # copies kept per notebook for undo (the newest edits'); older edits can still be undone by checkpoint
SNAPSHOT_DIR = "notebook-edits"  # beside the server's database, in its data directory (never under the server's root)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
T = TypeVar("T")

READ_DESCRIPTION = (
    "Read one of the user's Jupyter notebooks (.ipynb) on the Jupyter server: each cell with its index, type and "
    "source, and the text of its outputs (capped; images and other rich outputs are named, not included). `path` is "
    "relative to the server's root, e.g. 'reports/analysis.ipynb'. A long notebook is returned in parts: pass "
    "`first_cell` to read on from a cell index."
)
EDIT_DESCRIPTION = (
    "Edit one of the user's Jupyter notebooks (.ipynb) on the Jupyter server. `operations` are applied in order, "
    "each to the notebook as the previous ones left it: {\"op\": \"insert\", \"index\": n, \"cell_type\": "
    "\"code\"|\"markdown\", \"source\": \"...\"} puts a new cell at index n (n = the number of cells appends), "
    "{\"op\": \"replace\", \"index\": n, \"source\": \"...\", \"cell_type\"?: ...} replaces cell n's source (a code "
    "cell's outputs are cleared), {\"op\": \"delete\", \"index\": n} removes cell n. Nothing is written unless every "
    "operation is valid. Read the notebook with notebook_read first for the indexes. The user can undo each edit."
)


class EditUndoError(Exception):
    """An undo that cannot be done: `status` 404 (no such edit) or 409 (already undone); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Target(NamedTuple):
    """A notebook a call may use: its clean API path, the agent's globs, and where it led on this machine when it
    was checked ((real path, that path relative to the real root); None when the root is not a local folder)."""

    path: str
    patterns: list[str]
    where: tuple[str, str] | None


class NotebookFileTools(BuiltinFamily):
    """The `notebook` family: the user's notebooks on this server, read (and edited, in "edit" mode) by agents."""

    name = "notebook"
    title = "Notebooks on this server"
    summary = ("Read the user's notebooks under the Jupyter server's root, and in edit mode change their cells "
               "(each edit checkpointed and undoable); runs in the Jupyter server through its contents manager.")
    requires = "the Jupyter server's contents manager (always there when jupyter-cma runs as a server extension)"
    settings_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": list(MODES), "default": "read",
                     "description": "read: notebook_read only; edit: notebook_read and notebook_edit"},
            "paths": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                      "maxItems": MAX_PATTERNS, "default": ["**"],
                      "description": "glob patterns relative to the server's root ('*' within a name, '**' across "
                                     "folders) naming the notebooks the agent may use"},
        },
        "additionalProperties": False,
    }

    max_cell_output_chars = Int(2000, config=True, help="Characters of one cell's text outputs notebook_read returns "
                                "(the rest is elided, saying how much).")
    max_output_chars = Int(20_000, config=True, help="Characters of text outputs one notebook_read returns in all; "
                           "past that, outputs are named but not included.")
    max_read_chars = Int(100_000, config=True, help="Characters one notebook_read returns; a longer notebook is "
                         "returned in parts (the result says which `first_cell` reads on).")
    max_notebook_bytes = Int(50_000_000, config=True, help="Largest notebook file (bytes) the notebook tools open.")

    # ------------------------------------------------------------------ the family contract

    def unavailable(self) -> str | None:
        if self.parts is None:
            return "the notebook tools start with the Jupyter server; start jupyter-cma as a server extension"
        if self.parts.contents_manager is None:
            return "the Jupyter server has no contents manager; set ServerApp.contents_manager_class"
        return None

    def check_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - {"mode", "paths"})
        if unknown:
            raise ValueError(f"the notebook built-in takes 'mode' and 'paths', not {', '.join(map(repr, unknown))}; "
                             "e.g. {\"notebook\": {\"mode\": \"edit\", \"paths\": [\"reports/**\"]}}")
        mode = settings.get("mode", "read")
        if mode not in MODES:
            raise ValueError(f"notebook mode must be 'read' or 'edit', not {mode!r}")
        paths = settings.get("paths", ["**"])
        if not isinstance(paths, list) or not paths or len(paths) > MAX_PATTERNS:
            raise ValueError(f"notebook paths must be a list of 1 to {MAX_PATTERNS} glob patterns relative to the "
                             "server's root, e.g. [\"reports/**\", \"*.ipynb\"]")
        for pattern in paths:
            problem = _pattern_problem(pattern)
            if problem:
                raise ValueError(f"notebook paths: {problem}")
        return {"mode": mode, "paths": list(paths)}

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        read = ToolSpec("notebook_read", READ_DESCRIPTION, {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "the notebook's path relative to the server's root"},
                "first_cell": {"type": "integer", "minimum": 0,
                               "description": "the first cell to return (default 0), for reading a long notebook in parts"},
            },
            "required": ["path"],
        })
        if settings.get("mode", "read") != "edit":
            return [read]
        edit = ToolSpec("notebook_edit", EDIT_DESCRIPTION, {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "the notebook's path relative to the server's root"},
                "operations": {
                    "type": "array", "minItems": 1, "maxItems": MAX_OPERATIONS,
                    "items": {
                        "type": "object",
                        "properties": {
                            "op": {"type": "string", "enum": list(OPS)},
                            "index": {"type": "integer", "minimum": 0},
                            "cell_type": {"type": "string", "enum": list(CELL_TYPES)},
                            "source": {"type": "string"},
                        },
                        "required": ["op", "index"],
                    },
                },
            },
            "required": ["path", "operations"],
        })
        return [read, edit]

    def all_tools(self) -> list[ToolSpec]:
        return self.tools({"mode": "edit"})

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        settings = self.check_settings(ctx.settings)
        if tool == "notebook_read":
            return await self._read(settings, input)
        if tool == "notebook_edit":
            if settings["mode"] != "edit":
                raise ToolError("this agent may only read notebooks (its notebook mode is 'read'); use notebook_read")
            return await self._edit(ctx, settings, input)
        raise ToolError(f"the notebook family has no tool {tool!r}; it offers notebook_read and notebook_edit")

    # ------------------------------------------------------------------ notebook_read

    async def _read(self, settings: Mapping[str, Any], input: dict[str, Any]) -> str:
        _only(input, ("path", "first_cell"), "notebook_read")
        target = self._confine(input.get("path"), settings)
        first = input.get("first_cell", 0)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise ToolError("first_cell must be a cell index (a whole number, 0 or more)")
        async with _lock(target.path):  # not read halfway through an edit's steps
            nb = await self._load(target)
        return await _off_loop(self._render, target.path, nb, first)

    def _render(self, path: str, nb: Any, first: int) -> str:
        cells = nb.get("cells") or []
        language = _language(nb)
        head = f"Notebook {path}: {len(cells)} cell{'s' if len(cells) != 1 else ''}"
        if language:
            head += f" ({language})"
        if first >= len(cells) and cells:
            raise ToolError(f"first_cell {first} is past the last cell: {path} has {len(cells)} cells (indexes 0-{len(cells) - 1})")
        parts = [head + "."]
        size = len(parts[0])
        output_budget = self.max_output_chars
        for index in range(first, len(cells)):
            cell = cells[index]
            text, output_budget = self._cell_text(index, cell, language, output_budget)
            if size + len(text) > self.max_read_chars and index > first:
                parts.append(f"[cells {index}-{len(cells) - 1} not shown: this read is at its size limit; call "
                             f"notebook_read again with first_cell={index}]")
                break
            parts.append(text)
            size += len(text)
        return "\n\n".join(parts)

    def _cell_text(self, index: int, cell: Mapping[str, Any], language: str, budget: int) -> tuple[str, int]:
        kind = cell.get("cell_type", "?")
        label = f"## cell {index} · {kind}"
        if kind == "code" and cell.get("execution_count") is not None:
            label += f" · [{cell['execution_count']}]"
        source = _text(cell.get("source"))
        lines = [label, _fenced(source, language if kind == "code" else kind if kind == "markdown" else "")]
        if kind != "code":
            return "\n".join(lines), budget
        outputs = cell.get("outputs") or []
        cell_budget = self.max_cell_output_chars
        for number, output in enumerate(outputs):
            what, text, notes = _output_text(output)
            if text and budget <= 0:
                lines.append(f"output {number} ({what}): [not included: this read's output limit "
                             f"({self.max_output_chars} characters) is reached]")
                continue
            if text:
                allowed = max(0, min(cell_budget, budget))
                shown = text if len(text) <= allowed else text[:allowed] + f"\n[… {len(text) - allowed} more characters]"
                used = min(len(text), allowed)
                cell_budget -= used
                budget -= used
                lines.append(f"output {number} ({what}):")
                lines.append(_fenced(shown))
            if notes:
                lines.append(f"output {number}: {notes}" if not text else f"  ({notes})")
        return "\n".join(lines), budget

    # ------------------------------------------------------------------ notebook_edit

    async def _edit(self, ctx: CallContext, settings: Mapping[str, Any], input: dict[str, Any]) -> str:
        _only(input, ("path", "operations"), "notebook_edit")
        target = self._confine(input.get("path"), settings)
        operations = _check_operations(input.get("operations"))
        # Shielded: a call that times out while it writes still finishes its checkpoint, save and row (a save
        # without its row could not be undone), and the model hears of the timeout.
        task = asyncio.ensure_future(self._write_edit(ctx, target, operations))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its failure is the caller's, or nobody's
        return await asyncio.shield(task)

    async def _write_edit(self, ctx: CallContext, target: _Target, operations: list[dict[str, Any]]) -> str:
        parts = self._parts()
        path = target.path
        async with _lock(path):
            nb = await self._load(target)
            # `_apply` works on a copy, so `nb` stays the notebook as it was: the copy kept for undo.
            changed, done = await _off_loop(_apply, nb, operations)
            cm = parts.contents_manager
            self._recheck(target, "nothing was changed")
            try:
                checkpoint = await ensure_async(cm.create_checkpoint(path))
            except HTTPError as exc:
                raise ToolError(f"could not checkpoint {path} before editing it ({_reason(exc)}); nothing was changed") from None
            snapshots = _snapshots(parts.store)
            snapshot = await _off_loop(snapshots.keep, nb)
            try:
                self._recheck(target, "nothing was changed")  # the last moment before the contents manager writes
                await ensure_async(cm.save({"type": "notebook", "format": "json", "content": changed}, path))
            except (HTTPError, ToolError) as exc:
                snapshots.drop(snapshot)
                if isinstance(exc, ToolError):
                    raise
                raise ToolError(f"could not save {path} ({_reason(exc)}); nothing was changed") from None
            summary = {
                "text": "; ".join(done),
                "operations": [{k: v for k, v in op.items() if k != "source"} for op in operations],
                "cells_before": len(nb.get("cells") or []),
                "cells_after": len(changed.cells),
                "snapshot": snapshot,
                "checkpoint_modified": _iso(checkpoint.get("last_modified")),
                # What the path led to (relative to the root): undo refuses to write if it leads elsewhere then.
                "resolved": target.where[1] if target.where else None,
            }
            edit_id = parts.store.add_notebook_edit(session_id=ctx.session_id, agent_id=ctx.agent_id, path=path,
                                                    checkpoint_id=str(checkpoint.get("id", "")), summary=summary)
            snapshots.prune(path)
        return (f"Edited {path}: {summary['text']}. It now has {len(changed.cells)} cells. "
                f"(Edit {edit_id}: the user can undo it.)")

    # ------------------------------------------------------------------ paths and loading

    def _parts(self) -> ServerParts:
        if self.parts is None or self.parts.contents_manager is None:
            raise ToolError(self.unavailable() or "the notebook tools are not started")
        return self.parts

    def _confine(self, raw: Any, settings: Mapping[str, Any]) -> _Target:
        """`raw` as a notebook this agent may use: a clean API path inside the root, not hidden, matching its globs
        (and, when it is a link, leading to such a notebook)."""
        path = _clean(raw)
        patterns = list(settings.get("paths") or ["**"])
        if not path_matches(path, patterns):
            raise ToolError(f"{path} is not among the notebooks this agent may use ({', '.join(patterns)}); "
                            "ask the user to add it to the agent's notebook paths")
        return _Target(path, patterns, self._where(path, patterns))

    def _where(self, path: str, patterns: list[str]) -> tuple[str, str] | None:
        """Where `path` leads, every link followed, once it is checked to lead to a notebook the agent may use:
        (real path, that path relative to the real root); None when the root is not a folder on this machine."""
        found = _resolve(self._parts().root_dir, path)
        if found is None:
            return None
        real, resolved = found
        if resolved != path:
            if any(part.startswith(".") for part in resolved.split("/")):
                raise ToolError(f"{path} is a link to a hidden file or folder; hidden files cannot be used")
            if not path_matches(resolved, patterns):
                raise ToolError(f"{path} is a link to {resolved}, which is not among the notebooks this agent may "
                                f"use ({', '.join(patterns)})")
        if os.path.isfile(real) and os.path.getsize(real) > self.max_notebook_bytes:
            raise ToolError(f"{path} is larger than {self.max_notebook_bytes} bytes, more than the notebook tools open")
        return found

    def _recheck(self, target: _Target, outcome: str) -> None:
        """Refuse when `target` no longer leads where it did when it was checked (a link made, removed or changed
        there since): the contents manager follows links, so this runs inside the notebook's lock right before
        each call that opens the file, and after the read."""
        try:
            where = self._where(target.path, target.patterns)
        except ToolError as exc:
            raise ToolError(f"{exc}; {outcome}") from None
        if where != target.where:
            raise ToolError(f"{target.path} was moved or replaced by a link while this call used it; {outcome}; "
                            "call again to use what is there now")

    async def _load(self, target: _Target) -> Any:
        cm = self._parts().contents_manager
        path = target.path
        self._recheck(target, "it was not read")
        try:
            model = await ensure_async(cm.get(path, content=True, type="notebook"))
        except HTTPError as exc:
            if exc.status_code == 404:
                raise ToolError(f"there is no notebook at {path} (paths are relative to the Jupyter server's root)") from None
            raise ToolError(f"could not open {path} as a notebook ({_reason(exc)})") from None
        self._recheck(target, "what was read there is not used")  # a link swapped in during the read
        content = model.get("content")
        if not isinstance(content, Mapping) or not isinstance(content.get("cells"), list):
            raise ToolError(f"{path} is not a notebook this tool can read")
        return await _off_loop(nbformat.from_dict, content)


# ---------------------------------------------------------------------- paths


def _resolve(root: str, path: str) -> tuple[str, str] | None:
    """Where a clean API path leads on this machine, every link followed: (its real path, that path relative to
    the real root); None when the root is not a folder here (a contents manager keeping notebooks elsewhere).
    ToolError when it leads out of the root, without naming where (that is outside what the agent may know)."""
    if not root or not os.path.isdir(root):
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *path.split("/")))
    if os.path.commonpath([real_root, real]) != real_root:
        raise ToolError(f"{path} is a link to a place outside the Jupyter server's root; it cannot be used")
    return real, Path(os.path.relpath(real, real_root)).as_posix()


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str) or not pattern.strip():
        return "each pattern is a non-empty string, e.g. 'reports/**'"
    if pattern.startswith(("/", "~")) or "\\" in pattern or re.match(r"^[A-Za-z]:", pattern):
        return f"{pattern!r} must be relative to the server's root (no leading '/', '~', drive or backslash)"
    parts = pattern.split("/")
    if ".." in parts:
        return f"{pattern!r} must not contain '..'"
    if any(p.startswith(".") and p not in (".",) for p in parts):
        return f"{pattern!r} names hidden files or folders, which the notebook tools never use"
    return None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob relative to the root as a regex over POSIX paths: `*`/`?` within a name, `**` any number of folders."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        segment = "".join("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) for ch in part)
        out.append(segment if last else segment + "/")
    return re.compile("".join(out))


def path_matches(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Whether a clean API path matches one of an agent's glob patterns."""
    return any(_glob_regex(p).fullmatch(path) for p in patterns)


def _clean(raw: Any) -> str:
    """A tool's `path` as a clean API path (no '.' or empty parts), or a ToolError saying what to pass instead."""
    example = "e.g. 'reports/analysis.ipynb'"
    if not isinstance(raw, str) or not raw.strip():
        raise ToolError(f"path is required: a notebook's path relative to the Jupyter server's root, {example}")
    if "\x00" in raw or "\\" in raw:
        raise ToolError(f"path {raw!r} must use '/' between folders, {example}")
    if raw.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", raw):
        raise ToolError(f"path {raw!r} is absolute; paths are relative to the Jupyter server's root, {example}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"path {raw!r} leaves its folder with '..'; only notebooks under the Jupyter server's root can be used")
    if any(p.startswith(".") for p in parts):
        raise ToolError(f"path {raw!r} names a hidden file or folder; hidden files cannot be used")
    if not parts or not parts[-1].endswith(".ipynb"):
        raise ToolError(f"path {raw!r} is not a notebook; the notebook tools use .ipynb files only, {example}")
    return "/".join(parts)


def _only(input: Mapping[str, Any], names: tuple[str, ...], tool: str) -> None:
    unknown = sorted(set(input) - set(names))
    if unknown:
        raise ToolError(f"{tool} takes {', '.join(names)}, not {', '.join(unknown)}")


# ---------------------------------------------------------------------- reading


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def _language(nb: Mapping[str, Any]) -> str:
    metadata = nb.get("metadata") or {}
    info = metadata.get("language_info") or {}
    spec = metadata.get("kernelspec") or {}
    name = info.get("name") or spec.get("language") or ""
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_+#-]{1,32}", name) else ""


def _fenced(text: str, language: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{language}\n{text.rstrip()}\n{ticks}"


def _output_text(output: Mapping[str, Any]) -> tuple[str, str, str]:
    """An output as (what it is, its text, a note of what is not included)."""
    kind = output.get("output_type", "")
    if kind == "stream":
        return f"stream {output.get('name', 'stdout')}", ANSI.sub("", _text(output.get("text"))), ""
    if kind == "error":
        trace = "\n".join(ANSI.sub("", str(line)) for line in output.get("traceback") or [])
        text = trace or f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
        return f"error {output.get('ename', '')}".rstrip(), text, ""
    if kind in ("execute_result", "display_data"):
        data = output.get("data") or {}
        textual = next((m for m in ("text/plain", "text/markdown", "application/json") if m in data), None)
        text = ""
        if textual == "application/json":
            text = json.dumps(data[textual], indent=1, ensure_ascii=False)
        elif textual:
            text = ANSI.sub("", _text(data[textual]))
        others = sorted(m for m in data if m != textual and not m.startswith("text/plain"))
        note = f"{', '.join(others)} not included" if others else ""
        return kind.replace("_", " "), text, note
    return kind or "output", "", "not included"


# ---------------------------------------------------------------------- editing


def _check_operations(raw: Any) -> list[dict[str, Any]]:
    """The operations, each checked on its own (indexes are checked as they are applied)."""
    if not isinstance(raw, list) or not raw:
        raise ToolError('operations must be a non-empty list, e.g. [{"op": "insert", "index": 0, "cell_type": '
                        '"markdown", "source": "# Title"}]')
    if len(raw) > MAX_OPERATIONS:
        raise ToolError(f"at most {MAX_OPERATIONS} operations per edit; split the edit in several calls")
    checked = []
    for n, op in enumerate(raw):
        where = f"operation {n}"
        if not isinstance(op, dict):
            raise ToolError(f"{where} must be an object with op and index")
        unknown = sorted(set(op) - {"op", "index", "cell_type", "source"})
        if unknown:
            raise ToolError(f"{where} has unknown fields {', '.join(unknown)}; it takes op, index, cell_type and source")
        kind = op.get("op")
        if kind not in OPS:
            raise ToolError(f"{where}: op must be one of insert, replace, delete (got {kind!r})")
        index = op.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ToolError(f"{where}: index must be a cell index (a whole number, 0 or more)")
        cell_type = op.get("cell_type")
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ToolError(f"{where}: cell_type must be 'code' or 'markdown' (got {cell_type!r})")
        source = op.get("source")
        if source is not None and not isinstance(source, str):
            raise ToolError(f"{where}: source must be a string (the cell's text)")
        if source is not None and len(source) > MAX_SOURCE_CHARS:
            raise ToolError(f"{where}: source is longer than {MAX_SOURCE_CHARS} characters; split it over several cells")
        if kind == "delete" and (source is not None or cell_type is not None):
            raise ToolError(f"{where}: delete takes only op and index")
        if kind == "replace" and source is None and cell_type is None:
            raise ToolError(f"{where}: replace needs a source (and/or a cell_type)")
        checked.append({k: v for k, v in op.items() if v is not None})
    return checked


def _apply(nb: Any, operations: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """The notebook with the operations applied (a new object: `nb` is left as it is) and a phrase per operation;
    ToolError on the first operation that does not fit the notebook as the earlier ones left it (then nothing is
    written). Run in a worker thread: copying a big notebook takes seconds."""
    nb = copy.deepcopy(nb)
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        if nb.get("nbformat") != 4:
            raise ToolError("this notebook is older than nbformat 4; open and save it in JupyterLab first")
        nb = nbformat.v4.upgrade(nb, from_version=4, from_minor=nb.get("nbformat_minor", 0))  # gives every cell an id
    cells = nb.cells
    ids = {c.get("id") for c in cells}
    for cell in cells:
        if not cell.get("id"):
            cell["id"] = _new_id(ids)
    done = []
    for n, op in enumerate(operations):
        kind, index = op["op"], op["index"]
        count = len(cells)
        if kind == "insert":
            if index > count:
                raise ToolError(f"operation {n}: insert at index {index}, but the notebook has {count} cells then "
                                f"(insert at 0-{count}; {count} appends); nothing was changed")
            cell_type = op.get("cell_type", "code")
            cell = _new_cell(cell_type, op.get("source", ""), ids)
            cells.insert(index, cell)
            done.append(f"inserted cell {index} ({cell_type})")
            continue
        if index >= count:
            last = f"0-{count - 1}" if count else "none: it has no cells"
            raise ToolError(f"operation {n}: {kind} cell {index}, but the notebook has {count} cells then "
                            f"(indexes {last}); nothing was changed")
        if kind == "delete":
            del cells[index]
            done.append(f"deleted cell {index}")
            continue
        old = cells[index]
        cell_type = op.get("cell_type", old.get("cell_type"))
        if cell_type not in CELL_TYPES:
            raise ToolError(f"operation {n}: cell {index} is a {old.get('cell_type')} cell; give cell_type 'code' or "
                            "'markdown' to replace it; nothing was changed")
        source = op.get("source", _text(old.get("source")))
        cell = _new_cell(cell_type, source, ids, keep=old)
        cells[index] = cell
        done.append(f"replaced cell {index} ({cell_type})")
    return nb, done


def _new_cell(cell_type: str, source: str, ids: set[Any], keep: Mapping[str, Any] | None = None) -> Any:
    """A fresh cell (a replaced one keeps its id, metadata and attachments; a code cell's outputs go: they belong to
    the old source)."""
    cell = nbformat.v4.new_code_cell(source) if cell_type == "code" else nbformat.v4.new_markdown_cell(source)
    if keep is not None:
        cell["id"] = keep.get("id") or cell["id"]
        cell["metadata"] = copy.deepcopy(keep.get("metadata") or {})
        if cell_type == "markdown" and keep.get("attachments") and keep.get("cell_type") == "markdown":
            cell["attachments"] = copy.deepcopy(keep["attachments"])
    else:
        while cell["id"] in ids:
            cell["id"] = _new_id(ids)
    ids.add(cell["id"])
    return cell


def _new_id(ids: set[Any]) -> str:
    while True:
        candidate = uuid.uuid4().hex[:8]
        if candidate not in ids:
            ids.add(candidate)
            return candidate


def _reason(exc: HTTPError) -> str:
    return exc.log_message or exc.reason or f"HTTP {exc.status_code}"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value) if value is not None else None


# ---------------------------------------------------------------------- off the event loop


async def _off_loop(fn: Callable[..., T], /, *args: Any) -> T:
    """`fn(*args)` in a worker thread, so a big notebook's copying, serializing and file writes do not stall the
    server. A thread cannot be stopped: if the caller is cancelled meanwhile, the work still ends before the
    cancellation goes on, so a notebook's lock is never released while its work runs."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller hears of
        raise


# ---------------------------------------------------------------------- one edit at a time per notebook

_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(path: str) -> asyncio.Lock:
    """The lock of one notebook: its edits and undos run one at a time (read, change, checkpoint, save), and a
    read waits for them."""
    lock = _LOCKS.get(path)
    if lock is None:
        lock = _LOCKS[path] = asyncio.Lock()
    return lock


# ---------------------------------------------------------------------- the copies kept for undo


class _Snapshots:
    """Notebooks as they were before an edit, one file each (0600) in the server's data directory. `keep` and
    `read` serialize and parse a whole notebook: they are called in a worker thread (`_off_loop`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = Path(store.path).parent / SNAPSHOT_DIR

    def keep(self, nb: Any) -> str:
        self.root.mkdir(mode=0o700, exist_ok=True)
        name = f"{uuid.uuid4().hex}.ipynb"
        target = self.root / name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(nbformat.writes(nb))
        return name

    def read(self, name: Any) -> Any | None:
        if not isinstance(name, str) or not re.fullmatch(r"[0-9a-f]{32}\.ipynb", name):
            return None
        try:
            return nbformat.reads((self.root / name).read_text(encoding="utf-8"), as_version=4)
        except (OSError, ValueError):
            return None

    def drop(self, name: Any) -> None:
        if isinstance(name, str) and re.fullmatch(r"[0-9a-f]{32}\.ipynb", name):
            (self.root / name).unlink(missing_ok=True)

    def prune(self, path: str) -> None:
        """Keep the copies of the notebook's newest edits only."""
        for row in self.store.notebook_edits(path=path, limit=SNAPSHOTS_KEPT + 100)[SNAPSHOTS_KEPT:]:
            self.drop(row["summary"].get("snapshot"))


def _snapshots(store: Store) -> _Snapshots:
    return _Snapshots(store)


# ---------------------------------------------------------------------- the REST side: listing and undo


def edit_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """One `notebook_edits` row as the REST API shows it."""
    summary = row.get("summary") or {}
    return {
        "id": row["id"],
        "at": row["at"],
        "session_id": row["session_id"],
        "agent_id": row.get("agent_id"),
        "path": row["path"],
        "checkpoint_id": row["checkpoint_id"],
        "summary": {k: summary.get(k) for k in ("text", "operations", "cells_before", "cells_after")},
        "undone_at": row.get("undone_at"),
    }


async def undo_edit(store: Store, contents_manager: Any, edit_id: int) -> dict[str, Any]:
    """Put the notebook back as it was before edit `edit_id`; mark it and every later edit of that notebook undone.

    Returns {"edit": the edit (undone), "undone": ids marked undone now, "restored_from": "checkpoint" | "copy"}.
    EditUndoError 404 / 409; HTTPError from the contents manager passes through.
    """
    edit = store.notebook_edit(edit_id)
    if edit is None:
        raise EditUndoError(404, f"there is no notebook edit {edit_id} (GET cma/api/notebook-edits lists them)")
    path = edit["path"]
    async with _lock(path):
        edit = store.notebook_edit(edit_id) or edit
        if edit.get("undone_at") is not None:
            raise EditUndoError(409, f"notebook edit {edit_id} of {path} is already undone")
        later = [r for r in store.notebook_edits(path=path, limit=10_000) if r["id"] > edit_id]
        restored_from = None
        if not later and await _checkpoint_is_before(contents_manager, edit):
            _check_undo_target(contents_manager, edit)
            await ensure_async(contents_manager.restore_checkpoint(edit["checkpoint_id"], path))
            restored_from = "checkpoint"
        else:
            before = await _off_loop(_snapshots(store).read, edit["summary"].get("snapshot"))
            if before is None:
                raise EditUndoError(409, f"notebook edit {edit_id} of {path} can no longer be undone: its notebook's "
                                    "checkpoint has been replaced since and the copy kept of it is gone; use "
                                    "JupyterLab's File > Revert Notebook to Checkpoint, or undo a later edit")
            _check_undo_target(contents_manager, edit)
            await ensure_async(contents_manager.save({"type": "notebook", "format": "json", "content": before}, path))
            restored_from = "copy"
        undone = [r["id"] for r in sorted(later, key=lambda r: r["id"]) if r.get("undone_at") is None]
        for undone_id in [edit_id, *undone]:
            store.mark_notebook_edit_undone(undone_id)
    return {"edit": edit_document(store.notebook_edit(edit_id) or edit), "undone": [edit_id, *undone],
            "restored_from": restored_from}


async def _checkpoint_is_before(contents_manager: Any, edit: Mapping[str, Any]) -> bool:
    """Whether the notebook's checkpoint is still the one taken just before this edit (same id, same time)."""
    recorded = (edit.get("summary") or {}).get("checkpoint_modified")
    if not recorded:
        return False
    try:
        checkpoints = await ensure_async(contents_manager.list_checkpoints(edit["path"]))
    except HTTPError:
        return False
    return any(str(c.get("id")) == edit["checkpoint_id"] and _iso(c.get("last_modified")) == recorded for c in checkpoints)


def _check_undo_target(contents_manager: Any, edit: Mapping[str, Any]) -> None:
    """EditUndoError 409 when the edited path no longer leads to the notebook that was edited: out of the root, to a
    hidden file, or (a link made or changed since) to another file. Checked right before the undo writes, since
    the contents manager follows links."""
    path = edit["path"]
    root = getattr(contents_manager, "root_dir", "")
    try:
        found = _resolve(root if isinstance(root, str) else "", path)
    except ToolError:
        problem = "it is now a link to a place outside the Jupyter server's root"
    else:
        if found is None:
            return
        resolved = found[1]
        recorded = (edit.get("summary") or {}).get("resolved")
        if any(part.startswith(".") for part in resolved.split("/")):
            problem = "it is now a link to a hidden file or folder"
        elif recorded and resolved != recorded:
            problem = f"it now leads to {resolved}, not to {recorded} as when it was edited"
        else:
            return
    raise EditUndoError(409, f"notebook edit {edit['id']} of {path} was not undone: {problem}; put the notebook back "
                        "at its path, then undo again")
