"""`cma.Session`: a session of an agent, driven from a notebook — send a message, wait for the answer, read the
transcript, export the work.

    session = agent.start("How many rows does the orders table have?")
    print(session.wait())              # the agent's final text; its tool calls ran meanwhile
    session.send("And per month?")
    session.wait(display=True)         # the transcript streams into the cell's output
    session                            # displayed: user and agent messages, tool calls with inputs and results
    session.notebook("work.ipynb")     # kernel tier: the session's python calls as a notebook
    session.notebook_edits()           # the edits its agent made to the server's notebooks (each can be undone)

Everything goes through the server's REST API (`cma/api/sessions/...`); the events are Anthropic's, read through
the server. Waiting polls the events (every 0.3 s), so a notebook tool of this kernel runs while a cell waits:
the server runs it beside the cell (`tools/notebook.py`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .connection import CMAError, connection
from .notebook_edits import NotebookEdits, notebook_edits
from .transcript import Item, TurnState, items, last_turn_text, render_html, render_text, turn_state

__all__ = ["Session"]

POLL_INTERVAL = 0.3  # seconds between two looks at the events while waiting
PAGE_SIZE = 1000  # events per request (the API's maximum)


class Session:
    """A session on Anthropic's API that this Jupyter server serves. `Session(id)` refers to one without asking the
    server; `Session.get(id)` checks that it exists; `agent.start(...)` starts a new one."""

    def __init__(self, id: str, *, agent_id: str | None = None, title: str | None = None) -> None:
        if not isinstance(id, str) or not id:
            raise TypeError(f"a session id is a non-empty string such as 'sesn_…', not {id!r}")
        self.id = id
        self.agent_id = agent_id
        self.title = title
        # The events read so far, and where the last page began (its cursor and index): a refresh reads from there
        # on, so a long session is not read again in full every 0.3 s.
        self._events: list[dict[str, Any]] = []
        self._page_cursor: str | None = None
        self._page_index = 0
        # How many user messages the session has at least (those this object sent): until the events show them, an
        # earlier turn's end is not the end of the turn we wait for.
        self._min_user_messages = 0

    # ------------------------------------------------------------------ finding one

    @classmethod
    def get(cls, id: str) -> Session:
        """The session `id`, after checking that the API knows it (CMAError with the server's message if not)."""
        session = cls(id)
        session._refresh()
        return session

    # ------------------------------------------------------------------ talking to it

    def send(self, text: str) -> Session:
        """Send a user message: the session's next turn. Returns the session, so `session.send(...).wait()` reads well."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("send(text) needs a non-empty message")
        known = sum(1 for e in self._refresh() if e.get("type") == "user.message")
        connection().request("POST", f"sessions/{self.id}/messages", {"text": text})
        self._min_user_messages = max(self._min_user_messages, known + 1)
        return self

    def wait(self, timeout: float = 300, *, display: bool = False) -> str:
        """Wait until the session has answered its latest user message; the text of that turn's agent messages.

        Polls the session's events every 0.3 s until the session is idle with `end_turn` after the last user
        message. Notebook tools of this kernel run meanwhile (beside this cell).

        Args:
            timeout: seconds to wait; then TimeoutError (the session goes on: call wait() again, or stop()).
            display: show the turn's transcript in this cell's output, updated as events arrive.

        Raises:
            CMAError: the session reported an error, ended the turn otherwise (e.g. a refusal) or was terminated.
            TimeoutError: the turn did not end within `timeout` seconds.
        """
        deadline = time.monotonic() + float(timeout)
        view = _LiveView(self) if display else None
        while True:
            events = self._refresh()
            state = turn_state(events)
            current = state.user_messages >= max(self._min_user_messages, 1)
            if view is not None:
                view.update(events, state, current)
            if current and state.state == "done":
                return last_turn_text(events)
            if current and state.state in ("error", "stopped", "terminated"):
                raise CMAError(self._failure(state, events))
            if state.state == "none" and self._min_user_messages == 0:
                raise CMAError(f"session {self.id} has no message to answer yet: session.send(text) first")
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(timeout, state if current else None))
            time.sleep(POLL_INTERVAL)

    def stop(self) -> bool:
        """Stop the sandbox serving this session now (its running tool call is cut off); False when none serves it
        (it is stopped already, or idle and released). The session itself stays: a new message starts it again."""
        try:
            connection().request("POST", f"sessions/{self.id}/stop", {})
        except CMAError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # ------------------------------------------------------------------ reading it

    @property
    def events(self) -> list[dict[str, Any]]:
        """All of the session's events, oldest first, as the REST API gives them (following its pages)."""
        return list(self._refresh())

    def transcript(self) -> list[Item]:
        """The session as transcript items: user and agent messages, tool calls (each with its input and, once
        answered, its result and `is_error`), errors; `item.turn` counts the user messages."""
        return items(self._refresh())

    @property
    def status(self) -> dict[str, Any] | None:
        """This server's record of the session (status: claimed, starting, running, idle, sleeping, ended, failed…;
        tier, cold_start_ms, transitions, the live sandbox); None until the server has served it."""
        try:
            return connection().request("GET", f"sessions/{self.id}")
        except CMAError as exc:
            if exc.status == 404:
                return None
            raise

    def notebook(self, path: str | Path | None = None) -> Path:
        """Write the session's work (kernel tier: each python call as a cell with its outputs) as an .ipynb.

        `path`: a file, or a directory to write `<session id>.ipynb` into (default: that file in the current
        directory). Returns the path written. CMAError when the session has no recorded cells (e.g. it ran on
        the container tier, or made no python call yet).
        """
        raw = connection().download(f"sessions/{self.id}/notebook")
        try:
            cells = json.loads(raw).get("cells") or []
        except (ValueError, AttributeError):
            raise CMAError(f"the server's notebook for session {self.id} is not an .ipynb; is jupyter-cma up to date?") from None
        if not cells:
            row = self.status or {}
            tier = f" (it ran on the {row['tier']} tier)" if row.get("tier") else ""
            raise CMAError(f"session {self.id} has no recorded cells{tier}: only sessions on the kernel tier record their "
                           "python calls, and only once they made one; session.transcript() shows what it did")
        target = Path(path) if path is not None else Path(f"{self.id}.ipynb")
        if target.is_dir():
            target = target / f"{self.id}.ipynb"
        target.write_bytes(raw)
        return target

    def notebook_edits(self, path: str | None = None, limit: int = 100) -> NotebookEdits:
        """The edits this session's agent made to the server's notebooks (its `notebook` built-in), newest first;
        of one notebook when `path` is given. `edit.undo()` puts a notebook back as it was before an edit."""
        return notebook_edits(path=path, session=self, limit=limit)

    # ------------------------------------------------------------------ display

    def _header(self, state: TurnState | None = None) -> str:
        parts = [f"cma.Session {self.id}"]
        if self.title:
            parts.append(repr(self.title))
        if state is not None:
            parts.append(_describe(state))
        return " — ".join(parts)

    def __repr__(self) -> str:
        try:
            events = self._refresh()
        except CMAError as exc:
            return f"<cma.Session {self.id} (its events cannot be read now: {exc})>"
        return render_text(items(events), header=self._header(turn_state(events)))

    def _repr_html_(self) -> str:
        try:
            events = self._refresh()
        except CMAError as exc:
            return render_html([], header=f"cma.Session {self.id}", footer=f"its events cannot be read now: {exc}")
        return render_html(items(events), header=self._header(turn_state(events)))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Displayed in a notebook: the session's live view (a widget: its conversation as it streams, its egress
        rows, stop / terminal / export / send), with the transcript as text and HTML wherever widgets are not
        shown (a saved notebook, nbconvert, a console)."""
        try:
            events = self._refresh()
        except CMAError as exc:
            bundle = {"text/plain": f"<cma.Session {self.id} (its events cannot be read now: {exc})>",
                      "text/html": render_html([], header=f"cma.Session {self.id}",
                                               footer=f"its events cannot be read now: {exc}")}
        else:
            transcript, header = items(events), self._header(turn_state(events))
            bundle = {"text/plain": render_text(transcript, header=header),
                      "text/html": render_html(transcript, header=header)}
        return {**bundle, **widget_view(include, exclude, session=self.id, show_table=False)}

    # ------------------------------------------------------------------ internals

    def _refresh(self) -> list[dict[str, Any]]:
        """Read the events that arrived since the last look (the last page again, then the pages after it)."""
        conn = connection()
        events = self._events[:self._page_index]
        cursor, index = self._page_cursor, self._page_index
        while True:
            index = len(events)
            page = conn.request("GET", f"sessions/{self.id}/events", params={"limit": PAGE_SIZE, "page": cursor})
            data = list((page or {}).get("data") or [])
            events.extend(data)
            following = (page or {}).get("next_page")
            if not following or not data:
                break
            cursor = following
        seen: set[str] = set()
        unique = []
        for event in events:  # a cursor read twice must not show an event twice
            key = event.get("id")
            if key is not None and key in seen:
                continue
            if key is not None:
                seen.add(key)
            unique.append(event)
        self._events, self._page_cursor, self._page_index = unique, cursor, min(index, len(unique))
        return self._events

    def _failure(self, state: TurnState, events: list[dict[str, Any]]) -> str:
        said = last_turn_text(events)
        tail = f"; the agent said before: {said!r}" if said else ""
        if state.state == "error":
            return f"session {self.id} reported an error: {state.reason}{tail} (session.transcript() shows the turn)"
        if state.state == "terminated":
            return f"session {self.id} was terminated; start a new one with agent.start(...){tail}"
        return f"session {self.id} ended the turn without an answer ({state.reason}){tail}"

    def _timeout_message(self, timeout: float, state: TurnState | None) -> str:
        where = _describe(state) if state is not None else "its message has not reached the session yet"
        hint = ""
        if state is not None and state.state == "requires_action":
            hint = (" A notebook tool runs in the kernel that defined it: is that notebook's kernel running, and was its "
                    "@cma.tool cell run?")
        return (f"session {self.id} did not finish its turn within {timeout:g} s ({where}).{hint} It goes on without "
                "you: call session.wait() again to keep waiting (wait(timeout=...) for longer), look at "
                "session.transcript(), or call session.stop() to stop it.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def widget_view(include: Any, exclude: Any, **traits: Any) -> dict[str, Any]:
    """The widget-view part of a display bundle (`cma.dashboard`'s view with these traits), or {} where no widget
    can show: outside a kernel (a script, terminal IPython), without the widgets' JavaScript, or not wanted."""
    if "ipykernel" not in sys.modules:  # not in a kernel: no widget, and anywidget is not even imported
        return {}
    try:
        from ..widgets.core import widget_bundle

        return widget_bundle(include, exclude, **traits) or {}
    except Exception:  # noqa: BLE001  (anywidget missing or a comm refused: the text and HTML stand alone, never an error)
        return {}


def _describe(state: TurnState) -> str:
    """Where a turn stands, in words."""
    if state.state == "none":
        return "no message yet"
    if state.state == "running":
        return "the agent is working"
    if state.state == "requires_action":
        return f"waiting for the result of {', '.join(state.waiting_for) or 'a tool call'}"
    if state.state == "done":
        return "idle: the turn is done"
    if state.state == "stopped":
        return f"the turn ended: {state.reason}"
    if state.state == "error":
        return f"error: {state.reason}"
    return "terminated"


class _LiveView:
    """The transcript of the turn being waited for, in the cell's output: one display, updated as events arrive."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._handle: Any = None
        self._shown: tuple[int, str] | None = None

    def update(self, events: list[dict[str, Any]], state: TurnState, current: bool) -> None:
        key = (len(events), state.state if current else "waiting")
        if key == self._shown:
            return
        self._shown = key
        # From the turn waited for on: a continued session does not repeat its earlier turns in each cell.
        first = max(self._session._min_user_messages, state.user_messages, 1)
        shown = [i for i in items(events) if i.turn >= first]
        footer = _describe(state) if current else "sending…"
        bundle = {"text/plain": render_text(shown, header=f"cma.Session {self._session.id} — {footer}"),
                  "text/html": render_html(shown, header=f"cma.Session {self._session.id}", footer=footer)}
        from IPython.display import display

        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
