"""The control channel between the server and the egress engine: JSON messages on a SOCK_SEQPACKET pair.

Both ends use non-blocking sockets on their event loops. A message the
socket cannot take right now (its buffer is full, e.g. after a restart that
re-attaches hundreds of sandboxes) is queued and sent, in order, as soon as
the socket can take it: dropping it would leave a sandbox unserved or a log
record lost. Standard library only (the engine imports it too).

A message is one packet, except one larger than `MESSAGE_BYTES` (an internal
call's body or answer): Linux caps a packet near the socket's send buffer,
which `net.core.wmem_max` may hold far below what `pair` asks for.
Such a message goes as fragments, each packet marked `+` (more follows) or
`$` (the last); a whole message is JSON and starts with `{`. One end writes
each direction from one event loop, so fragments of two messages never mix;
`Inbox` joins them.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from typing import Any

MESSAGE_BYTES = 256 * 1024  # the largest packet either end sends or reads
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the largest message, fragments joined
BUFFER_BYTES = 4 * 1024 * 1024
MORE, LAST = b"+", b"$"  # the first byte of a fragment


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
        if len(data) > MAX_MESSAGE_BYTES or (fds and len(data) > MESSAGE_BYTES):
            raise ValueError(f"control message of {len(data)} bytes is larger than {MESSAGE_BYTES if fds else MAX_MESSAGE_BYTES}")
        start = len(self._queue)
        if len(data) <= MESSAGE_BYTES:
            self._queue.append((data, list(fds or ())))
        else:
            step = MESSAGE_BYTES - 1
            for offset in range(0, len(data), step):
                last = offset + step >= len(data)
                self._queue.append(((LAST if last else MORE) + data[offset:offset + step], []))
        if start == 0:
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


class Inbox:
    """Joins the fragments of a long message; a whole message passes straight through."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, packet: bytes) -> bytes | None:
        """The message this packet completes, or None while fragments of it are still to come.

        ValueError (and the fragments so far are dropped) when they outgrow
        `MAX_MESSAGE_BYTES`. A whole message cannot arrive between two
        fragments (one writer per direction); if one did, the fragments would
        be dropped and the message passed on.
        """
        marker = packet[:1]
        if marker not in (MORE, LAST):
            self._clear()
            return packet
        self._parts.append(packet[1:])
        self._size += len(packet) - 1
        if self._size > MAX_MESSAGE_BYTES:
            self._clear()
            raise ValueError(f"a fragmented control message larger than {MAX_MESSAGE_BYTES} bytes; dropped")
        if marker == MORE:
            return None
        data = b"".join(self._parts)
        self._clear()
        return data

    def _clear(self) -> None:
        self._parts, self._size = [], 0
