"""Inside a kernel's sandbox: a loopback port bridged to the sandbox's egress socket, then the kernel.

    python -I -S bridge.py --listen 127.0.0.1:3128 --unix <kernel dir>/egress.sock -- <kernel argv>

Binds the listening port first, forks a forwarder that relays every TCP
connection to a new connection on the Unix socket (bytes both ways, half-closes
passed on), then executes the kernel in its own place, so the kernel is the
process bubblewrap watches (its exit ends the sandbox, forwarder included).
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(BUFFER)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


async def _relay(path: str, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    # asyncio sets TCP_NODELAY only for sockets made with IPPROTO_TCP; without it a response
    # written in two parts waits for the client's delayed ACK (40 ms).
    client_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(path)
    except OSError as exc:
        body = NO_PROXY_BODY.rstrip(b"\n") + f" [{exc.strerror or exc}]\n".encode()
        head = (
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            client_writer.write(head + body)
            await client_writer.drain()
        except OSError:
            pass
        client_writer.close()
        return
    try:
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
    finally:
        for writer in (client_writer, upstream_writer):
            writer.close()


async def forward(listener: socket.socket, path: str) -> None:
    server = await asyncio.start_server(lambda r, w: _relay(path, r, w), sock=listener, limit=BUFFER)
    async with server:
        await server.serve_forever()


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
