"""`SessionEventRelay`: new events of the sessions a view watches, as live `session.event` notifications.

The API's event stream (`GET /v1/sessions/{id}/events/stream`, the SDK's `client.beta.sessions.events.stream`)
is the only source that sees every event of a session, whichever worker serves it. It is live only (no
replay), so a view learns *that* an event arrived here and fetches its contents from REST
(`GET cma/api/sessions/{id}/events?after=<processed_at>`), which also covers anything a reconnect missed.

One upstream stream per watched session, shared by every view that watches it (the hub counts the views,
`live.py`), opened with the API-key client the REST routes use. A stream that fails or ends is opened again
after a pause that doubles from 0.5 s up to 10 s (the SDK runner's policy). When the last view lets go, the
stream lingers (30 s by default) so a page reload or a view switching back does not reopen it. At most
`max_streams` are open; a lingering one gives way to a new watch.

Only `session_id, event_id, type, processed_at` leave this module: never an event's contents.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..tasks import BackgroundTasks

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["SessionEventRelay"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0


class _Stream:
    """One watched session's upstream stream: its task, and whether views still watch it."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.watched = True
        self.connected = False  # the stream is open and its newest event announced: every later event is relayed in order
        self.task: asyncio.Task[None] | None = None
        self.linger: asyncio.TimerHandle | None = None
        # The ids relayed last: the newest event announced when the stream opens may come on the stream too.
        self.recent: deque[str] = deque(maxlen=64)


class SessionEventRelay:
    """Relays the events of watched sessions from the API's event streams (a `live.SessionWatcher`).

    Args:
        client: the API-key client of the REST routes (the same object, so a change of API, e.g. the local
            emulator, applies here too).
        publish: the live hub's `publish(kind, data, session_id=…)`.
        linger: seconds a stream stays open after the last view stopped watching it.
        max_streams: how many streams may be open at once (lingering ones included).
    """

    def __init__(self, *, client: AsyncAnthropic, publish: Callable[..., None], linger: float = 30.0, max_streams: int = 50) -> None:
        self.client = client
        self.publish = publish
        self.linger = linger
        self.max_streams = max_streams
        self.streams: dict[str, _Stream] = {}
        self.opened = 0  # upstream streams opened, reconnects included
        self.errors = 0
        self._tasks = BackgroundTasks("live-relay")

    # ------------------------------------------------------------------ SessionWatcher

    def watch(self, session_id: str) -> bool:
        """Relay the session's events (keep its stream, or open one); False when `max_streams` are busy."""
        stream = self.streams.get(session_id)
        if stream is not None:
            stream.watched = True
            if stream.linger is not None:
                stream.linger.cancel()
                stream.linger = None
            return True
        if len(self.streams) >= self.max_streams and not self._evict_lingering():
            return False
        stream = self.streams[session_id] = _Stream(session_id)
        stream.task = self._tasks.spawn(self._relay(stream))
        return True

    def unwatch(self, session_id: str) -> None:
        """No view watches the session any more: close its stream after `linger` seconds unless watched again."""
        stream = self.streams.get(session_id)
        if stream is None or not stream.watched:
            return
        stream.watched = False
        stream.linger = asyncio.get_running_loop().call_later(self.linger, self._drop, stream)

    # ------------------------------------------------------------------ streams

    def _evict_lingering(self) -> bool:
        for stream in self.streams.values():
            if not stream.watched:
                self._drop(stream)
                return True
        return False

    def _drop(self, stream: _Stream) -> None:
        if self.streams.get(stream.session_id) is stream:
            del self.streams[stream.session_id]
        if stream.linger is not None:
            stream.linger.cancel()
            stream.linger = None
        if stream.task is not None:
            stream.task.cancel()

    async def _relay(self, stream: _Stream) -> None:
        """Keep the session's stream open, publishing each event's id, type and time, until dropped."""
        sid = stream.session_id
        pause = BACKOFF_FIRST
        while True:
            try:
                self.opened += 1
                events = await self.client.beta.sessions.events.stream(sid)
                async with events:
                    await self._announce_latest(stream)
                    # Only now: an event emitted while the newest was being listed is queued on the stream, and
                    # would be announced after that newest one (views fetch by time, so nothing is lost, but a
                    # caller waiting on `connected` to send the first message expects its events in order).
                    stream.connected = True
                    async for event in events:
                        pause = BACKOFF_FIRST  # it answered: a later failure starts the backoff over
                        self._publish(stream, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                # The type only: an upstream error's text may quote the request.
                log.info("jupyter-cma: the event stream of session %s failed (%s); again in %.1f s", sid, type(exc).__name__, pause)
            stream.connected = False  # ended (or failed): what happens until it is open again is read from REST
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)

    async def _announce_latest(self, stream: _Stream) -> None:
        """Once the stream is open, publish the session's newest event as it is now.

        The stream is live-only: what happened before it opened — since a view read REST while the stream was
        connecting, or while it was reconnecting — is never on it. Views answer a `session.event` by fetching
        everything after the newest event they have, so announcing the newest one lets them catch up (the
        SDK's own runner does the same: open the stream, then list). Duplicates are harmless: views keep events
        by id.
        """
        try:
            page = await self.client.beta.sessions.events.list(stream.session_id, limit=1, order="desc")
        except Exception as exc:
            self.errors += 1
            log.info("jupyter-cma: listing the events of session %s failed (%s)", stream.session_id, type(exc).__name__)
            return
        for event in page.data[:1]:
            self._publish(stream, event)

    def _publish(self, stream: _Stream, event: Any) -> None:
        session_id = stream.session_id
        event_id = getattr(event, "id", None)
        if not isinstance(event_id, str) or event_id in stream.recent:
            return  # keep-alives carry no id; an event announced already
        stream.recent.append(event_id)
        processed_at = getattr(event, "processed_at", None)
        self.publish("session.event", {
            "session_id": session_id,
            "event_id": event_id,
            "type": str(getattr(event, "type", "")),
            "processed_at": processed_at.isoformat() if hasattr(processed_at, "isoformat") else processed_at,
        }, session_id=session_id)

    # ------------------------------------------------------------------ status and shutdown

    def status(self) -> dict[str, Any]:
        """Counters for `GET cma/api/status` (`live`)."""
        return {
            "streams": len(self.streams),
            "connected": sum(1 for s in self.streams.values() if s.connected),
            "lingering": sum(1 for s in self.streams.values() if not s.watched),
            "upstream_opens": self.opened,
            "relay_errors": self.errors,
        }

    async def close(self, timeout: float = 5.0) -> None:
        """Close every stream (bounded by `timeout`)."""
        for stream in list(self.streams.values()):
            self._drop(stream)
        await self._tasks.close(timeout)
