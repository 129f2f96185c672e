"""The egress engine: mitmproxy with jupyter-cma's policy in its hooks, in a process of its own.

The process entry point, as `EgressProxy` (egress/proxy.py) starts it::

    <engine python> -O -m jupyter_cma.egress.engine --control-fd N

The first message on the control channel configures the engine; `Engine.run`
then serves until the server closes the channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys

from .. import channel
from .core import Engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_cma.egress.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--control-fd", type=int, required=True, help="the engine's end of the control channel")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    control = socket.socket(fileno=args.control_fd)
    control.settimeout(30)
    first = control.recv(channel.MESSAGE_BYTES)
    if not first:
        return
    settings = json.loads(first)
    if settings.get("op") != "configure":
        raise SystemExit("egress engine: the first control message must configure it")

    async def run() -> None:
        engine = Engine(control, settings)
        await engine.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
