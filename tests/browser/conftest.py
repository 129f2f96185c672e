"""Fixtures of the browser tests: the emulator, JupyterLab servers with jupyter-cma, and Chromium pages.

One configured server (with its emulator) serves every test of the run, one unconfigured server serves the
setup test, and one headless Chromium (Debian's, never a downloaded one) opens a fresh page per test. Each
test leaves a screenshot in docs/screenshots/<test>.png (the README shows them) and fails on a console error
that comes from jupyter-cma.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from tests.browser.cma_rest import wait_for
from tests.browser.servers import LabServer, free_port, start_lab_server, stop_lab_server
from tests.emulator_fixtures import EmulatorProcess, start_emulator

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FAILED_SCREENSHOTS = Path(tempfile.gettempdir()) / "cma-browser-failures"
CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by the project's set-up

#: A console message is jupyter-cma's when it names the extension or one of its URLs (`…/cma/api/…`,
#: the labextension's own bundle, the widgets' modules) or a session id.
OURS = re.compile(r"cma|sesn_", re.IGNORECASE)


@pytest.fixture
def jp_asyncio_loop() -> None:
    """pytest-jupyter's autouse loop fixture, made inert here: these tests run no server in-process, and
    Playwright's sync API keeps its own loop running in this thread, which that fixture would close."""


@pytest.fixture
def jp_server_cleanup() -> None:
    """pytest-jupyter's autouse in-process server cleanup, made inert here (the servers are subprocesses)."""


@pytest.fixture(scope="session")
def lab_emulator(lab_port: int) -> Iterator[EmulatorProcess]:
    """The emulator, in place of Anthropic's API, delivering its webhooks to the test server."""
    emu = start_emulator("--webhook-url", f"http://127.0.0.1:{lab_port}/cma-test/cma/webhooks")
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def lab_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """The servers' directories. Not under pytest's basetemp: another pytest run on the machine prunes old
    basetemps, and a server's data directory must outlive any of them."""
    path = Path(tempfile.mkdtemp(prefix="cma-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab(lab_emulator: EmulatorProcess, lab_port: int, work_dir: Path) -> Iterator[LabServer]:
    """JupyterLab with jupyter-cma configured for the emulator exactly as `jupyter cma lab` configures it:
    credentials in the server's environment, the API's URL and environment id as CMAApp settings."""
    info = lab_emulator.info
    server = start_lab_server(
        work_dir / "lab", port=lab_port,
        env={"ANTHROPIC_API_KEY": info["api_key"], "ANTHROPIC_ENVIRONMENT_KEY": info["environment_key"],
             "ANTHROPIC_WEBHOOK_SIGNING_KEY": info["webhook_secret"]},
        cma_args=[f"--CMAApp.api_base_url={info['base_url']}", f"--CMAApp.environment_id={info['environment_id']}"],
    )
    try:
        # Ready to serve either tier: the container tier's image found and a pooled container started.
        wait_for(lambda: ((server.api("GET", "status")["tiers"].get("container") or {}).get("pool") or {}).get("ready"),
                 timeout=180, what="the container tier's warm pool")
        yield server
    finally:
        stop_lab_server(server)


@pytest.fixture(scope="module")
def bare_lab(work_dir: Path) -> Iterator[LabServer]:
    """JupyterLab with jupyter-cma and no configuration at all: no environment, no credentials."""
    server = start_lab_server(work_dir / "bare-lab")
    try:
        # Its tiers started (their checks say so): what is left failing is what configuration lacks.
        wait_for(lambda: all(c["ok"] for c in server.api("GET", "setup")["checks"] if c["id"] in ("docker", "bubblewrap")),
                 timeout=120, what="the unconfigured server's tiers started")
        yield server
    finally:
        stop_lab_server(server)


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless. A missing browser fails the run: the set-up installs it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`sudo apt-get install chromium`, as scripts/setup.sh does)",
                    pytrace=False)
    b = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--headless", "--no-sandbox", "--disable-gpu"])
    yield b
    b.close()


@dataclass
class ConsoleLog:
    """What the page said on its console: every error, and the ones that are jupyter-cma's."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console.error: {msg.text} (at {msg.location.get('url', '')})")

    def on_page_error(self, exc: Any) -> None:
        self.errors.append(f"uncaught: {exc} {getattr(exc, 'stack', '') or ''}")

    def ours(self) -> list[str]:
        return [e for e in self.errors if OURS.search(e)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so the page fixture knows whether the test passed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def screenshot_path(item: pytest.Item) -> Path:
    return SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name) + ".png")


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Page], None]:
    """Take the test's screenshot now (the moment that shows the scenario best) instead of when it ends;
    it is kept only if the test passes (the page fixture writes the failure's own screenshot elsewhere)."""

    def take(pg: Page) -> None:
        target = screenshot_path(request.node)
        target.parent.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(target))
        request.node.screenshot_taken = True  # type: ignore[attr-defined]

    return take


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page (its own cookies) in a 1400×900 window. After the test: a screenshot in
    docs/screenshots/<test>.png when it passed (in FAILED_SCREENSHOTS when it failed, so the committed one
    stays), and a failure if jupyter-cma logged a console error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    console = ConsoleLog()
    pg.on("console", console.on_console)
    pg.on("pageerror", console.on_page_error)
    pg.console_log = console  # type: ignore[attr-defined]  (tests may look at it)
    yield pg
    call = getattr(request.node, "report_call", None)
    passed = call is not None and call.passed
    target = screenshot_path(request.node) if passed else FAILED_SCREENSHOTS / f"{screenshot_path(request.node).stem}.png"
    try:
        if not (passed and getattr(request.node, "screenshot_taken", False)):
            target.parent.mkdir(parents=True, exist_ok=True)
            pg.screenshot(path=str(target))
            if not passed:
                print(f"screenshot of the failure: {target}")
    finally:
        context.close()
    if console.errors:
        print("console errors:\n  " + "\n  ".join(console.errors))
    if console.ours():
        pytest.fail("jupyter-cma logged console errors:\n  " + "\n  ".join(console.ours()), pytrace=False)
