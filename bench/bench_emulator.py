"""Emulator benchmarks: start-up time and work-queue round trips per second.

Prints a table. Each figure has a baseline measured in the same run on the
same machine (machines here are noisy: compare ratios, not absolute times):

- start-up: `jupyter cma emulator` from exec to its JSON line, against a bare
  `python -c pass` interpreter start;
- round trips: one round trip = poll (returning an item) + ack + first
  heartbeat, the three calls a worker makes to claim a session, driven by
  concurrent keep-alive connections of a minimal HTTP client; the baseline is
  the same client against a bare tornado server that answers `null` to all.

Targets (issue 2): start-up under 1 s; at least 500 round trips per second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx

CLIENTS = 16
ROUND_TRIPS = 3000
STARTS = 7

BARE_SERVER = """
import asyncio, sys
from tornado import web
class H(web.RequestHandler):
    def compute_etag(self): return None
    def check_xsrf_cookie(self): pass
    def get(self): self.set_header("content-type", "application/json"); self.finish("null")
    post = get
async def main():
    app = web.Application([(r"/.*", H)], log_function=lambda h: None)
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    print(port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def time_start(argv: list[str], ready_line: bool) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if ready_line:
        proc.stdout.readline()
        elapsed = time.perf_counter() - started
        proc.terminate()
    else:
        proc.wait()
        elapsed = time.perf_counter() - started
    proc.wait()
    return elapsed


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    General-purpose clients (httpx, the SDK) spend more CPU per request than
    the server under test does, so with them the table would measure the
    client. This one only writes a request and reads a Content-Length body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def __aenter__(self) -> "RawClient":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, token: str = "") -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        body = "Content-Type: application/json\r\nContent-Length: 0\r\n" if method == "POST" else ""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{auth}{body}\r\n".encode())
        status = await self.reader.readline()
        if not status.startswith(b"HTTP/1.1 2"):
            raise RuntimeError(f"{method} {path}: {status!r}")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return await self.reader.readexactly(length)


async def round_trips(base_url: str, env: str, token: str, count: int) -> float:
    """Run `count` claims (poll → ack → heartbeat) over CLIENTS connections; returns round trips/s."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    per_client = count // CLIENTS

    async def client() -> None:
        async with RawClient(host, int(port)) as http:
            for _ in range(per_client):
                item = json.loads(await http.request("GET", f"/v1/environments/{env}/work/poll", token))
                work = item["id"] if item else "w"
                base = f"/v1/environments/{env}/work/{work}"
                await http.request("POST", f"{base}/ack", token)
                await http.request("POST", f"{base}/heartbeat?expected_last_heartbeat=NO_HEARTBEAT", token)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return per_client * CLIENTS / (time.perf_counter() - started)


async def emulator_round_trips() -> float:
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_cma", "emulator"], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    try:
        api = {"authorization": f"Bearer {info['api_key']}"}
        env = info["environment_id"]
        async with httpx.AsyncClient(base_url=info["base_url"], headers=api, timeout=30) as http:
            agent = (await http.post("/v1/agents", json={"name": "bench", "model": "m", "tools": []})).json()
            sem = asyncio.Semaphore(CLIENTS)

            async def create() -> None:
                async with sem:
                    (await http.post("/v1/sessions", json={"agent": agent["id"], "environment_id": env})).raise_for_status()

            # One queued work item per session: enough for every claim below.
            await asyncio.gather(*(create() for _ in range(ROUND_TRIPS)))
        return await round_trips(info["base_url"], env, info["environment_key"], ROUND_TRIPS)
    finally:
        proc.terminate()
        proc.wait()


async def baseline_round_trips() -> float:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    try:
        return await round_trips(f"http://127.0.0.1:{port}", "env", "", ROUND_TRIPS)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    start = statistics.median(time_start([sys.executable, "-m", "jupyter_cma", "emulator"], True) for _ in range(STARTS))
    python = statistics.median(time_start([sys.executable, "-c", "pass"], False) for _ in range(STARTS))
    emu_rps = asyncio.run(emulator_round_trips())
    bare_rps = asyncio.run(baseline_round_trips())
    rows = [
        ("emulator start-up (exec → JSON line), median of %d" % STARTS, f"{start * 1000:.0f} ms", "python -c pass", f"{python * 1000:.0f} ms", f"{start / python:.1f}×", "< 1000 ms", "yes" if start < 1 else "NO"),
        ("poll+ack+heartbeat round trips/s (%d clients)" % CLIENTS, f"{emu_rps:.0f}/s", "bare tornado, same client", f"{bare_rps:.0f}/s", f"{emu_rps / bare_rps:.2f}×", "≥ 500/s", "yes" if emu_rps >= 500 else "NO"),
    ]
    header = ("measure", "emulator", "baseline", "baseline value", "ratio", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
