"""Inside every sandbox: a loopback port bridged to the sandbox's egress socket, then the sandbox's program.

    python -I -S bridge.py --listen 127.0.0.1:3128 --unix <kernel dir>/egress.sock -- <kernel argv>
    (a container's entrypoint: --unix /run/cma/egress.sock -- <the worker>)

Binds the listening port first, forks a forwarder that relays every TCP
connection to a new connection on the Unix socket (bytes both ways, half-closes
passed on), then executes the program in its own place, so it is the process
bubblewrap (or Docker) watches: its exit ends the sandbox, forwarder included.
When nothing listens on the Unix socket, a connection gets a short
`502 Bad Gateway` saying so and is closed.

The standard library only, and nothing from this package: it runs with `-I -S`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

BUFFER = 64 * 1024
NO_PROXY_BODY = (
    b"jupyter-cma: no egress proxy is listening for this sandbox, so it has no network access "
    b"(outbound requests go through the server's egress proxy only).\n"
)


def usage() -> None:
    sys.stderr.write("usage: bridge.py --listen HOST:PORT --unix SOCKET_PATH -- COMMAND [ARG...]\n")
    sys.exit(2)


def parse(argv: list[str]) -> tuple[tuple[str, int], str, list[str]]:
    if "--" not in argv:
        usage()
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    values = dict(zip(options[::2], options[1::2]))
    if len(options) != 4 or set(values) != {"--listen", "--unix"} or not command:
        usage()
    host, _, port = values["--listen"].rpartition(":")
    return (host, int(port)), values["--unix"], command


async def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy `source` to `target` until `source` ends, then pass the end on (a half-close).

    Raw sockets, not asyncio streams: a stream's transport carries both
    directions, so a failed write (the proxy has closed, say after refusing a
    request whose body was still coming) would close it and drop an answer
    already received from the proxy but not yet read. On a socket the answer
    stays readable after the peer has gone; a reset ends this direction like
    an end of stream, after everything read before it has been passed on.
    """
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(source, BUFFER):
            await loop.sock_sendall(target, data)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


async def _answer_no_proxy(client: socket.socket, error: OSError) -> None:
    body = NO_PROXY_BODY.rstrip(b"\n") + f" [{error.strerror or error}]\n".encode()
    head = (
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        await asyncio.get_running_loop().sock_sendall(client, head + body)
    except OSError:
        pass


async def _relay(path: str, client: socket.socket) -> None:
    # Without TCP_NODELAY a response written in two parts waits for the client's delayed ACK (40 ms).
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.setblocking(False)
    try:
        try:
            await asyncio.get_running_loop().sock_connect(upstream, path)
        except OSError as exc:
            await _answer_no_proxy(client, exc)
            return
        await asyncio.gather(_pipe(client, upstream), _pipe(upstream, client))
    finally:
        client.close()
        upstream.close()


async def forward(listener: socket.socket, path: str) -> None:
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    relays: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references
    while True:
        try:
            client, _ = await loop.sock_accept(listener)
        except OSError:  # out of file descriptors, say: later connections may be accepted
            await asyncio.sleep(0.1)
            continue
        client.setblocking(False)
        relay = asyncio.create_task(_relay(path, client))
        relays.add(relay)
        relay.add_done_callback(relays.discard)


def main(argv: list[str]) -> None:
    (host, port), path, command = parse(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    if os.fork() == 0:
        # The forwarder: interrupts are for the kernel (they arrive for the whole process group).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.close(0)
            asyncio.run(forward(listener, path))
        finally:
            os._exit(0)
    listener.close()
    # Started with SIGINT ignored (so bubblewrap survives interrupts); the kernel needs the default
    # disposition, which Python turns into KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ.pop("JPY_PARENT_PID", None)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
