"""The egress log as an audit trail, through real sandboxes of both tiers, the real engine and loopback upstreams.

Every request the proxy refuses is exactly one record, `denied`, naming what
refused it (a limit, a parse failure, a policy) with the method, host and path
when they could be read, and never a second record that reads `allowed`. A
plain tunnel and a WebSocket are one record each, written when they end; one
still open when the engine dies is recorded by the server, marked as cut off.
A WebSocket message over the limit closes the connection, and is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import threading
from typing import Any

from tests.helpers import wait_until
from tests.test_egress_proxy import Rig, test_ca, tier  # noqa: F401  (test_ca and tier are fixtures there)

LIMITS = dict(max_header_bytes=8192, header_timeout=2.0, idle_timeout=3.0, max_body_bytes=100_000, connections_per_sandbox=4,
              requests_per_second=5.0, request_burst=10)


def one_each(rows: list[dict[str, Any]], paths: list[str]) -> dict[str, dict[str, Any]]:
    """The one record of each path; fails if a path has none or more than one."""
    found: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    for row in rows:
        if row["path"] in found:
            found[row["path"]].append(row)
    assert all(len(v) == 1 for v in found.values()), {k: [(r["status"], r["decision"], r["rule"]) for r in v] for k, v in found.items()}
    return {k: v[0] for k, v in found.items()}


async def test_every_refusal_is_one_denied_record_naming_what_refused_it(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier, **LIMITS) as rig:
        pid = rig.policy()
        box = await rig.box("sesn_limits")
        answers = await box.run(r'''
def chunked(path):
    with socket.create_connection(PROXY, timeout=30) as s:
        s.sendall(b"POST http://plain.test" + path + b" HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(50):
                s.sendall(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            return _response(s, 30)
        except OSError as exc:
            return None, repr(exc)
{
    "head": raw(b"GET http://plain.test/case-head HTTP/1.1\r\nHost: plain.test\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"),
    # The head of the reported case: a 100,000-byte header toward an allowed private service.
    "head-100k": raw(b"GET http://other.test/case-head-100k HTTP/1.1\r\nHost: other.test\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n"),
    "body": raw(b"POST http://plain.test/case-body HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000),
    "chunked": chunked(b"/case-chunked"),
    "response": raw(b"GET http://plain.test/big?bytes=300000 HTTP/1.1\r\nHost: plain.test\r\n\r\n"),
    "slow": raw(b"GET http://plain.test/case-slow HTTP/1.1\r\nHost: pla", timeout=30),
    "idle": raw(b"GET http://plain.test/sleep?seconds=20 HTTP/1.1\r\nHost: plain.test\r\n\r\n", timeout=30),
    "line": raw(b"GET /case-line\r\nHost: plain.test\r\n\r\n"),
    "smuggled": raw(b"POST http://plain.test/case-smuggled HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "policy": raw(b"GET http://denied.test/case-policy HTTP/1.1\r\nHost: denied.test\r\n\r\n"),
}''')
        # The rate and the connection count, each in a sandbox of its own (both are per sandbox).
        rate = await rig.box("sesn_rate")
        burst = await rate.run("keep_alive(*[b'GET http://plain.test/case-rate-%d HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n' % i for i in range(30)])")
        crowd = await rig.box("sesn_crowd")
        crowded = await crowd.run('''
held = [socket.create_connection(PROXY, timeout=10) for _ in range(4)]
extra = [raw(b"GET http://plain.test/case-crowded HTTP/1.1\\r\\nHost: plain.test\\r\\n\\r\\n") for _ in range(2)]
[s.close() for s in held]
[status for status, _ in extra]''')
        cases = ["/case-head", "/case-head-100k", "/case-body", "/case-chunked", "/big", "/case-slow", "/sleep", "/case-smuggled",
                 "/case-policy"]
        rows = await rig.rows(len(cases) + 1, session_id="sesn_limits")
        rate_rows = await rig.rows(30, session_id="sesn_rate")
        crowd_rows = await rig.rows(2, session_id="sesn_crowd")
    assert answers["head"][0] == 431 and answers["head-100k"][0] in (431, None) and answers["body"][0] == 413
    assert answers["chunked"][0] in (None, 413) and answers["slow"][0] == 408 and answers["idle"][0] is None
    assert answers["line"][0] == 400 and answers["smuggled"][0] == 400 and answers["policy"][0] == 403
    expected = {
        "/case-head": ("GET", "plain.test", 431, "limit:header-size"),
        "/case-head-100k": ("GET", "other.test", 431, "limit:header-size"),
        "/case-body": ("POST", "plain.test", 413, "limit:body-size"),
        "/case-chunked": ("POST", "plain.test", 413, "limit:body-size"),
        "/big": ("GET", "plain.test", 502, "limit:body-size"),
        "/case-slow": ("GET", "plain.test", 408, "limit:header-time"),
        "/sleep": ("GET", "plain.test", None, "limit:idle"),
        "/case-smuggled": ("POST", "plain.test", 400, "invalid:protocol"),
        "/case-policy": ("GET", "denied.test", 403, f"policy:{pid}:not-allowed"),
    }
    found = one_each(rows, cases)
    for path, (method, host, status, rule) in expected.items():
        row = found[path]
        assert (row["method"], row["host"], row["status"], row["decision"], row["rule"]) == (method, host, status, "denied", rule), row
    # A request line that cannot be parsed has no host or path to name: one record, its method.
    (line,) = [r for r in rows if r["rule"] == "invalid:request-line"]
    assert (line["method"], line["host"], line["status"], line["decision"]) == ("GET", "-", 400, "denied")
    assert len(rows) == len(cases) + 1 and not [r for r in rows if r["decision"] != "denied"], rows
    assert found["/case-head-100k"]["bytes_up"] > 8192
    # Nothing of a request refused before it was forwarded reached an upstream; a streamed body was cut short of the limit.
    reached = {r["path"]: r for r in rig.plain.requests + rig.other.requests}
    assert not {"/case-head", "/case-head-100k", "/case-body", "/case-slow", "/case-line", "/case-smuggled", "/case-policy"} & set(reached)
    assert "/case-chunked" not in reached or len(reached["/case-chunked"]["body"]) <= LIMITS["max_body_bytes"]
    # The rate: every request of the burst is one record, the refused ones denied by the rate.
    statuses = [status for status, _ in burst]
    assert 200 in statuses and 429 in statuses
    rated = one_each(rate_rows, [f"/case-rate-{i}" for i in range(30)])
    for i, status in enumerate(statuses):
        row = rated[f"/case-rate-{i}"]
        expected_row = (200, "allowed", f"policy:{pid}:private_service:plain.test") if status == 200 else (429, "denied", "limit:rate")
        assert (row["status"], row["decision"], row["rule"]) == expected_row, (i, row)
    # Connections over the limit are refused before a byte of them is read: one record each, nothing to name.
    assert crowded == [429, 429]
    assert [(r["method"], r["host"], r["status"], r["decision"], r["rule"]) for r in crowd_rows] == [("-", "-", 429, "denied", "limit:connections")] * 2


async def test_a_tunnel_open_when_the_engine_dies_is_recorded_as_cut_off(tmp_path, test_ca, tier):
    async with Rig(tmp_path, test_ca, tier=tier) as rig:
        pid = rig.policy()
        box = await rig.box("sesn_cut")
        # A plain tunnel (nothing to read inside) that ends: its record, with its bytes.
        assert await box.run(f"fetch('https://secure.test/closed', cadata={test_ca['pem']!r})") == (200, "hello from secure")
        await rig.rows(1, session_id="sesn_cut")
        # Another, held open.
        held = await box.run(f'''
held = socket.create_connection(PROXY, timeout=10)
held.sendall(b"CONNECT secure.test:443 HTTP/1.1\\r\\nHost: secure.test:443\\r\\n\\r\\n")
_response(held, 10)
held = ssl.create_default_context(cadata={test_ca['pem']!r}).wrap_socket(held, server_hostname="secure.test")
held.sendall(b"GET /open HTTP/1.1\\r\\nHost: secure.test\\r\\n\\r\\n")
_response(held, 10)[0]''')
        assert held == 200
        await wait_until(lambda: rig.proxy.status()["open_tunnels"] == 1, 15, what="the server knowing of the open tunnel")
        pid_engine = rig.proxy.pid
        assert pid_engine is not None
        os.kill(pid_engine, signal.SIGKILL)
        cut = await rig.rows(2, session_id="sesn_cut")
        await wait_until(lambda: rig.proxy.running and rig.proxy.pid != pid_engine, 30, what="the engine restarted")
        # The sandbox lets go of its tunnel; the new engine never knew it, so nothing more is recorded of it.
        await box.run("held.close()\nNone")
        assert await box.run("fetch('http://plain.test/after')") == (200, "hello from plain")
        rows = await rig.rows(3, session_id="sesn_cut")
    assert rig.proxy.status()["open_tunnels"] == 0
    tunnels = [r for r in rows if r["host"] == "secure.test"]
    assert [(r["method"], r["status"], r["decision"], r["rule"]) for r in tunnels] == [
        ("CONNECT", None, "allowed", f"cut-off:engine-stopped:policy:{pid}:private_service:https://secure.test"),
        ("CONNECT", 200, "allowed", f"policy:{pid}:private_service:https://secure.test"),
    ], tunnels
    assert tunnels[0] == [r for r in cut if r["host"] == "secure.test"][0] and tunnels[1]["bytes_up"] > 200
    assert [r["path"] for r in rows if r["host"] == "plain.test"] == ["/after"]


class WsUpstream:
    """A loopback WebSocket server: answers the upgrade, records each message (path → payload sizes), answers a close."""

    def __init__(self) -> None:
        self.messages: dict[str, list[int]] = {}
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            reader = conn.makefile("rb")
            request = reader.readline().split()
            path = request[1].decode() if len(request) > 1 else "?"
            key = b""
            while (line := reader.readline().strip()):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
                         + accept + b"\r\n\r\n")
            received = self.messages.setdefault(path, [])
            message = 0
            try:
                while True:
                    first, second = reader.read(2)
                    length = second & 0x7F
                    if length == 126:
                        length = struct.unpack("!H", reader.read(2))[0]
                    elif length == 127:
                        length = struct.unpack("!Q", reader.read(8))[0]
                    reader.read(4 if second & 0x80 else 0)
                    reader.read(length)
                    if first & 0x0F == 8:
                        conn.sendall(b"\x88\x02\x03\xe8")
                        return
                    message += length
                    if first & 0x80:
                        received.append(message)
                        message = 0
            except (OSError, ValueError):
                return

    def close(self) -> None:
        self.server.close()


WS_CLIENT = r'''
import os, struct
def ws_frame(payload, opcode=2, fin=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def ws(path, frames, timeout=15):
    """Upgrade to a WebSocket at ws.test<path>, send `frames`: (upgrade status, whatever came back until the connection closed)."""
    with socket.create_connection(PROXY, timeout=timeout) as s:
        s.sendall(b"GET http://ws.test" + path + b" HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        status = _response(s, timeout)[0]
        back = b""
        try:
            for frame in frames:
                s.sendall(frame)
        except OSError:
            pass
        try:
            while (chunk := s.recv(65536)):
                back += chunk
        except OSError:
            pass
        return status, back
'''


async def test_a_websocket_message_over_the_limit_closes_the_connection_and_is_recorded(tmp_path, test_ca, tier):
    upstream = WsUpstream()
    try:
        async with Rig(tmp_path, test_ca, tier=tier, max_websocket_message_bytes=65536) as rig:
            pid = rig.policy(websocket="allow", private_services=[*rig.services(), {"name": "ws.test", "target": f"127.0.0.1:{upstream.port}"}])
            box = await rig.box("sesn_ws")
            answers = await box.run(WS_CLIENT + '''
close = ws_frame(b"\\x03\\xe8", opcode=8)
[
    ws(b"/ws-ok", [ws_frame(b"hello"), ws_frame(b"x" * 60000), close]),
    # Fragments of one message, each small, together over the limit.
    ws(b"/ws-fragments", [ws_frame(b"a" * 40000, fin=False)] + [ws_frame(b"b" * 40000, opcode=0, fin=False)] * 5),
    # One frame over the limit.
    ws(b"/ws-whole", [ws_frame(b"c" * 100000)]),
    # A flood of tiny fragments: each costs more than its byte.
    ws(b"/ws-tiny", [ws_frame(b"d", fin=False)] + [ws_frame(b"d", opcode=0, fin=False)] * 3000),
]''')
            paths = ["/ws-ok", "/ws-fragments", "/ws-whole", "/ws-tiny"]
            rows = await rig.rows(len(paths), session_id="sesn_ws")
    finally:
        upstream.close()
    assert [status for status, _ in answers] == [101] * 4
    assert answers[0][1] == b"\x88\x02\x03\xe8"  # the upstream's close, relayed
    for _, back in answers[1:]:
        assert back in (b"", b"\x88\x11\x03\xf1message too big"), back  # 1009, when the close frame arrived before the cut
    # Nothing of a message over the limit reached the upstream; the ones within it did.
    assert upstream.messages == {"/ws-ok": [5, 60000], "/ws-fragments": [], "/ws-whole": [], "/ws-tiny": []}
    found = one_each(rows, paths)
    assert (found["/ws-ok"]["status"], found["/ws-ok"]["decision"], found["/ws-ok"]["rule"]) == (101, "allowed", f"policy:{pid}:private_service:ws.test")
    assert found["/ws-ok"]["bytes_up"] > 60000  # the whole conversation, counted when it ended
    for path in paths[1:]:
        assert (found[path]["method"], found[path]["status"], found[path]["decision"], found[path]["rule"]) == (
            "GET", 101, "denied", "limit:websocket-message"), found[path]
    assert len(rows) == len(paths)
