"""Browser built-in benchmark: a `screenshot` tool call, from the call to the image returned, cold and warm.

Wired as in the server: a real `EgressProxy` (the mitmproxy engine in its own process, its log in SQLite),
the server's `SessionEgress` as `ToolEgress`'s hook, and `BrowserTools` started with the server's parts. One
environment policy routes `site.bench` (a private service) to a loopback HTTP server of this benchmark that
serves a small page (a heading, a paragraph, a 40 KB PNG and a stylesheet: four requests).

- WARM: the session's browser is up (one call before, not counted); each call opens a page in it, loads
  `http://site.bench/`, takes a window screenshot (1280×800 PNG) and closes the page. N=10.
- COLD: no browser runs for the session (`end_session` before each call), so the call also starts one:
  bubblewrap, the egress bridge and Chromium, over Playwright's pipe. The Playwright driver (a node process)
  stays up between calls, as in the server; the very first call of a server also starts it (shown once).
  N=5.

Baselines in the same run: the same Chromium driven by the same Playwright directly (`launch`, no
bubblewrap, no proxy: straight to the loopback server), the same steps as the tool (a new page, `load`,
then up to `SETTLE_SECONDS` for the network to go quiet, which takes Playwright's 500 ms of quiet at
least, the screenshot, the page closed), cold (launched for the call) and warm (in a running browser). The tool's rows against them show what confinement and the
egress path cost; cold against warm shows what keeping a browser per session saves.

Medians (and p90) in milliseconds; figures are printed, never asserted. `--quick` (or BENCH_QUICK=1) takes
fewer samples.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import PolicyStore
from jupyter_cma.egress.policy.resolution import PolicyResolver
from jupyter_cma.egress.proxy import EgressProxy
from jupyter_cma.egress.secrets import SecretStore
from jupyter_cma.store import Store
from jupyter_cma.tools.builtin.base import CallContext, ServerParts
from jupyter_cma.tools.builtin.browser import PROBING, SETTLE_SECONDS, BrowserTools
from jupyter_cma.tools.builtin.egress import ToolEgress


def noise_png(width: int, height: int) -> bytes:
    """A PNG of pseudo-random pixels (about width × height × 3 bytes: it does not compress)."""
    raw = bytearray()
    state = 12345
    for _ in range(height):
        raw.append(0)
        for _ in range(width * 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            raw.append(state >> 16 & 0xFF)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 1)) + chunk(b"IEND", b"")


PAGE = (b"<html><head><title>Bench page</title><link rel=stylesheet href=/style.css></head><body>"
        b"<h1>A page to screenshot</h1><p>" + b"Some text to lay out. " * 80 + b"</p><img src=/picture.png></body></html>")
FILES = {
    "/": ("text/html", PAGE),
    "/style.css": ("text/css", b"body { font-family: sans-serif; margin: 2em; } h1 { color: #345; } img { width: 400px; }"),
    "/picture.png": ("image/png", noise_png(120, 110)),
    "/favicon.ico": ("image/x-icon", b""),
}


class Site:
    """The loopback server the page comes from."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                kind, body = FILES.get(self.path.split("?")[0], ("text/plain", b"not found"))
                self.send_response(200 if self.path.split("?")[0] in FILES else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _no_client() -> Any:
    raise RuntimeError("the browser family does not call the API")


async def measure_tool(base: Path, site: Site, warm_n: int, cold_n: int) -> dict[str, Any]:
    """The tool's calls through the whole server-side path."""
    data = base / "cma"
    data.mkdir()
    store = Store(data / "cma.sqlite3")
    policies = PolicyStore(store)
    policies.create({"name": "bench", "scope": {"environment": True},
                     "private_services": [{"name": "site.bench", "target": f"127.0.0.1:{site.port}"}]})
    log = EgressLog(store)
    proxy = EgressProxy(data_dir=data, api_base_url="https://api.anthropic.com", middleware=[], egress_log=log)
    if not await proxy.start():
        sys.exit(f"bench_browser needs the egress engine: {proxy.error}")
    resolver = PolicyResolver(policies, api_base_url="https://api.anthropic.com")
    secrets = SecretStore(data / "secrets")
    egress = ToolEgress(hook=SessionEgress(store=store, proxy=proxy), proxy=proxy, socket_dir=data / "tools",
                        policies=resolver, secrets=secrets)
    family = BrowserTools()
    await family.start(ServerParts(store=store, client=_no_client, environment_id=lambda: "", contents_manager=None,
                                   root_dir=str(base), policies=resolver, secrets=secrets, data_dir=data, egress=egress))
    problem = family.unavailable()
    while problem == PROBING:  # the sandbox probe runs in the background after start
        await asyncio.sleep(0.1)
        problem = family.unavailable()
    if problem:
        sys.exit(f"bench_browser: the browser family is unavailable here: {problem}")
    ctx = CallContext(session_id="sesn_bench", agent_id=None, settings={}, egress=egress)

    async def call() -> float:
        began = time.perf_counter()
        blocks = await family.call(ctx, "screenshot", {"url": "http://site.bench/"})
        elapsed = (time.perf_counter() - began) * 1000
        assert blocks[1]["type"] == "image" and base64.b64decode(blocks[1]["source"]["data"]).startswith(b"\x89PNG")
        return elapsed

    try:
        first = await call()  # the server's first call: the Playwright driver starts too
        warm = [await call() for _ in range(warm_n)]
        cold = []
        for _ in range(cold_n):
            # What the server does when a session's sandbox goes: its browser closes, then its egress socket.
            await family.end_session("sesn_bench")
            await egress.release("sesn_bench")
            cold.append(await call())
        rows = log.query(session_id="sesn_bench", limit=10_000)
        return {"first": first, "warm": warm, "cold": cold, "rows": len(rows),
                "denied": sum(1 for r in rows if r["decision"] != "allowed")}
    finally:
        await family.close()
        await egress.close()
        await proxy.stop()
        store.close()


async def measure_direct(site: Site, chromium: str, warm_n: int, cold_n: int) -> dict[str, list[float]]:
    """The baseline: the same Chromium and Playwright flow (a persistent context, as the tool's), unconfined,
    straight to the loopback server."""
    from playwright.async_api import async_playwright

    url = f"http://127.0.0.1:{site.port}/"
    profiles = tempfile.TemporaryDirectory(prefix="bench-browser-profiles-")
    async with async_playwright() as driver:
        async def launch() -> Any:
            return await driver.chromium.launch_persistent_context(
                tempfile.mkdtemp(dir=profiles.name), executable_path=chromium, headless=True,
                args=["--no-proxy-server", "--disable-gpu"], viewport={"width": 1280, "height": 800})

        async def shot(context: Any) -> None:
            page = await context.new_page()
            await page.goto(url, wait_until="load")
            await page.wait_for_load_state("networkidle", timeout=SETTLE_SECONDS * 1000)  # as the tool does
            await page.screenshot(type="png")
            await page.close()

        async def cold_one() -> float:
            began = time.perf_counter()
            context = await launch()
            await shot(context)
            elapsed = (time.perf_counter() - began) * 1000
            await context.close()
            return elapsed

        await cold_one()  # warm-up: first start of this driver, not counted
        cold = [await cold_one() for _ in range(cold_n)]
        context = await launch()
        await shot(context)
        warm = []
        for _ in range(warm_n):
            began = time.perf_counter()
            await shot(context)
            warm.append((time.perf_counter() - began) * 1000)
        await context.close()
    profiles.cleanup()
    return {"cold": cold, "warm": warm}


def ms(values: list[float], q: float = 50) -> str:
    return f"{percentile(values, q):.0f} ms"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    quick = parser.parse_args().quick
    warm_n, cold_n = (4, 2) if quick else (10, 5)
    chromium = BrowserTools().chromium()
    if chromium is None:
        sys.exit("bench_browser needs Chromium (Debian/Ubuntu: apt-get install chromium)")
    started = time.perf_counter()
    site = Site()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
            tool = asyncio.run(measure_tool(Path(tmp), site, warm_n, cold_n))
        direct = asyncio.run(measure_direct(site, chromium, warm_n, cold_n))
    finally:
        site.close()

    warm, cold = tool["warm"], tool["cold"]
    rows = [
        (f"warm: browser up, call → screenshot, p50 (N={len(warm)})", ms(warm), "Playwright + Chromium direct, browser up",
         ms(direct["warm"]), f"{percentile(warm, 50) / percentile(direct['warm'], 50):.2f}×"),
        (f"warm, p90", ms(warm, 90), "Playwright + Chromium direct, browser up", ms(direct["warm"], 90),
         f"{percentile(warm, 90) / percentile(direct['warm'], 90):.2f}×"),
        (f"cold: no browser, call → screenshot, p50 (N={len(cold)})", ms(cold), "Playwright + Chromium direct, launch each time",
         ms(direct["cold"]), f"{percentile(cold, 50) / percentile(direct['cold'], 50):.2f}×"),
        (f"cold, p90", ms(cold, 90), "Playwright + Chromium direct, launch each time", ms(direct["cold"], 90),
         f"{percentile(cold, 90) / percentile(direct['cold'], 90):.2f}×"),
        ("cold against warm, p50", ms(cold), "warm (the tool)", ms(warm), f"{percentile(cold, 50) / percentile(warm, 50):.1f}×"),
        ("the server's first call (the driver starts too)", f"{tool['first']:.0f} ms", "cold (the tool)", ms(cold),
         f"{tool['first'] - percentile(cold, 50):+.0f} ms"),
    ]
    print_table(("measure", "screenshot tool (bubblewrap + egress)", "baseline", "baseline value", "ratio"), rows)
    print()
    for name, values in (("tool warm", warm), ("tool cold", cold), ("direct warm", direct["warm"]), ("direct cold", direct["cold"])):
        print(f"{name + ',':<13} ms: {' '.join(f'{t:.0f}' for t in sorted(values))}  (mean {statistics.mean(values):.0f})")
    print(f"egress log of the session: {tool['rows']} records, {tool['denied']} not allowed")
    print(f"({'quick mode, ' if quick else ''}{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
