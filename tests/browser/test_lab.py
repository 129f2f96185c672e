"""JupyterLab with jupyter-cma under a base URL (as behind JupyterHub's /user/<name>/), seen in a real browser."""

from __future__ import annotations

from playwright.sync_api import Page, Request, expect

from tests.browser.pages import PANEL, open_lab, open_sidebar
from tests.browser.servers import BASE_URL, LabServer


def test_jupyterlab_loads_under_a_base_url(page: Page, lab: LabServer):
    ours: list[str] = []

    def note(request: Request) -> None:
        if "cma/api/" in request.url:
            ours.append(request.url)

    page.on("request", note)
    open_lab(page, lab)
    assert page.url.startswith(f"http://127.0.0.1:{lab.port}{BASE_URL}lab")
    base = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).baseUrl")
    assert base == BASE_URL

    open_sidebar(page, "sessions")
    # The live channel connected (its websocket URL is built from the base URL too) ...
    expect(page.locator(f"{PANEL} .jp-cma-panel-header .jp-cma-live-dot")).to_have_attribute("aria-label", "Live updates: connected", timeout=30_000)
    # ... the status bar has the server's mode, and nothing is wrong ...
    status = page.locator(".jp-cma-status")
    expect(status).to_contain_text("webhook", timeout=30_000)
    expect(status).not_to_have_attribute("data-level", "error")
    # ... and every request of the extension went to the server's API under the prefix.
    assert ours, "the extension made no request"
    prefix = (f"http://127.0.0.1:{lab.port}{BASE_URL}cma/api/", f"ws://127.0.0.1:{lab.port}{BASE_URL}cma/api/")
    assert all(url.startswith(prefix) for url in ours), [u for u in ours if not u.startswith(prefix)]

    # The palette has the commands.
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".jp-ModalCommandPalette")
    palette.locator(".lm-CommandPalette-input").fill("Claude agent")
    for label in ("New Claude agent session", "Stop a Claude agent session", "Open the Claude agents dashboard notebook",
                  "Show the Claude agents panel"):
        expect(palette.locator(".lm-CommandPalette-item:visible", has_text=label)).to_have_count(1)
    palette.locator(".lm-CommandPalette-input").fill("sandbox terminal")
    expect(palette.locator(".lm-CommandPalette-item:visible", has_text="Open a sandbox terminal")).to_have_count(1)
