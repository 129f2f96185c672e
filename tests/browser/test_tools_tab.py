"""The sidebar's Tools tab and the agent form's built-in tools: the catalog's families with their availability (and
the reason when a family cannot run here), an agent made in the form with the notebook built-in in edit mode, its
session's notebook edit shown in the session's detail and undone there, the notebook back as it was.

Screenshots: the session's detail with its edit (the test's own), and the Tools tab (docs/screenshots/tools-tab.png)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import nbformat
from playwright.sync_api import Page, expect

from tests.browser.cma_rest import events, wait_for
from tests.browser.conftest import SCREENSHOTS
from tests.browser.pages import PANEL, open_lab, open_sidebar, widen_sidebar, write_notebook
from tests.browser.servers import LabServer


def test_tools_tab_and_an_agent_with_a_built_in_whose_notebook_edit_is_undone(
        page: Page, lab: LabServer, screenshot: Callable[[Page], None]):
    catalog = lab.api("GET", "tools")
    families = {f["family"]: f for f in catalog["builtin"]}
    assert "notebook" in families and families["notebook"]["available"], f"the notebook built-in is not offered: {families}"
    original = f"print('written by a person {secrets.token_hex(4)}')"
    path = write_notebook(lab, f"edit-me-{secrets.token_hex(3)}.ipynb", [original, "x = 1"])

    open_lab(page, lab)
    open_sidebar(page, "tools")
    widen_sidebar(page)
    tools = page.locator("#jupyter-cma-panel-tabpanel-tools")
    # Every family of the catalog, with whether it can run here and, when not, why.
    for name, family in families.items():
        card = tools.locator(f"article.jp-cma-family[data-family='{name}']")
        expect(card).to_have_attribute("data-available", "true" if family["available"] else "false")
        expect(card.locator(".jp-cma-family-state")).to_have_text("available" if family["available"] else "unavailable")
        for tool in family["tools"]:
            expect(card.locator(f".jp-cma-family-tool[data-tool='{tool['name']}']")).to_be_visible()
        if not family["available"]:
            expect(card.locator(".jp-cma-family-reason")).to_have_text(family["reason"])
    # Each tier's standard tools.
    for tier in catalog["standard"]:
        given = [t["name"] for t in tier["tools"] if t.get("enabled", True)]
        row = tools.locator(f".jp-cma-tier-tools[data-tier='{tier['tier']}']")
        for name in given:
            expect(row.locator(f".jp-cma-standard-tool[data-tool='{name}']")).to_be_visible()

    # An agent made in the form, with the notebook built-in in edit mode.
    open_sidebar(page, "agents")
    agents = page.locator("#jupyter-cma-panel-tabpanel-agents")
    agents.locator("button.jp-cma-agent-new").click()
    form = agents.locator("form.jp-cma-agent-form")
    expect(form).to_be_visible()
    for name, family in families.items():
        box = form.locator(f"input.jp-cma-builtin-checkbox[data-family='{name}']")
        if family["available"]:
            expect(box).to_be_enabled()
        else:  # not offered, and the form says why
            expect(box).to_be_disabled()
            expect(form.locator(f".jp-cma-builtin[data-family='{name}'] .jp-cma-builtin-reason")).to_contain_text(family["reason"])
    agent_name = f"editor-{secrets.token_hex(3)}"
    form.locator("input.jp-cma-agent-name").fill(agent_name)
    form.locator("select.jp-cma-agent-tier").select_option("kernel")
    form.locator("input.jp-cma-builtin-checkbox[data-family='notebook']").check()
    form.locator("select.jp-cma-builtin-setting[data-family='notebook'][data-setting='mode']").select_option("edit")
    expect(form.locator("input.jp-cma-builtin-setting[data-family='notebook'][data-setting='paths']")).to_have_value("**")
    form.locator("button.jp-cma-agent-submit").click()

    row = agents.locator("tr.jp-cma-agent-row", has_text=agent_name)
    expect(row.locator(".jp-cma-agent-builtins")).to_have_text("built-in: notebook (edit: **)", timeout=30_000)
    agent_id = row.get_attribute("data-agent-id")
    assert agent_id
    assert lab.api("GET", f"agents/{agent_id}")["builtins"] == {"notebook": {"mode": "edit", "paths": ["**"]}}

    # Its session edits the notebook (a scripted turn calls notebook_edit).
    start = agents.locator(f"form.jp-cma-agent-start[data-agent-id='{agent_id}']")
    operations = [{"op": "replace", "index": 0, "source": "print('rewritten by the agent')"}]
    start.locator("textarea.jp-cma-session-message").fill(
        json.dumps({"cma_script": [{"tool": "notebook_edit", "input": {"path": path, "operations": operations}}]}))
    start.locator("button.jp-cma-session-start").click()
    started = start.locator(".jp-cma-session-started")
    expect(started).to_be_visible(timeout=30_000)
    session_id = started.get_attribute("data-session-id")
    assert session_id
    edit = wait_for(lambda: next(iter(lab.api("GET", "notebook-edits", session_id=session_id)["data"]), None),
                    timeout=120, what=f"the session's notebook edit (events: {[e['type'] for e in events(lab, session_id)]})")
    assert nbformat.read(lab.root_dir / path, as_version=4).cells[0].source == "print('rewritten by the agent')"

    # The session's detail lists the edit; Undo puts the notebook back.
    open_sidebar(page, "sessions")
    page.locator(f"{PANEL} tr.jp-cma-session-row[data-session-id='{session_id}']").click()
    detail = page.locator(f"{PANEL} .jp-cma-session-detail[data-session-id='{session_id}']")
    shown = detail.locator(f".jp-cma-edits li.jp-cma-edit[data-edit-id='{edit['id']}']")
    expect(shown).to_be_visible(timeout=30_000)
    expect(shown.locator(".jp-cma-edit-path")).to_have_text(path)
    screenshot(page)  # the session's detail with its edit, before the undo
    shown.locator("button.jp-cma-edit-undo").click()
    expect(shown.locator(".jp-cma-edit-state")).to_contain_text("undone", timeout=30_000)
    expect(shown).to_have_attribute("data-undone", "true")
    assert nbformat.read(lab.root_dir / path, as_version=4).cells[0].source == original
    assert lab.api("GET", "notebook-edits", session_id=session_id)["data"][0]["undone_at"] is not None

    # The Tools tab's recent edits show it undone too.
    open_sidebar(page, "tools")
    recent = tools.locator(f".jp-cma-tools-edits li.jp-cma-edit[data-edit-id='{edit['id']}']")
    expect(recent).to_have_attribute("data-undone", "true", timeout=30_000)
    # Tall enough to show the whole tab.
    page.set_viewport_size({"width": 1400, "height": 1300})
    tools.locator("section.jp-cma-tools-builtin").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "tools-tab.png"))
