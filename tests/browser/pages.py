"""What the browser tests do with JupyterLab's page: open it, open the jupyter-cma sidebar, run notebook cells."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.browser.servers import LabServer

#: Generous: the first load of JupyterLab in a fresh browser compiles every extension's bundle.
LOAD_TIMEOUT = 60_000


def open_lab(page: Page, server: LabServer, path: str = "lab") -> None:
    """Open a JupyterLab page of `server` (logging in with its token) and wait until the shell is up."""
    page.goto(server.lab_url(path))
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=LOAD_TIMEOUT)
    page.wait_for_selector(".jp-LabShell", timeout=LOAD_TIMEOUT)
