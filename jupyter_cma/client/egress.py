"""Egress from a notebook: policies, what the proxy would decide, secrets to inject, and the egress log.

A thin layer over `cma/api/egress/…` (docs/egress.md says what a policy holds):

    import jupyter_cma as cma

    cma.egress.set_secret("INVENTORY_TOKEN", token)               # never shown again, only its fingerprint
    cma.egress.create_policy({"name": "analyst", "scope": {"agent_id": agent.id}, "presets": ["pypi"]})
    cma.egress.decide("https://pypi.org/simple/", agent=agent)    # {"decision": "allow", "rule": …}
    cma.egress.log(session=session)                               # the session's requests, newest first
"""

from __future__ import annotations

from typing import Any

from .connection import connection

__all__ = ["create_policy", "decide", "delete_policy", "delete_secret", "log", "policies", "secrets", "set_secret", "update_policy"]


def _id(value: Any) -> str | None:
    """An id, or the `.id` of an Agent or Session."""
    return None if value is None else getattr(value, "id", value)


def policies() -> list[dict[str, Any]]:
    """Every egress policy, most specific scope first."""
    return connection().request("GET", "egress/policies")["data"]


def create_policy(document: dict[str, Any]) -> dict[str, Any]:
    """Store a new policy (the answer has its `id` and any `warnings`); CMAError says what is wrong with it."""
    return connection().request("POST", "egress/policies", document)


def update_policy(policy_id: str, document: dict[str, Any]) -> dict[str, Any]:
    """Replace a policy's whole document."""
    return connection().request("PUT", f"egress/policies/{policy_id}", document)


def delete_policy(policy_id: str) -> None:
    connection().request("DELETE", f"egress/policies/{policy_id}")


def decide(url: str, *, method: str = "GET", agent: Any = None, session: Any = None,
           metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """What the proxy would do with a request from a session (or an agent's sessions): decision, rule, reason."""
    body: dict[str, Any] = {"url": url, "method": method}
    for key, value in (("agent_id", _id(agent)), ("session_id", _id(session)), ("metadata", metadata)):
        if value is not None:
            body[key] = value
    return connection().request("POST", "egress/decide", body)


def secrets() -> list[dict[str, Any]]:
    """The secrets' names, times and fingerprints (never a value)."""
    return connection().request("GET", "egress/secrets")["data"]


def set_secret(name: str, value: str) -> dict[str, Any]:
    """Set or rotate a secret the proxy can inject; the answer never holds the value."""
    return connection().request("PUT", f"egress/secrets/{name}", {"value": value})


def delete_secret(name: str) -> None:
    connection().request("DELETE", f"egress/secrets/{name}")


def log(*, session: Any = None, agent: Any = None, host: str | None = None, decision: str | None = None,
        limit: int = 100) -> list[dict[str, Any]]:
    """Egress log rows, newest first: method, host, path, status, decision and the rule that decided."""
    params = {"session_id": _id(session), "agent_id": _id(agent), "host": host, "decision": decision, "limit": limit}
    return connection().request("GET", "egress/log", params=params)["data"]
