"""The palette's "Open a sandbox terminal…" opens a shell inside a container session's container: a command
typed in the browser runs there (Docker reads back what it wrote)."""

from __future__ import annotations

import secrets

import docker
from playwright.sync_api import Page, expect

from tests.browser.cma_rest import create_agent, served_session_row, start_session, wait_for
from tests.browser.pages import open_lab, run_command_from_palette
from tests.browser.servers import LabServer


def _file_in_container(client: docker.DockerClient, container: str, path: str) -> str | None:
    result = client.containers.get(container).exec_run(["cat", path])
    return result.output.decode().strip() if result.exit_code == 0 else None


def test_terminal_command_opens_a_shell_inside_a_container_session(page: Page, lab: LabServer):
    agent = create_agent(lab, "browser-terminal", "container")
    session = start_session(lab, agent["id"], "hello", title="a container to look into")
    served = wait_for(lambda: (row := served_session_row(lab, session["id"])) and (row.get("sandbox") or {}).get("state") == "serving"
                      and row, timeout=120, what="a container serving the session")
    container = served["sandbox"]["container"]["name"]

    open_lab(page, lab)
    run_command_from_palette(page, "Open a sandbox terminal")
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_label("Session").select_option(session["id"])
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    terminal = page.locator(".jp-Terminal:visible")
    expect(terminal).to_be_visible(timeout=30_000)

    terminal.click()
    marker = secrets.token_hex(8)
    page.keyboard.type(f"echo {marker} > /tmp/typed-in-the-browser && echo ran-in-$(hostname)\n")
    client = docker.from_env()
    try:
        written = wait_for(lambda: _file_in_container(client, container, "/tmp/typed-in-the-browser"), timeout=60,
                           what="the command typed in the terminal writing its file in the container")
        hostname = client.containers.get(container).attrs["Config"]["Hostname"]
    finally:
        client.close()
    assert written == marker  # in that session's container, read by Docker, not through the terminal
    # And the shell's answer is on the page. xterm draws on a canvas, so its buffer is read instead.
    page.wait_for_function(
        """(expected) => { const term = window.jupyterapp.shell.currentWidget.content._term;
                          const buffer = term.buffer.active; let text = '';
                          for (let i = 0; i < buffer.length; i++) text += buffer.getLine(i).translateToString(true) + '\\n';
                          return text.includes(expected); }""", arg=f"ran-in-{hostname}", timeout=30_000)
