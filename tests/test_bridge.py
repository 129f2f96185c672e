"""The egress bridge (sandbox/cma_sandbox/bridge.py) as a real process between loopback TCP and a Unix socket.

Both tiers run it inside every sandbox: whatever an answer's timing, the
proxy's answer must reach the sandbox's client whole.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jupyter_cma.sandboxes.runtime import BRIDGE_SCRIPT

REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class UnixUpstream:
    """A Unix-socket server standing in for the proxy: each connection is served by `serve(conn)` in a thread."""

    def __init__(self, path: Path, serve: Callable[[socket.socket], None]) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.serve = serve
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
            self.serve(conn)

    def close(self) -> None:
        self.server.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    """Everything until the end of the stream; a reset after it is the end too (the answer is what counts)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def listening(port: int) -> bool:
    """Whether a socket listens on the port, seen without connecting (a probe would be relayed too)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A" for row in rows)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[tuple[str, int], Path]]:
    """The bridge in front of `<tmp>/egress.sock`, run as a sandbox runs it (its command: a sleep)."""
    address, path = ("127.0.0.1", free_port()), tmp_path / "egress.sock"
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(BRIDGE_SCRIPT), "--listen", f"{address[0]}:{address[1]}", "--unix", str(path),
         "--", "/bin/sleep", "600"],
        start_new_session=True,  # the forwarder is a forked child: the whole group goes at the end
    )

    try:
        deadline = time.monotonic() + 10
        while not listening(address[1]):
            assert time.monotonic() < deadline and process.poll() is None, "the bridge did not listen"
            time.sleep(0.02)
        yield address, path
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_an_answer_sent_before_the_proxy_hangs_up_reaches_the_client(bridge):
    """A refusal while the body is still coming: the proxy answers and closes with the body unread (a reset)."""
    address, path = bridge

    def refuse(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(REFUSAL)

    upstream = UnixUpstream(path, refuse)
    answers = []
    try:
        for _ in range(50):  # the answer used to be lost about half of the time
            with socket.create_connection(address, timeout=10) as client:
                client.sendall(b"POST http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nContent-Length: 100000\r\n\r\n"
                               + b"x" * 100000)
                answers.append(read_all(client))
    finally:
        upstream.close()
    assert answers == [REFUSAL] * 50


def test_half_closes_are_passed_on_both_ways(bridge):
    """A client that ends its side first still gets the whole answer, and the upstream sees the end."""
    address, path = bridge
    received = []

    def echo_after_end(conn: socket.socket) -> None:
        data = read_all(conn)  # to the client's end, passed on as a half-close
        received.append(data)
        conn.sendall(b"got " + str(len(data)).encode())

    upstream = UnixUpstream(path, echo_after_end)
    try:
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"y" * 300000)
            client.shutdown(socket.SHUT_WR)
            answer = read_all(client)
    finally:
        upstream.close()
    assert received == [b"y" * 300000] and answer == b"got 300000"


def test_without_a_proxy_the_answer_says_so(bridge):
    address, _ = bridge  # nothing listens on the socket
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
        answer = read_all(client)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway") and b"no egress proxy is listening for this sandbox" in body
