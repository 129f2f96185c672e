"""Egress proxy benchmarks: added latency, requests per second and tunnel throughput.

A real `EgressProxy` (the server-side supervisor, in a process of its own as
in the Jupyter server, storing the engine's log records in SQLite) runs the
mitmproxy engine (a process of its own) with one environment policy whose
private services route names to loopback servers of this benchmark:

- `plain.bench` → a minimal HTTP/1.1 keep-alive server (a fixed 30-byte body
  with Content-Length);
- `https://tls.bench` → the same server behind TLS (a self-signed certificate
  for DNS:tls.bench made with the `openssl` CLI; the client trusts it: the
  proxy passes a tunnel through untouched when no rule needs to see inside);
- `sink.bench:9000` → a raw TCP sink and source (9-byte header, `U` or `D`
  and a length: it swallows that many bytes and answers the count, or sends
  that many bytes), and `https://tls.bench:8443` → the same behind TLS.

The upstream servers run in another process, the measuring client in this
one, all on loopback. The client is minimal (blocking sockets for sequential
requests, asyncio protocols for concurrent ones) so that it costs far less CPU
than what it measures. It reaches the proxy the way a sandbox does: a
connection to the sandbox's Unix socket with absolute-form requests
(`GET http://plain.bench/`) or `CONNECT`. The baseline is the same client
straight to the upstream's TCP port (origin-form), measured in the same run;
latencies are taken in alternating blocks (direct, proxied, direct, …) so that
both see the same machine.

Measured:

1. sequential plain HTTP GETs, keep-alive (one connection) and a new
   connection per request: added latency = proxied − direct, p50 and p99;
2. the same over HTTPS: one CONNECT tunnel with many requests inside, and
   CONNECT + TLS handshake per request;
3. keep-alive HTTP through the in-sandbox bridge (`sandbox/cma_sandbox/bridge.py`:
   client → the bridge's loopback TCP port → the Unix socket → the proxy),
   the full path a kernel sandbox uses, against direct and against the
   proxy's socket without the bridge;
4. requests per second over 16 concurrent keep-alive connections;
5. tunnel throughput, best of two 512 MiB streams each way: a plain TCP
   tunnel (CONNECT sink.bench:9000) and a TLS tunnel passed through
   (CONNECT tls.bench:8443), against a direct (TCP or TLS) connection;
6. for reference, keep-alive latency and requests per second through stock
   `mitmdump` from the engine's environment (a regular proxy on a loopback
   port, bodies streamed as the engine does, no hooks of ours): what
   mitmproxy costs by itself.

Targets: added latency p50 ≤ 1.5 ms on keep-alive HTTP; at least 1,000
requests per second; plain (not intercepted) tunnels at least 300 MB/s
(MB = 10^6 bytes). They are printed as met/missed, never asserted. Also
printed: the engine's CPU time per request (or per MB) in each proxied part,
from /proc; its memory after the HTTP parts and after the tunnels; and the
egress log's records of the run, by rule.

`--quick` (or BENCH_QUICK=1) runs about a fifth of the work (about 20 s instead
of about 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "sandbox" / "cma_sandbox" / "bridge.py"

TARGET_ADDED_MS = 1.5
TARGET_RPS = 1000.0
TARGET_MBPS = 300.0

BODY = b"hello from the bench upstream\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
HEADERS = "User-Agent: bench-proxy/1\r\nAccept: */*\r\n"
CHUNK = 1 << 20


@dataclass
class Sizes:
    keepalive: int = 2000  # sequential requests on one connection (HTTP, HTTPS)
    bridge: int = 500  # the same through the bridge (a request there can wait 40 ms: see BENCHMARKS.md)
    newconn: int = 500  # requests, each on a new connection (HTTP)
    tls_newconn: int = 300  # requests, each CONNECT + TLS handshake (HTTPS)
    rounds: int = 10  # direct and proxied alternate in this many blocks
    clients: int = 16  # concurrent connections for requests per second
    rps_seconds: float = 3.0
    tunnel_bytes: int = 512 * CHUNK

    @classmethod
    def quick(cls) -> Sizes:
        return cls(keepalive=400, bridge=100, newconn=100, tls_newconn=60, rounds=4, rps_seconds=1.0, tunnel_bytes=96 * CHUNK)


# ---------------------------------------------------------------------- upstream servers (their own process)


class HTTPServerProtocol(asyncio.Protocol):
    """Answers every request head (no request bodies here) with RESPONSE, keep-alive."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        count = buffer.count(b"\r\n\r\n")
        if count:
            self.transport.write(RESPONSE * count)  # type: ignore[attr-defined]
            buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4:]
        self.buffer = buffer


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes: {out[:300]!r}")
        out += data
    return out


def tunnel_peer(sock: socket.socket, tls: ssl.SSLContext | None) -> None:
    """`U` + length: swallow that many bytes, answer the count. `D` + length: send that many bytes."""
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_side=True)
        head = recv_exactly(sock, 9)
        total = int.from_bytes(head[1:], "big")
        if head[:1] == b"U":
            buffer, count = bytearray(CHUNK), 0
            while count < total and (n := sock.recv_into(buffer)):
                count += n
            sock.sendall(count.to_bytes(8, "big"))
        else:
            chunk, left = memoryview(bytes(CHUNK)), total
            while left:
                part = min(left, CHUNK)
                sock.sendall(chunk[:part])
                left -= part
    except OSError:
        pass
    finally:
        sock.close()


def tunnel_server(listener: socket.socket, tls: ssl.SSLContext | None) -> None:
    """Blocking sockets, a thread per connection: bulk transfers cost the server little CPU this way."""
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=tunnel_peer, args=(sock, tls), daemon=True).start()


async def serve_upstreams(cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    plain = await loop.create_server(HTTPServerProtocol, "127.0.0.1", 0)
    secure = await loop.create_server(HTTPServerProtocol, "127.0.0.1", 0, ssl=tls)
    ports = {"http": plain.sockets[0].getsockname()[1], "https": secure.sockets[0].getsockname()[1]}
    for name, context in (("sink", None), ("tls_sink", tls)):
        listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=tunnel_server, args=(listener, context), daemon=True).start()
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()  # until terminated


# ---------------------------------------------------------------------- the proxy's host (its own process, as the Jupyter server)


async def host_proxy(data_dir: Path, ports: dict[str, int]) -> None:
    """EgressProxy + EgressLog with one environment policy; prints the socket path, stops at stdin EOF."""
    from jupyter_cma.egress.log import EgressLog
    from jupyter_cma.egress.policy import PolicyStore
    from jupyter_cma.egress.proxy import EgressProxy
    from jupyter_cma.store import Store

    store = Store(data_dir / "cma.sqlite3")
    PolicyStore(store).create({
        "name": "bench",
        "scope": {"environment": True},
        "private_services": [
            {"name": "plain.bench", "target": f"127.0.0.1:{ports['http']}"},
            {"name": "https://tls.bench", "target": f"127.0.0.1:{ports['https']}"},
            {"name": "sink.bench:9000", "target": f"127.0.0.1:{ports['sink']}"},
            {"name": "https://tls.bench:8443", "target": f"127.0.0.1:{ports['tls_sink']}"},
        ],
    })
    proxy = EgressProxy(data_dir=data_dir, api_base_url="https://api.anthropic.com", middleware=[], egress_log=EgressLog(store),
                        requests_per_second=1e9, request_burst=10**9, connections_per_sandbox=1000)
    if not await proxy.start():
        print(json.dumps({"error": proxy.error}), flush=True)
        return
    path = data_dir / "sandbox.sock"
    proxy.attach("bench", str(path), session_id="sesn_bench", agent_id="agent_bench")
    print(json.dumps({"socket": str(path), "engine_pid": proxy.pid, "engine_python": str(proxy.python)}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
    await asyncio.sleep(0.3)  # the engine's last log batch
    await proxy.stop()


# ---------------------------------------------------------------------- minimal clients


class Conn:
    """A blocking socket speaking keep-alive HTTP/1.1, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def request(self, raw: bytes) -> bytes:
        self.sock.sendall(raw)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed before a response; got {buffer[:200]!r}")
            buffer += data
        head = buffer[:end]
        match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        total = end + 4 + (int(match.group(1)) if match else 0)
        while len(buffer) < total:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside a response body")
            buffer += data
        self.buffer = buffer[total:]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {buffer[:total]!r}")
        return buffer[end + 4:total]

    def close(self) -> None:
        self.sock.close()


def read_head(sock: socket.socket) -> bytes:
    """A CONNECT answer (the upstream says nothing before the client does, so nothing more arrives)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"closed during CONNECT; got {buffer!r}")
        buffer += data
    if not buffer.startswith(b"HTTP/1.1 200") or not buffer.endswith(b"\r\n\r\n"):
        raise RuntimeError(f"CONNECT refused: {buffer[:300]!r}")
    return buffer


@dataclass
class Endpoints:
    socket_path: str
    tls: ssl.SSLContext
    bridge_port: int | None = None

    def unix(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.socket_path)
        return s

    def tcp(self, port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def tunnel(self, target: str) -> socket.socket:
        s = self.unix()
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        read_head(s)
        return s

    def tls_wrap(self, s: socket.socket) -> socket.socket:
        return self.tls.wrap_socket(s, server_hostname="tls.bench")


PROXIED_GET = f"GET http://plain.bench/ HTTP/1.1\r\nHost: plain.bench\r\n{HEADERS}\r\n".encode()
DIRECT_GET = f"GET / HTTP/1.1\r\nHost: plain.bench\r\n{HEADERS}\r\n".encode()
TLS_GET = f"GET / HTTP/1.1\r\nHost: tls.bench\r\n{HEADERS}\r\n".encode()


def timed(fn: Callable[[], Any], n: int, into: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(n):
        started = clock()
        fn()
        into.append(clock() - started)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status if line.startswith(("VmRSS:", "VmHWM:"))}


@dataclass
class Series:
    """Latencies (s) of one way of making a request, and the engine's CPU seconds while they ran."""

    latencies: list[float] = field(default_factory=list)
    engine_cpu: float = 0.0


def interleaved(n: int, rounds: int, engine_pid: int, ways: dict[str, Callable[[], Any]], warmup: int = 20) -> dict[str, Series]:
    """n measurements of each way, in alternating blocks of n/rounds so that all see the same machine."""
    out = {name: Series() for name in ways}
    for fn in ways.values():
        timed(fn, warmup, [])
    block = max(1, n // rounds)
    for _ in range(rounds):
        for name, fn in ways.items():
            before = cpu_seconds(engine_pid)
            timed(fn, block, out[name].latencies)
            out[name].engine_cpu += cpu_seconds(engine_pid) - before
    return out


def keepalive(n: int, rounds: int, engine_pid: int, ways: dict[str, tuple[Callable[[], Conn], bytes]]) -> dict[str, Series]:
    """Sequential requests, each way on one connection of its own for the whole measurement."""
    conns = {name: make() for name, (make, _) in ways.items()}
    try:
        return interleaved(n, rounds, engine_pid, {name: functools.partial(conns[name].request, request) for name, (_, request) in ways.items()})
    finally:
        for conn in conns.values():
            conn.close()


def one_shot(make: Callable[[], Conn], request: bytes) -> Callable[[], None]:
    """A request on a connection of its own."""
    def go() -> None:
        conn = make()
        try:
            conn.request(request)
        finally:
            conn.close()
    return go


# ---------------------------------------------------------------------- concurrent requests per second


class Pinger(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response is complete."""

    def __init__(self, run: RpsRun, request: bytes) -> None:
        self.run, self.request = run, request
        self.buffer = b""
        self.need = 0  # the full length of the response being read, once its head is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent = time.perf_counter()
        self.transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.need:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                match = re.search(rb"\r\ncontent-length: *(\d+)", self.buffer[:end], re.IGNORECASE)
                if not self.buffer.startswith(b"HTTP/1.1 200") or match is None:
                    self.run.fail(RuntimeError(f"unexpected answer: {self.buffer[:300]!r}"))
                    return
                self.need = end + 4 + int(match.group(1))
            if len(self.buffer) < self.need:
                return
            self.buffer, self.need = self.buffer[self.need:], 0
            now = time.perf_counter()
            self.run.done(now, now - self.sent)
            if now >= self.run.stop_at:
                self.transport.close()
                return
            self.sent = now
            self.transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.closed()


class RpsRun:
    def __init__(self, start_at: float, stop_at: float, clients: int) -> None:
        self.start_at, self.stop_at, self.open = start_at, stop_at, clients
        self.count = 0
        self.latencies: list[float] = []
        self.finished = asyncio.get_running_loop().create_future()

    def done(self, now: float, latency: float) -> None:
        if self.start_at <= now < self.stop_at:
            self.count += 1
            self.latencies.append(latency)

    def fail(self, exc: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)


async def requests_per_second(connect: Callable[[Callable[[], asyncio.Protocol]], Any], request: bytes, clients: int,
                              seconds: float, warmup: float = 0.5) -> tuple[float, list[float]]:
    now = time.perf_counter()
    run = RpsRun(now + warmup, now + warmup + seconds, clients)
    await asyncio.gather(*(connect(lambda: Pinger(run, request)) for _ in range(clients)))
    await asyncio.wait_for(run.finished, seconds + warmup + 30)
    return run.count / seconds, run.latencies


# ---------------------------------------------------------------------- tunnel throughput


class TunnelBroken(Exception):
    """A transfer the proxy cut short; the message says what it answered."""


def proxy_answer(sock: socket.socket, data: bytes = b"") -> str:
    """The status line and rule of what the proxy answered on a tunnel it refused, if it said anything."""
    try:
        sock.settimeout(1)
        while b"\r\n\r\n" not in data and (more := sock.recv(4096)):
            data += more
    except OSError:
        pass
    if not data.startswith(b"HTTP/1."):
        return "the connection was cut"
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    rule = re.search(rb"X-CMA-Egress-Rule: *([^\r\n]+)", data, re.IGNORECASE)
    return f"{line} ({rule.group(1).decode()})" if rule else line


def upload(sock: socket.socket, total: int) -> float:
    """MB/s (10^6 bytes) of `total` bytes up, until the sink confirms it has them all."""
    chunk = memoryview(bytes(CHUNK))
    sent = 0
    try:
        started = time.perf_counter()
        sock.sendall(b"U" + total.to_bytes(8, "big"))
        while sent < total:
            part = min(total - sent, CHUNK)
            sock.sendall(chunk[:part])
            sent += part
        answer = recv_exactly(sock, 8)
        elapsed = time.perf_counter() - started
    except OSError as exc:
        raise TunnelBroken(f"{proxy_answer(sock)} after < {sent + CHUNK:,} bytes up ({type(exc).__name__})") from None
    finally:
        sock.close()
    if answer.startswith(b"HTTP/1.") or int.from_bytes(answer, "big") != total:
        raise TunnelBroken(f"the sink did not get all {total:,} bytes: {answer!r}")
    return total / elapsed / 1e6


def download(sock: socket.socket, total: int) -> float:
    """MB/s (10^6 bytes) of `total` bytes down from the source."""
    buffer = bytearray(CHUNK)
    got = 0
    try:
        started = time.perf_counter()
        sock.sendall(b"D" + total.to_bytes(8, "big"))
        while got < total:
            n = sock.recv_into(buffer)
            if not n:
                raise ConnectionError("closed")
            if got == 0 and buffer.startswith(b"HTTP/1."):  # the source only sends zero bytes
                raise TunnelBroken(proxy_answer(sock, bytes(buffer[:n])))
            got += n
        elapsed = time.perf_counter() - started
    except OSError as exc:
        raise TunnelBroken(f"{proxy_answer(sock)} after {got:,} bytes down ({type(exc).__name__})") from None
    finally:
        sock.close()
    return total / elapsed / 1e6


@dataclass
class Transfer:
    """One direction of one kind of tunnel: MB/s (or why it failed) through the proxy and direct."""

    label: str
    proxied: float | str
    direct: float | str
    engine_cpu: float = 0.0  # seconds, during the proxied transfers
    megabytes: float = 0.0  # moved through the proxy


def transfer(label: str, move: Callable[[socket.socket, int], float], proxied: Callable[[], socket.socket],
             direct: Callable[[], socket.socket], total: int, engine_pid: int, tries: int = 2) -> Transfer:
    """Best of `tries` each way: direct first, then through the proxy."""

    def best(connect: Callable[[], socket.socket]) -> tuple[float | str, int]:
        rates: list[float] = []
        try:
            for _ in range(tries):
                rates.append(move(connect(), total))
        except TunnelBroken as broken:
            return str(broken), len(rates)
        return max(rates), len(rates)

    base, _ = best(direct)
    before = cpu_seconds(engine_pid)
    value, done = best(proxied)
    return Transfer(label, value, base, cpu_seconds(engine_pid) - before, done * total / 1e6)


# ---------------------------------------------------------------------- orchestration


def make_cert(directory: Path) -> tuple[str, str]:
    cert, key = directory / "tls.bench.pem", directory / "tls.bench.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=tls.bench", "-addext", "subjectAltName=DNS:tls.bench", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (OSError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not answer within {timeout:.0f} s: {exc}") from None
            time.sleep(0.05)


def probe(make: Callable[[], Conn], request: bytes) -> None:
    conn = make()
    try:
        conn.sock.settimeout(5)
        conn.request(request)
    finally:
        conn.close()


def start_bridge(socket_path: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(BRIDGE), "--listen", f"127.0.0.1:{port}", "--unix", socket_path,
                             "--", "/bin/sleep", "infinity"], start_new_session=True)  # its forwarder is a fork: one group to stop
    return proc, port


def start_mitmdump(mitmdump: Path, confdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Stock mitmproxy as a regular proxy on a loopback port, streaming bodies as the engine does, and no hooks of ours."""
    port = free_port()
    proc = subprocess.Popen([str(mitmdump), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port), "--set", f"confdir={confdir}",
                             "--set", "stream_large_bodies=1", "--set", "flow_detail=0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, port


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Rps:
    rate: float
    latencies: list[float]
    engine_cpu: float = 0.0


@dataclass
class Results:
    http_keep: dict[str, Series]
    http_new: dict[str, Series]
    tls_keep: dict[str, Series]
    tls_new: dict[str, Series]
    bridge: dict[str, Series]
    rps: dict[str, Rps]
    transfers: list[Transfer]
    memory: dict[str, dict[str, float]]
    log_summary: list[tuple[str, str, int, int]]


def run(sizes: Sizes) -> Results:
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        d = Path(tmp)
        cert, key = make_cert(d)
        me = [sys.executable, str(Path(__file__).resolve())]
        upstreams = subprocess.Popen([*me, "--serve-upstreams", cert, key], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        host: subprocess.Popen[str] | None = None
        helpers: list[subprocess.Popen[bytes]] = []
        try:
            ports = json.loads(upstreams.stdout.readline())  # type: ignore[union-attr]
            host = subprocess.Popen([*me, "--host-proxy", str(d), json.dumps(ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            info = json.loads(host.stdout.readline() or "{}")  # type: ignore[union-attr]
            if "socket" not in info:
                raise SystemExit(f"the egress proxy did not start: {info.get('error', 'no answer')}")
            engine = int(info["engine_pid"])
            ep = Endpoints(info["socket"], ssl.create_default_context(cafile=cert))
            bridge, ep.bridge_port = start_bridge(ep.socket_path)
            helpers.append(bridge)
            mitmdump_path = Path(info["engine_python"]).with_name("mitmdump")
            mitm_port = None
            if mitmdump_path.exists():
                mitmdump, mitm_port = start_mitmdump(mitmdump_path, d / "mitmdump")
                helpers.append(mitmdump)

            plain = lambda: Conn(ep.tcp(ports["http"]))  # noqa: E731
            via_proxy = lambda: Conn(ep.unix())  # noqa: E731
            via_bridge = lambda: Conn(ep.tcp(ep.bridge_port))  # type: ignore[arg-type]  # noqa: E731
            via_mitmdump = lambda: Conn(ep.tcp(mitm_port))  # type: ignore[arg-type]  # noqa: E731
            stock_get = f"GET http://127.0.0.1:{ports['http']}/ HTTP/1.1\r\nHost: 127.0.0.1:{ports['http']}\r\n{HEADERS}\r\n".encode()
            tls_direct = lambda: Conn(ep.tls_wrap(ep.tcp(ports["https"])))  # noqa: E731
            tls_tunnel = lambda: Conn(ep.tls_wrap(ep.tunnel("tls.bench:443")))  # noqa: E731

            wait_until(lambda: probe(via_proxy, PROXIED_GET), "the egress proxy")
            wait_until(lambda: probe(via_bridge, PROXIED_GET), "the bridge")
            if mitm_port is not None:
                wait_until(lambda: probe(via_mitmdump, stock_get), "mitmdump")
            print(f"engine pid {engine}; measuring…", file=sys.stderr)

            k, rounds = sizes.keepalive, sizes.rounds
            ways = {"direct": (plain, DIRECT_GET), "proxy": (via_proxy, PROXIED_GET)}
            if mitm_port is not None:
                ways["mitmdump"] = (via_mitmdump, stock_get)
            http_keep = keepalive(k, rounds, engine, ways)
            http_new = interleaved(sizes.newconn, rounds, engine, {"direct": one_shot(plain, DIRECT_GET), "proxy": one_shot(via_proxy, PROXIED_GET)})
            tls_keep = keepalive(k, rounds, engine, {"direct": (tls_direct, TLS_GET), "proxy": (tls_tunnel, TLS_GET)})
            tls_new = interleaved(sizes.tls_newconn, rounds, engine, {"direct": one_shot(tls_direct, TLS_GET), "proxy": one_shot(tls_tunnel, TLS_GET)})
            bridged = keepalive(sizes.bridge, rounds, engine,
                                {"direct": (plain, DIRECT_GET), "proxy": (via_proxy, PROXIED_GET), "bridge": (via_bridge, PROXIED_GET)})
            memory = {"after the HTTP parts": memory_mb(engine)}

            async def concurrent() -> dict[str, Rps]:
                loop = asyncio.get_running_loop()
                out = {}
                targets: dict[str, tuple[Callable[[Callable[[], asyncio.Protocol]], Any], bytes]] = {
                    "direct": (lambda f: loop.create_connection(f, "127.0.0.1", ports["http"]), DIRECT_GET),
                    "proxy": (lambda f: loop.create_unix_connection(f, ep.socket_path), PROXIED_GET),
                }
                if mitm_port is not None:
                    targets["mitmdump"] = (lambda f: loop.create_connection(f, "127.0.0.1", mitm_port), stock_get)
                for name, (connect, request) in targets.items():
                    before = cpu_seconds(engine)
                    rate, latencies = await requests_per_second(connect, request, sizes.clients, sizes.rps_seconds)
                    out[name] = Rps(rate, latencies, cpu_seconds(engine) - before)
                return out

            rps = asyncio.run(concurrent())
            for helper in helpers:
                stop_group(helper)
            helpers.clear()

            n = sizes.tunnel_bytes
            raw_tunnel = lambda: ep.tunnel("sink.bench:9000")  # noqa: E731
            raw_direct = lambda: ep.tcp(ports["sink"])  # noqa: E731
            tls_bulk_tunnel = lambda: ep.tls_wrap(ep.tunnel("tls.bench:8443"))  # noqa: E731
            tls_bulk_direct = lambda: ep.tls_wrap(ep.tcp(ports["tls_sink"]))  # noqa: E731
            transfers = [
                transfer("plain TCP tunnel (CONNECT sink.bench:9000), up", upload, raw_tunnel, raw_direct, n, engine),
                transfer("plain TCP tunnel (CONNECT sink.bench:9000), down", download, raw_tunnel, raw_direct, n, engine),
                transfer("TLS tunnel, passed through (CONNECT tls.bench:8443), up", upload, tls_bulk_tunnel, tls_bulk_direct, n, engine),
                transfer("TLS tunnel, passed through (CONNECT tls.bench:8443), down", download, tls_bulk_tunnel, tls_bulk_direct, n, engine),
            ]
            memory["after the tunnels"] = memory_mb(engine)
        finally:
            for helper in helpers:
                stop_group(helper)
            if host is not None:
                host.stdin.close()  # type: ignore[union-attr]
                try:
                    host.wait(30)
                except subprocess.TimeoutExpired:
                    host.kill()
                    host.wait()
            upstreams.terminate()
            upstreams.wait()
        db = sqlite3.connect(d / "cma.sqlite3")
        summary = db.execute("SELECT decision, rule, COUNT(*), SUM(bytes_up + bytes_down) FROM egress_log GROUP BY 1, 2 ORDER BY 3 DESC").fetchall()
        db.close()
    return Results(http_keep, http_new, tls_keep, tls_new, bridged, rps, transfers, memory, summary)


# ---------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


DIRECT = "direct to upstream, same client"
STOCK = "stock mitmdump, no hooks (TCP)"


def report(r: Results, sizes: Sizes) -> None:
    rows: list[tuple[str, ...]] = []

    def latency(label: str, value: Series, base: Series, base_label: str = DIRECT, target: bool = False, quantiles: tuple[int, ...] = (50, 99)) -> None:
        for q in quantiles:
            added = pct(value.latencies, q) - pct(base.latencies, q)
            goal, met = "-", "-"
            if target and q == 50:
                goal, met = f"≤ +{TARGET_ADDED_MS} ms", "met" if added * 1000 <= TARGET_ADDED_MS else "missed"
            rows.append((f"{label}, p{q}", ms(pct(value.latencies, q)), base_label, ms(pct(base.latencies, q)), f"{added * 1000:+.2f} ms", goal, met))

    k = sizes.keepalive
    latency(f"HTTP GET keep-alive ({k} on 1 conn)", r.http_keep["proxy"], r.http_keep["direct"], target=True)
    latency(f"HTTP GET, new connection each ({sizes.newconn})", r.http_new["proxy"], r.http_new["direct"])
    latency(f"HTTPS GET keep-alive (1 CONNECT tunnel, {k})", r.tls_keep["proxy"], r.tls_keep["direct"])
    latency(f"HTTPS GET, CONNECT + TLS handshake each ({sizes.tls_newconn})", r.tls_new["proxy"], r.tls_new["direct"])
    label = f"HTTP GET keep-alive via sandbox bridge ({sizes.bridge})"
    latency(label, r.bridge["bridge"], r.bridge["direct"], quantiles=(50, 90, 99))
    latency(label, r.bridge["bridge"], r.bridge["proxy"], "proxy's socket, no bridge", quantiles=(50, 90))
    direct, proxied = r.rps["direct"], r.rps["proxy"]
    rows.append((f"HTTP GET req/s, keep-alive, {sizes.clients} conns", f"{proxied.rate:,.0f}/s", DIRECT, f"{direct.rate:,.0f}/s",
                 f"{proxied.rate / direct.rate:.2f}×", f"≥ {TARGET_RPS:,.0f}/s", "met" if proxied.rate >= TARGET_RPS else "missed"))
    rows.append(("  latency p50 under that load", ms(pct(proxied.latencies, 50)), DIRECT, ms(pct(direct.latencies, 50)),
                 f"{(pct(proxied.latencies, 50) - pct(direct.latencies, 50)) * 1000:+.2f} ms", "-", "-"))
    mib = sizes.tunnel_bytes >> 20
    for t in r.transfers:
        mbps = lambda v: f"{v:,.0f} MB/s" if isinstance(v, float) else "failed"  # noqa: E731
        ratio = f"{t.proxied / t.direct:.2f}×" if isinstance(t.proxied, float) and isinstance(t.direct, float) else "-"
        met = "met" if isinstance(t.proxied, float) and t.proxied >= TARGET_MBPS else "missed"
        base = "direct TCP to the sink" if t.label.startswith("plain") else "direct TLS to the sink"
        rows.append((f"{t.label} ({mib} MiB, best of 2)", mbps(t.proxied), base, mbps(t.direct), ratio, f"≥ {TARGET_MBPS:,.0f} MB/s", met))
    if "mitmdump" in r.http_keep:
        latency(f"HTTP GET keep-alive ({k} on 1 conn)", r.http_keep["proxy"], r.http_keep["mitmdump"], STOCK, quantiles=(50,))
    if "mitmdump" in r.rps:
        stock = r.rps["mitmdump"]
        rows.append((f"HTTP GET req/s, keep-alive, {sizes.clients} conns", f"{proxied.rate:,.0f}/s", STOCK, f"{stock.rate:,.0f}/s",
                     f"{proxied.rate / stock.rate:.2f}×", "-", "-"))
    print_table(("measure", "through the proxy", "baseline", "baseline value", "added / ratio", "target", "met"), rows)

    def per_request(series: Series) -> str:
        return f"{series.engine_cpu / len(series.latencies) * 1e6:.0f} µs"

    print()
    print("engine CPU (from /proc, 10 ms ticks) during the proxied parts:")
    print(f"  HTTP keep-alive {per_request(r.http_keep['proxy'])}/request, new connection {per_request(r.http_new['proxy'])}; "
          f"HTTPS keep-alive {per_request(r.tls_keep['proxy'])}, CONNECT + TLS {per_request(r.tls_new['proxy'])}")
    busy = sizes.rps_seconds + 0.5
    print(f"  under load ({sizes.clients} conns) {proxied.engine_cpu / max(1.0, proxied.rate * busy) * 1e6:.0f} µs/request, "
          f"{proxied.engine_cpu / busy * 100:.0f}% of a core")
    print("  tunnels: " + "; ".join(f"{t.label.split(' (')[0]}, {t.label.rsplit(' ', 1)[1]}: {t.engine_cpu / t.megabytes * 1e3:.2f} ms/MB"
                                    for t in r.transfers if t.megabytes))
    print("engine memory: " + "; ".join(f"{when} RSS {m['VmRSS']:.0f} MB (peak {m['VmHWM']:.0f} MB)" for when, m in r.memory.items()))
    for t in r.transfers:
        if isinstance(t.proxied, str) or isinstance(t.direct, str):
            print(f"{t.label} failed: through the proxy: {t.proxied if isinstance(t.proxied, str) else 'ok'}; "
                  f"direct: {t.direct if isinstance(t.direct, str) else 'ok'}")
    print("egress log of the run (decision, rule, records, bytes):")
    for decision, rule, count, nbytes in r.log_summary:
        print(f"  {decision:<8} {rule:<60} {count:>7} {nbytes or 0:>15,}")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a fifth of the work (also BENCH_QUICK=1)")
    parser.add_argument("--serve-upstreams", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--host-proxy", nargs=2, metavar=("DIR", "PORTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstreams:
        asyncio.run(serve_upstreams(*args.serve_upstreams))
        return
    if args.host_proxy:
        asyncio.run(host_proxy(Path(args.host_proxy[0]), json.loads(args.host_proxy[1])))
        return
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    sizes = Sizes.quick() if quick else Sizes()
    started = time.perf_counter()
    results = run(sizes)
    report(results, sizes)
    print(f"({'quick mode, ' if quick else ''}{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
