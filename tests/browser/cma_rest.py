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
