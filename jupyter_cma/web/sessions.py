"""`{base_url}cma/api/sessions`: sessions started on Anthropic's API, and what this server did for them.

A session's row here is its lifecycle on this server (`control/sessions.py`); its events are Anthropic's, read
through the API client. The session's terminal and workspace have their own modules (`web/terminals.py`,
`web/workspaces.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler, known_tier
from .schemas import EmptyBody, EventsQuery, SessionCreate, SessionMessage, SessionsQuery

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..control.sessions import SessionManager
    from ..sandboxes.base import Tier
    from ..store import Store


class SessionsHandler(CMAHandler):
    """`GET cma/api/sessions` (filters: status, agent_id, tier; paged by `before`; each row with its live sandbox's
    summary, or null) and `POST` to start one."""

    def initialize(  # type: ignore[override]
        self, name: str, *, store: Store, sessions: SessionManager, tiers: Mapping[str, Tier], client: AsyncAnthropic,
        environment_id: Callable[[], str],
    ) -> None:
        super().initialize(name)
        self._store = store
        self._sessions = sessions
        self._tiers = tiers
        self._client = client
        self._environment_id = environment_id  # read per request: the local emulator may set it (POST setup/emulator)

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(SessionsQuery)
        if query.tier is not None:
            known_tier(self._tiers, query.tier)
        rows = self._store.sessions(statuses=query.status, agent_id=query.agent_id, tier=query.tier, limit=query.limit, before=query.before)
        for row in rows:
            row["sandbox"] = self._sessions.summary(row["id"])
        self.finish({"data": rows, "next_before": rows[-1]["updated_at"] if rows else None})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        self.require_environment()
        body = self.body(SessionCreate)
        params: dict[str, Any] = {"agent": body.agent_id, "environment_id": self._environment_id()}
        if body.title is not None:
            params["title"] = body.title
        if body.metadata is not None:
            params["metadata"] = body.metadata
        if body.message is not None:
            params["initial_events"] = [{"type": "user.message", "content": [{"type": "text", "text": body.message}]}]
        session = await self.upstream(self._client.beta.sessions.create(**params))
        self.set_status(201)
        self.finish(session.model_dump(mode="json"))

    def require_environment(self) -> None:
        if not self._environment_id():
            raise tornado.web.HTTPError(409, "no environment_id is configured; set c.CMAApp.environment_id (see README)")


class SessionHandler(CMAHandler):
    """`GET cma/api/sessions/{id}`: lifecycle, transitions and the live sandbox (if any)."""

    def initialize(self, name: str, *, store: Store, sessions: SessionManager) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store
        self._sessions = sessions

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        row = self._store.session(session_id)
        if row is None:
            raise tornado.web.HTTPError(404, f"no session {session_id} has been served here")
        self.finish({**row, "transitions": self._store.transitions(session_id), "sandbox": self._sessions.describe(session_id)})


class SessionEventsHandler(CMAHandler):
    """`GET cma/api/sessions/{id}/events`: the session's events from Anthropic's API, one page, oldest first.

    `after` (an event's `processed_at`) answers only the events processed after it: a live view's catch-up when the
    channel tells it of a new event.
    """

    def initialize(self, name: str, *, client: AsyncAnthropic) -> None:  # type: ignore[override]
        super().initialize(name)
        self._client = client

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        query = self.query(EventsQuery)
        params: dict[str, Any] = {"limit": query.limit}
        if query.page is not None:
            params["page"] = query.page
        if query.after is not None:
            params["created_at_gt"] = query.after
        page = await self.upstream(self._client.beta.sessions.events.list(session_id, **params))
        self.finish({"data": [e.model_dump(mode="json") for e in page.data], "next_page": page.next_page})


class SessionMessagesHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/messages` `{"text"}`: a user message to the session (its next turn)."""

    def initialize(self, name: str, *, client: AsyncAnthropic) -> None:  # type: ignore[override]
        super().initialize(name)
        self._client = client

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        body = self.body(SessionMessage)
        message = {"type": "user.message", "content": [{"type": "text", "text": body.text}]}
        await self.upstream(self._client.beta.sessions.events.send(session_id, events=[message]))
        self.set_status(201)
        self.finish({"session_id": session_id, "sent": True})


class SessionStopHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/stop`: stop its sandbox here; the worker force-stops the work item."""

    def initialize(self, name: str, *, sessions: SessionManager) -> None:  # type: ignore[override]
        super().initialize(name)
        self._sessions = sessions

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        self.body(EmptyBody)
        user = self.current_user.username if self.current_user else "unknown"
        stopped = await self._sessions.stop(session_id, f"stopped through the API by {user}")
        if not stopped:
            raise tornado.web.HTTPError(409, f"no sandbox is serving session {session_id} on this server")
        self.finish({"id": session_id, "stopped": True})


class SessionNotebookHandler(CMAHandler):
    """`GET cma/api/sessions/{id}/notebook`: the session's executed calls as a `.ipynb`."""

    def initialize(self, name: str, *, store: Store) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        import nbformat

        from ..sandboxes.kernel.recording import build_notebook

        cells = self._store.cells(session_id)
        if not cells and self._store.session(session_id) is None:
            raise tornado.web.HTTPError(404, f"no session {session_id} has been served here")
        notebook = build_notebook(cells, session_id=session_id)
        self.set_header("Content-Disposition", f'attachment; filename="{session_id}.ipynb"')
        self.finish(nbformat.writes(notebook), set_content_type="application/x-ipynb+json")
