"""`{base_url}cma/api/notebook-edits`: the edits agents made to the user's notebooks, and undoing one.

- `GET notebook-edits?session_id=&path=&limit=` → `{"data": [edit, …]}`, newest first;
- `POST notebook-edits/{id}/undo` → the notebook as it was before that edit (through the Jupyter server's contents
  manager); that edit and every later edit of the same notebook are marked undone. 404 for an unknown edit, 409 for
  one already undone (or one that can no longer be undone).

An edit is `{"id", "at", "session_id", "agent_id", "path", "checkpoint_id", "summary": {"text", "operations",
"cells_before", "cells_after"}, "undone_at"}` (`tools/builtin/notebooks.py: edit_document`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..tools.builtin.notebooks import EditUndoError, edit_document, undo_edit
from .base import CMAHandler
from .schemas import EmptyBody, NotebookEditsQuery

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..store import Store


class _EditsHandler(CMAHandler):
    def initialize(self, name: str, *, store: Store) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store


class NotebookEditsHandler(_EditsHandler):
    """`GET cma/api/notebook-edits`: agents' notebook edits, newest first; of one session and/or one notebook."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(NotebookEditsQuery)
        rows = self._store.notebook_edits(session_id=query.session_id, path=query.path, limit=query.limit)
        self.finish({"data": [edit_document(row) for row in rows]})


class NotebookEditUndoHandler(_EditsHandler):
    """`POST cma/api/notebook-edits/{id}/undo`: the notebook back as it was before the edit."""

    def initialize(self, name: str, *, store: Store, on_undone: Callable[[str, list[int]], None]) -> None:  # type: ignore[override]
        super().initialize(name, store=store)
        self._on_undone = on_undone

    @tornado.web.authenticated
    @authorized
    async def post(self, edit_id: str) -> None:
        self.body(EmptyBody)
        try:
            result = await undo_edit(self._store, self.contents_manager, int(edit_id))
        except EditUndoError as exc:
            raise tornado.web.HTTPError(exc.status, str(exc)) from None
        self._on_undone(result["edit"]["path"], result["undone"])  # open tabs of the notebook reload it
        self.finish(result)
