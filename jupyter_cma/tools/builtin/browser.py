"""The browser built-ins: `browse`, `screenshot` and `browser_steps`, in a headless Chromium confined to the session's egress.

Each session that calls them gets one Chromium (Debian's `chromium` package, driven by Playwright over its
debugging pipe), started on the first call and reused by the next ones, closed when the session's sandbox
goes (`end_session`), when the server stops (`close`) or after `idle_close` seconds without a call. Each
call opens a page of its own in the session's browser and closes it at the end; cookies and storage last
as long as the browser.

How the browser is confined:

    <the Playwright driver> → /bin/sh <workdir>/chromium (records its pid, then execs, with an empty environment)
      bwrap --unshare-user --unshare-net --unshare-pid … --clearenv (an allowlist of files, like a kernel sandbox)
        python -I -S bridge.py --listen 127.0.0.1:3128 --unix /run/cma/egress.sock --
          chromium --proxy-server=http://127.0.0.1:3128 --proxy-bypass-list=<-loopback>;… --user-data-dir=<profile> …

- **No network of its own.** Chromium runs in a network namespace holding only `lo`. Its one way out is
  the egress bridge listening on 127.0.0.1:3128 inside, which relays each connection to the session's
  browser socket of `ToolEgress` (`socket_path(session_id, injections=False)`, bound into the sandbox at
  /run/cma/egress.sock, nothing else of the host's socket directory): the session's egress policy decides
  every request the browser makes (pages, sub-resources, WebSockets) and its egress log gets the rows under
  the session's id, but the policy's injections are not added (a page's JavaScript would spend the
  session's credentials, toward whatever the page chooses). Chromium is told to send everything to the
  proxy, loopback included (`<-loopback>`); a few hosts are told to go direct instead, which fails at once
  for want of a network: those its own background services call (`BACKGROUND_HOSTS`), so they never show
  up in the session's log, and `cma.internal` (`NEVER_PROXIED`), the sandboxes' route to the session's
  tools, which a page must never reach (the proxy refuses it on a built-in's socket as well). DNS, QUIC
  and WebRTC have no network to use.
- **Files: an allowlist.** The system's runtime read-only (`/usr`, the loader's cache, CA certificates,
  fonts), a generated `/etc/passwd`, `/etc/group` and `/etc/hosts`, the Python installation the bridge runs
  from (read-only; the server's data directory masked if it lies inside), private size-bounded tmpfs at
  `/tmp`, `/dev/shm` and the home directory, and the browser's profile directory (read-write, a fresh
  temporary directory per browser, removed when it closes). The environment is cleared (`--clearenv`):
  nothing of the server's environment reaches the browser.
- **Nobody lives there.** A user namespace maps the sandbox's user to the server's, without capabilities;
  its own PID, IPC and UTS namespaces; `--die-with-parent` (the Playwright driver). Chromium's own sandbox
  (seccomp and namespaces for its renderers) runs inside (`chromium_sandbox`).
- **TLS.** Tunnels the proxy does not open carry the site's own certificate, checked by Chromium as usual.
  Tunnels the proxy opens (a policy rule must see inside, or injects a secret) are signed by the proxy's CA:
  Chromium accepts that CA's key only (`--ignore-certificate-errors-spki-list` with the SHA-256 of its
  public key, taken from the last certificate of `ToolEgress.ca_bundle`, where the proxy appends its own).

What the tools return as text goes through `ToolEgress.scrub` (the values of the secrets the session's
policy injects are withheld), and a URL is checked by `public_url`, as for every built-in.

Starting a browser is serialised per session with `end_session`: a call that comes while the session's
sandbox is being released does not start a browser bound to the socket `ToolEgress.release` is about to
take away (it fails, saying to call again), and a browser whose socket was released anyway is closed.

A refused main request is a tool error naming the policy's rule and reason: from the proxy's answer
(`X-CMA-Egress-Rule`) for plain http; for https, Chromium gets only a refused CONNECT, so the reason is the
session's policy's own decision for that CONNECT (the same resolution the proxy made), or the proxy's log
row for refusals the policy does not make (address checks, limits). Refused sub-resources are listed under
the page's text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from traitlets import Bool, Float, Int, Unicode

from ...egress.policy import INTERNAL_HOST
from ...sandboxes.isolation import SANDBOX_HOME, SANDBOX_UID, python_mounts, system_mounts, write_generated_etc
from ...sandboxes.runtime import BRIDGE_SCRIPT
from ...tasks import BackgroundTasks
from .base import BuiltinFamily, CallContext, Content, ServerParts, ToolError, ToolSpec
from .egress import BROWSER_PREFIX, RULE_HEADER, EgressRefused, ToolEgress, public_url, refusal

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page, Playwright, Request, Response

DEFAULT_CHROMIUM = "/usr/lib/chromium/chromium"  # Debian's binary (/usr/bin/chromium is a shell wrapper around it)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROXY_LISTEN = "127.0.0.1:3128"  # inside the browser's own network namespace
SOCKET_INSIDE = "/run/cma/egress.sock"
# Chromium's own background services that ignore --disable-component-update (the on-device model manifest's
# update check goes out at every start, marked "updatedisabled"): sent "direct", where there is no network.
BACKGROUND_HOSTS = ("update.googleapis.com",)
# Never sent to the proxy (so, for want of a network, never reached): the sandboxes' route to the session's tools.
# Chromium keeps a trailing dot in a host and matches its bypass rules as written, so both spellings are listed;
# other spellings (case, IDNA, escapes) are canonicalised by Chromium before the rules are matched.
NEVER_PROXIED = (INTERNAL_HOST, f"{INTERNAL_HOST}.")
MAX_IMAGE_SIDE = 8000  # the API refuses images with a side over 8000 px: a taller full page is cut
MAX_STEP_TEXT = 10_000  # one extract step's text (all steps' together are capped by max_text_chars)
SETTLE_SECONDS = 2.0  # after `load`, how long a page may keep fetching (scripts rendering content) before it is read
MAX_REFUSED_LISTED = 10
TUNNEL_ERRORS = ("ERR_TUNNEL_CONNECTION_FAILED", "ERR_PROXY_CONNECTION_FAILED")
PROBE_TIMEOUT = 20.0
PROBE_RETRY = 60.0  # seconds before a failed sandbox probe is run again
PROBING = "checking that Chromium starts in its sandbox; try again in a few seconds"
RELEASE_HOLD = 60.0  # seconds end_session's hold on launches waits for the session's socket to be released at most
STALE_CHECK = 5.0  # how often an idle browser checks that its socket is still served


@dataclass
class _Browser:
    """One session's Chromium: its Playwright context, where it lives on disk, and what uses it."""

    session_id: str
    workdir: Path
    context: BrowserContext
    pid: int | None  # bubblewrap's (the wrapper script execs it): killed if the browser does not close
    attachment: Any  # the proxy's attachment of the socket it was started with (released: the browser has no way out)
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # calls using it now
    closed: bool = False

    @property
    def profile(self) -> Path:
        return self.workdir / "profile"


def spki_sha256(pem: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate: what `--ignore-certificate-errors-spki-list` takes."""
    der = ssl.PEM_cert_to_DER_cert(pem)

    def item(data: bytes, at: int) -> tuple[int, int, int]:
        """(tag, start of content, end of content) of the DER item at `at`."""
        tag, first = data[at], data[at + 1]
        if first < 0x80:
            return tag, at + 2, at + 2 + first
        count = first & 0x7F
        length = int.from_bytes(data[at + 2:at + 2 + count], "big")
        return tag, at + 2 + count, at + 2 + count + length

    _, start, _ = item(der, 0)  # Certificate ::= SEQUENCE { tbsCertificate, … }
    _, at, _ = item(der, start)  # tbsCertificate ::= SEQUENCE { [0] version?, serial, signature, issuer, validity, subject, spki, … }
    fields = 6 if der[at] == 0xA0 else 5  # the fields before subjectPublicKeyInfo
    for _ in range(fields):
        at = item(der, at)[2]
    _, _, end = item(der, at)
    return base64.b64encode(hashlib.sha256(der[at:end]).digest()).decode()


def last_certificate(bundle: str) -> str:
    """The last PEM certificate of a bundle."""
    found = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.S)
    if not found:
        raise ValueError("no certificate in the bundle")
    return found[-1]


def _short(exc: BaseException) -> str:
    """Playwright's message without its call log (which repeats the whole command line)."""
    text = str(exc).strip()
    text = text.split("\nCall log:", 1)[0].split("\n=====", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


@dataclass
class _SessionLock:
    """A session's lock for starting and ending its browser, and how many hold or wait for it (dropped at none)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class BrowserTools(BuiltinFamily):
    """`browse`, `screenshot` and `browser_steps`: a headless Chromium per session whose only network is the session's egress."""

    name = "browser"
    title = "Web browser"
    summary = ("Open web pages in a headless Chromium: rendered text, screenshots, and short click/type/extract "
               "sequences. Runs in the server, confined by bubblewrap; its only network is the session's egress policy.")
    requires = ("Chromium (Debian/Ubuntu: apt-get install chromium), bubblewrap, the Python package playwright "
                "(pip install 'jupyter-cma[browser]'), and the egress engine")

    chromium_path = Unicode("", config=True, help="The Chromium binary. Empty: /usr/lib/chromium/chromium (Debian's "
                            "chromium package) when it exists, else the first of chromium, chromium-browser, google-chrome "
                            "on PATH. Never a browser Playwright downloads.")
    bwrap = Unicode("bwrap", config=True, help="The bubblewrap command the browser is confined with.")
    chromium_sandbox = Bool(True, config=True, help="Run Chromium's own sandbox (seccomp and namespaces for its renderers) "
                            "inside bubblewrap. Turn off only where the kernel refuses user namespaces inside a user "
                            "namespace; bubblewrap then also forbids the browser to make any.")
    page_timeout = Float(30.0, config=True, help="Seconds a page may take to load, and a step of browser_steps to "
                         "complete (default 30). Keep it under the family's `timeout`.")
    idle_close = Float(300.0, config=True, help="Seconds a session's browser stays open without a call before it is "
                       "closed (default 300; the next call starts another, without the cookies of the last).")
    max_text_chars = Int(50_000, config=True, help="Characters of page text `browse` returns, and of extracted text "
                         "`browser_steps` returns in all (default 50000); the rest is cut with a note.")
    max_screenshot_bytes = Int(3_500_000, config=True, help="Largest screenshot (PNG bytes, default 3500000: under the "
                               "API's 5 MB per image once base64-encoded); a larger full-page shot is cut to its top part.")
    viewport_width = Int(1280, config=True, help="Width of the browser's window in CSS pixels (default 1280).")
    viewport_height = Int(800, config=True, help="Height of the browser's window in CSS pixels (default 800).")
    max_steps = Int(20, config=True, help="Most steps one browser_steps call may take (default 20).")
    max_browsers = Int(4, config=True, help="Browsers (sessions) open at once on this server (default 4). At the limit the "
                       "one idle the longest is closed; if every one is in use the call fails and says to try again.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._browsers: dict[str, _Browser] = {}
        self._launching: dict[str, _SessionLock] = {}
        # session id → (its browser socket's attachment when end_session ran, when): no browser starts for the session
        # until that socket is released (or RELEASE_HOLD has passed), so none is bound to a socket about to go
        self._ended: dict[str, tuple[Any, float]] = {}
        self._closing = False
        self._driver: Playwright | None = None
        self._driver_start: asyncio.Future[Playwright] | None = None
        self._driver_lock = asyncio.Lock()
        self._background = BackgroundTasks("browser built-ins")
        self._probe: tuple[tuple[str, ...], str | None, float] | None = None  # (what was probed, its problem, when to retry)
        self._probing: tuple[str, ...] | None = None  # the configuration a probe runs for now (in a thread)

    # ------------------------------------------------------------------ the family's contract

    async def start(self, parts: ServerParts) -> None:
        await super().start(parts)
        if self._static_problem() is None:  # probed beside the server's start, not in its way
            self._start_probe(self._probe_key())

    def unavailable(self) -> str | None:
        # What is known at once first; the sandbox probe's answer (or PROBING while it runs) last.
        problem = self._static_problem()
        if problem is None and self.parts is not None:
            reason = self.parts.egress.unavailable()
            if reason:
                problem = f"the browser reaches the network only through the egress proxy: {reason}"
        if problem is None:
            problem = self._sandbox_problem()
        return problem

    def tools(self, settings: Mapping[str, Any]) -> list[ToolSpec]:
        url = {"type": "string", "description": "An http:// or https:// URL."}
        return [
            ToolSpec("browse", "Open a web page in a headless browser (scripts run) and return its rendered text, with "
                     f"its title and final URL (after redirects). The text is cut at {self.max_text_chars} characters. "
                     "Requests the session's egress policy refuses fail; refused parts of a page are listed.",
                     {"type": "object", "properties": {"url": url}, "required": ["url"], "additionalProperties": False}),
            ToolSpec("screenshot", f"Open a web page in a headless browser ({self.viewport_width}×{self.viewport_height} window) "
                     "and return a PNG screenshot of it: the window, or with full_page the whole page (a very long page "
                     "is cut to its top part).",
                     {"type": "object", "properties": {
                         "url": url,
                         "full_page": {"type": "boolean", "description": "The whole scrollable page instead of the window. Default false."},
                     }, "required": ["url"], "additionalProperties": False}),
            ToolSpec("browser_steps", "Open a web page in a headless browser, then run steps in order on it: click an "
                     "element, type text into a field (a text ending in a newline presses Enter), wait for an element to "
                     "appear, or extract the text of the elements a selector matches. Selectors are CSS or Playwright "
                     "selectors (`text=Sign in`, `role=button[name=\"Go\"]`). Returns each step's outcome, the extracted "
                     f"texts, and the final title and URL. Cookies last across calls of this session. At most {self.max_steps} steps.",
                     {"type": "object", "properties": {
                         "url": url,
                         "steps": {"type": "array", "minItems": 1, "maxItems": self.max_steps, "items": {
                             "type": "object",
                             "properties": {
                                 "action": {"type": "string", "enum": ["click", "type", "extract", "wait"]},
                                 "selector": {"type": "string", "description": "The element(s) the step acts on."},
                                 "text": {"type": "string", "description": "For type: the text to enter."},
                             },
                             "required": ["action", "selector"], "additionalProperties": False,
                         }},
                     }, "required": ["url", "steps"], "additionalProperties": False}),
        ]

    async def call(self, ctx: CallContext, tool: str, input: dict[str, Any]) -> Content:
        if tool not in ("browse", "screenshot", "browser_steps"):
            raise ToolError(f"the browser family has no tool {tool!r}; it has browse, screenshot and browser_steps")
        url = public_url(input.get("url"))  # type: ignore[arg-type]  (it refuses what is not a string)
        steps = self._check_steps(input.get("steps")) if tool == "browser_steps" else []
        full_page = input.get("full_page", False)
        if not isinstance(full_page, bool):
            raise ToolError("`full_page` must be true or false")
        try:
            async with self._page(ctx) as (page, refused):
                response = await self._open(ctx, page, url)
                if tool == "browse":
                    result: Content = await self._browse(page, response, refused)
                elif tool == "screenshot":
                    result = await self._screenshot(page, full_page, refused)
                else:
                    result = await self._steps(page, steps, refused)
        except ToolError as exc:
            # A step's error quotes the page (its URL, the steps' extracted texts): scrubbed like a result.
            text = str(exc)
            scrubbed = ctx.egress.scrub(ctx.session_id, text)
            if scrubbed != text:
                exc.args = (scrubbed,)
            raise
        return self._scrubbed(ctx, result)

    @staticmethod
    def _scrubbed(ctx: CallContext, result: Content) -> Content:
        """The result with the session's injected secrets withheld from its text (an image is what the page showed)."""
        if isinstance(result, str):
            return ctx.egress.scrub(ctx.session_id, result)
        return [{**block, "text": ctx.egress.scrub(ctx.session_id, block["text"])} if block.get("type") == "text" else block
                for block in result]

    async def end_session(self, session_id: str) -> None:
        # Under the session's lock: after a launch under way (its browser is then closed here), never during one; and
        # no launch starts after this until the session's socket is released (see `_check_not_ending`).
        async with self._session_lock(session_id):
            browser = self._browsers.pop(session_id, None)
            if browser is not None:
                await self._close_browser(browser)
            now = time.monotonic()
            for ended, (_, since) in list(self._ended.items()):
                if now - since >= RELEASE_HOLD:
                    del self._ended[ended]
            attachment = self._attachment(self.parts.egress, session_id) if self.parts is not None else None
            if attachment is not None:  # the socket `ToolEgress.release` takes away next
                self._ended[session_id] = (attachment, now)

    async def close(self) -> None:
        self._closing = True
        await self._background.close(5.0)
        browsers, self._browsers = list(self._browsers.values()), {}
        await asyncio.gather(*(self._close_browser(b) for b in browsers), return_exceptions=True)
        async with self._driver_lock:
            driver, self._driver = self._driver, None
            start, self._driver_start = self._driver_start, None
            if driver is None and start is not None:  # a start a cut-off call left running
                with contextlib.suppress(Exception):
                    driver = await asyncio.wait_for(start, 30.0)
            if driver is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(driver.stop(), 10.0)

    # ------------------------------------------------------------------ what is installed

    def chromium(self) -> str | None:
        """The Chromium binary this server uses, or None when there is none."""
        if self.chromium_path:
            path = self.chromium_path
            return path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(path)
        if os.path.isfile(DEFAULT_CHROMIUM) and os.access(DEFAULT_CHROMIUM, os.X_OK):
            return DEFAULT_CHROMIUM
        for name in CHROMIUM_NAMES:
            found = shutil.which(name)
            if found:
                return found
        return None

    def _static_problem(self) -> str | None:
        if importlib.util.find_spec("playwright") is None:
            return ("the Python package playwright is not installed; pip install 'jupyter-cma[browser]' (or "
                    "'playwright>=1.65,<2'). Do not run `playwright install`: the browser is the system's Chromium")
        if self.chromium() is None:
            where = f"c.BrowserTools.chromium_path = {self.chromium_path!r} is not an executable" if self.chromium_path else \
                f"neither {DEFAULT_CHROMIUM} nor chromium on PATH exists"
            return f"Chromium is not installed ({where}); Debian/Ubuntu: apt-get install chromium, or set c.BrowserTools.chromium_path"
        if shutil.which(self.bwrap) is None:
            return f"bubblewrap ({self.bwrap}) is not installed, and the browser runs only inside it; Debian/Ubuntu: apt-get install bubblewrap"
        return None

    def _probe_key(self) -> tuple[str, ...]:
        return (self.chromium() or "", shutil.which(self.bwrap) or "", str(self.chromium_sandbox))

    def _sandbox_problem(self) -> str | None:
        """The last probe's answer for this configuration, never waited for: the probe starts bubblewrap and Chromium
        (seconds), so it runs in the background. Without an answer for this configuration yet, `PROBING`; a failure
        older than PROBE_RETRY is probed again (the old answer stands until the new one comes)."""
        key = self._probe_key()
        probe = self._probe
        if probe is None or probe[0] != key:
            self._start_probe(key)
            return PROBING
        if probe[1] is not None and time.monotonic() >= probe[2]:
            self._start_probe(key)
        return probe[1]

    def _start_probe(self, key: tuple[str, ...]) -> None:
        """Probe `key`'s configuration in a thread, unless a probe of it runs already."""
        if self._probing == key:
            return
        self._probing = key
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # called outside the server's loop (a script): a thread of its own
            threading.Thread(target=self._run_probe, args=(key,), name="browser sandbox probe", daemon=True).start()
            return
        self._background.spawn(asyncio.to_thread(self._run_probe, key))

    def _run_probe(self, key: tuple[str, ...]) -> None:
        try:
            self._probe_sandbox(key)
        except Exception as exc:  # an answer all the same, or every check would start another probe
            self.log.warning("jupyter-cma: the browser's sandbox could not be probed: %r", exc)
            self._probe = (key, f"the browser's sandbox could not be probed ({type(exc).__name__}: {exc}); see the server log",
                           time.monotonic() + PROBE_RETRY)
        finally:
            if self._probing == key:
                self._probing = None

    async def _await_probe(self) -> None:
        """Wait (bounded) for the probe of this configuration, when its answer is not in yet."""
        deadline = time.monotonic() + PROBE_TIMEOUT + 5.0
        while self._sandbox_problem() == PROBING and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _probe_sandbox(self, key: tuple[str, ...]) -> str | None:
        """Probe whether Chromium starts inside the browser's bubblewrap sandbox here (blocks for up to PROBE_TIMEOUT s:
        run it in a thread); the answer is kept for `key` (`_probe`)."""
        chromium, bwrap = key[0], key[1]
        if not chromium or not bwrap:
            self._probe = (key, "Chromium or bubblewrap is not installed", time.monotonic() + PROBE_RETRY)
            return self._probe[1]
        with tempfile.TemporaryDirectory(prefix="cma-browser-probe-") as tmp:
            workdir = Path(tmp)
            # Chromium's sandbox needs user namespaces inside the sandbox: `unshare` shows whether the kernel allows them.
            check = f"{shlex.quote(chromium)} --version"
            if key[2] == "True" and shutil.which("unshare"):
                check += " && unshare --user true"
            argv = self._bwrap_argv(bwrap, workdir, socket_path=None, command=["/bin/sh", "-c", check])
            try:
                result = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problem: str | None = f"bubblewrap could not start the browser's sandbox: {exc}"
            else:
                problem = None
                if result.returncode != 0:
                    detail = result.stderr.decode(errors="replace").strip()[-300:] or f"exit code {result.returncode}"
                    problem = f"Chromium does not start inside the browser's bubblewrap sandbox here: {detail}"
                    if "unshare" in detail:
                        problem += "; set c.BrowserTools.chromium_sandbox = False where user namespaces cannot be nested"
        self._probe = (key, problem, time.monotonic() + PROBE_RETRY)
        return problem

    # ------------------------------------------------------------------ the sandbox

    def _bwrap_argv(self, bwrap: str, workdir: Path, *, socket_path: str | None, command: list[str]) -> list[str]:
        """bubblewrap's command line for the browser (see the module docstring); `command` runs inside."""
        namespaces = [
            "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "browser", "--new-session", "--die-with-parent",
        ]
        if not self.chromium_sandbox:
            namespaces.append("--disable-userns")
        etc = write_generated_etc(workdir / "etc")
        mounts = [*system_mounts(), "--ro-bind-try", "/etc/fonts", "/etc/fonts", "--proc", "/proc", "--dev", "/dev"]
        for path, size in (("/tmp", 512 * 1024**2), ("/dev/shm", 256 * 1024**2), (SANDBOX_HOME, 256 * 1024**2)):
            mounts += ["--size", str(size), "--tmpfs", path]
        for name, path in etc.items():
            mounts += ["--ro-bind", str(path), f"/etc/{name}"]
        python = [Path(os.path.realpath(sys.base_prefix)), Path(os.path.dirname(os.path.realpath(sys.executable))),
                  Path(os.path.realpath(BRIDGE_SCRIPT.parent))]
        hidden = [Path(self.parts.data_dir)] if self.parts is not None else []
        mounts += python_mounts(python, hidden)
        if socket_path is not None:
            mounts += ["--bind", socket_path, SOCKET_INSIDE]
        profile = workdir / "profile"
        if profile.is_dir():
            mounts += ["--bind", str(profile), str(profile)]
        mounts += ["--remount-ro", "/"]
        env = ["--clearenv", "--setenv", "HOME", SANDBOX_HOME, "--setenv", "TMPDIR", "/tmp", "--setenv", "PATH", "/usr/bin:/bin",
               "--setenv", "LANG", "C.UTF-8", "--setenv", "XDG_CONFIG_HOME", f"{SANDBOX_HOME}/.config",
               "--setenv", "XDG_CACHE_HOME", f"{SANDBOX_HOME}/.cache"]
        if socket_path is None:
            return [bwrap, *namespaces, *mounts, *env, "--chdir", SANDBOX_HOME, "--", *command]
        return [bwrap, *namespaces, *mounts, *env, "--chdir", SANDBOX_HOME, "--",
                os.path.realpath(sys.executable), "-I", "-S", str(os.path.realpath(BRIDGE_SCRIPT)),
                "--listen", PROXY_LISTEN, "--unix", SOCKET_INSIDE, "--", *command]

    def _chromium_args(self, ca_bundle: Path) -> list[str]:
        try:
            spki = spki_sha256(last_certificate(Path(ca_bundle).read_text()))
        except (OSError, ValueError, IndexError) as exc:
            raise ToolError(f"the browser cannot start: the egress proxy's CA bundle ({ca_bundle}) is not readable ({exc}); "
                            "the egress engine writes it when it starts (see the server log)") from None
        return [
            f"--proxy-server=http://{PROXY_LISTEN}",
            # `<-loopback>`: loopback goes to the proxy too (which refuses it), never to the namespace's own lo. The hosts
            # listed go direct, which fails at once: there is no network to go to.
            "--proxy-bypass-list=" + ";".join(["<-loopback>", *BACKGROUND_HOSTS, *NEVER_PROXIED]),
            f"--ignore-certificate-errors-spki-list={spki}",
            "--disable-gpu",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        ]

    # ------------------------------------------------------------------ browsers

    async def _playwright(self) -> Playwright:
        async with self._driver_lock:
            if self._driver is None:
                start = self._driver_start
                if start is None or (start.done() and (start.cancelled() or start.exception() is not None)):
                    from playwright.async_api import async_playwright

                    start = self._driver_start = asyncio.ensure_future(async_playwright().start())
                # Shielded: a call cut off here leaves the driver starting, for the next call to use (or close to stop).
                self._driver = await asyncio.shield(start)
            return self._driver

    @contextlib.asynccontextmanager
    async def _page(self, ctx: CallContext) -> AsyncIterator[tuple[Page, list[str]]]:
        """A new page in the session's browser (started if need be), closed at the end; and the refusals it met."""
        browser = await self._browser(ctx)
        browser.active += 1
        page: Page | None = None
        try:
            try:
                page = await browser.context.new_page()
            except Exception as exc:
                if self._browsers.get(ctx.session_id) is browser:
                    self._browsers.pop(ctx.session_id, None)
                self._background.spawn(self._close_browser(browser))
                raise ToolError(f"the session's browser did not answer ({_short(exc)}); call again to start a new one") from None
            refused: list[str] = []
            self._watch_refusals(ctx, page, refused)
            try:
                yield page, refused
            except ToolError:
                raise
            except Exception as exc:
                if browser.closed:
                    raise ToolError("the session's browser was closed while the call ran (the session ended or the "
                                    "server is stopping)") from None
                if type(exc).__name__ == "TimeoutError":
                    raise ToolError(f"timed out after {self.page_timeout:g} s: {_short(exc)}") from None
                raise ToolError(f"the browser failed: {_short(exc)}") from None
        finally:
            if page is not None:
                with contextlib.suppress(Exception):
                    await page.close()
            browser.active -= 1
            browser.last_used = time.monotonic()

    async def _browser(self, ctx: CallContext) -> _Browser:
        session_id = ctx.session_id
        browser = self._browsers.get(session_id)
        if browser is not None and not browser.closed and not self._stale(browser):
            browser.last_used = time.monotonic()
            return browser
        async with self._session_lock(session_id):
            if self._closing:
                raise ToolError("the server is stopping; the browser is not available")
            browser = self._browsers.get(session_id)
            if browser is not None and not browser.closed:
                if not self._stale(browser):
                    return browser
                # Its socket was released (the session's sandbox went): it has no way out; a new one gets a new socket.
                self._browsers.pop(session_id, None)
                await self._close_browser(browser)
            self._check_not_ending(ctx)
            if self._static_problem() is None and self._sandbox_problem() == PROBING:  # a call waits for the answer
                await self._await_probe()
            problem = self.unavailable()
            if problem:
                raise ToolError(f"the browser is not available on this server: {problem}")
            await self._make_room()
            browser = await self._launch(ctx)
            self._browsers[session_id] = browser
            self._background.spawn(self._idle_watch(browser))
            return browser

    @contextlib.asynccontextmanager
    async def _session_lock(self, session_id: str) -> AsyncIterator[None]:
        """The session's lock for starting or ending its browser (one lock per session while anyone holds or awaits it)."""
        entry = self._launching.get(session_id)
        if entry is None:
            entry = self._launching[session_id] = _SessionLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._launching.get(session_id) is entry:
                del self._launching[session_id]

    @staticmethod
    def _attachment(egress: ToolEgress, session_id: str) -> Any:
        """The proxy's attachment of the session's browser socket now (None: not attached)."""
        return egress.proxy.attachments.get(f"{BROWSER_PREFIX}{session_id}")

    def _stale(self, browser: _Browser) -> bool:
        """Whether the socket the browser was started with is no longer the session's (released since)."""
        if self.parts is None:
            return False
        return self._attachment(self.parts.egress, browser.session_id) is not browser.attachment

    def _check_not_ending(self, ctx: CallContext) -> None:
        """ToolError while the session's sandbox is being released: `end_session` closed its browser, and the socket
        a new one would use is about to be taken away (`ToolEgress.release` runs after every family's end_session)."""
        ended = self._ended.get(ctx.session_id)
        if ended is None:
            return
        attachment, since = ended
        if self._attachment(ctx.egress, ctx.session_id) is attachment and time.monotonic() - since < RELEASE_HOLD:
            raise ToolError("the session's browser was closed because its sandbox is being released; call again in a "
                            "moment (a new browser then starts)")
        del self._ended[ctx.session_id]  # released (or it never will be): the next browser attaches a new socket

    async def _make_room(self) -> None:
        """Close the browser idle the longest when `max_browsers` are open; fail if every one is in use."""
        while len(self._browsers) >= max(1, self.max_browsers):
            idle = [b for b in self._browsers.values() if b.active == 0]
            if not idle:
                raise ToolError(f"{len(self._browsers)} browsers are in use on this server (its limit, "
                                "c.BrowserTools.max_browsers); try again in a moment")
            oldest = min(idle, key=lambda b: b.last_used)
            self._browsers.pop(oldest.session_id, None)
            await self._close_browser(oldest)

    async def _launch(self, ctx: CallContext) -> _Browser:
        # A socket of the browser's own: decided and logged as the session, without the policy's injections (a page's
        # scripts would spend them). ToolError when there is no egress engine.
        socket_path = await ctx.egress.socket_path(ctx.session_id, injections=False)
        attachment = self._attachment(ctx.egress, ctx.session_id)
        args = self._chromium_args(ctx.egress.ca_bundle)
        chromium, bwrap = self.chromium(), shutil.which(self.bwrap)
        assert chromium is not None and bwrap is not None
        workdir = Path(tempfile.mkdtemp(prefix="jupyter-cma-browser-"))
        pid_file = workdir / "bwrap.pid"
        launched = False  # the launch was handed to `_discard_launch`, or it succeeded: the workdir is not removed here
        try:
            (workdir / "profile").mkdir(mode=0o700)
            pid_file = workdir / "bwrap.pid"
            argv = self._bwrap_argv(bwrap, workdir, socket_path=socket_path, command=[chromium])
            # Playwright starts one executable and passes Chromium's arguments to it: this script, which records
            # its pid and becomes bubblewrap (the debugging pipe, fds 3 and 4, passes through bwrap and the bridge),
            # with an empty environment: bubblewrap's own processes hold nothing of the server's either.
            script = workdir / "chromium"
            env = shutil.which("env") or "/usr/bin/env"
            script.write_text(f"#!/bin/sh\necho $$ > {shlex.quote(str(pid_file))}\nexec {env} -i {shlex.join(argv)} \"$@\"\n")
            script.chmod(0o700)
            driver = await self._playwright()
            launch = asyncio.ensure_future(driver.chromium.launch_persistent_context(
                str(workdir / "profile"), executable_path=str(script), args=args, headless=True,
                chromium_sandbox=self.chromium_sandbox, accept_downloads=False, ignore_https_errors=False,
                viewport={"width": self.viewport_width, "height": self.viewport_height},
                timeout=self.page_timeout * 1000, handle_sigint=False, handle_sigterm=False, handle_sighup=False,
            ))
            try:
                # Shielded: a call cut off here (the family's timeout) leaves the driver launching all the same, and
                # what it launches must then be closed, its sandbox reaped and its profile removed.
                context = await asyncio.shield(launch)
            except asyncio.CancelledError:
                launched = True
                self._background.spawn(self._discard_launch(launch, workdir, ctx.session_id))
                raise
            launched = True
        except ToolError:
            raise
        except Exception as exc:
            self.log.warning("jupyter-cma: the browser of session %s did not start: %s", ctx.session_id, exc)
            raise ToolError(f"the browser did not start ({_short(exc)}); see the server log") from None
        finally:
            if not launched:  # failed or cut off before the launch began (a CancelledError too): nothing runs from it
                self._kill_leftover(pid_file, workdir)
                shutil.rmtree(workdir, ignore_errors=True)
        try:
            pid: int | None = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        context.set_default_timeout(self.page_timeout * 1000)
        context.set_default_navigation_timeout(self.page_timeout * 1000)
        browser = _Browser(ctx.session_id, workdir, context, pid, attachment)

        def gone(_: Any) -> None:  # crashed, or closed by us
            browser.closed = True
            if self._browsers.get(browser.session_id) is browser:
                self._browsers.pop(browser.session_id, None)
                self._background.spawn(self._close_browser(browser))

        context.on("close", gone)
        self.log.info("jupyter-cma: started a browser for session %s (pid %s, profile %s)", ctx.session_id, pid, browser.profile)
        return browser

    async def _discard_launch(self, launch: asyncio.Future[BrowserContext], workdir: Path, session_id: str) -> None:
        """A launch whose call was cut off: wait for it, close what it started, reap its sandbox, remove its files."""
        try:
            with contextlib.suppress(Exception):
                context = await asyncio.wait_for(asyncio.shield(launch), self.page_timeout + 10.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(context.close(), 10.0)
        finally:
            if not launch.done():
                launch.cancel()
            self._kill_leftover(workdir / "bwrap.pid", workdir)
            shutil.rmtree(workdir, ignore_errors=True)
            self.log.info("jupyter-cma: discarded the browser started for session %s by a call that was cut off", session_id)

    @staticmethod
    def _kill_leftover(pid_file: Path, workdir: Path) -> None:
        """SIGKILL the sandbox a failed or discarded launch may have left (its processes die with it)."""
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            if str(workdir / "profile").encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)

    async def _idle_watch(self, browser: _Browser) -> None:
        while not browser.closed:
            left = browser.last_used + self.idle_close - time.monotonic()
            stale = self._stale(browser)
            if (left <= 0 or stale) and browser.active == 0:
                if self._browsers.get(browser.session_id) is browser:
                    self._browsers.pop(browser.session_id, None)
                self.log.info("jupyter-cma: closing the %s browser of session %s", "released" if stale else "idle", browser.session_id)
                await self._close_browser(browser)
                return
            await asyncio.sleep(min(max(left, 1.0), STALE_CHECK))

    async def _close_browser(self, browser: _Browser) -> None:
        """Close the browser; kill its sandbox if it does not go; remove its profile."""
        browser.closed = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(browser.context.close(), 10.0)
        if browser.pid is not None:
            await self._reap(browser.pid, browser.profile)
        shutil.rmtree(browser.workdir, ignore_errors=True)

    @staticmethod
    async def _reap(pid: int, profile: Path) -> None:
        """Wait for bubblewrap to exit (its sandbox dies with it); SIGKILL it after a few seconds."""
        marker = str(profile)

        def ours() -> bool:
            try:
                return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return False

        deadline = time.monotonic() + 5.0
        while ours() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if ours():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while ours() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ pages

    def _watch_refusals(self, ctx: CallContext, page: Page, refused: list[str]) -> None:
        """Collect the page's requests the proxy refused (shown under the page's text)."""
        seen: set[str] = set()

        def note(line: str) -> None:
            if line not in seen and len(refused) < MAX_REFUSED_LISTED:
                seen.add(line)
                refused.append(line)

        def on_response(response: Response) -> None:
            rule = response.headers.get(RULE_HEADER.lower())
            if rule and response.status >= 400:
                note(f"{response.request.method} {response.url[:300]} ({rule})")

        def on_failed(request: Request) -> None:
            failure = request.failure or ""
            if any(code in failure for code in TUNNEL_ERRORS):
                decision = self._decision(ctx, request.url)
                note(f"{request.method} {request.url[:300]} ({decision.rule if decision is not None and not decision.allowed else failure})")

        page.on("response", on_response)
        page.on("requestfailed", on_failed)

    async def _open(self, ctx: CallContext, page: Page, url: str) -> Response | None:
        """Navigate; a refused or failed main request is a ToolError naming why."""
        started, began = time.time(), time.monotonic()
        try:
            # The document first: a page whose images or scripts hang is still read once its load time is up.
            response = await page.goto(url, wait_until="domcontentloaded")
        except Exception as exc:
            message = _short(exc)
            if "Download is starting" in message:
                raise ToolError(f"{url} is a download, not a page; the browser does not download files (use web_fetch)") from None
            if any(code in message for code in TUNNEL_ERRORS):
                raise await self._tunnel_refusal(ctx, url, started, message) from None
            if type(exc).__name__ == "TimeoutError":
                raise ToolError(f"{url} did not finish loading within {self.page_timeout:g} s") from None
            raise ToolError(f"could not open {url}: {message}") from None
        if response is not None:
            rule = response.headers.get(RULE_HEADER.lower())
            if rule and response.status >= 400:
                try:
                    body = await response.body()
                except Exception:
                    body = b""
                raise refusal(response.status, rule, body)
        left = self.page_timeout - (time.monotonic() - began)
        with contextlib.suppress(Exception):  # sub-resources, within what is left of page_timeout
            await page.wait_for_load_state("load", timeout=max(left, 0.5) * 1000)
        with contextlib.suppress(Exception):  # scripts that render after `load`: let them fetch, briefly
            await page.wait_for_load_state("networkidle", timeout=SETTLE_SECONDS * 1000)
        return response

    def _decision(self, ctx: CallContext, url: str) -> Any:
        """The session's policy's decision for a CONNECT to the URL's host (as the proxy makes it), or None."""
        if self.parts is None:
            return None
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            policies = self.parts.policies
            return policies.decide(policies.context_for(ctx.session_id), "CONNECT", "https", parts.hostname or "", port, None)
        except Exception:
            return None

    async def _tunnel_refusal(self, ctx: CallContext, url: str, started: float, message: str) -> ToolError:
        """Why the proxy refused the tunnel to `url`'s host: the policy's decision, else the log's row."""
        decision = self._decision(ctx, url)
        if decision is not None and not decision.allowed:
            return EgressRefused(decision.status or 403, decision.rule, decision.reason)
        host = (urlsplit(url).hostname or "").lower()
        if self.parts is not None:
            deadline = time.monotonic() + 2.0  # the engine's log records arrive at the end of its loop turn
            while time.monotonic() < deadline:
                rows = self.parts.store.egress_log(session_id=ctx.session_id, host=host, decision="denied", since=started - 1, limit=1)
                if rows:
                    return ToolError(f"refused by the egress proxy ({rows[0]['rule']}): could not open {url}; "
                                     "see the session's egress log")
                await asyncio.sleep(0.1)
        return ToolError(f"could not open {url}: the egress proxy did not open a connection to {host} ({message})")

    async def _browse(self, page: Page, response: Response | None, refused: list[str]) -> str:
        title = await page.title()
        try:
            text = await page.inner_text("body")
        except Exception:
            text = await page.content()
        text = re.sub(r"\n{3,}", "\n\n", text.strip())
        head = [f"Title: {title}" if title else "Title: (none)", f"URL: {page.url}"]
        if response is not None:
            head.append(f"Status: {response.status}")
        cut = ""
        if len(text) > self.max_text_chars:
            cut = f"\n\n[… cut: {len(text) - self.max_text_chars} more characters]"
            text = text[:self.max_text_chars]
        return "\n".join(head) + self._refused_note(refused) + "\n\n" + text + cut

    @staticmethod
    def _refused_note(refused: list[str]) -> str:
        if not refused:
            return ""
        return "\nRefused by the session's egress policy (not loaded):\n" + "\n".join(f"- {line}" for line in refused)

    async def _screenshot(self, page: Page, full_page: bool, refused: list[str]) -> list[dict[str, Any]]:
        note = ""
        clip = None
        if full_page:
            height = int(await page.evaluate("Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0)"))
            if height > MAX_IMAGE_SIDE:
                clip = {"x": 0, "y": 0, "width": self.viewport_width, "height": MAX_IMAGE_SIDE}
                note = f" (the top {MAX_IMAGE_SIDE} px of a {height} px page)"
        data = await page.screenshot(type="png", full_page=full_page, clip=clip)
        if len(data) > self.max_screenshot_bytes and full_page:
            # Cut the page to a height whose PNG should fit (PNG size grows about linearly with height).
            height = clip["height"] if clip else int(await page.evaluate("document.documentElement.scrollHeight"))
            for _ in range(3):
                height = max(self.viewport_height, int(height * self.max_screenshot_bytes / len(data) * 0.9))
                data = await page.screenshot(type="png", full_page=True, clip={"x": 0, "y": 0, "width": self.viewport_width, "height": height})
                note = f" (the top {height} px: the whole page was over the size limit)"
                if len(data) <= self.max_screenshot_bytes or height == self.viewport_height:
                    break
        if len(data) > self.max_screenshot_bytes:
            raise ToolError(f"the screenshot is {len(data)} bytes, over the limit of {self.max_screenshot_bytes}; "
                            "take it without full_page")
        title = await page.title()
        text = f"Screenshot of {page.url}{note}" + (f" — {title}" if title else "") + self._refused_note(refused)
        return [
            {"type": "text", "text": text},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(data).decode()}},
        ]

    def _check_steps(self, steps: Any) -> list[dict[str, str]]:
        if not isinstance(steps, list) or not steps:
            raise ToolError('`steps` must be a non-empty list of {"action", "selector", "text"?}')
        if len(steps) > self.max_steps:
            raise ToolError(f"{len(steps)} steps are more than the {self.max_steps} one call may take; split them into several calls")
        checked = []
        for number, step in enumerate(steps, 1):
            if not isinstance(step, dict):
                raise ToolError(f'step {number} must be an object {{"action", "selector", "text"?}}')
            action, selector, text = step.get("action"), step.get("selector"), step.get("text")
            if action not in ("click", "type", "extract", "wait"):
                raise ToolError(f"step {number}: action must be click, type, extract or wait, not {action!r}")
            if not isinstance(selector, str) or not selector.strip():
                raise ToolError(f"step {number} ({action}) needs a `selector`")
            if action == "type" and not isinstance(text, str):
                raise ToolError(f"step {number} (type) needs the `text` to type")
            extra = set(step) - {"action", "selector", "text"}
            if extra:
                raise ToolError(f"step {number}: unknown field(s) {', '.join(sorted(extra))}; a step has action, selector and text")
            checked.append({"action": action, "selector": selector, "text": text if isinstance(text, str) else ""})
        return checked

    async def _steps(self, page: Page, steps: list[dict[str, str]], refused: list[str]) -> str:
        lines: list[str] = []
        budget = self.max_text_chars
        for number, step in enumerate(steps, 1):
            action, selector, text = step["action"], step["selector"], step["text"]
            label = f"{number}. {action} {selector!r}"
            try:
                if action == "click":
                    await page.locator(selector).first.click()
                    with contextlib.suppress(Exception):  # a click that navigates: let the next page load
                        await page.wait_for_load_state("load")
                    lines.append(f"{label}: done")
                elif action == "type":
                    target = page.locator(selector).first
                    await target.fill(text.rstrip("\n"))
                    if text.endswith("\n"):
                        await target.press("Enter")
                        with contextlib.suppress(Exception):
                            await page.wait_for_load_state("load")
                    lines.append(f"{label}: typed {len(text.rstrip(chr(10)))} characters" + (" and pressed Enter" if text.endswith("\n") else ""))
                elif action == "wait":
                    await page.locator(selector).first.wait_for(state="visible")
                    lines.append(f"{label}: visible")
                else:
                    matches = page.locator(selector)
                    await matches.first.wait_for(state="attached")
                    texts = [t.strip() for t in await matches.all_inner_texts()]
                    found = "\n".join(t for t in texts if t)[:min(MAX_STEP_TEXT, max(budget, 0))]
                    budget -= len(found)
                    lines.append(f"{label}: {len(texts)} element(s)\n{found}" if found else f"{label}: {len(texts)} element(s), no text")
            except Exception as exc:
                if type(exc).__name__ == "TimeoutError":
                    why = f"nothing matched {selector!r} (or it never became usable) within {self.page_timeout:g} s"
                else:
                    why = _short(exc)
                done = "\n".join(lines) or "(none)"
                raise ToolError(f"step {number} ({action} {selector!r}) failed: {why}. Page: {page.url}\nSteps done before it:\n{done}") from None
        title = await page.title()
        return f"Title: {title}\nURL: {page.url}" + self._refused_note(refused) + "\n\n" + "\n".join(lines)
