"""The live channel's hub: notifications for the views, each subscriber bounded.

Writers (the store after a session's state change commits, the egress log after its rows commit, the
session event relay, tool results, notebook tool changes) call `LiveHub.publish(kind, data)`. Each
message is encoded once and offered to every subscriber whose filter wants it; a subscriber is one
open `cma/api/live` websocket (`web/live.py`), whose sender task drains its queue into frames.

Messages are notifications with small, allow-listed payloads that the writers build field by field;
contents stay behind the REST API. A view that missed something refetches from REST, so a subscriber
that falls a whole queue behind loses its queue and gets one gap marker instead of growing without
bound: old messages are useless to a view that is about to refetch anyway.

Standard library only. Every writer runs on the server's event loop (SQLite calls are made there by
design), so nothing here locks; a writer on another thread would have to hop onto the loop first
(`loop.call_soon_threadsafe(hub.publish, …)`).

Usage::

    hub = LiveHub(queue_size=1000)
    sub = hub.subscribe()
    hub.publish("session.state", {"id": "sesn_1", "state": "running", …}, session_id="sesn_1")
    await sub.wake.wait(); frame = sub.take(256 * 1024)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["EGRESS_ROW_FIELDS", "KINDS", "SESSION_STATE_FIELDS", "LiveFilter", "LiveHub", "LiveSources", "SessionWatcher", "Subscriber"]

log = logging.getLogger(__name__)

# Every kind the channel carries (docs/rest-api.md, "Live updates").
KINDS = ("session.state", "session.event", "session.tool", "egress.row", "tools.changed", "status.changed", "notebook.undone")
# session.event costs an upstream stream per session, so a subscriber names the sessions it wants.
WATCHED_KINDS = ("session.event",)


@dataclass(frozen=True)
class LiveFilter:
    """What a subscriber wants.

    Args:
        kinds: the kinds wanted; None for all of them.
        sessions: the sessions whose `session.event` messages are wanted (each watched upstream); it does not
            limit the other kinds, so one filter can serve a list of every session and one session's transcript.
        egress_session: when set, `egress.row` messages of that session only.
    """

    kinds: frozenset[str] | None = None
    sessions: frozenset[str] = frozenset()
    egress_session: str | None = None

    def wants(self, kind: str, session_id: str | None) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if kind in WATCHED_KINDS:
            return session_id in self.sessions
        if kind == "egress.row" and self.egress_session is not None:
            return session_id == self.egress_session
        return True

    def to_json(self) -> dict[str, Any]:
        """The filter as the `subscribed` frame states it."""
        return {
            "kinds": None if self.kinds is None else sorted(self.kinds),
            "sessions": sorted(self.sessions),
            "egress": None if self.egress_session is None else {"session_id": self.egress_session},
        }


class Subscriber:
    """One subscriber's bounded queue of encoded messages, its filter, and the event that wakes its sender."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.filter = LiveFilter()
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.gap = False  # the queue overflowed since the last gap marker was taken
        self.dropped = 0  # messages lost since the last gap marker (what the marker reports)
        self.dropped_total = 0
        self.gaps = 0
        self.closed = False  # the hub closed: the sender ends its socket

    def offer(self, kind: str, session_id: str | None, text: str) -> bool:
        """Queue one encoded message if the filter wants it; False when it overflowed the queue instead."""
        if not self.filter.wants(kind, session_id):
            return True
        if len(self.queue) >= self.maxlen:
            # A whole queue behind: what is queued is stale too, since the view refetches on the gap marker.
            lost = len(self.queue) + 1
            self.queue.clear()
            self.dropped += lost
            self.dropped_total += lost
            if not self.gap:
                self.gaps += 1
            self.gap = True
            self.wake.set()
            return False
        self.queue.append(text)
        self.wake.set()
        return True

    def take_gap(self) -> int | None:
        """How many messages were lost since the last call, once per overflow; None when nothing was."""
        if not self.gap:
            return None
        dropped, self.gap, self.dropped = self.dropped, False, 0
        return dropped

    def take(self, max_bytes: int) -> str | None:
        """The queued messages as one JSON array of at most `max_bytes` (at least one message), or None."""
        if not self.queue:
            return None
        items: list[str] = []
        size = 2
        while self.queue and (not items or size + len(self.queue[0]) + 1 <= max_bytes):
            text = self.queue.popleft()
            items.append(text)
            size += len(text) + 1
        return "[" + ",".join(items) + "]"


class SessionWatcher(Protocol):
    """Who opens the upstream event stream of a watched session (`control/relay.py`)."""

    def watch(self, session_id: str) -> bool:
        """Start (or keep) relaying the session's events; False when no more sessions can be watched."""

    def unwatch(self, session_id: str) -> None:
        """No subscriber watches the session any more (the stream may linger a while)."""


class LiveHub:
    """Publishes notifications to bounded subscribers and counts what happened, for `GET status`.

    Args:
        queue_size: the default bound of each subscriber's queue, in messages.
        max_subscribers: how many subscribers may be open at once (`full` says when no more may).
        watcher: who relays the watched sessions' events; without one, `session.event` is never sent.
    """

    def __init__(self, *, queue_size: int = 1000, max_subscribers: int = 64, watcher: SessionWatcher | None = None) -> None:
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.watcher = watcher
        self.epoch = secrets.token_hex(8)  # a new one per process: a view that sees it change refetches everything
        self.seq = 0
        self.subscribers: set[Subscriber] = set()
        self.published = 0
        self.publish_errors = 0
        self._watched: dict[str, int] = {}  # session id → how many subscribers watch it
        self._dropped_gone = 0  # counters of subscribers that left, so the totals never go down
        self._gaps_gone = 0
        self._closed = False

    # ------------------------------------------------------------------ publishing

    def publish(self, kind: str, data: dict[str, Any], session_id: str | None = None) -> None:
        """Send a notification to every subscriber that wants it. Never raises: writers call this right after
        their commit, and a failure here must not look like theirs."""
        try:
            self.seq += 1
            self.published += 1
            if not self.subscribers:
                return
            text = json.dumps({"seq": self.seq, "t": time.time(), "kind": kind, "session_id": session_id, "data": data},
                              separators=(",", ":"), default=str)
            for sub in self.subscribers:
                sub.offer(kind, session_id, text)
        except Exception:
            self.publish_errors += 1
            if self.publish_errors == 1:  # once: a bug here would otherwise flood the log at the rate of writes
                log.exception("jupyter-cma: publishing a live %s message failed; later failures are only counted", kind)

    # ------------------------------------------------------------------ subscribers

    @property
    def full(self) -> bool:
        """Whether `max_subscribers` are open already (a new socket is refused before its upgrade)."""
        return len(self.subscribers) >= self.max_subscribers

    def subscribe(self, maxlen: int | None = None) -> Subscriber:
        """A new subscriber with the default filter (every kind but `session.event`); `unsubscribe` it when done."""
        sub = Subscriber(maxlen or self.queue_size)
        sub.closed = self._closed
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Drop the subscriber and release the sessions it watched."""
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self.set_filter(sub, LiveFilter())
            self._dropped_gone += sub.dropped_total
            self._gaps_gone += sub.gaps

    def set_filter(self, sub: Subscriber, wanted: LiveFilter) -> list[str]:
        """Replace a subscriber's filter, watching the sessions it adds and releasing those it drops.

        Returns the sessions that could not be watched (the server's cap on watched sessions); they are left
        out of the filter that takes effect.
        """
        old = sub.filter.sessions
        # Released first: a view at the server's cap that swaps its sessions takes the places it gives up.
        for sid in old - wanted.sessions:
            self.unwatch(sid)
        refused = [sid for sid in sorted(wanted.sessions - old) if not self.watch(sid)]
        if refused:
            wanted = LiveFilter(wanted.kinds, wanted.sessions - frozenset(refused), wanted.egress_session)
        sub.filter = wanted
        return refused

    # ------------------------------------------------------------------ watched sessions

    def watch(self, session_id: str) -> bool:
        """One more subscriber watches the session; the first one starts its relay. False when refused."""
        count = self._watched.get(session_id, 0)
        if count == 0:
            # Once the hub closed, the relay is closing too: a stream opened now would outlive the server's stop.
            if self._closed or self.watcher is None or not self.watcher.watch(session_id):
                return False
        self._watched[session_id] = count + 1
        return True

    def unwatch(self, session_id: str) -> None:
        """One subscriber fewer watches the session; after the last one, the relay lets it go."""
        count = self._watched.get(session_id, 0)
        if count <= 1:
            if self._watched.pop(session_id, None) is not None and self.watcher is not None:
                self.watcher.unwatch(session_id)
            return
        self._watched[session_id] = count - 1

    def watched(self) -> Iterable[str]:
        return tuple(self._watched)

    # ------------------------------------------------------------------ status and shutdown

    def status(self) -> dict[str, Any]:
        """Counters for `GET cma/api/status` (`live`); nothing per user."""
        subs = list(self.subscribers)
        return {
            "subscribers": len(subs),
            "max_subscribers": self.max_subscribers,
            "max_queue": self.queue_size,
            "queued": sum(len(s.queue) for s in subs),
            "watched_sessions": len(self._watched),
            "messages": self.published,
            "dropped": self._dropped_gone + sum(s.dropped_total for s in subs),
            "gaps": self._gaps_gone + sum(s.gaps for s in subs),
            "publish_errors": self.publish_errors,
        }

    def close(self) -> None:
        """The server stops: every subscriber's sender closes its socket."""
        self._closed = True
        for sub in list(self.subscribers):
            sub.closed = True
            sub.wake.set()


# ---------------------------------------------------------------------- what each kind carries

# Each kind's data is built field by field from these lists, never passed through: nothing else can leak out.
SESSION_STATE_FIELDS = ("id", "state", "from_state", "tier", "agent_id", "at")  # no reason: it can quote an exception
EGRESS_ROW_FIELDS = ("id", "at", "session_id", "agent_id", "method", "scheme", "host", "port", "path", "status",
                     "bytes_up", "bytes_down", "duration_ms", "decision", "rule")  # exactly a row of GET egress/log


class LiveSources:
    """The writers' side of the hub: one method per kind, each building its allow-listed data.

    The app hands these methods to the writers as their hooks (`Store.on_transition`, `EgressLog.on_rows`,
    `SessionManager.on_tool_result`, `NotebookTools.on_kernel_tools`), so no writer knows of the channel.
    """

    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub

    def session_state(self, change: dict[str, Any]) -> None:
        """A session's committed state change (`Store.transition`)."""
        self.hub.publish("session.state", {k: change.get(k) for k in SESSION_STATE_FIELDS}, session_id=change.get("id"))

    def egress_rows(self, rows: list[dict[str, Any]]) -> None:
        """Egress rows once committed (`EgressLog.record_many`), one message each."""
        for row in rows:
            self.hub.publish("egress.row", {k: row.get(k) for k in EGRESS_ROW_FIELDS}, session_id=row.get("session_id"))

    def session_tool(self, note: Any) -> None:
        """A tool call of a session finished in a sandbox of this server (`SessionManager.on_tool_result`)."""
        session_id = note.session_id
        self.hub.publish("session.tool", {"session_id": session_id, "tool_calls": int(note.tool_calls), "at": note.at,
                                          "cold_start_ms": note.cold_start_ms}, session_id=session_id)

    def tools_changed(self, kernel_id: str) -> None:
        """A kernel registered or dropped notebook tools: views refetch `GET tools`."""
        self.hub.publish("tools.changed", {"kernel_id": kernel_id})

    def notebook_undone(self, path: str, edit_ids: list[int]) -> None:
        """Agents' edits of a notebook were undone (`POST notebook-edits/{id}/undo`): pages reload tabs showing it."""
        self.hub.publish("notebook.undone", {"path": path, "edit_ids": [int(i) for i in edit_ids], "at": time.time()})

    def status_changed(self) -> None:
        """Setup or configuration changed (e.g. the local emulator started): views refetch `GET status`/`GET setup`."""
        self.hub.publish("status.changed", {})
