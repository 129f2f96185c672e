"""A notebook open in JupyterLab shows an agent's edit without jupyter-collaboration and without any user action:
a tab without unsaved changes is reloaded from disk as soon as the edit is made; a tab with unsaved changes keeps
them, and a notification offers "Reload from disk", which loads the edit and discards them. An undo made elsewhere
(REST, a notebook) reloads the tab too.

Screenshots: the notebook reloaded with the agent's edit (docs/screenshots/notebook-edit-reloaded.png), and the
notice over a tab with unsaved changes (the test's own)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import nbformat
from playwright.sync_api import Locator, Page, expect

from tests.browser.cma_rest import create_agent, events, start_session, wait_for
from tests.browser.conftest import SCREENSHOTS
from tests.browser.pages import assert_not_reloaded, cell, mark_page, open_notebook
from tests.browser.servers import LabServer

CELLS = ".jp-NotebookPanel:visible .jp-Notebook .jp-Cell"


def _edit(lab: LabServer, agent_id: str, path: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
    """A session of the agent whose scripted turn calls notebook_edit; its edit, once stored."""
    script = {"cma_script": [{"tool": "notebook_edit", "input": {"path": path, "operations": operations}}]}
    session_id = start_session(lab, agent_id, message=json.dumps(script))["id"]
    return wait_for(lambda: next(iter(lab.api("GET", "notebook-edits", session_id=session_id)["data"]), None),
                    timeout=120, what=f"the session's notebook edit (events: {[e['type'] for e in events(lab, session_id)]})")


def _settled(page: Page, toast: Locator) -> None:
    """Wait until a notification has finished sliding in (for a screenshot that shows it whole)."""
    page.wait_for_function("(el) => el.getAnimations({subtree: true}).every((a) => a.playState !== 'running')", arg=toast.element_handle())


def _tab(page: Page, expression: str) -> Any:
    """Evaluate `expression` on the notebook tab's document context (`c`)."""
    return page.evaluate(f"() => {{ const c = window.jupyterapp.shell.currentWidget.context; return {expression}; }}")


def test_an_open_notebook_shows_the_agents_edit_and_unsaved_changes_are_never_overwritten(
        page: Page, lab: LabServer, screenshot: Callable[[Page], None]):
    agent = create_agent(lab, f"live-editor-{secrets.token_hex(3)}", "kernel",
                         builtins={"notebook": {"mode": "edit", "paths": ["**"]}})
    path = f"open-{secrets.token_hex(3)}.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("total = 40 + 2\nprint(total)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, lab.root_dir / path)

    open_notebook(page, lab, path)
    expect(page.locator(CELLS)).to_have_count(1)
    # JupyterLab adds the kernel's language info to a notebook it opens (which marks the tab changed); the user saves.
    page.keyboard.press("Control+s")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.context.model.dirty === false")
    # The page has read where the edit log stands (its first read only notes that; edits made from now on are new).
    page.wait_for_function("() => document.body.dataset.jpCmaEditsSeen !== undefined", timeout=60_000)
    mark_page(page)

    # The agent inserts a heading and rewrites the code: the open tab shows both, with nobody touching anything.
    first = _edit(lab, agent["id"], path, [
        {"op": "insert", "index": 0, "cell_type": "markdown", "source": "# Totals, checked by the agent"},
        {"op": "replace", "index": 1, "source": "total = sum([40, 2])\nprint(f'total: {total}')"},
    ])
    expect(page.locator(CELLS)).to_have_count(2, timeout=30_000)
    expect(cell(page, 0).get_by_role("heading", level=1)).to_contain_text("Totals, checked by the agent")
    expect(cell(page, 1)).to_contain_text("total = sum([40, 2])")
    notice = page.locator(".Toastify__toast", has_text=f"Reloaded {path}")
    expect(notice).to_contain_text("an agent edited it (inserted cell 0 (markdown); replaced cell 1 (code))")
    assert _tab(page, "c.model.dirty") is False
    assert _tab(page, "c.model.toJSON().cells.map(x => x.source)") == [
        "# Totals, checked by the agent", "total = sum([40, 2])\nprint(f'total: {total}')"]
    assert_not_reloaded(page)  # the tab reloaded its notebook; the page stayed
    _settled(page, notice)
    page.screenshot(path=str(SCREENSHOTS / "notebook-edit-reloaded.png"))
    assert first["path"] == path
    expect(notice).to_have_count(0, timeout=30_000)  # it closes by itself

    # The user types in the code cell (unsaved), then the agent appends a cell: the tab keeps the user's text.
    cell(page, 1).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\n# my note, not saved yet")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.context.model.dirty === true")
    page.keyboard.press("Escape")
    second = _edit(lab, agent["id"], path, [{"op": "insert", "index": 2, "source": "print('appended by the agent')"}])
    assert nbformat.read(lab.root_dir / path, as_version=4).cells[2].source == "print('appended by the agent')"
    asking = page.locator(".Toastify__toast", has_text=f"An agent edited {path}")
    expect(asking).to_be_visible(timeout=30_000)
    expect(asking).to_contain_text("Reload from disk discards them")
    reload = asking.locator("button", has_text="Reload from disk")
    expect(reload).to_have_attribute("title", "Load the agent's edit from disk into this tab; the tab's unsaved changes are discarded")
    expect(asking.locator("button", has_text="Keep my changes")).to_be_visible()
    # Never overwritten without the user's word: the unsaved text is still there, the agent's cell is not.
    expect(page.locator(CELLS)).to_have_count(2)
    expect(cell(page, 1)).to_contain_text("# my note, not saved yet")
    assert _tab(page, "c.model.dirty") is True
    _settled(page, asking)
    screenshot(page)  # the notice over the tab with unsaved changes

    # Reload from disk: the agent's edits are shown, the unsaved text is gone (as the button said).
    reload.click()
    expect(page.locator(CELLS)).to_have_count(3, timeout=30_000)
    expect(cell(page, 2)).to_contain_text("print('appended by the agent')")
    expect(cell(page, 1)).not_to_contain_text("# my note, not saved yet")
    assert _tab(page, "c.model.dirty") is False
    assert_not_reloaded(page)
    assert second["id"] > first["id"]

    # An undo made anywhere (here over REST, as a notebook's NotebookEdit.undo() does) shows in the open tab too.
    lab.api("POST", f"notebook-edits/{second['id']}/undo", {})
    expect(page.locator(CELLS)).to_have_count(2, timeout=30_000)
    expect(page.locator(".Toastify__toast", has_text="of it was undone")).to_contain_text(f"Reloaded {path}: an agent's edit of it was undone.")
    assert _tab(page, "c.model.dirty") is False
    assert_not_reloaded(page)
