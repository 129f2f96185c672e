"""`cma.notebook_edits()` and `NotebookEdit.undo()` run as a user runs them: in a notebook kernel of the real server.

An agent with the `notebook` built-in in edit mode edits a notebook under the server's root during a session served
on the kernel tier against the emulator (its scripted brain calls `notebook_edit`); the notebook API then lists the
edit, undoes it through the REST route, and says clearly why a second undo cannot be done. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from tests.notebook_kernels import notebook_of
from tests.test_dispatch import cma_emulator, cma_mode, harness, jp_server_config  # noqa: F401

SETUP = '''
import json
import jupyter_cma as cma

def script(*steps):
    return json.dumps({"cma_script": list(steps)})

def edit(path, *operations):
    return {"tool": "notebook_edit", "input": {"path": path, "operations": list(operations)}}

editor = cma.Agent.create("nb-editor", tier="kernel", builtins={"notebook": {"mode": "edit", "paths": ["reports/**"]}})
'''


def cells(path: Path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]


def write_sample(path: Path) -> list[tuple[str, str]]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Sales"), nbformat.v4.new_code_cell("print('hello')")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return cells(path)


async def test_a_notebook_lists_an_agents_edit_undoes_it_and_a_second_undo_says_why_not(harness, jp_root_dir):
    target = jp_root_dir / "reports" / "q3.ipynb"
    original = write_sample(target)
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP)
        await notebook.run('''
            session = editor.start(script(
                edit("reports/q3.ipynb", {"op": "insert", "index": 2, "cell_type": "markdown", "source": "Reviewed."}),
                {"say": "done"}))
            session.wait()
        ''')
        assert cells(target) == [*original, ("markdown", "Reviewed.")]

        listed = json.loads(await notebook.run('''
            import datetime
            edits = cma.notebook_edits(path="reports/q3.ipynb")
            assert isinstance(edits, list) and len(edits) == 1, edits
            e = edits[0]
            assert isinstance(e, cma.NotebookEdit) and isinstance(e.at, datetime.datetime) and e.at.tzinfo, e
            assert session.notebook_edits() == edits and cma.notebook_edits(session=session.id) == edits
            assert cma.notebook_edits(path="reports/other.ipynb") == []
            print(json.dumps({"id": e.id, "session": e.session_id == session.id, "agent": e.agent_id == editor.id,
                              "path": e.path, "summary": e.summary, "undone": e.undone, "cells": [e.cells_before, e.cells_after],
                              "repr": repr(e), "table": repr(edits), "html": edits._repr_html_()}))
        '''))
        assert listed["session"] and listed["agent"] and listed["path"] == "reports/q3.ipynb"
        assert listed["summary"] == "inserted cell 2 (markdown)" and listed["undone"] is False
        assert listed["cells"] == [2, 3]
        assert listed["repr"].startswith(f"<cma.NotebookEdit {listed['id']} of reports/q3.ipynb at ")
        assert "inserted cell 2 (markdown)" in listed["repr"]
        header, row = listed["table"].splitlines()
        assert header.split()[:5] == ["id", "at", "notebook", "session", "state"] and "in place" in row
        assert "<table>" in listed["html"] and "<code>reports/q3.ipynb</code>" in listed["html"] and "in place" in listed["html"]

        undone = await notebook.run('print(edits[0].undo())')
        assert undone.strip() == f"[{listed['id']}]"
        assert cells(target) == original, "the notebook is back as it was before the edit"

        again = await notebook.run('''
            assert cma.notebook_edits(path="reports/q3.ipynb")[0].undone
            try:
                edits[0].undo()
            except cma.CMAError as exc:
                print(exc.status, exc)
        ''')
        assert again.startswith("409 ") and f"notebook edit {listed['id']} of reports/q3.ipynb is already undone" in again
        assert "cma.notebook_edits(path='reports/q3.ipynb') shows which edits are still in place" in again
        assert cells(target) == original


async def test_undoing_an_older_edit_undoes_the_later_ones_and_an_unknown_edit_says_what_to_do(harness, jp_root_dir):
    target = jp_root_dir / "reports" / "q4.ipynb"
    original = write_sample(target)
    async with notebook_of(harness) as notebook:
        await notebook.run(SETUP)
        await notebook.run('''
            session = editor.start(script(
                edit("reports/q4.ipynb", {"op": "insert", "index": 0, "cell_type": "markdown", "source": "First."}),
                edit("reports/q4.ipynb", {"op": "delete", "index": 2}),
                {"say": "done"}))
            session.wait()
        ''')
        assert cells(target) == [("markdown", "First."), original[0]]

        hub = harness.ext.live
        watching = hub.subscribe()  # what a JupyterLab page hears of the undo (it reloads the notebook's tabs)
        said = await notebook.run('''
            newest, oldest = session.notebook_edits()
            assert newest.id > oldest.id and newest.summary == "deleted cell 2", (newest, oldest)
            print(oldest.undo() == [oldest.id, newest.id])
            print([e.undone for e in cma.notebook_edits(path="reports/q4.ipynb")])
            gone = cma.NotebookEdit.from_document({**oldest.data, "id": 999999})
            try:
                gone.undo()
            except cma.CMAError as exc:
                print(exc.status, exc)
        ''')
        same, states, unknown = said.strip().splitlines()
        assert same == "True" and states == "[True, True]"
        heard = [json.loads(m) for m in watching.queue]
        hub.unsubscribe(watching)
        (undone,) = [m for m in heard if m["kind"] == "notebook.undone"]
        assert undone["data"]["path"] == "reports/q4.ipynb" and len(undone["data"]["edit_ids"]) == 2, undone
        assert set(undone["data"]) == {"path", "edit_ids", "at"}, "only what a page needs to find the notebook's tabs"
        assert unknown.startswith("404 ") and "no notebook edit 999999" in unknown and "cma.notebook_edits(" in unknown
        assert cells(target) == original
