"""The work queue: work items, polling, acks, leases and the lease reaper.

Each self-hosted environment has a queue of work items (a session to serve,
or a healthcheck). A worker polls an item (a sessions token comes with each
delivery), acknowledges it, then holds it with heartbeats; a lease that runs
out puts the item back in the queue, and a stop ends it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .wire import ApiError, bad_request, conflict, merge_metadata, new_id, not_found, now_iso, paginate

if TYPE_CHECKING:
    from .credentials import Credential

NO_HEARTBEAT = "NO_HEARTBEAT"
MAX_LEASE_TTL = 3600
MAX_BLOCK_MS = 999
DEFAULT_RECLAIM_MS = 5000


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


class WorkQueue:
    """Work items and their queues, a part of `Service` (see service.py)."""

    lease_ttl: float  # a setting of the Service
    spawn: Callable[[Coroutine[Any, Any, None]], None]  # the Service's owned background jobs

    def __init__(self) -> None:
        super().__init__()
        self.work: dict[str, WorkItem] = {}
        # Per environment, its queued items in queue order, so a poll never scans finished work.
        self.queued: dict[str, dict[str, WorkItem]] = {}
        self.queue_changed: dict[str, asyncio.Condition] = {}
        self.workers_seen: dict[str, dict[str, float]] = {}

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

        self.spawn(notify())

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
        data, nxt = paginate(items, limit, page)
        return {"data": data, "next_page": nxt}

    def update_work(self, environment_id: str, work_id: str, body: dict[str, Any]) -> dict[str, Any]:
        item = self.work_item(environment_id, work_id)
        item.metadata = merge_metadata(body.get("metadata") or {}, item.metadata)
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
