"""The system allowance: a credential-free worker's own calls to the Managed Agents API.

`SystemAllowance` is the API host (from `CMAApp.api_base_url`); `WorkerScope`
is what one worker's token may be spent on there: `WORKER_CALLS` for its own
work item, session, skills and memory stores. Requests it covers are allowed
before any user rule (`SYSTEM_API_RULE`); any other request from a worker's
sandbox to the API host that no policy allows is refused as
`WORKER_SCOPE_RULE`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import PolicyError
from .hosts import DEFAULT_PORTS, SCHEME_FAMILY, display_host, normalize_host

if TYPE_CHECKING:
    from .decisions import EgressRequest

SYSTEM_API_RULE = "system:api-host"  # the rule of the system allowance (the worker's own API calls)
WORKER_SCOPE_RULE = "api:outside-worker-scope"  # a worker's sandbox asked the API host for something its worker never does

# The calls the SDK's worker (anthropic 2.10.0: lib/environments/_worker.py, and what it runs: the heartbeat
# loop, the session tool runner, the skills download, the memory-store sync) makes for its own work item, with
# the item's credential: (method, path below the API's base URL). A `{name}` segment must be the scope's own id
# (`WorkerScope.matches`); `{any}` is any one segment. The poll and ack use the environment key, which a sandbox
# never holds, and the worker never calls anything else (sessions' resources are read from the session itself).
WORKER_CALLS: tuple[tuple[str, str], ...] = (
    ("POST", "/v1/environments/{environment}/work/{work}/heartbeat"),
    ("POST", "/v1/environments/{environment}/work/{work}/stop"),
    ("GET", "/v1/sessions/{session}"),
    ("GET", "/v1/sessions/{session}/events"),
    ("POST", "/v1/sessions/{session}/events"),
    ("GET", "/v1/sessions/{session}/events/stream"),
    ("GET", "/v1/skills/{skill}/versions/{any}"),
    ("GET", "/v1/skills/{skill}/versions/{any}/content"),
    ("GET", "/v1/memory_stores/{memory_store}/memories"),
    ("GET", "/v1/memory_stores/{memory_store}/memories/{any}"),
    ("POST", "/v1/memory_stores/{writable_memory_store}/memories"),
    ("POST", "/v1/memory_stores/{writable_memory_store}/memories/{any}"),
    ("DELETE", "/v1/memory_stores/{writable_memory_store}/memories/{any}"),
)
_WORKER_CALLS = tuple((method, tuple(template[1:].split("/"))) for method, template in WORKER_CALLS)
# The one answer the scope learns from: the API's answer to the worker's own retrieve of its session.
WORKER_SESSION_CALL = ("GET", "/v1/sessions/{session}")
_WORKER_SESSION_TEMPLATE = tuple(WORKER_SESSION_CALL[1][1:].split("/"))


@dataclass(frozen=True)
class WorkerScope:
    """What a credential-free worker's token may be spent on: its own work item, session, skills and memory stores.

    The ids come with the sandbox's attachment (the work item the server
    claimed). Which skills and memory stores the session has is known once the
    API answered the worker's retrieve of its session (`learn`), which the
    worker makes before it downloads a skill or a memory; until then no skill
    or memory store is in scope (fail closed). The API's answer comes through
    the proxy's own TLS connection to the API host: a sandbox cannot forge it.
    """

    session_id: str
    work_id: str
    environment_id: str
    skills: frozenset[str] = frozenset()
    memory_stores: Mapping[str, bool] = field(default_factory=dict)  # id → writable (read_only stores are never pushed to)

    def permits(self, method: str, path: str | None) -> bool:
        """Whether `method path` (below the API's base URL, query allowed) is one of the worker's own calls."""
        segments = _segments(path)
        return segments is not None and any(method == m and self._matches(template, segments) for m, template in _WORKER_CALLS)

    def is_session_retrieve(self, method: str, path: str | None) -> bool:
        """Whether this is the worker's retrieve of its own session, whose answer `learn` reads."""
        segments = _segments(path)
        return segments is not None and method == WORKER_SESSION_CALL[0] and self._matches(_WORKER_SESSION_TEMPLATE, segments)

    def _matches(self, template: tuple[str, ...], segments: tuple[str, ...]) -> bool:
        if len(template) != len(segments):
            return False
        for part, segment in zip(template, segments):
            if not part.startswith("{"):
                if part != segment:
                    return False
            elif part == "{any}":
                if not segment or segment in (".", ".."):
                    return False
            elif not self._names(part[1:-1], segment):
                return False
        return True

    def _names(self, kind: str, segment: str) -> bool:
        if kind == "session":
            return segment == self.session_id
        if kind == "work":
            return segment == self.work_id
        if kind == "environment":
            return segment == self.environment_id
        if kind == "skill":
            return segment in self.skills
        if kind == "memory_store":
            return segment in self.memory_stores
        if kind == "writable_memory_store":
            return self.memory_stores.get(segment, False)
        raise ValueError(f"unknown segment {kind!r} in WORKER_CALLS")

    def learn(self, session: object) -> WorkerScope:
        """This scope with the skills and memory stores of the session as the API described it (its JSON).

        Anything unreadable adds nothing: a skill or memory store missing from
        the scope is refused, never guessed.
        """
        if not isinstance(session, dict) or session.get("id") != self.session_id:
            return self
        skills: set[str] = set()
        agent = session.get("agent")
        for skill in (agent.get("skills") if isinstance(agent, dict) else None) or ():
            if isinstance(skill, dict) and isinstance(skill.get("skill_id"), str) and _ID_SEGMENT.fullmatch(skill["skill_id"]):
                skills.add(skill["skill_id"])
        stores: dict[str, bool] = {}
        for resource in session.get("resources") or ():
            if isinstance(resource, dict) and resource.get("type") == "memory_store":
                store_id = resource.get("memory_store_id")
                if isinstance(store_id, str) and _ID_SEGMENT.fullmatch(store_id):
                    stores[store_id] = resource.get("access") != "read_only"
        return dataclasses.replace(self, skills=frozenset(skills), memory_stores=stores)

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "work_id": self.work_id, "environment_id": self.environment_id,
                "skills": sorted(self.skills), "memory_stores": dict(self.memory_stores)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WorkerScope:
        """A scope from `to_json` (the attachment the server sends the engine); KeyError/TypeError when incomplete."""
        ids = [doc["session_id"], doc["work_id"], doc["environment_id"]]
        if not all(isinstance(i, str) and _ID_SEGMENT.fullmatch(i) for i in ids):
            raise TypeError("a worker scope needs the session, work item and environment ids")
        stores = doc.get("memory_stores") or {}
        return cls(*ids, skills=frozenset(str(s) for s in doc.get("skills") or ()),
                   memory_stores={str(k): bool(v) for k, v in stores.items()})


_ID_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{1,200}")  # an API id as one path segment: nothing to escape, no dots


def _segments(path: str | None) -> tuple[str, ...] | None:
    """The segments of an absolute path without its query: exactly as sent (no `//`, `.` or `..` is folded)."""
    if path is None or not path.startswith("/"):
        return None
    return tuple(path.split("?", 1)[0].split("#", 1)[0][1:].split("/"))


@dataclass(frozen=True)
class SystemAllowance:
    """The Managed Agents API the worker needs: one exact scheme, host and port, and the base URL's path."""

    scheme: str
    host: str
    port: int
    base_path: str = ""  # the base URL's path without its trailing slash: the SDK's paths follow it

    @classmethod
    def from_base_url(cls, url: str) -> SystemAllowance:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password or "\\" in url:
            raise PolicyError(f"api_base_url {url!r} must be an http(s) URL such as https://api.anthropic.com")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise PolicyError(f"api_base_url {url!r} has a bad port") from None
        return cls(parts.scheme, normalize_host(parts.hostname), port, parts.path.rstrip("/"))

    def allows(self, request: EgressRequest) -> bool:
        """Whether the request goes to the API host (any path)."""
        return SCHEME_FAMILY[request.scheme] == self.scheme and request.host == self.host and request.port == self.port

    def names(self, scheme: str, host: str, port: int) -> bool:
        """Whether scheme://host:port (host canonical, as `normalize_host` gives it) is the API host."""
        return SCHEME_FAMILY.get(scheme) == self.scheme and host == self.host and port == self.port

    def api_path(self, path: str | None) -> str | None:
        """The path below the base URL (None when the request is not below it)."""
        if path is None or not path.startswith(self.base_path + "/"):
            return None
        return path[len(self.base_path):]

    def for_worker(self, request: EgressRequest) -> bool:
        """Whether the system allowance covers this request: its sandbox's worker makes it for its own work item.

        A CONNECT to the API host opens the tunnel the worker needs; the proxy
        reads (and decides) each request inside it.
        """
        worker = request.context.worker
        if worker is None or not self.allows(request):
            return False
        return request.method == "CONNECT" or worker.permits(request.method, self.api_path(request.path))

    def __str__(self) -> str:
        return f"{self.scheme}://{display_host(self.host)}:{self.port}"
