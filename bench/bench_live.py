"""Live channel benchmark: how long a change takes from being stored to being seen by a subscriber.

A real `jupyter server` subprocess runs jupyter-cma and `bench/live_load.py`, a small extension that drives the
server's real write paths on its own loop: 100 sessions' state changes a second through `Store.transition`
(whose hook publishes `session.state` on the live channel), spread evenly or in one burst a second, and
optionally 100 egress rows a second through `EgressLog.record_many`. Real loads (100 sessions served on the
emulator) would measure the tiers, not the channel.

Subscribers are websocket clients in client processes of this script (10 to a process; never the server's),
over loopback: 1, 10 and 50 of them on
`{base_url}cma/api/live`. A message's latency is the client's receive time − `t`, the time it was published
(right after the commit); "since stored" is receive − `at`, the transition's own time taken before its
commit, so it includes the commit. Both sides read `time.time()` of this host.

Rows:
- spread, 1/10/50 subscribers; burst, 50; spread + egress rows, 50 (messages per subscriber: expected 100 or
  200 a second);
- a slow subscriber: 50 that read, plus one raw client that never reads; the readers' latencies and the
  server's RSS before and after show whether it costs the others anything (its queue is bounded: it gets a gap);
- BASELINE in the same run: the same transitions, each announced on the server's own event bus
  (`event_logger.emit`, a schema the load extension registers) and read from `/api/events/subscribe` by the same
  number of clients: the ecosystem's path.

Also: the server's CPU over each window (psutil on its pid), and the cost per change of `Store.transition`
with the channel's publish inside, and of `emit`.

Targets (issue: live channel): p95 ≤ 1 s, p50 ≤ 100 ms under 100 sessions' events a second. Missing one is
reported, never an error. `--quick` (or BENCH_QUICK=1) runs 4 s windows instead of 10.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tornado.httpclient
import tornado.websocket

from bench_container import percentile  # (bench/ is on sys.path when a bench script runs)

HERE = Path(__file__).resolve().parent
TARGET_P50_MS, TARGET_P95_MS = 100.0, 1000.0
WINDOW, QUICK_WINDOW = 10.0, 4.0


@dataclass
class Run:
    """One measured window: its configuration, what the server published, what the clients saw."""

    path: str
    scenario: str
    subscribers: int
    slow: bool = False
    latencies: list[float] = field(default_factory=list)  # receive − published, seconds
    since_stored: list[float] = field(default_factory=list)  # receive − the transition's own time
    received: list[int] = field(default_factory=list)  # per subscriber
    gaps: int = 0
    expected: int = 0
    cpu_percent: float = 0.0
    rss_mb: tuple[float, float] = (0.0, 0.0)
    store_us: float = 0.0
    emit_us: float = 0.0
    slow_queued: int = 0  # messages waiting in the server's queues at the end of a slow window (the non-reader's)


class Client:
    """One subscriber: reads every frame, keeps each message's latency."""

    def __init__(self, ws: tornado.websocket.WebSocketClientConnection, bus: bool) -> None:
        self.ws, self.bus = ws, bus
        self.latencies: list[float] = []
        self.since_stored: list[float] = []
        self.received = 0
        self.gaps = 0
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (text := await self.ws.read_message()) is not None:
            now = time.time()
            frame = json.loads(text)
            if self.bus:
                if frame.get("schema_id", "").endswith("/bench/session_state/v1"):
                    self._count(now, frame["t"], frame["at"])
            elif isinstance(frame, list):
                for m in frame:
                    self._count(now, m["t"], m["data"].get("at") if m["kind"] == "session.state" else None)
            elif frame.get("kind") == "gap":
                self.gaps += 1

    def _count(self, now: float, t: float, at: float | None) -> None:
        self.received += 1
        self.latencies.append(now - t)
        if at is not None:
            self.since_stored.append(now - at)

    def close(self) -> None:
        self.ws.close()
        self.task.cancel()


class Server:
    """`jupyter server` with jupyter-cma and the load extension, in its own process."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"127.0.0.1:{self.port}/"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}  # no API: nothing is served, only loaded
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        args = [
            sys.executable, "-m", "jupyter_server", f"--port={self.port}", "--ip=127.0.0.1", "--no-browser",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
            "--ServerApp.jpserver_extensions={'jupyter_cma': True, 'live_load': True, 'jupyter_server_terminals': False}",
            f"--CMAApp.data_dir={root / 'cma'}", "--KernelTier.pool_size=0", "--ContainerTier.pool_size=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ]
        self.log = open(root / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        self.ps = psutil.Process(self.proc.pid)

    async def ready(self) -> None:
        client = tornado.httpclient.AsyncHTTPClient()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await client.fetch(f"http://{self.base}cma/api/status", headers=self.headers)
                return
            except Exception:
                await asyncio.sleep(0.2)
        self.log.flush()
        raise RuntimeError("the server did not start: " + Path(self.log.name).read_text()[-3000:])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def connect(self, path: str) -> tornado.websocket.WebSocketClientConnection:
        request = tornado.httpclient.HTTPRequest(f"ws://{self.base}{path}", headers=self.headers)
        return await tornado.websocket.websocket_connect(request)

    async def run(self, scenario: str, seconds: float) -> dict[str, Any]:
        request = tornado.httpclient.HTTPRequest(f"http://{self.base}cma-bench/run", method="POST", headers=self.headers,
                                                 body=json.dumps({"scenario": scenario, "seconds": seconds}),
                                                 request_timeout=seconds + 60)
        return json.loads((await tornado.httpclient.AsyncHTTPClient().fetch(request)).body)

    async def status(self) -> dict[str, Any]:
        response = await tornado.httpclient.AsyncHTTPClient().fetch(f"http://{self.base}cma/api/status", headers=self.headers)
        return json.loads(response.body)

    async def raw_subscriber(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A live subscriber that never reads: the upgrade by hand, then silence."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /cma/api/live HTTP/1.1\r\nHost: {self.base.rstrip('/')}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: token {self.token}\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"the raw subscriber was refused: {head[:80]!r}")
        return reader, writer

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


PER_PROCESS = 10  # subscribers per client process: one Python process reading 50 sockets would measure itself


class ClientGroup:
    """Up to PER_PROCESS subscribers in a process of their own (`bench_live.py --subscribe …`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, server: Server, path: str, count: int, bus: bool) -> ClientGroup:
        url = f"ws://{server.base}{path}"
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--subscribe", url, str(count), "bus" if bus else "live",
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    env={**os.environ, "BENCH_LIVE_TOKEN": server.token})
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"a client process did not start: {line!r}")
        return cls(proc)

    async def results(self, expected: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{expected}\n".encode())
        await self.proc.stdin.drain()
        out = await self.proc.stdout.read()
        await self.proc.wait()
        return json.loads(out)


async def subscribe_main(url: str, count: int, bus: bool) -> None:
    """A client process: `count` subscribers; after the expected count arrives on stdin, their results on stdout."""
    headers = {"Authorization": f"token {os.environ['BENCH_LIVE_TOKEN']}"}
    clients = [Client(await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(url, headers=headers)), bus)
               for _ in range(count)]
    print("ready", flush=True)
    expected = int(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    tail = time.monotonic() + 10  # the last messages in flight
    while time.monotonic() < tail and any(c.received < expected for c in clients):
        await asyncio.sleep(0.05)
    print(json.dumps({"latencies": [x for c in clients for x in c.latencies], "since_stored": [x for c in clients for x in c.since_stored],
                      "received": [c.received for c in clients], "gaps": sum(c.gaps for c in clients)}), flush=True)
    for c in clients:
        c.close()


async def measure(server: Server, run: Run, seconds: float) -> Run:
    bus = run.path == "bus"
    path = "api/events/subscribe" if bus else "cma/api/live"
    sizes = [min(PER_PROCESS, run.subscribers - i) for i in range(0, run.subscribers, PER_PROCESS)]
    groups = [await ClientGroup.start(server, path, n, bus) for n in sizes]
    slow = await server.raw_subscriber() if run.slow else None
    gaps_before = (await server.status())["live"]["gaps"]
    await asyncio.sleep(0.5)  # every socket open and subscribed on the server's side
    run.rss_mb = (server.ps.memory_info().rss / 2**20, 0.0)
    cpu = server.ps.cpu_times()
    began = time.monotonic()
    done = await server.run(run.scenario, seconds)
    elapsed = time.monotonic() - began
    cpu_after = server.ps.cpu_times()
    run.cpu_percent = 100 * ((cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)) / elapsed
    run.expected = done["transitions"] + done["rows"]
    run.store_us = done["store_ms"] * 1000 / max(1, done["transitions"])
    run.emit_us = done["emit_ms"] * 1000 / max(1, done["transitions"])
    for result in await asyncio.gather(*(g.results(run.expected) for g in groups)):
        run.latencies += result["latencies"]
        run.since_stored += result["since_stored"]
        run.received += result["received"]
        run.gaps += result["gaps"]
    run.rss_mb = (run.rss_mb[0], server.ps.memory_info().rss / 2**20)
    if slow is not None:
        live = (await server.status())["live"]
        run.gaps = live["gaps"] - gaps_before  # the non-reader's, counted by the server
        run.slow_queued = live["queued"]
        slow[1].close()
    await asyncio.sleep(0.5)  # the sockets closed before the next window
    return run


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms" if values else "—"


def report(runs: list[Run], seconds: float, quick: bool, began: float, load: tuple[float, float]) -> None:
    header = ("path", "load (per second)", "subs", "msgs/sub (expected)", "gaps", "p50", "p95", "max",
              "p50 since stored", "server CPU", "target p50 ≤ 100 ms, p95 ≤ 1 s")
    loads = {"spread": "100 state changes, spread", "burst": "100 state changes, one burst",
             "spread_egress": "100 state changes + 100 egress rows", "bus": "100 state changes, spread"}
    rows = []
    for r in runs:
        name = "event bus /api/events/subscribe (BASELINE)" if r.path == "bus" else "cma/api/live"
        subs = f"{r.subscribers}{' + 1 not reading' if r.slow else ''}"
        got = f"{min(r.received)}–{max(r.received)} ({r.expected})" if r.received else "—"
        met = bool(r.latencies) and percentile(r.latencies, 50) * 1000 <= TARGET_P50_MS and percentile(r.latencies, 95) * 1000 <= TARGET_P95_MS
        rows.append((name, loads[r.scenario], subs, got, r.gaps, ms(r.latencies, 50), ms(r.latencies, 95),
                     f"{max(r.latencies) * 1000:.1f} ms" if r.latencies else "—", ms(r.since_stored, 50), f"{r.cpu_percent:.0f} %",
                     "met" if met else "MISSED"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    live = [r for r in runs if r.path == "live" and r.scenario == "spread"]
    bus = [r for r in runs if r.path == "bus"]
    if live and bus:
        per_subs = ", ".join(f"{r.store_us:.0f} µs with {r.subscribers}{' + 1 not reading' if r.slow else ''}" for r in live)
        print(f"Store.transition with the live publish inside, per change: {per_subs} subscriber(s); "
              f"with none (the baseline's windows): {statistics_mean([r.store_us for r in bus]):.0f} µs; "
              f"event_logger.emit (baseline): {statistics_mean([r.emit_us for r in bus]):.0f} µs")
    for r in runs:
        if r.slow:
            print(f"slow subscriber: server RSS {r.rss_mb[0]:.0f} MB before the window, {r.rss_mb[1]:.0f} MB after; its gaps: "
                  f"{r.gaps}; queued in the server at the end: {r.slow_queued} (bound: 1000 a subscriber; what does not fit "
                  "in the sockets' buffers waits there, and overflowing it is a gap: tests/test_live.py)")
    print(f"({'quick mode, ' if quick else ''}{seconds:g} s windows, {time.perf_counter() - began:.0f} s; the machine's load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} CPUs; subscribers {PER_PROCESS} to a process)")


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(quick: bool) -> None:
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    seconds = QUICK_WINDOW if quick else WINDOW
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        server = Server(Path(tmp))
        try:
            await server.ready()
            plan = [Run("live", "spread", n) for n in (1, 10, 50)] + [
                Run("live", "burst", 50), Run("live", "spread_egress", 50), Run("live", "spread", 50, slow=True),
            ] + [Run("bus", "bus", n) for n in (1, 10, 50)]
            runs = []
            for run in plan:
                print(f"measuring {run.path} {run.scenario} with {run.subscribers} subscriber(s){' and a slow one' if run.slow else ''}…",
                      file=sys.stderr, flush=True)
                runs.append(await measure(server, run, seconds))
        finally:
            server.stop()
    report(runs, seconds, quick, began, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1", help="4 s windows")
    parser.add_argument("--subscribe", nargs=3, metavar=("URL", "COUNT", "PATH"), help=argparse.SUPPRESS)  # a client process
    args = parser.parse_args()
    if args.subscribe:
        url, count, kind = args.subscribe
        asyncio.run(subscribe_main(url, int(count), kind == "bus"))
    else:
        asyncio.run(main(args.quick))
