"""`cma.dashboard()` in a notebook: it renders, and keeps updating while another cell keeps the kernel busy
(the widget talks to the server, not through the kernel)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.cma_rest import create_agent, python_message, start_session, wait_turn_ended_and_idle
from tests.browser.pages import cell, open_notebook, run_cell, wait_cell_done, write_notebook
from tests.browser.servers import LabServer

RELEASE = "release-the-busy-cell"


def test_dashboard_renders_and_updates_while_another_cell_is_busy(page: Page, lab: LabServer, screenshot):
    path = write_notebook(lab, "dashboard.ipynb", [
        "import jupyter_cma as cma\ncma.dashboard()",
        # Busy until the test says so: the kernel cannot relay anything to the widget meanwhile.
        f"import pathlib, time\nwhile not pathlib.Path({RELEASE!r}).exists():\n    time.sleep(0.2)\nprint('released')",
    ])
    (lab.root_dir / RELEASE).unlink(missing_ok=True)
    agent = create_agent(lab, "browser-dashboard", "kernel")
    open_notebook(page, lab, path)
    run_cell(page, 0)
    wait_cell_done(page, 0)
    widget = cell(page, 0).locator(".jp-cma-widget .jp-cma-sessions")
    expect(widget).to_be_visible(timeout=30_000)

    run_cell(page, 1)
    busy = cell(page, 1).locator(".jp-InputArea-prompt")
    expect(busy).to_have_text("[*]:", timeout=10_000)
    try:
        session = start_session(lab, agent["id"], python_message("import time\ntime.sleep(3)\nprint('dashboard sees me')"))
        row = widget.locator(f"tr.jp-cma-session-row[data-session-id='{session['id']}']")
        expect(row).to_have_attribute("data-state", "running", timeout=30_000)
        wait_turn_ended_and_idle(lab, session["id"])
        expect(row).to_have_attribute("data-state", "idle", timeout=30_000)
        expect(row).to_contain_text("browser-dashboard")
        # All of it while the other cell was still running.
        expect(busy).to_have_text("[*]:")
        row.click()
        expect(widget.locator(f".jp-cma-session-detail[data-session-id='{session['id']}']")).to_contain_text("dashboard sees me", timeout=30_000)
        expect(busy).to_have_text("[*]:")
        screenshot(page)
    finally:
        (lab.root_dir / RELEASE).touch()
    wait_cell_done(page, 1)
