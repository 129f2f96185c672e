"""Events: a session's event log, its live streams, and the events users send.

Every event is persisted on the session record and pushed to each open
stream. User events are checked here, then acted on: new input starts a run
(see sessions.py), tool results and confirmations answer the calls the brain
waits on, an interrupt cancels the run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .turns import ToolResult
from .wire import bad_request, compare_stamp, new_id, now_iso, paginate

if TYPE_CHECKING:
    from .sessions import SessionRecord

# Events whose arrival starts a run (the session goes running) when it is idle.
RUN_STARTING_EVENTS = ("user.message", "user.define_outcome")
USER_EVENT_TYPES = (
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.tool_result",
    "user.custom_tool_result",
    "user.define_outcome",
    "system.message",
)


class Events:
    """Event logs and streams of the sessions, a part of `Service` (see service.py).

    The events themselves live on each `SessionRecord`.
    """

    def emit(self, rec: SessionRecord, event: dict[str, Any]) -> dict[str, Any]:
        """Persist an event, then push it to every live stream of the session."""
        event = {**event, "id": new_id("sevt"), "processed_at": now_iso()}
        rec.events.append(event)
        rec.events_by_id[event["id"]] = event
        for q in rec.subscribers:
            q.put_nowait(event)
        return event

    def list_events(self, session_id: str, query: dict[str, Any]) -> dict[str, Any]:
        rec = self._session(session_id)
        items = rec.events
        if query.get("types"):
            wanted = set(query["types"])
            items = [e for e in items if e["type"] in wanted]
        for op, value in (query.get("created_at") or {}).items():
            items = [e for e in items if compare_stamp(e["processed_at"], op, value)]
        if query.get("order", "asc") == "desc":
            items = list(reversed(items))
        data, nxt = paginate(items, query["limit"], query.get("page"))
        return {"data": data, "next_page": nxt}

    def subscribe(self, session_id: str) -> asyncio.Queue[dict[str, Any] | None]:
        rec = self._session(session_id)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        rec.subscribers.add(q)
        if rec.data["status"] == "terminated":
            q.put_nowait(None)
        return q

    def unsubscribe(self, session_id: str, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        rec = self.sessions.get(session_id)
        if rec is not None:
            rec.subscribers.discard(q)

    @staticmethod
    def _validate_content(kind: str, content: Any, *, required: bool) -> None:
        if content is None and not required:
            return
        if not isinstance(content, list) or (required and not content):
            raise bad_request(f"{kind} content must be a {'non-empty ' if required else ''}list of content blocks")
        for block in content:
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise bad_request(f"{kind} content blocks must be objects with a string type, e.g. {{\"type\": \"text\", \"text\": \"…\"}}")
            if block["type"] == "text" and not isinstance(block.get("text"), str):
                raise bad_request(f"{kind}: a text block needs a string text")

    def _validate_user_event(self, rec: SessionRecord | None, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind not in USER_EVENT_TYPES:
            raise bad_request(f"unsupported event type {kind!r}; send one of {list(USER_EVENT_TYPES)}")
        if kind in ("user.message", "system.message"):
            self._validate_content(kind, ev.get("content"), required=True)
        elif kind == "user.tool_confirmation":
            if ev.get("result") not in ("allow", "deny") or not isinstance(ev.get("tool_use_id"), str):
                raise bad_request("user.tool_confirmation needs tool_use_id and result 'allow' or 'deny'")
        elif kind in ("user.tool_result", "user.custom_tool_result"):
            key = "tool_use_id" if kind == "user.tool_result" else "custom_tool_use_id"
            call_type = "agent.tool_use" if kind == "user.tool_result" else "agent.custom_tool_use"
            ref = ev.get(key)
            if not isinstance(ref, str):
                raise bad_request(f"{kind} needs {key}")
            if rec is not None and rec.events_by_id.get(ref, {}).get("type") != call_type:
                raise bad_request(f"{key} {ref} names no {call_type} event in this session")
            self._validate_content(kind, ev.get("content"), required=False)
        elif kind == "user.define_outcome":
            if not isinstance(ev.get("description"), str) or not isinstance(ev.get("rubric"), dict):
                raise bad_request("user.define_outcome needs description and rubric")

    async def send_events(self, session_id: str, events: Any) -> dict[str, Any]:
        rec = self._session(session_id)
        if not isinstance(events, list) or not events:
            raise bad_request("events must be a non-empty list")
        if rec.data["status"] == "terminated":
            raise bad_request("session is terminated and accepts no events; create a new session")
        for ev in events:
            if not isinstance(ev, dict):
                raise bad_request("each event must be an object with a type")
            self._validate_user_event(rec, ev)
        accepted = []
        for ev in events:
            echoed = self._accept_user_event(rec, ev)
            if echoed is not None:
                accepted.append(echoed)
        return {"data": accepted}

    def _accept_user_event(self, rec: SessionRecord, ev: dict[str, Any]) -> dict[str, Any] | None:
        kind = ev["type"]
        if kind in ("user.tool_result", "user.custom_tool_result"):
            ref = ev["tool_use_id"] if kind == "user.tool_result" else ev["custom_tool_use_id"]
            if ref in rec.answered:
                return None  # a retried POST: the first result stands
            rec.answered.add(ref)
            echoed = self.emit(rec, ev)
            content = ev.get("content") or []
            text = "\n".join(b.get("text", "") for b in content if b.get("type") == "text")
            self._resolve_call(rec, ref, ToolResult(text=text, is_error=bool(ev.get("is_error")), content=content))
            return echoed
        echoed = self.emit(rec, ev)
        if kind != "user.interrupt":
            # New input to a dormant session (no live work item) queues work again.
            self._ensure_work(rec)
        if kind == "user.interrupt":
            if rec.turn and not rec.turn.done():
                rec.turn.cancel()
        elif kind == "user.tool_confirmation":
            ref = ev["tool_use_id"]
            if ref in rec.awaiting_confirmation:
                rec.awaiting_confirmation.discard(ref)
                if ev["result"] == "deny":
                    # The worker posts nothing for a denied call: the server resolves it.
                    rec.answered.add(ref)
                    message = ev.get("deny_message") or "The user denied this tool call."
                    self._resolve_call(rec, ref, ToolResult(text=message, is_error=True, content=[{"type": "text", "text": message}], denied=True))
        elif kind in RUN_STARTING_EVENTS:
            rec.inbox.append(echoed)
            if rec.turn is None or rec.turn.done():
                self._start_turn(rec)
        return echoed

    def _resolve_call(self, rec: SessionRecord, ref: str, result: ToolResult) -> None:
        fut = rec.waiting.get(ref)
        if fut is not None and not fut.done():
            fut.set_result(result)
