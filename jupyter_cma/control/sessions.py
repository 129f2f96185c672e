"""Routing claimed items to sandboxes, single-flight per session, and the session lifecycle.

States (persisted with the time and reason of every transition):

    claimed → starting → running ⇄ idle → sleeping → resumed → running … → stopped | failed | ended

- claimed: this server acked the session's work item;
- starting: its sandbox is being made (kernel attached / container started);
- running / idle: the sandbox serves the session; idle comes from the
  `session.status_idled` webhook (webhook mode only), running from
  `session.status_run_started`;
- sleeping: the worker flow ended (the session stayed idle past `max_idle`, or
  its lease ended) and the sandbox was released; the workspace stays;
- resumed: a new item of a sleeping session was claimed; it goes on to starting;
- stopped: stopped through the API or on shutdown; failed: the sandbox raised
  (the reason says how, e.g. a container killed during a call);
- ended: the session ended upstream (terminated, archived, deleted): its
  sandbox was stopped and its workspace (files, container volume) removed.

Single-flight: at most one sandbox per session in this process. The queue
keeps at most one live item per session, so a claimed item for a session
whose sandbox still runs means that sandbox's item is gone (lease lost):
the old sandbox is stopped before the new one starts. Across a restart,
sessions left serving are marked sleeping; their leases expire, the items
come back to the queue and are claimed again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..anthropic_api import item_credential
from ..sandboxes.base import ClaimedItem, Sandbox, SandboxSummary, Tier, WorkerSettings
from ..tasks import BackgroundTasks

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger(__name__)

SERVING_STATES = ("claimed", "starting", "running", "idle", "resumed")
ENDED_EVENTS = ("session.status_terminated", "session.archived", "session.deleted")
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@dataclass
class Live:
    """A sandbox serving a session in this process."""

    work_id: str
    sandbox: Sandbox | None = None
    task: asyncio.Task[None] | None = None
    claimed_at: float = field(default_factory=time.monotonic)
    cold_start_ms: float | None = None  # claim → first tool result, once there is one
    status_at: datetime | None = None  # when the latest webhook status applied was created upstream
    stop_reason: str = "stopped"


@dataclass(frozen=True)
class ToolResultNote:
    """A tool call of a session finished in its sandbox here: what the session's row shows of it."""

    session_id: str
    tool_calls: int  # how many so far in this sandbox
    at: float | None  # time.time() of the result
    cold_start_ms: float | None  # the session's cold start, known from its first tool result on


class SessionManager:
    """Turns claimed work items into sandboxes and keeps the lifecycle in the store."""

    def __init__(
        self,
        *,
        store: Store,
        tiers: dict[str, Tier],
        default_tier: Callable[[], str],
        workspaces: Path,
        worker: WorkerSettings,
    ) -> None:
        self.store = store
        self.tiers = tiers
        self.default_tier = default_tier
        self.workspaces = workspaces
        self.worker = worker
        self.live: dict[str, Live] = {}
        self.sandboxes_started = 0
        # Called after each tool result of a sandbox this manager created (the live channel's session.tool).
        self.on_tool_result: Callable[[ToolResultNote], None] | None = None
        self._background = BackgroundTasks("sessions")  # work started for events (e.g. reaping); close() ends it

    # ------------------------------------------------------------------ routing

    async def route(self, item: Any) -> None:
        """Route one claimed (acked) work item: healthchecks are stopped, sessions get a sandbox."""
        data = getattr(item, "data", None)
        kind = getattr(data, "type", None)
        if kind != "session":
            # The contract: a worker acks non-session items and force-stops them without fetching anything.
            await self._force_stop(item)
            log.info("stopped non-session work item %s (type %s)", item.id, kind)
            return
        session_id = data.id
        if not SAFE_ID.match(session_id):
            log.error("refusing work item %s: malformed session id", item.id)
            await self._force_stop(item)
            return
        current = self.live.get(session_id)
        if current is not None and current.work_id == item.id:
            return  # the same claim seen twice
        # Reserve the session before any await, so nothing else starts a second sandbox for it.
        self.live[session_id] = live = Live(work_id=item.id)
        if current is not None:
            await self._end(session_id, current, "its work item was superseded (lease lost); a newer item takes over")
        previous = self.store.session(session_id)
        agent_id, metadata = await self._route_facts(item)
        tier_name = self._tier_for(agent_id)
        resumed = previous is not None and previous["status"] in ("sleeping", "stopped", "failed")
        self.store.transition(
            session_id,
            "resumed" if resumed else "claimed",
            f"claimed work item {item.id}",
            work_id=item.id,
            tier=tier_name,
            environment_id=item.environment_id,
            agent_id=agent_id,
        )
        if metadata is not None:
            self.store.update_session(session_id, metadata=metadata)  # egress policies may match on it
        workspace = self.workspaces / session_id
        claimed = ClaimedItem(work_id=item.id, environment_id=item.environment_id, session_id=session_id, secret=item.secret)
        live.sandbox = self.tiers[tier_name].create(claimed, workspace)
        live.sandbox.on_first_result = lambda at: self._first_result(live, session_id, at)
        live.sandbox.on_tool_result = lambda sandbox: self._tool_result(live, sandbox)
        self.sandboxes_started += 1
        self.store.transition(session_id, "starting", f"starting a {tier_name} sandbox")
        live.task = asyncio.ensure_future(self._serve(session_id, live))

    def _tier_for(self, agent_id: str | None) -> str:
        row = self.store.agent(agent_id) if agent_id else None
        name = row["tier"] if row else self.default_tier()
        if name not in self.tiers:
            log.warning("agent %s asks for tier %r, which this server does not run; using %s", agent_id, name, self.default_tier())
            name = self.default_tier()
        return name

    async def _route_facts(self, item: Any) -> tuple[str | None, dict[str, str] | None]:
        """The session's agent id and metadata, read with the item's own credential (never the API key)."""
        token = item_credential(item.secret, self.worker.environment_key)
        if token is None:
            return None, None
        try:
            client = self.worker.client.with_options(api_key=token, max_retries=1)
            session = await client.beta.sessions.retrieve(item.data.id)
            return session.agent.id, {str(k): str(v) for k, v in (session.metadata or {}).items()}
        except Exception as exc:  # the sandbox's own fetch will fail too and end the item cleanly
            log.warning("could not read session %s for routing: %s", item.data.id, type(exc).__name__)
            return None, None

    async def _force_stop(self, item: Any) -> None:
        key = self.worker.environment_key
        if key is None:
            return
        try:
            client = self.worker.client.with_options(api_key=key.reveal(), max_retries=0)
            await client.beta.environments.work.stop(item.id, environment_id=item.environment_id, force=True)
        except Exception as exc:
            log.warning("force-stop of work item %s failed: %s", item.id, type(exc).__name__)

    # ------------------------------------------------------------------ serving

    async def _serve(self, session_id: str, live: Live) -> None:
        sandbox = live.sandbox
        assert sandbox is not None
        self.store.transition(session_id, "running", "sandbox serving")
        try:
            await sandbox.serve(self.worker)
        except asyncio.CancelledError:
            raise  # whoever cancelled records why (see _end)
        except Exception as exc:
            self.store.transition(session_id, "failed", f"sandbox failed: {exc}"[:500])
            log.exception("sandbox for session %s failed", session_id)
        else:
            self.store.transition(session_id, "sleeping", "worker ended (session idle past max_idle, or its work item ended); sandbox released, workspace kept")
        finally:
            if self.live.get(session_id) is live:
                del self.live[session_id]

    async def _end(self, session_id: str, live: Live, reason: str) -> None:
        live.stop_reason = reason
        if live.task is not None and not live.task.done():
            live.task.cancel()
            await asyncio.gather(live.task, return_exceptions=True)
        if live.task is not None:
            self.store.transition(session_id, "stopped", reason)

    async def stop(self, session_id: str, reason: str) -> bool:
        """Stop the session's sandbox here (its worker force-stops the work item). False if none runs."""
        live = self.live.pop(session_id, None)
        if live is None:
            return False
        await self._end(session_id, live, reason)
        return True

    # ------------------------------------------------------------------ events from webhooks

    def note_status(self, session_id: str, event_type: str, created_at: str | None = None) -> None:
        """Reflect the API's view of a session (webhook mode). Deliveries may arrive out of order: a status created
        upstream before the one applied last is ignored (else a late "run started" would undo a later "idled")."""
        if event_type in ENDED_EVENTS:
            # Reap at once: the worker would notice on its stream, but nothing is left to serve.
            self._background.spawn(self.reap(session_id, f"the session ended upstream ({event_type})"))
            return
        live = self.live.get(session_id)
        if live is None:
            return
        at = _parse_time(created_at)
        if at is not None:
            if live.status_at is not None and at <= live.status_at:
                return
            live.status_at = at
        if event_type == "session.status_idled":
            self.store.transition(session_id, "idle", "the session went idle (webhook)")
        elif event_type == "session.status_run_started":
            self.store.transition(session_id, "running", "the session started a run (webhook)")

    async def reap(self, session_id: str, reason: str) -> bool:
        """The session ended upstream: stop its sandbox and remove its workspace on every tier. False if unknown here."""
        row = self.store.session(session_id)
        if row is None or row["status"] == "ended":
            return False
        await self.stop(session_id, reason)
        for tier in self.tiers.values():
            try:
                await tier.remove_workspace(session_id)
            except Exception as exc:  # e.g. no Docker engine now; `jupyter cma cleanup` can finish the job
                log.warning("could not remove the %s workspace of session %s: %s", tier.name, session_id, exc)
        await asyncio.to_thread(shutil.rmtree, self.workspaces / session_id, True)
        self.store.transition(session_id, "ended", f"{reason}; its sandbox and workspace were removed")
        return True

    async def reap_ended(self, is_ended: Callable[[str], Any]) -> list[str]:
        """Poll mode has no webhooks: ask `is_ended(session_id)` (awaitable) for each resting session; reap those ended."""
        reaped = []
        for row in self.store.sessions(statuses=["sleeping", "stopped", "failed"], limit=1000):
            if row["id"] in self.live:
                continue
            if await is_ended(row["id"]) and await self.reap(row["id"], "the session ended upstream (found by the reaper)"):
                reaped.append(row["id"])
        return reaped

    # ------------------------------------------------------------------ start and stop

    def recover(self) -> list[str]:
        """After a restart: sessions the last process was serving are released, not resumed here.

        Their leases cannot be continued (the lease value died with the old
        process), so they expire; the items return to the queue and are claimed
        again. Nothing is force-stopped: that would drop the session's work.
        """
        released = []
        for row in self.store.sessions(statuses=list(SERVING_STATES), limit=10_000):
            self.store.transition(row["id"], "sleeping", "server restarted; its sandbox ended with the old process, and the work item returns to the queue when its lease expires")
            released.append(row["id"])
        return released

    async def close(self) -> None:
        await self._background.close()
        for session_id in list(self.live):
            await self.stop(session_id, "the server is shutting down")

    def status(self) -> dict[str, Any]:
        return {"live": len(self.live), "sandboxes_started": self.sandboxes_started}

    def is_serving(self, session_id: str) -> bool:
        """Whether a sandbox of this process serves (or is about to serve) the session."""
        return session_id in self.live

    def sandbox_of(self, session_id: str) -> Sandbox | None:
        """The sandbox serving the session in this process, if any."""
        live = self.live.get(session_id)
        return None if live is None else live.sandbox

    def _first_result(self, live: Live, session_id: str, at: float) -> None:
        live.cold_start_ms = round((at - live.claimed_at) * 1000, 1)
        self.store.update_session(session_id, cold_start_ms=live.cold_start_ms)

    def _tool_result(self, live: Live, sandbox: Sandbox) -> None:
        if self.on_tool_result is not None:
            self.on_tool_result(ToolResultNote(session_id=sandbox.session_id, tool_calls=sandbox.tool_results,
                                               at=sandbox.last_tool_at, cold_start_ms=live.cold_start_ms))

    def summary(self, session_id: str) -> SandboxSummary | None:
        """The few facts a list of sessions shows of the sandbox serving the session now (None: none serves it)."""
        sandbox = self.sandbox_of(session_id)
        return None if sandbox is None else sandbox.summary()

    def describe(self, session_id: str) -> dict[str, Any] | None:
        live = self.live.get(session_id)
        if live is None or live.sandbox is None:
            return None
        # With the summary's counters, so a session's detail and its row in a list say the same.
        return {"work_id": live.work_id, **live.sandbox.status(), "tool_calls": live.sandbox.tool_results,
                "last_activity": live.sandbox.last_tool_at}


def _parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time of the API (e.g. 2026-01-02T03:04:05.123456Z), or None when absent or not one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
