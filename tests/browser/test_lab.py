"""JupyterLab with jupyter-cma, seen in a real browser."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.browser.pages import open_lab
from tests.browser.servers import BASE_URL, LabServer


def test_jupyterlab_loads_under_a_base_url(page: Page, lab: LabServer):
    open_lab(page, lab)
    assert page.url.startswith(f"http://127.0.0.1:{lab.port}{BASE_URL}lab")
    # The page's own configuration carries the prefix, which every request of the extension starts with.
    base = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).baseUrl")
    assert base == BASE_URL
