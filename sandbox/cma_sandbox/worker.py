"""A container's main process: wait for a work item, serve it with the SDK's worker, exit.

    python -m cma_sandbox.worker        (the image's ENTRYPOINT runs it behind the egress bridge)

1. Import the SDK (about a second), then print `{"cma": "ready"}`: a pooled
   container is warm from here on.
2. Wait for the assignment on `/run/cma/assignment`, a FIFO the server made in
   the container's private socket directory (opened before `ready`, so the
   wait costs no CPU and ends the moment the server writes): the work item
   (id, environment, session), the API's base URL, `max_idle`, and the item's
   secret. It is never a file on disk. That secret
   carries a *placeholder* sessions token: the egress proxy swaps in the real
   one on requests to the API host, so nothing in this container is a real
   credential.
3. Serve the item with `EnvironmentWorker.handle_item` (the SDK's heartbeat,
   skills download, session tool runner and force-stop) with the standard
   toolset in `/workspace`, plus the server's custom tools, which are called
   through the proxy's internal route (`http://cma.internal/`), where the
   proxy knows this container by its socket.
4. Exit 0 when the flow ends (the session stayed idle past `max_idle`, the
   lease ended), 3 when it failed, 0 after SIGTERM once the SDK has stopped the
   item.

Every request leaves through the bridge on 127.0.0.1:3128, the API's too
(even when its URL is a loopback address, which inside the container would be
the container itself). Progress goes to stdout as one JSON object per line
(`ready`, `assigned`, `tool_start`, `tool`, `lease_lost`, `error`, `end`); the server reads
them for the session's timings and its crash handling, and never for anything
that matters to security. The SDK's log goes to stderr.

Imports nothing from jupyter_cma: only the standard library and `anthropic`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ASSIGNMENT = Path(os.environ.get("CMA_ASSIGNMENT", "/run/cma/assignment"))
WORKDIR = Path(os.environ.get("CMA_WORKDIR", "/workspace"))
PROXY = "http://127.0.0.1:3128"
INTERNAL = "http://cma.internal"
EXIT_FAILED = 3

log = logging.getLogger("cma_sandbox")


def emit(event: str, **fields: Any) -> None:
    """One progress line for the server (never a secret)."""
    sys.stdout.write(json.dumps({"cma": event, "t": round(time.time(), 3), **fields}) + "\n")
    sys.stdout.flush()


class _LeaseWatch(logging.Handler):
    """Reports a lost lease: the server must then not force-stop the item if this container dies.

    The SDK says so only in its log (its lease object is private); the SDK is
    pinned, and these are its two messages for the two ways a lease is lost.
    """

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("lease lost", "lease assumed lost")):
            emit("lease_lost")


def _open_assignment() -> int:
    """The FIFO's read end, opened before "ready" so that the server's write finds a reader.

    Non-blocking: a blocking open would wait for the writer. Until one has
    written, poll() reports nothing (Linux reports a hang-up only after a
    writer came and went).
    """
    return os.open(ASSIGNMENT, os.O_RDONLY | os.O_NONBLOCK)


def _wait_for_assignment(fd: int) -> dict[str, Any]:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll()  # asleep until the server writes
    os.set_blocking(fd, True)
    chunks = []
    while chunk := os.read(fd, 65536):  # to the end: the server closes its end after writing
        chunks.append(chunk)
    os.close(fd)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        emit("error", message="the assignment was not JSON (empty: the server closed the FIFO without writing)")
        sys.exit(EXIT_FAILED)


def _internal(path: str, body: dict[str, Any] | None = None, timeout: float = 330.0) -> Any:
    """A request to the server over the proxy's internal route (the proxy identifies this container)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": PROXY}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(INTERNAL + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def _custom_tool_definitions() -> list[dict[str, Any]]:
    """The server's custom tools for this session; none when the server has no registry or cannot be reached."""
    try:
        return list(_internal("/v1/tools", timeout=10).get("tools") or [])
    except (OSError, ValueError, urllib.error.URLError) as exc:
        log.info("no custom tools from the server: %s", exc)
        return []


def _tools_factory(definitions: list[dict[str, Any]]) -> Any:
    from anthropic.lib.tools import BetaAsyncFunctionTool, ToolError
    from anthropic.lib.tools.agent_toolset import beta_agent_toolset_20260401

    def reported(name: str, description: str | None, schema: Any, call: Any) -> Any:
        async def run(**kwargs: Any) -> Any:
            began, failed = time.monotonic(), True
            emit("tool_start", name=name)
            try:
                result = await call(kwargs)
                failed = False
                return result
            finally:
                emit("tool", name=name, error=failed, seconds=round(time.monotonic() - began, 3))

        return BetaAsyncFunctionTool(run, name=name, description=description, input_schema=schema)

    def custom(definition: dict[str, Any]) -> Any:
        name = definition["name"]

        async def call(arguments: dict[str, Any]) -> Any:
            try:
                answer = await asyncio.to_thread(_internal, f"/v1/tools/{name}", arguments)
            except urllib.error.HTTPError as exc:
                raise ToolError(f"{name}: the server refused the call ({exc.code}): {exc.read()[:500].decode(errors='replace')}") from exc
            except (OSError, ValueError) as exc:
                raise ToolError(f"{name}: the server could not be reached: {exc}") from exc
            if answer.get("is_error"):
                raise ToolError(answer.get("content") or f"{name} failed")
            return answer.get("content")

        return reported(name, definition.get("description"), definition.get("input_schema") or {"type": "object"}, call)

    def factory(ctx: Any) -> list[Any]:
        tools = [reported(t.name, t.description, t.input_schema, t.call) for t in beta_agent_toolset_20260401(ctx)]
        return tools + [custom(d) for d in definitions]

    return factory


async def serve(assignment: dict[str, Any]) -> None:
    import httpx2  # the SDK's HTTP library
    from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient
    from anthropic.lib.environments import EnvironmentWorker

    # SIGTERM (a stop) cancels the flow; the SDK then force-stops the item before this returns.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    # One transport through the proxy for every request: the API's URL may be a loopback address (a
    # local emulator), which NO_PROXY would send to this container's own loopback. (Given a transport,
    # neither the SDK nor httpx2 mounts the proxy variables' per-host routes, NO_PROXY's included.)
    client = AsyncAnthropic(api_key=None, base_url=assignment["api_base_url"],
                            http_client=DefaultAsyncHttpxClient(transport=httpx2.AsyncHTTPTransport(proxy=PROXY)))
    definitions = await asyncio.to_thread(_custom_tool_definitions)
    worker = EnvironmentWorker(client, workdir=WORKDIR, tools=_tools_factory(definitions),
                               max_idle=float(assignment.get("max_idle", 60.0)))
    try:
        await worker.handle_item(
            work_id=assignment["work_id"],
            environment_id=assignment["environment_id"],
            session_id=assignment["session_id"],
            work_secret=assignment["work_secret"],
        )
    finally:
        await client.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("anthropic.lib.environments").addHandler(_LeaseWatch())
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per request is the egress log's job
    # Imported before "ready", so that a pooled container has paid for it already.
    import anthropic.lib.environments  # noqa: F401
    import anthropic.lib.tools.agent_toolset  # noqa: F401

    def stopped_while_waiting(signum: int, frame: Any) -> None:
        emit("end", reason="stopped before an assignment")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stopped_while_waiting)
    fd = _open_assignment()
    emit("ready", pid=os.getpid())
    assignment = _wait_for_assignment(fd)
    emit("assigned", session_id=assignment.get("session_id"), work_id=assignment.get("work_id"))
    try:
        asyncio.run(serve(assignment))
    except asyncio.CancelledError:
        emit("end", reason="stopped")
        return
    except Exception as exc:
        log.exception("the worker flow failed")
        emit("error", message=f"{type(exc).__name__}: {exc}"[:1000])
        sys.exit(EXIT_FAILED)
    emit("end", reason="the worker flow ended")


if __name__ == "__main__":
    main()
