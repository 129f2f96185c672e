"""Sessions: their records, lifecycle and status, and the runs that drive the brain.

A session runs when user input arrives: each run is one `Turn` handed to the
brain (see turns.py); when the brain returns, the session goes idle. A session
in a self-hosted environment has at most one live work item (see work.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .events import RUN_STARTING_EVENTS
from .turns import ToolResult, Turn
from .wire import bad_request, compare_stamp, merge_metadata, new_id, not_found, now_iso, paginate


@dataclass
class SessionRecord:
    data: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    events_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    turn: asyncio.Task[None] | None = None
    inbox: list[dict[str, Any]] = field(default_factory=list)
    # Tool calls the brain waits on: tool_use id -> future of its result.
    waiting: dict[str, asyncio.Future[ToolResult]] = field(default_factory=dict)
    # ask-gated calls waiting for a user.tool_confirmation.
    awaiting_confirmation: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    live_work_id: str | None = None
    running_since: float | None = None
    created_mono: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.data["id"]


class Sessions:
    """The sessions and their runs, a part of `Service` (see service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, SessionRecord] = {}

    def _session(self, session_id: str) -> SessionRecord:
        rec = self.sessions.get(session_id)
        if rec is None:
            raise not_found("session", session_id)
        return rec

    def _resolve_agent(self, ref: Any) -> dict[str, Any]:
        if isinstance(ref, str):
            agent = self.agent(ref)
        elif isinstance(ref, dict) and isinstance(ref.get("id"), str):
            version = ref.get("version")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise bad_request("agent.version must be an integer")
            agent = dict(self.agent(ref["id"], version))
            if ref.get("type") == "agent_with_overrides":
                for key in ("model", "system", "skills", "mcp_servers", "tools"):
                    if key in ref:
                        agent[key] = ref[key]
                if "model" in ref:
                    agent["model"] = self._model(ref["model"])
                if "tools" in ref:
                    agent["tools"] = self._normalise_tools(ref["tools"])
        else:
            raise bad_request("agent is required: an agent id, or {\"type\": \"agent\", \"id\": ..., \"version\"?: ...}")
        if agent["archived_at"]:
            raise bad_request(f"agent {agent['id']} is archived; sessions need a live agent")
        keys = ("id", "type", "version", "name", "description", "system", "model", "tools", "skills", "mcp_servers", "execution_identity", "multiagent")
        return {k: agent[k] for k in keys}

    async def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        environment_id = body.get("environment_id")
        if not isinstance(environment_id, str):
            raise bad_request("environment_id is required")
        env = self.environment(environment_id)
        if env["archived_at"]:
            raise bad_request("environment is archived; sessions need a live environment", error_code="environment_archived")
        agent = self._resolve_agent(body.get("agent"))
        resources = []
        for res in body.get("resources") or []:
            if not isinstance(res, dict) or res.get("type") not in ("file", "github_repository", "memory_store"):
                raise bad_request("resources entries must be file, github_repository or memory_store resources")
            if res["type"] == "memory_store":
                raise bad_request("memory stores are not emulated; create the session without memory_store resources")
            now = now_iso()
            resources.append({**res, "id": new_id("sesrsc"), "created_at": now, "updated_at": now})
        initial = body.get("initial_events") or []
        if not isinstance(initial, list) or len(initial) > 50:
            raise bad_request("initial_events must be a list of at most 50 user.message / user.define_outcome events")
        for ev in initial:
            if not isinstance(ev, dict) or ev.get("type") not in RUN_STARTING_EVENTS:
                raise bad_request("initial_events accepts only user.message and user.define_outcome events")
            self._validate_user_event(None, ev)
        now = now_iso()
        data = {
            "id": new_id("sesn"),
            "type": "session",
            "status": "idle",
            "environment_id": environment_id,
            "agent": agent,
            "resources": resources,
            "metadata": merge_metadata(body.get("metadata") or {}, {}),
            "title": body.get("title"),
            "vault_ids": body.get("vault_ids") or [],
            "outcome_evaluations": [],
            "stats": {"active_seconds": 0.0, "duration_seconds": 0.0},
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0},
            "budget": body.get("budget"),
            "deployment_id": None,
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        rec = SessionRecord(data=data)
        self.sessions[data["id"]] = rec
        self._notify("session.created", data["id"])
        # Sessions in a self-hosted environment are handed to a worker at once
        # (the sandbox is provisioned with the session, before any input).
        if env["config"]["type"] == "self_hosted":
            self._ensure_work(rec)
        if initial:
            await self.send_events(data["id"], initial)
        return self.session_json(rec)

    def session_json(self, rec: SessionRecord) -> dict[str, Any]:
        now = time.monotonic()
        stats = rec.data["stats"]
        stats["duration_seconds"] = round(now - rec.created_mono, 3)
        if rec.running_since is not None:
            live = stats.get("active_seconds", 0.0) + (now - rec.running_since)
            return {**rec.data, "stats": {**stats, "active_seconds": round(live, 3)}}
        return rec.data

    def update_session(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._session(session_id)
        if rec.data["status"] == "terminated":
            raise bad_request("session is terminated; create a new session")
        if "title" in body:
            rec.data["title"] = body["title"]
        if "metadata" in body:
            rec.data["metadata"] = merge_metadata(body["metadata"] or {}, rec.data["metadata"])
        if "agent" in body:
            rec.data["agent"] = self._resolve_agent(body["agent"])
        for key in ("budget", "vault_ids"):
            if key in body:
                rec.data[key] = body[key]
        rec.data["updated_at"] = now_iso()
        self.emit(rec, {"type": "session.updated", **{k: body[k] for k in ("title", "metadata") if k in body}})
        self._notify("session.updated", session_id)
        return self.session_json(rec)

    def list_sessions(self, query: dict[str, Any]) -> dict[str, Any]:
        items = list(self.sessions.values())
        if not query.get("include_archived"):
            items = [r for r in items if not r.data["archived_at"]]
        if query.get("agent_id"):
            items = [r for r in items if r.data["agent"]["id"] == query["agent_id"]]
        if query.get("agent_version"):
            items = [r for r in items if str(r.data["agent"]["version"]) == str(query["agent_version"])]
        if query.get("statuses"):
            items = [r for r in items if r.data["status"] in query["statuses"]]
        for op, value in (query.get("created_at") or {}).items():
            items = [r for r in items if compare_stamp(r.data["created_at"], op, value)]
        if query.get("order", "desc") == "desc":
            items.reverse()
        data, nxt = paginate([self.session_json(r) for r in items], query["limit"], query.get("page"))
        return {"data": data, "next_page": nxt, "prev_page": None}

    def archive_session(self, session_id: str) -> dict[str, Any]:
        rec = self._session(session_id)
        if not rec.data["archived_at"]:
            rec.data["archived_at"] = now_iso()
            self._terminate(rec)
            self._notify("session.archived", session_id)
        return self.session_json(rec)

    def delete_session(self, session_id: str) -> dict[str, Any]:
        rec = self._session(session_id)
        if rec.data["status"] != "terminated":
            self._terminate(rec)
        self.emit(rec, {"type": "session.deleted"})
        self._close_streams(rec)
        del self.sessions[session_id]
        self._notify("session.deleted", session_id)
        return {"id": session_id, "type": "session_deleted"}

    def _terminate(self, rec: SessionRecord) -> None:
        if rec.turn and not rec.turn.done():
            rec.turn.cancel()
        for fut in rec.waiting.values():
            if not fut.done():
                fut.cancel()
        self._set_status(rec, "terminated")
        self.emit(rec, {"type": "session.status_terminated"})
        self._notify("session.status_terminated", rec.id)
        self._close_streams(rec)

    def _close_streams(self, rec: SessionRecord) -> None:
        for q in list(rec.subscribers):
            q.put_nowait(None)

    def _set_status(self, rec: SessionRecord, status: str) -> None:
        old = rec.data["status"]
        if old == status:
            return
        now = time.monotonic()
        if old == "running" and rec.running_since is not None:
            rec.data["stats"]["active_seconds"] = round(rec.data["stats"]["active_seconds"] + now - rec.running_since, 3)
            rec.running_since = None
        if status == "running":
            rec.running_since = now
        rec.data["status"] = status
        rec.data["updated_at"] = now_iso()

    def _ensure_work(self, rec: SessionRecord) -> None:
        """At most one live work item per session: enqueue only when none is live."""
        env = self.environments.get(rec.data["environment_id"])
        if env is None or env["config"]["type"] != "self_hosted":
            return
        if rec.live_work_id and self.work[rec.live_work_id].live:
            return
        item = self._enqueue(rec.data["environment_id"], {"type": "session", "id": rec.id})
        rec.live_work_id = item.id

    def _start_turn(self, rec: SessionRecord) -> None:
        inputs, rec.inbox = rec.inbox, []
        turn = Turn(self, rec, inputs)
        # The run starts now, not when the task first runs: an interrupt in the
        # same request may cancel the task before its body ever executes.
        self.begin_run(rec)
        rec.turn = asyncio.get_running_loop().create_task(self._run_turn(rec, turn))
        rec.turn.add_done_callback(lambda task: self._turn_cancelled_early(rec, task))

    def _turn_cancelled_early(self, rec: SessionRecord, task: asyncio.Task[None]) -> None:
        """A turn cancelled before its body ran never reached its own idle: end it here."""
        if task.cancelled() and rec.data["status"] == "running":
            self.go_idle(rec, {"type": "end_turn"})
            if rec.inbox:
                self._start_turn(rec)

    def begin_run(self, rec: SessionRecord) -> None:
        """The session goes running: a run starts, and a worker is needed."""
        if rec.data["status"] == "running":
            return
        self._set_status(rec, "running")
        self.emit(rec, {"type": "session.status_running"})
        self._ensure_work(rec)
        self._notify("session.status_run_started", rec.id)

    def go_idle(self, rec: SessionRecord, stop_reason: dict[str, Any]) -> None:
        self._set_status(rec, "idle")
        self.emit(rec, {"type": "session.status_idle", "stop_reason": stop_reason})
        self._notify("session.status_idled", rec.id)
        if stop_reason["type"] == "requires_action":
            self._notify("session.requires_action", rec.id)

    async def _run_turn(self, rec: SessionRecord, turn: Any) -> None:
        stop_reason: dict[str, Any] = {"type": "end_turn"}
        try:
            await self.brain.run_turn(turn)
            stop_reason = {"type": turn.stop_reason}
        except asyncio.CancelledError:
            # An interrupt (or termination) ends the turn where it stands.
            if rec.data["status"] == "terminated":
                raise
        except Exception as exc:  # a brain bug must not wedge the session
            self.emit(rec, {"type": "session.error", "error": {"type": "unknown_error", "message": f"emulator brain failed: {exc!r}", "retry_status": {"type": "terminal"}}})
            stop_reason = {"type": "retries_exhausted"}
        finally:
            for ref, fut in list(rec.waiting.items()):
                if not fut.done():
                    fut.cancel()
            rec.waiting.clear()
            rec.awaiting_confirmation.clear()
        if rec.data["status"] == "terminated":
            return
        self.go_idle(rec, stop_reason)
        if rec.inbox:
            self._start_turn(rec)
