"""Agents' edits of the user's notebooks, from a notebook: list them, undo one.

An agent given the `notebook` built-in in edit mode changes notebooks of this server (docs/notebook-tools.md);
the server checkpoints each one first and logs it. Here that log is read and an edit undone:

    import jupyter_cma as cma

    edits = cma.notebook_edits(path="reports/sales.ipynb")   # newest first; displayed as a table
    edits[0].undo()                                          # the notebook as it was before it: [ids undone]
    session.notebook_edits()                                 # the edits one session made

A thin layer over `GET cma/api/notebook-edits` and `POST cma/api/notebook-edits/{id}/undo`.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .connection import CMAError, connection

__all__ = ["NotebookEdit", "NotebookEdits", "notebook_edits"]

_TIME = "%Y-%m-%d %H:%M:%S"


def _when(at: Any) -> datetime | None:
    """A server time (seconds since the epoch) as an aware datetime in this machine's time zone."""
    return None if at is None else datetime.fromtimestamp(float(at)).astimezone()


@dataclass(frozen=True)
class NotebookEdit:
    """One edit an agent made to a notebook of this server, as it was when listed.

    Attributes: `id`, `at` (when, an aware datetime), `session_id`, `agent_id` (None if the server did not know
    it), `path` (relative to the server's root), `summary` (e.g. "inserted cell 2 (markdown)"), `undone`,
    `undone_at` (None while the edit is in place), `cells_before` and `cells_after` (the notebook's number of
    cells), `data` (the edit as the REST API gave it). `undo()` puts the notebook back as it was before it.
    """

    id: int
    at: datetime
    session_id: str
    agent_id: str | None
    path: str
    summary: str
    undone: bool
    undone_at: datetime | None = None
    cells_before: int | None = None
    cells_after: int | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> NotebookEdit:
        """An edit from its REST document (`GET cma/api/notebook-edits`)."""
        summary = data.get("summary") or {}
        undone_at = _when(data.get("undone_at"))
        return cls(id=int(data["id"]), at=_when(data["at"]) or datetime.now().astimezone(),
                   session_id=str(data.get("session_id") or ""), agent_id=data.get("agent_id"),
                   path=str(data.get("path") or ""), summary=str(summary.get("text") or ""),
                   undone=undone_at is not None, undone_at=undone_at,
                   cells_before=summary.get("cells_before"), cells_after=summary.get("cells_after"), data=dict(data))

    def undo(self) -> list[int]:
        """Put the notebook back as it was just before this edit; the ids of the edits undone (this one and every
        later edit of the same notebook, which were made on top of it — the user's own changes since go too).

        This object keeps showing the edit as it was listed: `cma.notebook_edits(...)` again shows it undone.

        Raises:
            CMAError: the edit is already undone, or can no longer be undone (its checkpoint was replaced and the
                copy kept of the notebook is gone), or there is no such edit; the message says what to do.
        """
        try:
            answer = connection().request("POST", f"notebook-edits/{self.id}/undo", {})
        except CMAError as exc:
            raise self._undo_error(exc) from None
        return [int(i) for i in (answer or {}).get("undone") or []]

    def _undo_error(self, exc: CMAError) -> CMAError:
        listing = f"cma.notebook_edits(path={self.path!r})"
        if exc.status == 409 and "already undone" in str(exc):
            return CMAError(f"notebook edit {self.id} of {self.path} is already undone (it, or an earlier edit of the "
                            f"same notebook, was undone since it was listed): the notebook no longer has it. "
                            f"{listing} shows which edits are still in place", 409)
        if exc.status == 409:
            return CMAError(f"{exc} — {listing} lists the later edits, which can still be undone", 409)
        if exc.status == 404:
            return CMAError(f"this server has no notebook edit {self.id} (was it listed from another server?): "
                            f"{listing} lists the edits it has", 404)
        return exc

    def __repr__(self) -> str:
        state = f", undone {self.undone_at:{_TIME}}" if self.undone_at else ""
        by = f" by {self.agent_id}" if self.agent_id else ""
        return (f"<cma.NotebookEdit {self.id} of {self.path} at {self.at:{_TIME}}{by} in {self.session_id}"
                f"{state}: {self.summary}>")

    def _repr_html_(self) -> str:
        return _table([self], title=f"cma.NotebookEdit {self.id}")


class NotebookEdits(list[NotebookEdit]):
    """A list of notebook edits, newest first, that a notebook displays as a table."""

    def __repr__(self) -> str:
        if not self:
            return "<no notebook edits>"
        rows = [(str(e.id), f"{e.at:{_TIME}}", e.path, e.session_id, "undone" if e.undone else "in place", e.summary)
                for e in self]
        head = ("id", "at", "notebook", "session", "state", "summary")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                         for row in [head, *rows])

    def _repr_html_(self) -> str:
        return _table(list(self), title=f"cma.notebook_edits — {len(self)} edit{'' if len(self) == 1 else 's'}")


def _table(edits: list[NotebookEdit], *, title: str) -> str:
    esc = html.escape
    if not edits:
        return f"<div><b>{esc(title)}</b>: none</div>"
    cell = 'style="text-align:left;padding-right:1em;vertical-align:top"'
    head = "".join(f"<th {cell}>{name}</th>" for name in ("id", "at", "notebook", "agent", "session", "state", "summary"))
    rows = "".join(
        f"<tr><td {cell}>{e.id}</td><td {cell}>{esc(f'{e.at:{_TIME}}')}</td><td {cell}><code>{esc(e.path)}</code></td>"
        f"<td {cell}><code>{esc(e.agent_id or '')}</code></td><td {cell}><code>{esc(e.session_id)}</code></td>"
        f"<td {cell}>{'undone' if e.undone else 'in place'}</td><td {cell}>{esc(e.summary)}</td></tr>"
        for e in edits)
    return f"<div><b>{esc(title)}</b><table><tr>{head}</tr>{rows}</table></div>"


def notebook_edits(path: str | os.PathLike[str] | None = None, session: Any = None, limit: int = 100) -> NotebookEdits:
    """Agents' edits of this server's notebooks, newest first (at most `limit`, 1 to 1000).

    Args:
        path: only the edits of this notebook (relative to the Jupyter server's root, e.g. "reports/q3.ipynb").
        session: only the edits of this session (a `cma.Session` or its id).
        limit: how many edits at most.

    Raises:
        CMAError: the server refused (e.g. a limit out of range) or could not be reached.
    """
    if path is not None:
        path = os.fspath(path).replace(os.sep, "/")
    session_id = None if session is None else getattr(session, "id", session)
    answer = connection().request("GET", "notebook-edits",
                                  params={"path": path, "session_id": session_id, "limit": limit})
    return NotebookEdits(NotebookEdit.from_document(d) for d in (answer or {}).get("data") or [])
