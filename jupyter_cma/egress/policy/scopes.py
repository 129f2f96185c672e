"""Where a policy applies (`Scope`, with its metadata `Matcher`s) and who is asking (`SessionContext`).

`SCOPE_RANK` orders the scopes most specific first: the order in which the
policies that apply to a session are chained (see `resolution`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .system_allowance import WorkerScope

MAX_METADATA_VALUE = 256


@dataclass(frozen=True)
class Matcher:
    """One condition on a session metadata value: equals, one_of or matches (a full-match regex)."""

    key: str
    op: Literal["equals", "one_of", "matches"]
    value: str | tuple[str, ...]

    def holds(self, metadata: Mapping[str, str]) -> bool:
        actual = metadata.get(self.key)
        if not isinstance(actual, str) or len(actual) > MAX_METADATA_VALUE:
            return False
        if self.op == "equals":
            return actual == self.value
        if self.op == "one_of":
            return actual in self.value
        return compiled_regex(str(self.value)).fullmatch(actual) is not None

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, self.op: list(self.value) if isinstance(self.value, tuple) else self.value}


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def compiled_regex(pattern: str) -> re.Pattern[str]:
    """A matcher's regular expression, compiled once (matchers run on the request path)."""
    compiled = _REGEX_CACHE.get(pattern)
    if compiled is None:
        compiled = _REGEX_CACHE[pattern] = re.compile(pattern)
    return compiled


@dataclass(frozen=True)
class SessionContext:
    """Who is asking: the session, its agent, the session's metadata (for matchers), and its worker, if any.

    `worker` is set for a sandbox whose worker holds a placeholder for the
    session's token (the container tier): the system allowance covers its
    `WorkerScope` only. Without it (the kernel tier, the REST decide) there is
    no system allowance.
    """

    session_id: str | None = None
    agent_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    worker: WorkerScope | None = None

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "agent_id": self.agent_id, "metadata": dict(self.metadata),
                "worker": None if self.worker is None else self.worker.to_json()}


SCOPE_RANK = {"session": 0, "agent": 1, "metadata": 2, "environment": 3}


@dataclass(frozen=True)
class Scope:
    """Where a policy applies: environment, agent, session, or metadata matchers (ANDed)."""

    kind: Literal["environment", "agent", "session", "metadata"]
    target: str | None = None  # the agent or session id
    matchers: tuple[Matcher, ...] = ()

    @property
    def key(self) -> str | None:
        """Unique per scope (one policy each), None for metadata scopes (any number)."""
        if self.kind == "environment":
            return "environment"
        if self.kind in ("agent", "session"):
            return f"{self.kind}:{self.target}"
        return None

    def applies(self, ctx: SessionContext) -> bool:
        if self.kind == "environment":
            return True
        if self.kind == "agent":
            return ctx.agent_id is not None and ctx.agent_id == self.target
        if self.kind == "session":
            return ctx.session_id is not None and ctx.session_id == self.target
        return all(m.holds(ctx.metadata) for m in self.matchers)

    def to_document(self) -> dict[str, Any]:
        if self.kind == "environment":
            return {"environment": True}
        if self.kind == "agent":
            return {"agent_id": self.target}
        if self.kind == "session":
            return {"session_id": self.target}
        return {"metadata": [m.to_document() for m in self.matchers]}

    def describe(self) -> str:
        if self.kind == "environment":
            return "the environment default"
        if self.kind in ("agent", "session"):
            return f"{self.kind} {self.target}"
        return "sessions whose metadata match " + " and ".join(
            f"{m.key} {m.op.replace('_', ' ')} {list(m.value) if isinstance(m.value, tuple) else repr(m.value)}" for m in self.matchers
        )
