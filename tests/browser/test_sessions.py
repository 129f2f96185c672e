"""The sidebar's Sessions tab: sessions made through the API appear, and change as they run, with no reload."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.cma_rest import create_agent, python_message, start_session, wait_turn_ended_and_idle
from tests.browser.pages import assert_not_reloaded, mark_page, open_lab, open_sidebar, widen_sidebar
from tests.browser.servers import LabServer

ROW = "#jupyter-cma-panel-tabpanel-sessions tr.jp-cma-session-row[data-session-id='{}']"


def test_sidebar_lists_sessions_and_updates_them_live(page: Page, lab: LabServer):
    agent = create_agent(lab, "browser-live", "kernel")
    # One session that ran before the page opened: the tab lists it from the REST snapshot.
    earlier = start_session(lab, agent["id"], python_message("print(6 * 7)"), title="ran before the page")
    wait_turn_ended_and_idle(lab, earlier["id"])

    open_lab(page, lab)
    open_sidebar(page, "sessions")
    widen_sidebar(page)
    expect(page.locator(ROW.format(earlier["id"]))).to_have_attribute("data-state", "idle", timeout=30_000)
    mark_page(page)

    # One made now, whose turn runs for a few seconds: it appears, runs, then goes idle, all pushed live.
    later = start_session(lab, agent["id"], python_message("import time\ntime.sleep(8)\nprint('slept')"), title="runs while watched")
    row = page.locator(ROW.format(later["id"]))
    expect(row).to_have_attribute("data-state", "running", timeout=30_000)
    expect(row).to_contain_text("kernel")
    wait_turn_ended_and_idle(lab, later["id"])
    expect(row).to_have_attribute("data-state", "idle", timeout=30_000)
    assert_not_reloaded(page)
    # Its detail shows the conversation: the code the agent ran and what it printed.
    row.click()
    detail = page.locator(f"#jupyter-cma-panel-tabpanel-sessions .jp-cma-session-detail[data-session-id='{later['id']}']")
    expect(detail).to_contain_text("slept", timeout=30_000)
