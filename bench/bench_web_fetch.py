"""web_fetch benchmark: what the built-in adds to fetching a page, against a direct httpx fetch of the same page.

Wired as in the server: a real `EgressProxy` (the mitmproxy engine in its own process, its log in SQLite),
the server's `SessionEgress` as `ToolEgress`'s hook, and `WebFetchTools` started with the server's parts.
One environment policy routes `site.bench` (plain http) and `https://tls.bench` (TLS, a certificate of a CA
made for the run with the `openssl` command, given to the proxy as its `upstream_ca`; the tunnel is passed
through, so the client checks the site's own certificate) to a loopback HTTP server in another process,
which serves an article of about 17 KB of HTML (navigation, 60 paragraphs with links and emphasis, a
table, a footer).

Measured, N sequential calls each, in alternating blocks (tool, direct, tool, …) so both see the same machine:

- TOOL: `web_fetch(url)` through `WebFetchTools.call`: the session's socket (attached once, on the session's
  first call, which is shown apart), a new client per call (CONNECT and TLS for https), the proxy's decision
  and log row, the download, trafilatura's markdown.
- DIRECT (the baseline): a new `httpx.AsyncClient` per call (its TLS context made once, as `ToolEgress` makes
  its own once), GET straight to the loopback port, the body read.

And where the difference goes: the same GET through `ToolEgress.http_client` without the conversion
(the proxy's part), and trafilatura on the page alone (the conversion's part).

Medians (p50) and p95 in milliseconds, the added latency (tool − direct) and the ratio; printed, never
asserted. `--quick` (or BENCH_QUICK=1) takes fewer samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.policy import PolicyStore
from jupyter_cma.egress.policy.resolution import PolicyResolver
from jupyter_cma.egress.proxy import EgressProxy
from jupyter_cma.egress.secrets import SecretStore
from jupyter_cma.store import Store
from jupyter_cma.tools.builtin.base import CallContext, ServerParts
from jupyter_cma.tools.builtin.egress import ToolEgress
from jupyter_cma.tools.builtin.web import WebFetchTools, _extract

SESSION = "sesn_bench_web"


def article() -> bytes:
    """About 17 KB of HTML: what a documentation page or a news article is like."""
    nav = "".join(f'<li><a href="/section/{i}">Section {i}</a></li>' for i in range(30))
    paragraphs = "".join(
        f"<h2>Part {i}</h2>" if i % 10 == 0 else
        f"<p>Paragraph {i} explains how <b>widgets</b> of batch {i} are made, tested and shipped; see the "
        f'<a href="https://example.org/batch/{i}">batch notes</a> and the <em>assembly guide</em> for the tools each '
        f"step needs, the tolerances it keeps and what the inspection records at the end of the line.</p>"
        for i in range(60))
    table = "<table><tr><th>size</th><th>weight</th></tr>" + "".join(f"<tr><td>{i} cm</td><td>{i * 3} g</td></tr>" for i in range(20)) + "</table>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Widget handbook</title>"
            f"<style>body {{ font-family: sans-serif; }}</style></head><body><nav><ul>{nav}</ul></nav>"
            f"<main><article><h1>The widget handbook</h1>{paragraphs}{table}</article></main>"
            f"<footer>Copyright Widget Works. All rights reserved.</footer><script>var analytics = 1;</script></body></html>").encode()


# ---------------------------------------------------------------------- the site (a process of its own)


def serve(cert: str, key: str) -> None:
    """The loopback site, plain and TLS, HTTP/1.1 keep-alive; prints its ports, runs until killed."""
    import threading

    page = article()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per answer and no Nagle: a head and a body written apart wait out a delayed ACK (40 ms) under TLS.
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    plain = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    secure = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    secure.socket = tls.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"http": plain.server_address[1], "https": secure.server_address[1]}), flush=True)
    threading.Event().wait()


def make_ca(directory: Path) -> dict[str, str]:
    """A CA and a certificate for tls.bench, made with the openssl command."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=tls.bench")
    (directory / "ext").write_text("subjectAltName=DNS:tls.bench\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem",
            "-days", "2", "-extfile", "ext")
    return {"ca": str(directory / "ca.pem"), "cert": str(directory / "leaf.pem"), "key": str(directory / "leaf.key")}


# ---------------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _no_client() -> Any:
    raise RuntimeError("web_fetch does not call the API")


async def timed(fn: Any) -> float:
    began = time.perf_counter()
    await fn()
    return (time.perf_counter() - began) * 1000


async def measure(base: Path, ports: dict[str, int], ca: dict[str, str], n: int, rounds: int) -> dict[str, Any]:
    data = base / "cma"
    data.mkdir()
    store = Store(data / "cma.sqlite3")
    policies = PolicyStore(store)
    policies.create({"name": "bench", "scope": {"environment": True}, "private_services": [
        {"name": "site.bench", "target": f"127.0.0.1:{ports['http']}"},
        {"name": "https://tls.bench", "target": f"127.0.0.1:{ports['https']}"}]})
    log = EgressLog(store)
    proxy = EgressProxy(data_dir=data, api_base_url="https://api.anthropic.com", middleware=[], egress_log=log, upstream_ca=ca["ca"])
    if not await proxy.start():
        sys.exit(f"bench_web_fetch needs the egress engine: {proxy.error}")
    egress = ToolEgress(hook=SessionEgress(store=store, proxy=proxy), proxy=proxy, socket_dir=data / "tools")
    family = WebFetchTools()
    await family.start(ServerParts(store=store, client=_no_client, environment_id=lambda: "", contents_manager=None,
                                   root_dir=str(base), policies=PolicyResolver(policies, api_base_url="https://api.anthropic.com"),
                                   secrets=SecretStore(data / "secrets"), data_dir=data, egress=egress))
    problem = family.unavailable()
    if problem:
        sys.exit(f"bench_web_fetch: web_fetch is unavailable here: {problem}")
    ctx = CallContext(session_id=SESSION, agent_id=None, settings={}, egress=egress)
    page = article()
    urls = {"http": ("http://site.bench/page", f"http://127.0.0.1:{ports['http']}/page"),
            "https": ("https://tls.bench/page", f"https://127.0.0.1:{ports['https']}/page")}

    async def tool(url: str) -> None:
        text = await family.call(ctx, "web_fetch", {"url": url})
        assert isinstance(text, str) and "Title: Widget handbook" in text, text[:300]

    # Made once, as ToolEgress makes its own once: building a context (loading CAs) costs more than a loopback fetch.
    # The site's certificate names tls.bench; straight to its port, the check is of the certificate, not the name.
    direct_tls = ssl.create_default_context(cafile=ca["ca"])
    direct_tls.check_hostname = False

    async def direct(url: str) -> None:
        async with httpx.AsyncClient(verify=direct_tls, trust_env=False) as client:
            response = await client.get(url)
            assert response.status_code == 200 and len(response.content) == len(page)

    async def proxied_only(url: str) -> None:
        socket_path = await egress.socket_path(SESSION)
        async with egress.http_client(SESSION, socket_path, timeout=30) as client:
            response = await client.get(url, headers={"Connection": "close"})
            assert response.status_code == 200 and len(response.content) == len(page)

    try:
        await asyncio.to_thread(_extract, page, "http://site.bench/page")  # the server's first use imports trafilatura
        first = await timed(lambda: tool(urls["http"][0]))  # the session's first call: its socket is attached
        results: dict[str, Any] = {"first": first}
        for scheme, (via_proxy, straight) in urls.items():
            await tool(via_proxy)
            await direct(straight)  # warm-ups, not counted
            samples: dict[str, list[float]] = {"tool": [], "direct": [], "proxied": []}
            per_round = max(1, n // rounds)
            for _ in range(rounds):
                samples["tool"] += [await timed(lambda: tool(via_proxy)) for _ in range(per_round)]
                samples["direct"] += [await timed(lambda: direct(straight)) for _ in range(per_round)]
                samples["proxied"] += [await timed(lambda: proxied_only(via_proxy)) for _ in range(per_round)]
            results[scheme] = samples
        extraction = []
        for _ in range(max(10, n // 2)):
            began = time.perf_counter()
            await asyncio.to_thread(_extract, page, "http://site.bench/page")
            extraction.append((time.perf_counter() - began) * 1000)
        results["extract"] = extraction
        await asyncio.sleep(0.5)  # the last records reach the log
        rows = log.query(session_id=SESSION, limit=100_000)
        results["rows"] = len(rows)
        results["not_allowed"] = sum(1 for r in rows if r["decision"] != "allowed")
        return results
    finally:
        await family.close()
        await egress.close()
        await proxy.stop()
        store.close()


def ms(value: float) -> str:
    return f"{value:.1f} ms"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)  # the site's process
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    n, rounds = (20, 4) if args.quick else (100, 10)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        ca = make_ca(Path(tmp))
        site = subprocess.Popen([sys.executable, __file__, "--serve", ca["cert"], ca["key"]], stdout=subprocess.PIPE, text=True)
        try:
            assert site.stdout is not None
            ports = json.loads(site.stdout.readline())
            results = asyncio.run(measure(Path(tmp), ports, ca, n, rounds))
        finally:
            site.kill()
            site.wait()

    rows = []
    for scheme in ("http", "https"):
        s = results[scheme]
        for q in (50, 95):
            tool, direct, proxied = percentile(s["tool"], q), percentile(s["direct"], q), percentile(s["proxied"], q)
            rows.append((f"{scheme}, p{q} (N={len(s['tool'])})", ms(tool), ms(direct), f"{tool - direct:+.1f} ms", f"{tool / direct:.2f}×",
                         ms(proxied)))
    print(f"web_fetch of a {len(article()) // 1024} KB HTML page on loopback, against a direct httpx GET of it")
    print()
    print_table(("measure", "web_fetch tool", "direct httpx", "added", "ratio", "GET through ToolEgress, no markdown"), rows)
    print()
    extract = results["extract"]
    print(f"markdown (trafilatura) of the page alone: p50 {ms(percentile(extract, 50))}, p95 {ms(percentile(extract, 95))}")
    print(f"the session's first call (its proxy socket attached): {ms(results['first'])}")
    print(f"egress log of the session: {results['rows']} records, {results['not_allowed']} not allowed")
    print(f"({'quick mode, ' if args.quick else ''}{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
