"""The sidebar's Agents tab: an agent made there with a tool a notebook defined (`@cma.tool`), and a session
started there that calls the tool in that notebook's kernel."""

from __future__ import annotations

import secrets

from playwright.sync_api import Page, expect

from tests.browser.cma_rest import events, wait_for
from tests.browser.pages import PANEL, open_notebook, open_sidebar, run_cell, wait_cell_done, widen_sidebar, write_notebook
from tests.browser.servers import LabServer


def test_agent_created_in_the_sidebar_with_a_notebook_tool_runs_a_session(page: Page, lab: LabServer):
    secret_of_the_notebook = secrets.token_hex(6)  # only the notebook's kernel knows it
    path = write_notebook(lab, "tools.ipynb", [
        f"import jupyter_cma as cma\n\nLUCKY = {secret_of_the_notebook!r}\n\n"
        "@cma.tool\ndef lucky_number(name: str) -> str:\n"
        "    \"\"\"The lucky number of a person, from this notebook.\"\"\"\n"
        "    return f'the lucky number of {name} is {LUCKY}'\n\ncma.tools()",
    ])
    open_notebook(page, lab, path)
    run_cell(page, 0)
    wait_cell_done(page, 0)

    open_sidebar(page, "agents")
    widen_sidebar(page)
    agents = page.locator("#jupyter-cma-panel-tabpanel-agents")
    agents.locator("button.jp-cma-agent-new").click()
    form = agents.locator("form.jp-cma-agent-form")
    expect(form).to_be_visible()
    name = f"lucky-{secrets.token_hex(3)}"
    form.locator("input.jp-cma-agent-name").fill(name)
    form.locator("select.jp-cma-agent-tier").select_option("kernel")
    tool = form.locator("input.jp-cma-tool-checkbox[data-tool-name='lucky_number']")
    expect(tool).to_be_visible(timeout=30_000)
    tool.check()
    form.locator("button.jp-cma-agent-submit").click()

    row = agents.locator("tr.jp-cma-agent-row", has_text=name)
    expect(row).to_be_visible(timeout=30_000)
    agent_id = row.get_attribute("data-agent-id")
    assert agent_id
    agent = lab.api("GET", f"agents/{agent_id}")
    assert agent["tier"] == "kernel"
    assert "lucky_number" in [t.get("name") for t in agent["tools"] if t.get("type") == "custom"]

    row.locator("button.jp-cma-agent-start-session").click()
    start = agents.locator(f"form.jp-cma-agent-start[data-agent-id='{agent_id}']")
    start.locator("textarea.jp-cma-session-message").fill("Use lucky_number on 'Ada'.")
    start.locator("button.jp-cma-session-start").click()
    started = start.locator(".jp-cma-session-started")
    expect(started).to_be_visible(timeout=30_000)
    session_id = started.get_attribute("data-session-id")
    assert session_id

    # The tool ran in the notebook's kernel: its answer holds what only that kernel knows.
    wait_for(lambda: any(secret_of_the_notebook in str(e.get("content")) for e in events(lab, session_id)
                         if e["type"] == "user.custom_tool_result"), what="the notebook tool's result in the session")
    open_sidebar(page, "sessions")
    session_row = page.locator(f"{PANEL} tr.jp-cma-session-row[data-session-id='{session_id}']")
    session_row.click()
    detail = page.locator(f"{PANEL} .jp-cma-session-detail[data-session-id='{session_id}']")
    expect(detail).to_contain_text(secret_of_the_notebook, timeout=30_000)
    # The Sessions table names the agent made after the page loaded, as it names the others.
    expect(session_row.locator(".jp-cma-col-agent")).to_have_text(name)
