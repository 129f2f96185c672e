"""On a server with no configuration, the sidebar's setup view says what is missing and how to fix it, and
"Try it with the local emulator" makes the server ready to serve sessions."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.pages import PANEL, open_lab, open_sidebar, widen_sidebar
from tests.browser.servers import LabServer

SETUP = f"{PANEL} .jp-cma-setup"


def test_setup_view_shows_what_an_unconfigured_server_lacks(page: Page, bare_lab: LabServer):
    expected = bare_lab.api("GET", "setup")
    assert not expected["ready"] and expected["can_start_emulator"]
    failing = {c["id"]: c for c in expected["checks"] if not c["ok"]}
    assert {"environment_id", "api_key", "environment_key"} <= set(failing)

    open_lab(page, bare_lab)
    open_sidebar(page)
    widen_sidebar(page, 640)
    setup = page.locator(SETUP)
    expect(setup).to_be_visible()
    expect(setup.locator(".jp-cma-setup-summary")).to_contain_text("Not ready to serve sessions")
    # Each failing check, with its problem, its fix and the command to run, as the server said them.
    for check_id, check in failing.items():
        item = setup.locator(f"li.jp-cma-check[data-check='{check_id}']")
        expect(item).to_contain_text(check["title"])
        expect(item.locator(".jp-cma-check-problem")).to_have_text(check["problem"])
        if check["command"]:
            expect(item.locator(".jp-cma-command code")).to_have_text(check["command"])
    expect(setup.get_by_role("button", name="Try it with the local emulator")).to_be_visible()
    # The status bar says something is wrong too.
    expect(page.locator(".jp-cma-status")).to_have_attribute("data-level", "error")


def test_local_emulator_makes_an_unconfigured_server_ready(page: Page, bare_lab: LabServer, screenshot):
    open_lab(page, bare_lab)
    open_sidebar(page)
    widen_sidebar(page, 640)
    setup = page.locator(SETUP)
    setup.get_by_role("button", name="Try it with the local emulator").click()
    expect(setup.locator(".jp-cma-setup-summary")).to_contain_text("Ready", timeout=90_000)
    # Ready, the panel folds the setup view away; its Setup button shows it again.
    expect(setup).to_be_hidden()
    page.locator(f"{PANEL} .jp-cma-setup-toggle").click()
    expect(setup.locator(".jp-cma-setup-summary")).to_be_visible()
    expect(setup.locator(".jp-cma-emulator")).to_contain_text("This server runs the local emulator")
    screenshot(page)
    after = bare_lab.api("GET", "setup")
    assert after["ready"] and after["emulator"]["owned"] and after["emulator"]["running"]
    expect(page.locator(".jp-cma-status")).not_to_have_attribute("data-level", "error", timeout=30_000)
