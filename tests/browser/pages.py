"""What the browser tests do with JupyterLab's page: open it, open the jupyter-cma sidebar, run notebook cells."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.servers import LabServer

#: Generous: the first load of JupyterLab in a fresh browser compiles every extension's bundle.
LOAD_TIMEOUT = 60_000


def open_lab(page: Page, server: LabServer, path: str = "lab") -> None:
    """Open a JupyterLab page of `server` (logging in with its token) with JupyterLab's default layout (`?reset`:
    not the one an earlier test left in the workspace) and wait until the shell is up."""
    page.goto(server.lab_url(f"{path}?reset"))
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=LOAD_TIMEOUT)
    page.wait_for_selector(".jp-LabShell", timeout=LOAD_TIMEOUT)
    # Once restored, JupyterLab focuses the main area's current widget; until then a dialog or the command
    # palette opened by a test would lose the focus to it and close.
    page.wait_for_function("() => document.activeElement && document.activeElement.closest('#jp-main-dock-panel')",
                           timeout=LOAD_TIMEOUT)


def write_notebook(server: LabServer, name: str, cells: list[str]) -> str:
    """A notebook of code cells in the server's root directory; its path relative to the root."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, server.root_dir / name)
    return name


def open_notebook(page: Page, server: LabServer, path: str) -> None:
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    open_lab(page, server, f"lab/tree/{path}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=LOAD_TIMEOUT)
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                  return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
                         && w.sessionContext.session.kernel.status === 'idle'; }""",
        timeout=LOAD_TIMEOUT)


def run_cell(page: Page, index: int) -> None:
    """Start running the notebook's cell `index` (0-based) and return at once (it may run for long)."""
    page.evaluate(
        """(i) => { const app = window.jupyterapp; const nb = app.shell.currentWidget.content;
                  nb.activeCellIndex = i; void app.commands.execute('notebook:run-cell'); }""", index)


def cell(page: Page, index: int):
    """The locator of the notebook's cell `index` (0-based)."""
    return page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index)


def wait_cell_done(page: Page, index: int, timeout: float = 120_000) -> None:
    """Wait until cell `index` ran (its prompt shows a number, not `*`); fail with the traceback if it raised."""
    prompt = cell(page, index).locator(".jp-InputArea-prompt")
    page.wait_for_function("(el) => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(), timeout=timeout)
    error = page.evaluate(
        """(i) => { const outputs = window.jupyterapp.shell.currentWidget.content.widgets[i].model.outputs.toJSON();
                  const e = outputs.find((o) => o.output_type === 'error');
                  return e ? e.ename + ': ' + e.evalue : null; }""", index)
    if error:
        raise AssertionError(f"cell {index} raised {error}")


PANEL = "#jupyter-cma-panel"


def open_sidebar(page: Page, tab: str | None = None) -> None:
    """Show the "Claude agents" sidebar (clicking its icon in the left bar unless a restored layout shows it
    already: a second click would collapse it), then one of its tabs: agents, sessions, egress, webhooks."""
    if not page.locator(PANEL).is_visible():
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='jupyter-cma-panel']").click()
    page.locator(PANEL).wait_for(state="visible")
    if tab:
        page.locator(f"#jupyter-cma-panel-tab-{tab}").click()
        page.locator(f"#jupyter-cma-panel-tabpanel-{tab}").wait_for(state="visible")


def mark_page(page: Page) -> None:
    """Mark the loaded page, so `assert_not_reloaded` proves what changed since came without a reload."""
    page.evaluate("window.__cmaTestMark = 'no reload since'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__cmaTestMark") == "no reload since", "the page was reloaded"


def widen_sidebar(page: Page, width: int = 720) -> None:
    """Drag the left sidebar's edge so the panel is `width` px wide (for screenshots that show its tables whole)."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)").first
    box = handle.bounding_box()
    assert box is not None, "the left sidebar's edge is not shown"
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 + (width - box["x"]) / 2, y, steps=4)
    page.mouse.move(width, y, steps=4)
    page.mouse.up()


def run_command_from_palette(page: Page, label: str) -> None:
    """Run a command as a user does: the command palette (Ctrl+Shift+C), its label typed, its item clicked."""
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill(label)
    item = page.locator(".lm-CommandPalette-item", has_text=label)
    expect(item).to_have_count(1)
    item.click()
