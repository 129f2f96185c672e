"""The emulated Managed Agents service: its state and behaviour, with no HTTP.

Everything here follows the wire contract as the `anthropic` SDK uses it; where
the contract is uncertain, the choice is made here once and documented in the
README's emulator section. The HTTP layer (`http.py`) only parses requests,
checks credentials and renders what this module returns.

The emulator deliberately shares no code with the rest of `jupyter_cma`: it
plays the other side of the wire, and sharing would hide contract bugs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .brains import Brain
    from .webhooks import WebhookSender

ORGANIZATION_ID = "org_emulator"
WORKSPACE_ID = "wrkspc_emulator"
NO_HEARTBEAT = "NO_HEARTBEAT"
MAX_LEASE_TTL = 3600
MAX_BLOCK_MS = 999
DEFAULT_RECLAIM_MS = 5000
TOOLSET_TYPE = "agent_toolset_20260401"
TOOLSET_NAMES = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
CUSTOM_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
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


def now_iso() -> str:
    """RFC 3339 UTC with microseconds, the format every timestamp here uses."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ApiError(Exception):
    """An error response in the API's shape: `{"type":"error","error":{...}}`."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        error_code: str | None = None,
        details: dict[str, Any] | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.details = dict(details or {})
        if error_code:
            self.details["error_code"] = error_code
        self.should_retry = should_retry

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"type": "error", "error": error}


def bad_request(message: str, **kw: Any) -> ApiError:
    return ApiError(400, "invalid_request_error", message, **kw)


def not_found(kind: str, id_: str, code: str | None = None) -> ApiError:
    return ApiError(404, "not_found_error", f"No such {kind}: {id_}", error_code=code)


def conflict(message: str) -> ApiError:
    # The SDK retries 409 unless told not to; these conflicts never resolve by retrying.
    return ApiError(409, "conflict_error", message, should_retry=False)


# --------------------------------------------------------------------------- credentials


@dataclass
class Credential:
    """A bearer token and what it may do. Tokens are told apart by value, as the
    real service does: the SDK sends every kind as `Authorization: Bearer`."""

    kind: str  # "api_key" | "environment_key" | "sessions_token"
    environment_id: str | None = None
    work_id: str | None = None
    session_id: str | None = None
    delivery: int | None = None  # sessions tokens: which poll delivery of the item issued it


# --------------------------------------------------------------------------- work items


@dataclass
class WorkItem:
    id: str
    environment_id: str
    data: dict[str, Any]
    state: str = "queued"
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    acknowledged_at: str | None = None
    started_at: str | None = None
    latest_heartbeat_at: str | None = None
    stop_requested_at: str | None = None
    stopped_at: str | None = None
    last_heartbeat: str | None = None
    # Monotonic bookkeeping, not on the wire.
    queued_mono: float = field(default_factory=time.monotonic)
    delivered_mono: float | None = None  # polled, not yet acked ("pending")
    lease_deadline: float | None = None
    tokens: list[str] = field(default_factory=list)
    deliveries: int = 0  # how many times poll has handed the item out
    queued_at: str = field(default_factory=now_iso)

    @property
    def session_id(self) -> str | None:
        return self.data.get("id") if self.data.get("type") == "session" else None

    @property
    def live(self) -> bool:
        return self.state != "stopped"

    def to_json(self, secret: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "work",
            "environment_id": self.environment_id,
            "state": self.state,
            "data": self.data,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "acknowledged_at": self.acknowledged_at,
            "started_at": self.started_at,
            "latest_heartbeat_at": self.latest_heartbeat_at,
            "stop_requested_at": self.stop_requested_at,
            "stopped_at": self.stopped_at,
            "secret": secret,
        }


# --------------------------------------------------------------------------- sessions


@dataclass
class ToolResult:
    """What the brain gets back for one tool call."""

    text: str
    is_error: bool
    content: list[dict[str, Any]]
    denied: bool = False


@dataclass
class SessionRecord:
    data: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    events_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscribers: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    turn: asyncio.Task[None] | None = None
    inbox: list[dict[str, Any]] = field(default_factory=list)
    # Tool calls the brain waits on: tool_use id -> future of its result.
    waiting: dict[str, asyncio.Future[ToolResult]] = field(default_factory=dict)
    # ask-gated calls waiting for a user.tool_confirmation.
    awaiting_confirmation: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    live_work_id: str | None = None
    running_since: float | None = None
    created_mono: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.data["id"]


def _page(items: list[Any], limit: int, page: str | None) -> tuple[list[Any], str | None]:
    """Cursor pagination over a list; the cursor is an opaque offset."""
    start = 0
    if page:
        try:
            start = int(base64.urlsafe_b64decode(page.encode()).decode().removeprefix("o:"))
        except (ValueError, UnicodeDecodeError):
            raise bad_request("page is not a cursor this API returned; pass next_page unchanged") from None
    chunk = items[start : start + limit]
    end = start + len(chunk)
    nxt = base64.urlsafe_b64encode(f"o:{end}".encode()).decode() if end < len(items) else None
    return chunk, nxt


def clamp_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"limit must be an integer between 1 and {maximum}") from None
    if not 1 <= value <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}")
    return value


# --------------------------------------------------------------------------- the service


class Service:
    """All emulated state and behaviour. Single-threaded: runs on one asyncio loop."""

    def __init__(
        self,
        *,
        brain: Brain,
        webhooks: WebhookSender | None = None,
        lease_ttl: float = 120.0,
        api_key: str | None = None,
        model_delay: float = 0.0,
    ) -> None:
        self.brain = brain
        self.webhooks = webhooks
        self.lease_ttl = lease_ttl
        self.model_delay = model_delay
        self.tokens: dict[str, Credential] = {}
        self.environments: dict[str, dict[str, Any]] = {}
        self.work: dict[str, WorkItem] = {}
        # Per environment, its queued items in queue order, so a poll never scans finished work.
        self.queued: dict[str, dict[str, WorkItem]] = {}
        self.queue_changed: dict[str, asyncio.Condition] = {}
        self.workers_seen: dict[str, dict[str, float]] = {}
        self.agents: dict[str, list[dict[str, Any]]] = {}  # id -> versions, oldest first
        self.sessions: dict[str, SessionRecord] = {}
        self.skills: dict[str, dict[str, Any]] = {}
        self.skill_versions: dict[str, list[dict[str, Any]]] = {}  # skill id -> versions
        self.skill_files: dict[str, bytes] = {}  # version id -> zip archive
        self.api_key = api_key or "sk-ant-api-emu-" + secrets.token_urlsafe(24)
        self.tokens[self.api_key] = Credential("api_key")
        self._reaper: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_leases())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for rec in self.sessions.values():
            if rec.turn and not rec.turn.done():
                rec.turn.cancel()
            for q in rec.subscribers:
                q.put_nowait(None)

    # ----------------------------------------------------------------- credentials

    def credential(self, token: str | None) -> Credential:
        cred = self.tokens.get(token or "")
        if cred is None:
            raise ApiError(401, "authentication_error", "invalid bearer token: pass a valid API key, environment key or sessions token in Authorization: Bearer")
        return cred

    def mint_environment_key(self, environment_id: str) -> str:
        self.environment(environment_id)
        key = "sk-ant-envkey-emu-" + secrets.token_urlsafe(24)
        self.tokens[key] = Credential("environment_key", environment_id=environment_id)
        return key

    def _mint_sessions_token(self, item: WorkItem) -> str:
        """A new sessions token per delivery. Earlier ones stay valid until the item
        stops, so a holder that lost its lease hears 412 from its next heartbeat
        (the lease protocol's answer), not 401; `stale_delivery` keeps such a
        token from touching the newer holder's lease."""
        item.deliveries += 1
        token = "sk-ant-sesstok-emu-" + secrets.token_urlsafe(24)
        self.tokens[token] = Credential(
            "sessions_token", environment_id=item.environment_id, work_id=item.id, session_id=item.session_id,
            delivery=item.deliveries,
        )
        item.tokens.append(token)
        return token

    def _revoke_sessions_tokens(self, item: WorkItem) -> None:
        for token in item.tokens:
            self.tokens.pop(token, None)
        item.tokens.clear()

    @staticmethod
    def require(cred: Credential, *kinds: str, what: str) -> None:
        if cred.kind not in kinds:
            readable = " or ".join(k.replace("_", " ") for k in kinds)
            raise ApiError(403, "permission_error", f"{what} requires an {readable}; this credential is a {cred.kind.replace('_', ' ')}")

    def require_environment_access(self, cred: Credential, environment_id: str, *, what: str) -> None:
        if cred.kind == "api_key":
            return
        if cred.environment_id != environment_id:
            raise ApiError(403, "permission_error", f"{what}: this credential belongs to another environment")

    def require_session_access(self, cred: Credential, session_id: str) -> SessionRecord:
        rec = self._session(session_id)
        if cred.kind == "environment_key" and cred.environment_id != rec.data["environment_id"]:
            raise ApiError(403, "permission_error", "this environment key belongs to another environment")
        if cred.kind == "sessions_token" and cred.session_id != session_id:
            raise ApiError(403, "permission_error", "this sessions token is scoped to another session")
        return rec

    # ----------------------------------------------------------------- webhooks

    def _notify(self, event_type: str, object_id: str, **extra: Any) -> None:
        if self.webhooks is None:
            return
        data = {"type": event_type, "id": object_id, "organization_id": ORGANIZATION_ID, **extra}
        if not event_type.startswith(("user_profile.", "external_key.")):
            data["workspace_id"] = WORKSPACE_ID
        self.webhooks.enqueue(data)

    # ----------------------------------------------------------------- environments

    def environment(self, environment_id: str) -> dict[str, Any]:
        env = self.environments.get(environment_id)
        if env is None:
            raise not_found("environment", environment_id, "environment_not_found")
        return env

    def create_environment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("name is required: a non-empty string")
        config = body.get("config") or {"type": "self_hosted"}
        if not isinstance(config, dict) or config.get("type") not in ("self_hosted", "cloud"):
            raise bad_request("config.type must be 'self_hosted' or 'cloud'")
        if config["type"] == "cloud":
            config = {"type": "cloud", "networking": config.get("networking") or {"type": "unrestricted"}, "packages": config.get("packages") or {}}
        now = now_iso()
        env = {
            "id": new_id("env"),
            "type": "environment",
            "name": name,
            "description": body.get("description"),
            "metadata": self._metadata(body.get("metadata") or {}, {}),
            "config": config,
            "scope": body.get("scope"),
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        self.environments[env["id"]] = env
        self.queue_changed[env["id"]] = asyncio.Condition()
        self.queued[env["id"]] = {}
        self.workers_seen[env["id"]] = {}
        self._notify("environment.created", env["id"])
        return env

    def update_environment(self, environment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        env = self.environment(environment_id)
        if env["archived_at"]:
            raise bad_request("environment is archived; create a new one", error_code="environment_archived")
        if "config" in body and body["config"] is not None:
            if not isinstance(body["config"], dict):
                raise bad_request("config must be an object with a type")
            if body["config"].get("type") != env["config"]["type"]:
                raise bad_request("config.type cannot change; create a new environment", error_code="invalid_config_type_change")
            env["config"] = body["config"]
        for key in ("name", "scope"):
            if body.get(key) is not None:
                env[key] = body[key]
        if "description" in body:
            env["description"] = body["description"]
        if "metadata" in body and body["metadata"] is not None:
            env["metadata"] = self._metadata(body["metadata"], env["metadata"])
        env["updated_at"] = now_iso()
        self._notify("environment.updated", environment_id)
        return env

    def archive_environment(self, environment_id: str) -> dict[str, Any]:
        env = self.environment(environment_id)
        if not env["archived_at"]:
            env["archived_at"] = env["updated_at"] = now_iso()
            self._notify("environment.archived", environment_id)
        return env

    def delete_environment(self, environment_id: str) -> dict[str, Any]:
        self.environment(environment_id)
        for item in self.work.values():
            if item.environment_id == environment_id and item.live:
                self._finish(item)
        del self.environments[environment_id]
        self.queued.pop(environment_id, None)
        self._notify("environment.deleted", environment_id)
        return {"id": environment_id, "type": "environment_deleted"}

    def list_environments(self, *, include_archived: bool, limit: int, page: str | None) -> dict[str, Any]:
        items = [e for e in self.environments.values() if include_archived or not e["archived_at"]]
        data, nxt = _page(items, limit, page)
        return {"data": data, "next_page": nxt}

    @staticmethod
    def _metadata(patch: dict[str, Any], current: dict[str, str]) -> dict[str, str]:
        if not isinstance(patch, dict):
            raise bad_request("metadata must be an object of string values", error_code="invalid_metadata")
        merged = dict(current)
        for key, value in patch.items():
            if value is None or value == "":
                merged.pop(key, None)
            elif not isinstance(value, str) or len(key) > 64 or len(value) > 512:
                raise bad_request("metadata values must be strings (keys ≤ 64, values ≤ 512 characters)", error_code="invalid_metadata")
            else:
                merged[key] = value
        if len(merged) > 16:
            raise bad_request("metadata holds at most 16 pairs", error_code="invalid_metadata")
        return merged

    # ----------------------------------------------------------------- the work queue

    def _enqueue(self, environment_id: str, data: dict[str, Any]) -> WorkItem:
        item = WorkItem(id=new_id("work"), environment_id=environment_id, data=data)
        self.work[item.id] = item
        self.queued[environment_id][item.id] = item
        self._wake(environment_id)
        return item

    def enqueue_healthcheck(self, environment_id: str) -> WorkItem:
        self.environment(environment_id)
        return self._enqueue(environment_id, {"type": "healthcheck", "id": new_id("hc")})

    def _wake(self, environment_id: str) -> None:
        cond = self.queue_changed.get(environment_id)
        if cond is None:
            return

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def work_item(self, environment_id: str, work_id: str) -> WorkItem:
        self.environment(environment_id)
        item = self.work.get(work_id)
        if item is None or item.environment_id != environment_id:
            raise not_found("work", work_id)
        return item

    def _claimable(self, environment_id: str, reclaim_ms: int) -> WorkItem | None:
        now = time.monotonic()
        for item in self.queued[environment_id].values():
            if item.delivered_mono is None or (now - item.delivered_mono) * 1000 >= reclaim_ms:
                return item
        return None

    async def poll(
        self, environment_id: str, *, block_ms: int | None, reclaim_ms: int | None, worker_id: str | None
    ) -> dict[str, Any] | None:
        env = self.environment(environment_id)
        if env["config"]["type"] != "self_hosted":
            raise bad_request("only self-hosted environments have a work queue")
        if block_ms is not None and not 1 <= block_ms <= MAX_BLOCK_MS:
            raise bad_request(f"block_ms must be between 1 and {MAX_BLOCK_MS}; omit it for a non-blocking poll")
        reclaim = DEFAULT_RECLAIM_MS if reclaim_ms is None else reclaim_ms
        if reclaim < 0:
            raise bad_request("reclaim_older_than_ms must be ≥ 0")
        if worker_id:
            self.workers_seen[environment_id][worker_id] = time.monotonic()
        item = self._claimable(environment_id, reclaim)
        if item is None and block_ms:
            cond = self.queue_changed[environment_id]
            deadline = time.monotonic() + block_ms / 1000
            async with cond:
                while item is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(cond.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                    item = self._claimable(environment_id, reclaim)
        if item is None:
            return None
        item.delivered_mono = time.monotonic()
        token = self._mint_sessions_token(item)
        secret = base64.urlsafe_b64encode(json.dumps({"sessions_token": token}).encode()).decode().rstrip("=")
        return item.to_json(secret=secret)

    def ack(self, environment_id: str, work_id: str) -> dict[str, Any]:
        item = self.work_item(environment_id, work_id)
        if item.state != "queued" or item.delivered_mono is None:
            raise conflict(f"work {work_id} is {item.state} and was not just polled; only a polled, queued item can be acknowledged")
        item.state = "starting"
        del self.queued[environment_id][item.id]
        item.acknowledged_at = now_iso()
        item.delivered_mono = None
        # An acked item that never heartbeats must not hold its session forever.
        item.lease_deadline = time.monotonic() + self.lease_ttl
        return item.to_json()

    @staticmethod
    def stale_delivery(item: WorkItem, cred: Credential) -> bool:
        """True for a sessions token from an earlier delivery: its holder lost the lease."""
        return cred.kind == "sessions_token" and cred.delivery != item.deliveries

    def heartbeat(
        self, environment_id: str, work_id: str, *, expected: str | None, desired_ttl: int | None, cred: Credential
    ) -> dict[str, Any]:
        item = self.work_item(environment_id, work_id)
        ttl = self.lease_ttl if desired_ttl is None else max(1, min(desired_ttl, MAX_LEASE_TTL))
        if item.state in ("stopping", "stopped"):
            # The server does not compare the value then: it tells the holder to stop.
            return {
                "type": "work_heartbeat",
                "last_heartbeat": item.last_heartbeat or "",
                "lease_extended": False,
                "state": item.state,
                "ttl_seconds": int(ttl),
            }
        actual = item.last_heartbeat or NO_HEARTBEAT
        if item.state == "queued" or expected != actual or self.stale_delivery(item, cred):
            raise ApiError(
                412,
                "invalid_request_error",
                f"Heartbeat precondition failed: expected {expected}, actual was {item.last_heartbeat or 'NULL'}",
                error_code="heartbeat_precondition_failed",
                details={
                    "error_visibility": "user_facing",
                    "current_state": {
                        "state": item.state,
                        "last_heartbeat": item.last_heartbeat,
                        "lease_updated_at": item.latest_heartbeat_at,
                        "lease_extended": False,
                        "ttl_seconds": int(self.lease_ttl),
                    },
                },
            )
        now = datetime.now(timezone.utc)
        if item.last_heartbeat is not None:  # every lease value must differ from the last
            previous = datetime.fromisoformat(item.last_heartbeat.replace("Z", "+00:00"))
            now = max(now, previous + timedelta(microseconds=1))
        stamp = now.isoformat(timespec="microseconds").replace("+00:00", "Z")
        item.last_heartbeat = item.latest_heartbeat_at = stamp
        if item.state == "starting":
            item.state = "active"
            item.started_at = stamp
        item.lease_deadline = time.monotonic() + ttl
        return {
            "type": "work_heartbeat",
            "last_heartbeat": stamp,
            "lease_extended": True,
            "state": item.state,
            "ttl_seconds": int(ttl),
        }

    def stop(self, environment_id: str, work_id: str, *, force: bool, cred: Credential) -> dict[str, Any]:
        item = self.work_item(environment_id, work_id)
        if item.state == "stopped":
            raise conflict(f"work {work_id} is already stopped")
        if self.stale_delivery(item, cred):
            raise conflict(f"work {work_id} was handed out again after this token's lease ended; it is not yours to stop")
        item.stop_requested_at = item.stop_requested_at or now_iso()
        # Nobody holds a queued item, so even a graceful stop ends it at once.
        if force or item.state == "queued":
            self._finish(item)
        else:
            item.state = "stopping"
        return item.to_json()

    def _finish(self, item: WorkItem) -> None:
        self.queued.get(item.environment_id, {}).pop(item.id, None)
        item.state = "stopped"
        item.stopped_at = now_iso()
        item.lease_deadline = None
        item.delivered_mono = None
        self._revoke_sessions_tokens(item)
        rec = self.sessions.get(item.session_id or "")
        if rec is not None and rec.live_work_id == item.id:
            rec.live_work_id = None

    async def _reap_leases(self) -> None:
        """Re-queue items whose lease expired; end graceful stops nobody confirmed."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.lease_ttl / 8)))
            now = time.monotonic()
            for item in list(self.work.values()):
                if item.lease_deadline is None or item.lease_deadline > now:
                    continue
                if item.state == "stopping":
                    self._finish(item)
                elif item.state in ("starting", "active"):
                    self.expire_lease(item)

    def expire_lease(self, item: WorkItem) -> None:
        """Lease lost: the item goes back to the queue; its old holder gets 412."""
        item.state = "queued"
        item.last_heartbeat = item.latest_heartbeat_at = None
        item.acknowledged_at = item.started_at = None
        item.lease_deadline = None
        item.delivered_mono = None
        item.queued_mono = time.monotonic()
        item.queued_at = now_iso()
        self.queued[item.environment_id][item.id] = item
        self._wake(item.environment_id)

    def list_work(self, environment_id: str, *, limit: int, page: str | None) -> dict[str, Any]:
        self.environment(environment_id)
        items = [w.to_json() for w in self.work.values() if w.environment_id == environment_id]
        data, nxt = _page(items, limit, page)
        return {"data": data, "next_page": nxt}

    def update_work(self, environment_id: str, work_id: str, body: dict[str, Any]) -> dict[str, Any]:
        item = self.work_item(environment_id, work_id)
        item.metadata = self._metadata(body.get("metadata") or {}, item.metadata)
        return item.to_json()

    def stats(self, environment_id: str) -> dict[str, Any]:
        self.environment(environment_id)
        queued = list(self.queued[environment_id].values())
        seen = self.workers_seen[environment_id]
        cutoff = time.monotonic() - 30
        oldest = min(queued, key=lambda w: w.queued_mono, default=None)
        return {
            "type": "work_queue_stats",
            "depth": len(queued),
            "pending": sum(1 for w in queued if w.delivered_mono is not None),
            "oldest_queued_at": oldest.queued_at if oldest else None,
            "workers_polling": sum(1 for t in seen.values() if t >= cutoff),
        }

    # ----------------------------------------------------------------- agents

    def _normalise_tools(self, tools: Any) -> list[dict[str, Any]]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise bad_request("tools must be a list of tool definitions")
        out: list[dict[str, Any]] = []
        names: set[str] = set()
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == TOOLSET_TYPE:
                default_config = tool.get("default_config") or {}
                configs_in = tool.get("configs") or []
                if not isinstance(default_config, dict) or not isinstance(configs_in, list) or not all(isinstance(c, dict) for c in configs_in):
                    raise bad_request(f"{TOOLSET_TYPE}: configs must be a list of objects and default_config an object")
                default = {"enabled": True, "permission_policy": {"type": "always_allow"}, **default_config}
                given = {c.get("name"): c for c in configs_in}
                unknown = set(given) - set(TOOLSET_NAMES)
                if unknown:
                    raise bad_request(f"unknown tool names in {TOOLSET_TYPE} configs: {sorted(unknown)}; known: {list(TOOLSET_NAMES)}")
                configs = []
                for name in TOOLSET_NAMES:
                    cfg = given.get(name, {})
                    configs.append({
                        "name": name,
                        "type": name,
                        "enabled": cfg.get("enabled", default["enabled"]),
                        "permission_policy": cfg.get("permission_policy") or default["permission_policy"],
                    })
                out.append({"type": TOOLSET_TYPE, "configs": configs, "default_config": default})
            elif kind == "custom":
                name = tool.get("name")
                if not isinstance(name, str) or not CUSTOM_TOOL_NAME.match(name):
                    raise bad_request("custom tool name must be 1–128 characters of letters, digits, '_' or '-'")
                if name in names:
                    raise bad_request(f"duplicate tool name {name!r}")
                schema = tool.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise bad_request(f"custom tool {name!r}: input_schema must be a JSON schema with type 'object'")
                names.add(name)
                out.append({"type": "custom", "name": name, "description": tool.get("description") or "", "input_schema": schema})
            elif kind == "mcp_toolset":
                out.append({"type": "mcp_toolset", "mcp_server_name": tool.get("mcp_server_name"), "configs": tool.get("configs") or [], "default_config": tool.get("default_config") or {"enabled": True, "permission_policy": {"type": "always_ask"}}})
            else:
                raise bad_request(f"unsupported tool type {kind!r}: use {TOOLSET_TYPE!r}, 'custom' or 'mcp_toolset'")
        if len(out) > 256:
            raise bad_request("an agent has at most 256 tools")
        return out

    @staticmethod
    def _model(model: Any) -> dict[str, Any]:
        if isinstance(model, str) and model:
            return {"id": model}
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            return model
        raise bad_request("model is required: a model id string or {\"id\": ...}")

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("name is required: a non-empty string")
        now = now_iso()
        agent = {
            "id": new_id("agent"),
            "type": "agent",
            "version": 1,
            "name": name,
            "description": body.get("description"),
            "system": body.get("system"),
            "model": self._model(body.get("model")),
            "tools": self._normalise_tools(body.get("tools")),
            "skills": [self._skill_ref(s) for s in body.get("skills") or []],
            "mcp_servers": body.get("mcp_servers") or [],
            "metadata": self._metadata(body.get("metadata") or {}, {}),
            "execution_identity": body.get("execution_identity") or {"type": "service_account"},
            "multiagent": body.get("multiagent"),
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        self.agents[agent["id"]] = [agent]
        self._notify("agent.created", agent["id"])
        return agent

    def _skill_ref(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, dict) or not isinstance(ref.get("skill_id"), str):
            raise bad_request("skills entries must be {\"type\": \"custom\"|\"anthropic\", \"skill_id\": ..., \"version\"?: ...}")
        return {"type": ref.get("type", "custom"), "skill_id": ref["skill_id"], "version": str(ref.get("version") or "latest")}

    def agent(self, agent_id: str, version: int | None = None) -> dict[str, Any]:
        versions = self.agents.get(agent_id)
        if not versions:
            raise not_found("agent", agent_id)
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise not_found("agent version", f"{agent_id}@{version}")
        return versions[version - 1]

    def update_agent(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.agent(agent_id)
        if current["archived_at"]:
            raise bad_request("agent is archived; create a new agent")
        if body.get("version") is not None and body["version"] != current["version"]:
            raise conflict(f"agent {agent_id} is at version {current['version']}, not {body['version']}; re-read it and retry")
        new = dict(current)
        for key in ("name", "description", "system", "mcp_servers", "execution_identity", "multiagent"):
            if key in body:
                new[key] = body[key]
        if "model" in body:
            new["model"] = self._model(body["model"])
        if "tools" in body:
            new["tools"] = self._normalise_tools(body["tools"])
        if "skills" in body:
            new["skills"] = [self._skill_ref(s) for s in body["skills"] or []]
        if "metadata" in body:
            new["metadata"] = self._metadata(body["metadata"] or {}, current["metadata"])
        new["version"] = current["version"] + 1
        new["updated_at"] = now_iso()
        self.agents[agent_id].append(new)
        self._notify("agent.updated", agent_id)
        return new

    def archive_agent(self, agent_id: str) -> dict[str, Any]:
        current = self.agent(agent_id)
        if not current["archived_at"]:
            current["archived_at"] = current["updated_at"] = now_iso()
            self._notify("agent.archived", agent_id)
        return current

    def list_agents(self, *, include_archived: bool, limit: int, page: str | None) -> dict[str, Any]:
        items = [v[-1] for v in self.agents.values() if include_archived or not v[-1]["archived_at"]]
        data, nxt = _page(items, limit, page)
        return {"data": data, "next_page": nxt}

    def agent_versions(self, agent_id: str, *, limit: int, page: str | None) -> dict[str, Any]:
        self.agent(agent_id)
        data, nxt = _page(list(reversed(self.agents[agent_id])), limit, page)
        return {"data": data, "next_page": nxt}

    # ----------------------------------------------------------------- sessions

    def _session(self, session_id: str) -> SessionRecord:
        rec = self.sessions.get(session_id)
        if rec is None:
            raise not_found("session", session_id)
        return rec

    def _resolve_agent(self, ref: Any) -> dict[str, Any]:
        if isinstance(ref, str):
            agent = self.agent(ref)
        elif isinstance(ref, dict) and isinstance(ref.get("id"), str):
            version = ref.get("version")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise bad_request("agent.version must be an integer")
            agent = dict(self.agent(ref["id"], version))
            if ref.get("type") == "agent_with_overrides":
                for key in ("model", "system", "skills", "mcp_servers", "tools"):
                    if key in ref:
                        agent[key] = ref[key]
                if "model" in ref:
                    agent["model"] = self._model(ref["model"])
                if "tools" in ref:
                    agent["tools"] = self._normalise_tools(ref["tools"])
        else:
            raise bad_request("agent is required: an agent id, or {\"type\": \"agent\", \"id\": ..., \"version\"?: ...}")
        if agent["archived_at"]:
            raise bad_request(f"agent {agent['id']} is archived; sessions need a live agent")
        keys = ("id", "type", "version", "name", "description", "system", "model", "tools", "skills", "mcp_servers", "execution_identity", "multiagent")
        return {k: agent[k] for k in keys}

    async def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        environment_id = body.get("environment_id")
        if not isinstance(environment_id, str):
            raise bad_request("environment_id is required")
        env = self.environment(environment_id)
        if env["archived_at"]:
            raise bad_request("environment is archived; sessions need a live environment", error_code="environment_archived")
        agent = self._resolve_agent(body.get("agent"))
        resources = []
        for res in body.get("resources") or []:
            if not isinstance(res, dict) or res.get("type") not in ("file", "github_repository", "memory_store"):
                raise bad_request("resources entries must be file, github_repository or memory_store resources")
            if res["type"] == "memory_store":
                raise bad_request("memory stores are not emulated; create the session without memory_store resources")
            now = now_iso()
            resources.append({**res, "id": new_id("sesrsc"), "created_at": now, "updated_at": now})
        initial = body.get("initial_events") or []
        if not isinstance(initial, list) or len(initial) > 50:
            raise bad_request("initial_events must be a list of at most 50 user.message / user.define_outcome events")
        for ev in initial:
            if not isinstance(ev, dict) or ev.get("type") not in RUN_STARTING_EVENTS:
                raise bad_request("initial_events accepts only user.message and user.define_outcome events")
            self._validate_user_event(None, ev)
        now = now_iso()
        data = {
            "id": new_id("sesn"),
            "type": "session",
            "status": "idle",
            "environment_id": environment_id,
            "agent": agent,
            "resources": resources,
            "metadata": self._metadata(body.get("metadata") or {}, {}),
            "title": body.get("title"),
            "vault_ids": body.get("vault_ids") or [],
            "outcome_evaluations": [],
            "stats": {"active_seconds": 0.0, "duration_seconds": 0.0},
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0},
            "budget": body.get("budget"),
            "deployment_id": None,
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        rec = SessionRecord(data=data)
        self.sessions[data["id"]] = rec
        self._notify("session.created", data["id"])
        # Sessions in a self-hosted environment are handed to a worker at once
        # (the sandbox is provisioned with the session, before any input).
        if env["config"]["type"] == "self_hosted":
            self._ensure_work(rec)
        if initial:
            await self.send_events(data["id"], initial)
        return self.session_json(rec)

    def session_json(self, rec: SessionRecord) -> dict[str, Any]:
        now = time.monotonic()
        stats = rec.data["stats"]
        stats["duration_seconds"] = round(now - rec.created_mono, 3)
        if rec.running_since is not None:
            live = stats.get("active_seconds", 0.0) + (now - rec.running_since)
            return {**rec.data, "stats": {**stats, "active_seconds": round(live, 3)}}
        return rec.data

    def update_session(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._session(session_id)
        if rec.data["status"] == "terminated":
            raise bad_request("session is terminated; create a new session")
        if "title" in body:
            rec.data["title"] = body["title"]
        if "metadata" in body:
            rec.data["metadata"] = self._metadata(body["metadata"] or {}, rec.data["metadata"])
        if "agent" in body:
            rec.data["agent"] = self._resolve_agent(body["agent"])
        for key in ("budget", "vault_ids"):
            if key in body:
                rec.data[key] = body[key]
        rec.data["updated_at"] = now_iso()
        self.emit(rec, {"type": "session.updated", **{k: body[k] for k in ("title", "metadata") if k in body}})
        self._notify("session.updated", session_id)
        return self.session_json(rec)

    def list_sessions(self, query: dict[str, Any]) -> dict[str, Any]:
        items = list(self.sessions.values())
        if not query.get("include_archived"):
            items = [r for r in items if not r.data["archived_at"]]
        if query.get("agent_id"):
            items = [r for r in items if r.data["agent"]["id"] == query["agent_id"]]
        if query.get("agent_version"):
            items = [r for r in items if str(r.data["agent"]["version"]) == str(query["agent_version"])]
        if query.get("statuses"):
            items = [r for r in items if r.data["status"] in query["statuses"]]
        for op, value in (query.get("created_at") or {}).items():
            items = [r for r in items if _compare(r.data["created_at"], op, value)]
        if query.get("order", "desc") == "desc":
            items.reverse()
        data, nxt = _page([self.session_json(r) for r in items], query["limit"], query.get("page"))
        return {"data": data, "next_page": nxt, "prev_page": None}

    def archive_session(self, session_id: str) -> dict[str, Any]:
        rec = self._session(session_id)
        if not rec.data["archived_at"]:
            rec.data["archived_at"] = now_iso()
            self._terminate(rec)
            self._notify("session.archived", session_id)
        return self.session_json(rec)

    def delete_session(self, session_id: str) -> dict[str, Any]:
        rec = self._session(session_id)
        if rec.data["status"] != "terminated":
            self._terminate(rec)
        self.emit(rec, {"type": "session.deleted"})
        self._close_streams(rec)
        del self.sessions[session_id]
        self._notify("session.deleted", session_id)
        return {"id": session_id, "type": "session_deleted"}

    def _terminate(self, rec: SessionRecord) -> None:
        if rec.turn and not rec.turn.done():
            rec.turn.cancel()
        for fut in rec.waiting.values():
            if not fut.done():
                fut.cancel()
        self._set_status(rec, "terminated")
        self.emit(rec, {"type": "session.status_terminated"})
        self._notify("session.status_terminated", rec.id)
        self._close_streams(rec)

    def _close_streams(self, rec: SessionRecord) -> None:
        for q in list(rec.subscribers):
            q.put_nowait(None)

    def _set_status(self, rec: SessionRecord, status: str) -> None:
        old = rec.data["status"]
        if old == status:
            return
        now = time.monotonic()
        if old == "running" and rec.running_since is not None:
            rec.data["stats"]["active_seconds"] = round(rec.data["stats"]["active_seconds"] + now - rec.running_since, 3)
            rec.running_since = None
        if status == "running":
            rec.running_since = now
        rec.data["status"] = status
        rec.data["updated_at"] = now_iso()

    def _ensure_work(self, rec: SessionRecord) -> None:
        """At most one live work item per session: enqueue only when none is live."""
        env = self.environments.get(rec.data["environment_id"])
        if env is None or env["config"]["type"] != "self_hosted":
            return
        if rec.live_work_id and self.work[rec.live_work_id].live:
            return
        item = self._enqueue(rec.data["environment_id"], {"type": "session", "id": rec.id})
        rec.live_work_id = item.id

    # ----------------------------------------------------------------- events

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
            items = [e for e in items if _compare(e["processed_at"], op, value)]
        if query.get("order", "asc") == "desc":
            items = list(reversed(items))
        data, nxt = _page(items, query["limit"], query.get("page"))
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

    # ----------------------------------------------------------------- turns (driving the brain)

    def _start_turn(self, rec: SessionRecord) -> None:
        from .brains import Turn  # brains.py imports this module; import at use to avoid a cycle

        inputs, rec.inbox = rec.inbox, []
        turn = Turn(self, rec, inputs)
        # The run starts now, not when the task first runs: an interrupt in the
        # same request may cancel the task before its body ever executes.
        self.begin_run(rec)
        rec.turn = asyncio.get_running_loop().create_task(self._run_turn(rec, turn))
        rec.turn.add_done_callback(lambda task: self._turn_cancelled_early(rec, task))

    def _turn_cancelled_early(self, rec: SessionRecord, task: asyncio.Task[None]) -> None:
        """A turn cancelled before its body ran never reached its own idle: end it here."""
        if task.cancelled() and rec.data["status"] == "running":
            self.go_idle(rec, {"type": "end_turn"})
            if rec.inbox:
                self._start_turn(rec)

    def begin_run(self, rec: SessionRecord) -> None:
        """The session goes running: a run starts, and a worker is needed."""
        if rec.data["status"] == "running":
            return
        self._set_status(rec, "running")
        self.emit(rec, {"type": "session.status_running"})
        self._ensure_work(rec)
        self._notify("session.status_run_started", rec.id)

    def go_idle(self, rec: SessionRecord, stop_reason: dict[str, Any]) -> None:
        self._set_status(rec, "idle")
        self.emit(rec, {"type": "session.status_idle", "stop_reason": stop_reason})
        self._notify("session.status_idled", rec.id)
        if stop_reason["type"] == "requires_action":
            self._notify("session.requires_action", rec.id)

    async def _run_turn(self, rec: SessionRecord, turn: Any) -> None:
        stop_reason: dict[str, Any] = {"type": "end_turn"}
        try:
            await self.brain.run_turn(turn)
            stop_reason = {"type": turn.stop_reason}
        except asyncio.CancelledError:
            # An interrupt (or termination) ends the turn where it stands.
            if rec.data["status"] == "terminated":
                raise
        except Exception as exc:  # a brain bug must not wedge the session
            self.emit(rec, {"type": "session.error", "error": {"type": "unknown_error", "message": f"emulator brain failed: {exc!r}", "retry_status": {"type": "terminal"}}})
            stop_reason = {"type": "retries_exhausted"}
        finally:
            for ref, fut in list(rec.waiting.items()):
                if not fut.done():
                    fut.cancel()
            rec.waiting.clear()
            rec.awaiting_confirmation.clear()
        if rec.data["status"] == "terminated":
            return
        self.go_idle(rec, stop_reason)
        if rec.inbox:
            self._start_turn(rec)

    # ----------------------------------------------------------------- skills

    def create_skill(self, files: list[tuple[str, bytes]], display_name: str | None) -> dict[str, Any]:
        skill_id = new_id("skill")
        now = now_iso()
        skill = {"id": skill_id, "type": "skill", "display_name": display_name or "", "source": "custom", "latest_version_id": "", "created_at": now, "updated_at": now}
        self.skills[skill_id] = skill
        self.skill_versions[skill_id] = []
        version = self.create_skill_version(skill_id, files)
        if not skill["display_name"]:
            skill["display_name"] = version["name"]
        return skill

    def create_skill_version(self, skill_id: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        skill = self.skill(skill_id)
        if not files:
            raise bad_request("files is required: upload a directory with a SKILL.md at its root")
        tops = {name.replace("\\", "/").split("/")[0] for name, _ in files}
        skill_md = next((data for name, data in files if name.replace("\\", "/").split("/")[1:] == ["SKILL.md"]), None)
        if len(tops) != 1 or skill_md is None:
            raise bad_request("all files must sit in one top-level directory with a SKILL.md at its root")
        front = _frontmatter(skill_md.decode("utf-8", "replace"))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files:
                zf.writestr(name, data)
        version_id = str(int(time.time() * 1_000_000))
        version = {
            "id": version_id,
            "type": "skill_version",
            "skill_id": skill_id,
            "name": front.get("name") or tops.pop(),
            "description": front.get("description", ""),
            "created_at": now_iso(),
        }
        self.skill_versions[skill_id].append(version)
        self.skill_files[version_id] = buf.getvalue()
        skill["latest_version_id"] = version_id
        skill["updated_at"] = version["created_at"]
        return version

    def skill(self, skill_id: str) -> dict[str, Any]:
        skill = self.skills.get(skill_id)
        if skill is None:
            raise not_found("skill", skill_id)
        return skill

    def skill_version(self, skill_id: str, version: str) -> dict[str, Any]:
        self.skill(skill_id)
        versions = self.skill_versions[skill_id]
        if version == "latest" and versions:
            return versions[-1]
        for v in versions:
            if v["id"] == version:
                return v
        raise not_found("skill version", f"{skill_id}@{version}")

    def skill_content(self, skill_id: str, version: str) -> bytes:
        return self.skill_files[self.skill_version(skill_id, version)["id"]]

    def delete_skill(self, skill_id: str) -> dict[str, Any]:
        self.skill(skill_id)
        for v in self.skill_versions.pop(skill_id):
            self.skill_files.pop(v["id"], None)
        del self.skills[skill_id]
        return {"id": skill_id, "type": "skill_deleted"}


def _frontmatter(text: str) -> dict[str, str]:
    """The `key: value` pairs of a SKILL.md front matter block."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _compare(stamp: str, op: str, value: str) -> bool:
    ops: dict[str, Callable[[str, str], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    if op not in ops:
        raise bad_request(f"unknown comparison {op!r}; use gt, gte, lt or lte")
    return ops[op](_normal_stamp(stamp), _normal_stamp(value))


def _normal_stamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")
