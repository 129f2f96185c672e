"""`ContainerSandbox`: one claimed work item served in a container of its own; the worker flow runs inside.

The sandbox takes a container from its tier (pooled, on standby, or started
for it), attaches the container's egress socket to the session, hands the
worker its assignment, and waits for the container to exit. The container
exits when its worker flow ends (the session idled past `max_idle`, its lease
ended); one that exits non-zero, is killed or runs out of memory fails the
session with the reason, and the work item is then force-stopped unless the
container reported its lease lost (the SDK's own rule: a lost lease belongs to
someone else). Every line the container prints is kept in
`<data_dir>/logs/<session id>.log`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from ...anthropic_api import item_credential
from ..base import ClaimedItem, Sandbox, SandboxStatus, TerminalCommand, TerminalUnavailable, WorkerSettings, finish_shielded
from .slots import ContainerFailed, Slot, describe_exit

if TYPE_CHECKING:
    from .tier import ContainerTier

log = logging.getLogger(__name__)


class ContainerInfo(TypedDict):
    """The container a sandbox runs in."""

    id: str | None  # short id
    name: str
    volume: str
    image: str


class ContainerExit(TypedDict):
    code: int | None
    oom_killed: bool


class ContainerSandboxStatus(SandboxStatus, total=False):
    """A container sandbox now (REST `GET cma/api/sessions/{id}`: `sandbox`)."""

    container: ContainerInfo | None
    tool_calls: int
    in_tool: str | None  # the tool call running now, if any
    exit: ContainerExit | None
    log: str  # where every line the container printed is kept


class ContainerSandbox(Sandbox):
    """Serves one claimed item in a container of its own; the worker flow runs inside."""

    tier: ClassVar[str] = "container"

    def __init__(self, item: ClaimedItem, workspace: Path, *, tier: ContainerTier) -> None:
        super().__init__(item, workspace)
        self._tier = tier
        self._slot: Slot | None = None
        self._state = "created"
        self._how_started: str | None = None  # how it got its container: a key of START_DESCRIPTIONS
        self._size: str | None = None
        self._error: str | None = None
        self._exit: ContainerExit | None = None
        self._served = False

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"bash", "files", "terminal"})

    @property
    def container_id(self) -> str | None:
        return None if self._slot is None else self._slot.container_id

    @property
    def container_name(self) -> str | None:
        return None if self._slot is None else self._slot.name

    def status(self) -> ContainerSandboxStatus:
        slot = self._slot
        return {
            "tier": self.tier,
            "state": self._state,
            "session_id": self.session_id,
            "work_id": self.item.work_id,
            "size": self._size,
            "start": self._how_started,
            "isolation": "container",
            "container": None if slot is None else {
                "id": slot.container_id and slot.container_id[:12], "name": slot.name, "volume": slot.volume,
                "image": self._tier.image.tag,
            },
            "tool_calls": 0 if slot is None else slot.tools,
            "in_tool": None if slot is None else slot.in_tool,
            "exit": self._exit,
            "error": self._error,
            "log": str(self._tier.log_path(self.session_id)),
        }

    def terminal_command(self) -> TerminalCommand:
        """`docker exec -it -w /workspace <container> /bin/bash -l` (with `-H docker_url` when that is set), through
        the docker client `ContainerTier.docker_cli`; TerminalUnavailable while no container serves or without it."""
        container_id, name = self.container_id, self.container_name
        if container_id is None or name is None or self._state != "serving":
            raise TerminalUnavailable(f"no container is serving session {self.session_id} now; a terminal needs a live "
                                      "container: send the session a message to wake it, wait until it runs, then try again")
        tier = self._tier
        docker_cli = shutil.which(tier.docker_cli)
        if docker_cli is None:
            raise TerminalUnavailable(f"the docker client {tier.docker_cli!r} was not found; install it or set "
                                      "c.ContainerTier.docker_cli to its path")
        argv = [docker_cli, *(["-H", tier.docker_url] if tier.docker_url else []),
                "exec", "-it", "-w", "/workspace", container_id, "/bin/bash", "-l"]
        return TerminalCommand(argv=argv, name=name, short_id=container_id[:12])

    async def serve(self, worker: WorkerSettings) -> None:
        from ...egress.proxy import placeholder_work_secret

        if self._served:
            raise RuntimeError("a ContainerSandbox serves one work item; create a new one")
        self._served = True
        self._state = "starting"
        tier = self._tier
        session_id = self.session_id
        agent_id = (tier.store.session(session_id) or {}).get("agent_id") if tier.store is not None else None
        self._size = tier.size_for(agent_id)
        slot: Slot | None = None
        attached = False
        try:
            slot, self._how_started = await tier.take(session_id, self._size)
            self._slot = slot
            slot.on_tool = self.note_tool_result
            slot.open_log(tier.log_path(session_id), start=self._how_started)
            token = item_credential(self.item.secret, worker.environment_key)
            placeholder = await tier.attach_egress(slot, session_id, token, work_id=self.item.work_id,
                                                   environment_id=self.item.environment_id)
            attached = True
            if placeholder is None:
                raise ContainerFailed("the container tier needs the egress proxy (its worker reaches the API only through "
                                      "it, with a placeholder token): install it with `jupyter cma install-egress-engine`")
            assignment = {
                "work_id": self.item.work_id,
                "environment_id": self.item.environment_id,
                "session_id": session_id,
                "work_secret": placeholder_work_secret(placeholder),
                "api_base_url": tier.api_base_url or str(worker.client.base_url),
                "max_idle": worker.max_idle,
            }
            if self._how_started == "new":
                await tier._start(slot)
                await tier._wait_ready(slot)
            _send_assignment(slot.assignment_path, assignment)
            slot.assigned_at = time.monotonic()
            self._state = "serving"
            # Shielded so that a cancel (a stop) lands here at once; the stop itself is below.
            state = await asyncio.shield(slot.exited)
            self._exit = {"code": state.get("ExitCode"), "oom_killed": bool(state.get("OOMKilled"))}
            if state.get("ExitCode") == 0:
                self._state = "ended"
                return
            raise ContainerFailed(await self._after_crash(slot, state, worker))
        except asyncio.CancelledError:
            self._state = "stopped"
            if slot is not None:
                await finish_shielded(self._stop(slot, worker))
            raise
        except ContainerFailed as exc:
            self._state, self._error = "failed", str(exc)
            raise
        except Exception as exc:
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if slot is not None:
                await finish_shielded(self._release(slot, attached))

    async def _after_crash(self, slot: Slot, state: dict[str, Any], worker: WorkerSettings) -> str:
        how = describe_exit(state)
        during = f" during a `{slot.in_tool}` call" if slot.in_tool else ""
        if slot.worker_error:
            how += f": {slot.worker_error}"
        if slot.lease_lost:
            item = "its work item's lease was already lost, so the item was left to whoever holds it now"
        elif await self._force_stop(worker):
            item = "its work item was force-stopped"
        else:
            item = "its work item could not be force-stopped and ends when its lease expires"
        return f"the session's container ended{during}: {how}; {item}"

    async def _stop(self, slot: Slot, worker: WorkerSettings) -> None:
        """A stop: SIGTERM lets the worker force-stop its item; a container that does not end in time is killed."""
        try:
            await self._tier._docker(lambda client: client.api.stop(slot.container_id, timeout=int(self._tier.stop_timeout)))
            state = await asyncio.wait_for(asyncio.shield(slot.exited), 10)
        except Exception as exc:
            log.warning("session %s: stopping container %s: %s", self.session_id, slot.name, exc)
            state = {}
        self._exit = {"code": state.get("ExitCode"), "oom_killed": bool(state.get("OOMKilled"))}
        if state.get("ExitCode") != 0 and not slot.lease_lost:
            await self._force_stop(worker)  # it was killed before its worker could (a 409 means it had)

    async def _force_stop(self, worker: WorkerSettings) -> bool:
        token = item_credential(self.item.secret, worker.environment_key)
        if token is None:
            return False
        try:
            client = worker.client.with_options(api_key=token, max_retries=1)
            await client.beta.environments.work.stop(self.item.work_id, environment_id=self.item.environment_id, force=True)
            return True
        except Exception as exc:
            if getattr(exc, "status_code", None) == 409:
                return True  # already stopped
            log.warning("session %s: force-stop of work item %s failed: %s", self.session_id, self.item.work_id, type(exc).__name__)
            return False

    async def _release(self, slot: Slot, attached: bool) -> None:
        if attached:
            await self._tier.detach_egress(slot, self.session_id)
        await self._tier._discard(slot)
        if self._tier.object_store.sync and self._tier.object_store.enabled:
            await self._push_workspace()
        if self._state == "ended" and self._size is not None:  # ended idle: the session sleeps until its next turn
            self._tier.keep_standby(self.session_id, self._size)

    async def _push_workspace(self) -> None:
        """With sync on, the workspace goes to the object store once the container is gone (nothing writes to it then).

        Before this sandbox is let go, so that the session's next container (here or on another host) starts from it.
        A failure is shown with the session (workspace_sync); the files stay in the volume here.
        """
        try:
            await self._tier.push_workspace(self.session_id)
        except Exception as exc:
            error = f"the workspace could not be pushed to the object store (the files are kept here): {exc}"[:1000]
            self._tier._note_sync(self.session_id, "push", error=error)
            log.warning("session %s: %s", self.session_id, error)


def _send_assignment(fifo: Path, assignment: dict[str, Any]) -> None:
    """Hand the assignment to the container's worker through its FIFO (it holds the read end open once ready).

    Non-blocking throughout, on the event loop: an assignment is far smaller than PIPE_BUF, so its one write
    is whole or fails.
    """
    data = json.dumps(assignment).encode()
    if len(data) > select.PIPE_BUF:
        raise ContainerFailed(f"the assignment is {len(data)} bytes, more than one pipe write ({select.PIPE_BUF})")
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:  # ENXIO: nobody reads, the worker is not waiting
        raise ContainerFailed(f"the container's worker is not waiting for its assignment ({exc.strerror})") from None
    try:
        os.write(fd, data)
    except OSError as exc:  # EPIPE: the worker went away; EAGAIN: its pipe is full (it was written to before)
        raise ContainerFailed(f"the assignment could not be handed to the container's worker ({exc.strerror})") from None
    finally:
        os.close(fd)
