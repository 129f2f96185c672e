"""The engine's end of the control channel: the server's messages in, the engine's messages out.

The server sends `attach` (a sandbox's listening socket, by SCM_RIGHTS, with
whom it serves), `detach`, and `internal_reply` (its answer to a call to
cma.internal). When the server closes the channel the engine shuts down.
`ControlChannel` is the part of `Engine` that reads and sends; serving an
attached socket is `SandboxServing`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

from .. import channel
from ..policy import SessionContext, WorkerScope
from .connections import AttachedSandbox
from .limits import TokenBucket

log = logging.getLogger("jupyter_cma.egress.engine")  # the whole engine logs under one name (the server relays its lines)


class ControlChannel:
    """Reading the server's messages and sending the engine's (a part of `Engine`)."""

    def _on_control(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, channel.MESSAGE_BYTES, 4)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                log.info("egress engine: the server closed the control channel; exiting")
                asyncio.get_running_loop().remove_reader(self.control.fileno())
                self._control_open = False
                for future in self._calls.values():  # no answer can come any more
                    if not future.done():
                        future.set_exception(ConnectionError("the control channel closed"))
                self.master.shutdown()
                return
            try:
                message = self.inbox.feed(data)
                if message is None:
                    continue  # a fragment; the rest of the message follows
                self._handle_control(json.loads(message), fds)
            except Exception:
                log.exception("egress engine: bad control message")
                for fd in fds:
                    os.close(fd)

    def _handle_control(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "attach":
            spec = message["sandbox"]
            listener = socket.socket(fileno=fds[0])
            self._detach(spec["id"])
            # The token is swapped only within its worker's scope: without a complete scope there is no token (fail closed).
            worker = WorkerScope.from_json(spec["worker"]) if spec.get("api_token") and spec.get("placeholder") else None
            sandbox = AttachedSandbox(
                id=spec["id"],
                context=SessionContext(spec.get("session_id"), spec.get("agent_id"), dict(spec.get("metadata") or {}), worker),
                bucket=TokenBucket(self.limits.requests_per_second, self.limits.request_burst),
                connect_bucket=TokenBucket(self.limits.requests_per_second, self.limits.request_burst),
                api_token=spec.get("api_token") if worker is not None else None,
                placeholder=spec.get("placeholder") if worker is not None else None,
                inject=spec.get("inject") is not False,
            )
            sandbox.listener = listener
            self.sandboxes[sandbox.id] = sandbox
            asyncio.ensure_future(self._listen(sandbox))
        elif op == "detach":
            self._detach(message["id"])
        elif op == "internal_reply":
            future = self._calls.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result(message)  # an unknown id: the call timed out or its connection is gone
        else:
            log.warning("egress engine: unknown control op %r", op)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.outbox.send(message)
        except OSError:  # the server is gone; the engine exits when it reads the channel's end
            log.warning("egress engine: could not send %s to the server", message.get("op"))
