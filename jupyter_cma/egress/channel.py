"""The control channel between the server and the egress engine: JSON messages on a SOCK_SEQPACKET pair.

Both ends use non-blocking sockets on their event loops. A message the
socket cannot take right now (its buffer is full, e.g. after a restart that
re-attaches hundreds of sandboxes) is queued and sent, in order, as soon as
the socket can take it: dropping it would leave a sandbox unserved or a log
record lost. Standard library only (the engine imports it too).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from typing import Any

MESSAGE_BYTES = 256 * 1024  # the largest message either end sends or reads
BUFFER_BYTES = 4 * 1024 * 1024


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair with room for bursts of messages in each direction."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in ends:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    return ends


class Outbox:
    """Sends messages on a non-blocking SEQPACKET socket now, or as soon as it can take them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._queue: deque[tuple[bytes, list[int]]] = deque()

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Send (or queue) one message; OSError other than a full buffer means the peer is gone."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MESSAGE_BYTES:
            raise ValueError(f"control message of {len(data)} bytes is larger than {MESSAGE_BYTES}")
        self._queue.append((data, list(fds or ())))
        if len(self._queue) == 1:
            self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            data, fds = self._queue[0]
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
            except BlockingIOError:
                loop.add_writer(self.sock.fileno(), self._flush)
                return
            self._queue.popleft()
        loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        """Forget what is queued (the socket is closing)."""
        self._queue.clear()
        try:
            asyncio.get_running_loop().remove_writer(self.sock.fileno())
        except (RuntimeError, ValueError):
            pass
