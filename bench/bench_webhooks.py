"""Webhook ingest benchmark: verified deliveries per second through a real Jupyter server.

Starts `jupyter server` as its own process with a webhook signing secret in its
environment and no environment id or keys, so each delivery is only verified
(Standard Webhooks HMAC), deduplicated by webhook-id and stored in SQLite —
no work is dispatched. Then sends signed deliveries over concurrent keep-alive
connections of a minimal HTTP/1.1 client (the approach of `RawClient` in
bench_emulator.py: a general-purpose client would cost more CPU per request
than the server under test).

Deliveries are the thin envelopes the Managed Agents API sends. Timestamps
must be within ±5 minutes of the server's clock, so each batch is signed right
before it is sent.

Measured, each beside a same-run baseline — the same client and the same
requests against a bare tornado server that answers 200 to every POST:

- verified deliveries/s (new webhook-ids: verify + dedupe + insert), and the
  per-request latency p50/p99 under that load and on a single connection;
- retried deliveries/s (same webhook-ids again, freshly signed: verify + dedupe hit);
- rejected deliveries/s (signed with the wrong secret: the 401 path).

Target: at least 1,000 verified webhooks per second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
from standardwebhooks import Webhook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_emulator import BARE_SERVER  # noqa: E402  (the same bare baseline server)

CLIENTS = 16
DELIVERIES = 3000
SINGLE = 500  # deliveries sent one at a time on one connection, for unloaded latency
WARMUP = 100
TARGET = 1000.0
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
WRONG_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# ---------------------------------------------------------------------- requests


def envelope() -> tuple[str, bytes]:
    """(webhook id, body) of one realistic thin delivery."""
    webhook_id = "whe_" + secrets.token_hex(12)
    body = {
        "type": "event",
        "id": webhook_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "data": {"type": "session.status_idled", "id": "sesn_" + secrets.token_hex(12), "organization_id": "org", "workspace_id": "w"},
    }
    return webhook_id, json.dumps(body, separators=(",", ":")).encode()


def signed_requests(deliveries: list[tuple[str, bytes]], path: str, secret: str = SECRET) -> list[bytes]:
    """Complete HTTP/1.1 requests, signed now (timestamps must be fresh)."""
    signer = Webhook(secret)
    now = datetime.now(timezone.utc)
    stamp = str(int(now.timestamp()))
    out = []
    for webhook_id, body in deliveries:
        signature = signer.sign(webhook_id, now, body.decode())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nwebhook-id: {webhook_id}\r\nwebhook-timestamp: {stamp}\r\n"
            f"webhook-signature: {signature}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (as in bench_emulator.py)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        status = await self.reader.readline()
        if not status.startswith(b"HTTP/1.1 "):
            raise RuntimeError(f"unexpected answer {status!r}")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status[9:12]), await self.reader.readexactly(length)


@dataclass
class Run:
    rate: float
    latencies: list[float]
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: dict[bytes, int] = field(default_factory=dict)

    def pct(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]


async def send_all(port: int, requests: list[bytes], clients: int) -> Run:
    """Send `requests` over `clients` keep-alive connections (each its share, in order)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: dict[bytes, int] = {}
    shares = [requests[i::clients] for i in range(clients)]

    async def client(share: list[bytes]) -> None:
        async with RawClient(port) as http:
            for request in share:
                started = time.perf_counter()
                status, body = await http.send(request)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                bodies[body] = bodies.get(body, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client(s) for s in shares))
    return Run(len(requests) / (time.perf_counter() - started), latencies, statuses, bodies)


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """`jupyter server` with jupyter-cma, a webhook secret, and nothing to dispatch to."""

    def __init__(self) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
        self.log = open(self.tmp / "server.log", "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        env["ANTHROPIC_WEBHOOK_SIGNING_KEY"] = SECRET
        env["JUPYTER_RUNTIME_DIR"] = str(self.tmp / "runtime")
        jupyter = Path(sys.executable).with_name("jupyter")
        argv = [str(jupyter)] if jupyter.exists() else [sys.executable, "-m", "jupyter"]
        self.proc = subprocess.Popen(
            [*argv, "server", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.tmp}",
             f"--CMAApp.data_dir={self.tmp / 'cma'}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def status(self) -> dict:
        r = httpx.get(f"http://127.0.0.1:{self.port}/cma/api/status", headers={"Authorization": f"token {self.token}"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return self.status()
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"jupyter server did not answer within {timeout:.0f}s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.tmp / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Results:
    verified: Run
    single: Run
    retried: Run
    rejected: Run


def expect(run: Run, status: int, body_has: bytes | None, what: str) -> None:
    wrong = {s: n for s, n in run.statuses.items() if s != status}
    if wrong or (body_has is not None and any(body_has not in b for b in run.bodies)):
        raise SystemExit(f"{what}: expected every answer {status} {body_has!r}, got statuses {run.statuses}, bodies {dict(list(run.bodies.items())[:3])}")


async def measure(port: int, path: str, check: bool) -> Results:
    """The same four runs against either server; `check` asserts the webhook answers."""
    warm = [envelope() for _ in range(WARMUP)]
    await send_all(port, signed_requests(warm, path), CLIENTS)

    fresh = [envelope() for _ in range(DELIVERIES)]
    verified = await send_all(port, signed_requests(fresh, path), CLIENTS)
    single = await send_all(port, signed_requests([envelope() for _ in range(SINGLE)], path), 1)
    retried = await send_all(port, signed_requests(fresh, path), CLIENTS)  # same ids, fresh signatures
    rejected = await send_all(port, signed_requests([envelope() for _ in range(DELIVERIES)], path, WRONG_SECRET), CLIENTS)
    if check:
        expect(verified, 200, b'"accepted"', "verified run")
        expect(single, 200, b'"accepted"', "single-connection run")
        expect(retried, 200, b'"duplicate"', "retried run")
        expect(rejected, 401, None, "rejected run")
    return Results(verified, single, retried, rejected)


async def bench_jupyter() -> tuple[Results, dict]:
    server = JupyterServer()
    try:
        status = await asyncio.to_thread(server.wait_ready)
        if status["mode"] != "webhook" or status["dispatch"] is not None:
            raise SystemExit(f"expected webhook mode with no dispatcher, got mode {status['mode']}, dispatch {status['dispatch']}")
        results = await measure(server.port, "/cma/webhooks", check=True)
        counters = (await asyncio.to_thread(server.status))["webhooks"]
        want = {"accepted": WARMUP + DELIVERIES + SINGLE, "duplicates": DELIVERIES, "rejected": DELIVERIES}
        if counters != want:
            raise SystemExit(f"server counters {counters}, expected {want}")
        return results, counters
    finally:
        server.stop()


async def bench_bare() -> Results:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        return await measure(port, "/cma/webhooks", check=False)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    cma, counters = asyncio.run(bench_jupyter())
    bare = asyncio.run(bench_bare())
    ms = lambda s: f"{s * 1000:.2f} ms"  # noqa: E731
    rate = lambda r: f"{r:.0f}/s"  # noqa: E731
    base = "bare tornado, same client"
    rows = [
        (f"verified webhooks/s ({CLIENTS} conns, {DELIVERIES} new ids)", rate(cma.verified.rate), base, rate(bare.verified.rate),
         f"{cma.verified.rate / bare.verified.rate:.2f}×", f"≥ {TARGET:,.0f}/s", "yes" if cma.verified.rate >= TARGET else "NO"),
        ("  latency p50 under that load", ms(cma.verified.pct(50)), base, ms(bare.verified.pct(50)),
         f"{cma.verified.pct(50) / bare.verified.pct(50):.2f}×", "-", "-"),
        ("  latency p99 under that load", ms(cma.verified.pct(99)), base, ms(bare.verified.pct(99)),
         f"{cma.verified.pct(99) / bare.verified.pct(99):.2f}×", "-", "-"),
        (f"latency p50, 1 conn ({SINGLE} sequential)", ms(cma.single.pct(50)), base, ms(bare.single.pct(50)),
         f"{cma.single.pct(50) / bare.single.pct(50):.2f}×", "-", "-"),
        (f"latency p99, 1 conn ({SINGLE} sequential)", ms(cma.single.pct(99)), base, ms(bare.single.pct(99)),
         f"{cma.single.pct(99) / bare.single.pct(99):.2f}×", "-", "-"),
        (f"retried (duplicate) webhooks/s ({CLIENTS} conns)", rate(cma.retried.rate), base, rate(bare.retried.rate),
         f"{cma.retried.rate / bare.retried.rate:.2f}×", "-", "-"),
        (f"rejected (bad signature, 401)/s ({CLIENTS} conns)", rate(cma.rejected.rate), base, rate(bare.rejected.rate),
         f"{cma.rejected.rate / bare.rejected.rate:.2f}×", "-", "-"),
    ]
    header = ("measure", "jupyter-cma", "baseline", "baseline value", "ratio", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"server counters after the run: {json.dumps(counters)}")


if __name__ == "__main__":
    main()
