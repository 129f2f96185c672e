"""One container of the container tier: its `Slot` (the container, its volume, its socket directory) and what it says.

A slot is pooled, on standby for a session, or serving one. What the container
prints is read by a `Follower` thread (docker-py blocks) and handed to the
event loop line by line: the worker's `{"cma": …}` events (ready, a tool call
started or done, the lease lost, an error) move the slot's state; every line
goes to the session's log, or is kept until the slot has a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .labels import CONTAINER_PREFIX

if TYPE_CHECKING:
    from .engine import DockerEngine

# How a session got its container: taken from the warm pool, kept on standby since its last turn, or started for it.
START_DESCRIPTIONS = {"pool": "from the pool", "standby": "on standby since the last turn", "new": "started for this item"}
EXIT_WORKER_FAILED = 3  # cma_sandbox.worker's exit code when the SDK flow raised


class ContainerFailed(RuntimeError):
    """The session's container ended badly; the message says how and what happened to the work item."""


def describe_exit(state: dict[str, Any]) -> str:
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return f"it ran out of memory and was killed (exit code {code})"
    if isinstance(code, int) and code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"it was killed by {name} (exit code {code})"
    if code == EXIT_WORKER_FAILED:
        return "its worker failed (exit code 3)"
    error = state.get("Error")
    return f"it exited with code {code}" + (f" ({error})" if error else "")


# --------------------------------------------------------------------------- one container


@dataclass
class Slot:
    """One container with its volume and its private socket directory; pooled or serving a session."""

    id: str
    directory: Path
    volume: str
    size: str
    container_id: str | None = None
    session_id: str | None = None
    created_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    ready_at: float | None = None
    assigned_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    lease_lost: bool = False
    tools: int = 0
    in_tool: str | None = None  # the tool call running now, if any
    worker_error: str | None = None
    log_path: Path | None = None
    backlog: list[str] = field(default_factory=list)  # lines printed before the slot had a session
    on_tool: Any = None
    standby_for: str | None = None  # started on this session's volume for its next turn (see ContainerTier.standby_seconds)
    expiry: asyncio.TimerHandle | None = None  # when a standby container is let go

    @property
    def socket_path(self) -> Path:
        return self.directory / "egress.sock"

    @property
    def assignment_path(self) -> Path:
        return self.directory / "assignment"

    @property
    def name(self) -> str:
        return CONTAINER_PREFIX + self.id

    def line(self, stream: str, text: str) -> None:
        """A line the container printed (called on the event loop)."""
        if stream == "stdout" and text.startswith('{"cma"'):
            try:
                event = json.loads(text)
            except ValueError:
                event = {}
            self._event(event)
        self._keep(f"{stream}: {text}")

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("cma")
        if kind == "ready" and self.ready_at is None:
            self.ready_at = time.monotonic()
            self.ready.set()
        elif kind == "tool_start":
            self.in_tool = str(event.get("name"))[:64]
        elif kind == "tool":
            self.tools += 1
            self.in_tool = None
            if self.on_tool is not None:
                self.on_tool()
        elif kind == "lease_lost":
            self.lease_lost = True
        elif kind == "error":
            self.worker_error = str(event.get("message"))[:1000]

    def _keep(self, text: str) -> None:
        if self.log_path is None:
            self.backlog.append(text)
            del self.backlog[:-200]
            return
        with contextlib.suppress(OSError):
            with self.log_path.open("a") as fh:
                fh.write(text + "\n")

    def open_log(self, path: Path, *, start: str) -> None:
        self.log_path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        backlog, self.backlog = self.backlog, []
        with path.open("a") as fh:
            fh.write(f"--- container {self.name} ({self.container_id and self.container_id[:12]}, "
                     f"{START_DESCRIPTIONS[start]}, volume {self.volume}) "
                     f"serving from {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            fh.writelines(line + "\n" for line in backlog)


class Follower(threading.Thread):
    """Follows one container's output until it exits, then reports its final state (a thread: docker-py blocks)."""

    def __init__(self, tier: DockerEngine, slot: Slot, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"cma-follow-{slot.id}", daemon=True)
        self.tier, self.slot, self.loop = tier, slot, loop

    def run(self) -> None:
        import docker

        api = docker.APIClient(**self.tier._client_kwargs())
        buffers = {"stdout": b"", "stderr": b""}
        try:
            stream = api.attach(self.slot.container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            for out, err in stream:
                for name, chunk in (("stdout", out), ("stderr", err)):
                    if not chunk:
                        continue
                    data = buffers[name] + chunk
                    *lines, buffers[name] = data.split(b"\n")
                    for raw in lines:
                        self._emit(name, raw)
            for name, rest in buffers.items():
                if rest:
                    self._emit(name, rest)
            api.wait(self.slot.container_id, timeout=60)
            state = api.inspect_container(self.slot.container_id)["State"]
        except Exception as exc:  # the container vanished (removed, engine restarted)
            state = {"ExitCode": None, "Error": f"lost track of the container: {type(exc).__name__}: {exc}"}
        finally:
            api.close()
        self.loop.call_soon_threadsafe(self._exited, state)

    def _emit(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:8000]
        self.loop.call_soon_threadsafe(self.slot.line, stream, text)

    def _exited(self, state: dict[str, Any]) -> None:
        if not self.slot.exited.done():
            self.slot.exited.set_result(state)
