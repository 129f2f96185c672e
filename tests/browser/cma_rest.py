"""What the browser tests ask of jupyter-cma's REST API directly (with the server's token), to set a scene
or to check what the page shows against the server's own answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.browser.servers import LabServer

T = TypeVar("T")


def python_message(code: str, ask: str = "Run this code and tell me what it printed:") -> str:
    """A first message the emulator's demo brain answers by running `code` with the agent's tools."""
    return f"{ask}\n```python\n{code}\n```"


def create_agent(server: LabServer, name: str, tier: str, **fields: Any) -> dict[str, Any]:
    return server.api("POST", "agents", {"name": name, "tier": tier, **fields})


def start_session(server: LabServer, agent_id: str, message: str | None = None, title: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"agent_id": agent_id}
    if message is not None:
        body["message"] = message
    if title is not None:
        body["title"] = title
    return server.api("POST", "sessions", body)


def session_row(server: LabServer, session_id: str) -> dict[str, Any]:
    return server.api("GET", f"sessions/{session_id}")


def served_session_row(server: LabServer, session_id: str) -> dict[str, Any] | None:
    """The session's row, or None while this server has not served it yet (404 until it claims its work)."""
    with server.http() as http:
        r = http.get(f"cma/api/sessions/{session_id}")
    if r.status_code == 404:
        return None
    if r.status_code >= 400:
        raise AssertionError(f"GET cma/api/sessions/{session_id} -> {r.status_code}: {r.text}")
    return r.json()


def events(server: LabServer, session_id: str) -> list[dict[str, Any]]:
    return server.api("GET", f"sessions/{session_id}/events", limit=100)["data"]


def wait_for(predicate: Callable[[], T | None], timeout: float = 90.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (a condition, never a duration, is what is tested)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so within {timeout}s")
        time.sleep(0.25)


def wait_turn_ended_and_idle(server: LabServer, session_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """Wait until the session's turn ended upstream (its `session.status_idle` event), then until this server
    says it is idle too; fail naming the server's transitions if it does not (a state the page would show)."""
    def turn_ended() -> bool:
        seen = events(server, session_id)
        return bool(seen) and seen[-1]["type"] == "session.status_idle" and any(e["type"] == "agent.message" for e in seen)

    wait_for(turn_ended, timeout, what=f"session {session_id}'s turn ending upstream (the agent answered, the session idle)")
    try:
        return wait_for(lambda: (row := served_session_row(server, session_id)) is not None and row["status"] == "idle" and row, 15,
                        what=f"the server calling session {session_id} idle once its turn ended upstream")
    except AssertionError as exc:
        row = served_session_row(server, session_id) or {"status": "never served here"}
        steps = [(t["from_state"], t["to_state"], t["reason"]) for t in row.get("transitions", [])]
        raise AssertionError(f"{exc}: it says {row['status']!r} ({row.get('reason')}); its transitions: {steps}") from None
