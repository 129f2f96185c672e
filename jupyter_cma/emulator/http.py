"""The emulator's HTTP surface: routes, credentials, JSON and SSE rendering.

One tornado handler serves every path from a route table, so each route is a
line here and its behaviour lives in `Service` (service.py and the per-resource
modules it is made of). Who may call what:

- control plane (environments, agents, sessions create/list/update/archive,
  skills upload, work retrieve/update): the API key;
- poll, ack, work list: an environment key of that environment;
- heartbeat: that environment's key, or the item's own sessions token;
- stop: as heartbeat, or the API key (an operator stopping a session's work);
- a session's retrieve and events: the API key, a key of the session's
  environment, or a sessions token issued for that session;
- skill metadata and downloads: any valid credential.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

from .credentials import Credential
from .service import Service
from .wire import ApiError, bad_request, clamp_limit

Route = tuple[str, "re.Pattern[str]", str]
ID = r"([A-Za-z0-9_.\-]+)"


def _routes() -> list[Route]:
    table = [
        ("GET", r"/v1/environments", "list_environments"),
        ("POST", r"/v1/environments", "create_environment"),
        ("GET", rf"/v1/environments/{ID}", "get_environment"),
        ("POST", rf"/v1/environments/{ID}", "update_environment"),
        ("DELETE", rf"/v1/environments/{ID}", "delete_environment"),
        ("POST", rf"/v1/environments/{ID}/archive", "archive_environment"),
        ("GET", rf"/v1/environments/{ID}/work/poll", "poll"),
        ("GET", rf"/v1/environments/{ID}/work/stats", "stats"),
        ("GET", rf"/v1/environments/{ID}/work", "list_work"),
        ("GET", rf"/v1/environments/{ID}/work/{ID}", "get_work"),
        ("POST", rf"/v1/environments/{ID}/work/{ID}", "update_work"),
        ("POST", rf"/v1/environments/{ID}/work/{ID}/ack", "ack"),
        ("POST", rf"/v1/environments/{ID}/work/{ID}/heartbeat", "heartbeat"),
        ("POST", rf"/v1/environments/{ID}/work/{ID}/stop", "stop"),
        ("GET", r"/v1/agents", "list_agents"),
        ("POST", r"/v1/agents", "create_agent"),
        ("GET", rf"/v1/agents/{ID}", "get_agent"),
        ("POST", rf"/v1/agents/{ID}", "update_agent"),
        ("POST", rf"/v1/agents/{ID}/archive", "archive_agent"),
        ("GET", rf"/v1/agents/{ID}/versions", "agent_versions"),
        ("GET", r"/v1/sessions", "list_sessions"),
        ("POST", r"/v1/sessions", "create_session"),
        ("GET", rf"/v1/sessions/{ID}", "get_session"),
        ("POST", rf"/v1/sessions/{ID}", "update_session"),
        ("DELETE", rf"/v1/sessions/{ID}", "delete_session"),
        ("POST", rf"/v1/sessions/{ID}/archive", "archive_session"),
        ("GET", rf"/v1/sessions/{ID}/events", "list_events"),
        ("POST", rf"/v1/sessions/{ID}/events", "send_events"),
        ("GET", rf"/v1/sessions/{ID}/events/stream", "stream_events"),
        ("GET", r"/v1/skills", "list_skills"),
        ("POST", r"/v1/skills", "create_skill"),
        ("GET", rf"/v1/skills/{ID}", "get_skill"),
        ("DELETE", rf"/v1/skills/{ID}", "delete_skill"),
        ("POST", rf"/v1/skills/{ID}/versions", "create_skill_version"),
        ("GET", rf"/v1/skills/{ID}/versions/{ID}", "get_skill_version"),
        ("GET", rf"/v1/skills/{ID}/versions/{ID}/content", "skill_content"),
        ("GET", r"/_emulator/info", "admin_info"),
        ("GET", r"/_emulator/requests", "admin_requests"),
        ("GET", r"/_emulator/webhooks", "admin_webhooks"),
        ("POST", rf"/_emulator/environments/{ID}/keys", "admin_mint_key"),
        ("POST", rf"/_emulator/environments/{ID}/healthcheck", "admin_healthcheck"),
        ("POST", rf"/_emulator/work/{ID}/expire", "admin_expire"),
    ]
    return [(m, re.compile(p), name) for m, p, name in table]


ROUTES = _routes()


class ApiHandler(web.RequestHandler):
    """Serves every route of the emulated API."""

    service: Service
    info: dict[str, Any]
    request_log: deque[dict[str, Any]]

    def initialize(self, service: Service, info: dict[str, Any], request_log: deque[dict[str, Any]], ping_interval: float) -> None:
        self.service = service
        self.info = info
        self.request_log = request_log
        self.ping_interval = ping_interval
        self._cred: Credential | None = None
        self._stream_queue: asyncio.Queue[dict[str, Any] | None] | None = None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (405 for PUT, a bug's 500) in the API's error shape too."""
        kind = "api_error" if status_code >= 500 else "invalid_request_error"
        self._json(ApiError(status_code, kind, self._reason or "error").body())

    def compute_etag(self) -> None:  # responses are live state, never cache them
        return None

    def check_xsrf_cookie(self) -> None:  # an API, not a browser form
        return None

    # -------------------------------------------------------------- plumbing

    async def get(self) -> None:
        await self._dispatch("GET")

    async def post(self) -> None:
        await self._dispatch("POST")

    async def delete(self) -> None:
        await self._dispatch("DELETE")

    async def _dispatch(self, method: str) -> None:
        path = self.request.path
        allowed = False
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if route_method != method:
                continue
            try:
                result = await getattr(self, name)(*match.groups())
            except ApiError as err:
                self._error(err)
                return
            if result is not _STREAMED:
                self._json(result)
            return
        if allowed:
            self._error(ApiError(405, "invalid_request_error", f"{method} is not allowed on {path}"))
        else:
            self._error(ApiError(404, "not_found_error", f"no route for {method} {path}"))

    def on_finish(self) -> None:
        helper = self.request.headers.get("x-stainless-helper")
        self.request_log.append({
            "method": self.request.method,
            "path": self.request.path,
            "query": self.request.query,
            "status": self.get_status(),
            "credential": self._cred.kind if self._cred else None,
            "helper": helper,
            "body": self._logged_body(),
        })

    def _logged_body(self) -> Any:
        if self.request.method != "POST" or not self.request.body or not self.request.path.endswith(("/stop", "/events")):
            return None
        try:
            return json.loads(self.request.body)
        except ValueError:
            return None

    def _json(self, value: Any) -> None:
        self.set_header("content-type", "application/json")
        self.set_header("request-id", "req_emulator")
        self.finish(json.dumps(value))

    def _error(self, err: ApiError) -> None:
        self.set_status(err.status)
        if err.should_retry is not None:
            self.set_header("x-should-retry", "true" if err.should_retry else "false")
        self._json(err.body())

    def body(self) -> dict[str, Any]:
        raw = self.request.body
        if not raw or not raw.strip():
            return {}  # the SDK's bodiless POSTs still say application/json
        try:
            value = json.loads(raw)
        except ValueError:
            raise bad_request("the request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad_request("the request body must be a JSON object")
        return value

    def cred(self) -> Credential:
        auth = self.request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else self.request.headers.get("x-api-key")
        self._cred = self.service.credential(token)
        return self._cred

    def api_key(self, what: str) -> Credential:
        cred = self.cred()
        self.service.require(cred, "api_key", what=what)
        return cred

    def q(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def q_int(self, name: str) -> int | None:
        raw = self.q(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise bad_request(f"{name} must be an integer") from None

    def q_bool(self, name: str) -> bool:
        return (self.q(name) or "").lower() in ("1", "true", "yes")

    def q_compare(self, name: str) -> dict[str, str]:
        out = {}
        for op in ("gt", "gte", "lt", "lte"):
            value = self.q(f"{name}[{op}]")
            if value:
                out[op] = value
        return out

    # -------------------------------------------------------------- environments

    async def list_environments(self) -> Any:
        self.api_key("listing environments")
        return self.service.list_environments(include_archived=self.q_bool("include_archived"), limit=clamp_limit(self.q("limit"), 20, 100), page=self.q("page"))

    async def create_environment(self) -> Any:
        self.api_key("creating environments")
        return self.service.create_environment(self.body())

    async def get_environment(self, env_id: str) -> Any:
        cred = self.cred()
        self.service.require_environment_access(cred, env_id, what="reading an environment")
        return self.service.environment(env_id)

    async def update_environment(self, env_id: str) -> Any:
        self.api_key("updating environments")
        return self.service.update_environment(env_id, self.body())

    async def delete_environment(self, env_id: str) -> Any:
        self.api_key("deleting environments")
        return self.service.delete_environment(env_id)

    async def archive_environment(self, env_id: str) -> Any:
        self.api_key("archiving environments")
        return self.service.archive_environment(env_id)

    # -------------------------------------------------------------- work

    def _env_key(self, env_id: str, what: str) -> Credential:
        cred = self.cred()
        self.service.require(cred, "environment_key", what=what)
        self.service.require_environment_access(cred, env_id, what=what)
        return cred

    def _item_credential(self, env_id: str, work_id: str, what: str, *, api_key_ok: bool = False) -> Credential:
        cred = self.cred()
        kinds = ("environment_key", "sessions_token", "api_key") if api_key_ok else ("environment_key", "sessions_token")
        self.service.require(cred, *kinds, what=what)
        self.service.require_environment_access(cred, env_id, what=what)
        if cred.kind == "sessions_token" and cred.work_id != work_id:
            raise ApiError(403, "permission_error", f"{what}: this sessions token belongs to another work item")
        return cred

    async def poll(self, env_id: str) -> Any:
        self._env_key(env_id, "polling for work")
        item = await self.service.poll(
            env_id,
            block_ms=self.q_int("block_ms"),
            reclaim_ms=self.q_int("reclaim_older_than_ms"),
            worker_id=self.request.headers.get("anthropic-worker-id"),
        )
        return item  # JSON null when the queue is empty: the poller needs 200 + null

    async def stats(self, env_id: str) -> Any:
        cred = self.cred()
        self.service.require_environment_access(cred, env_id, what="reading queue stats")
        return self.service.stats(env_id)

    async def list_work(self, env_id: str) -> Any:
        self._env_key(env_id, "listing work")
        return self.service.list_work(env_id, limit=clamp_limit(self.q("limit"), 20, 1000), page=self.q("page"))

    async def get_work(self, env_id: str, work_id: str) -> Any:
        self.api_key("retrieving a work item")
        return self.service.work_item(env_id, work_id).to_json()

    async def update_work(self, env_id: str, work_id: str) -> Any:
        self.api_key("updating a work item")
        return self.service.update_work(env_id, work_id, self.body())

    async def ack(self, env_id: str, work_id: str) -> Any:
        self._env_key(env_id, "acknowledging work")
        return self.service.ack(env_id, work_id)

    async def heartbeat(self, env_id: str, work_id: str) -> Any:
        cred = self._item_credential(env_id, work_id, "heartbeating work")
        return self.service.heartbeat(env_id, work_id, expected=self.q("expected_last_heartbeat"), desired_ttl=self.q_int("desired_ttl_seconds"), cred=cred)

    async def stop(self, env_id: str, work_id: str) -> Any:
        cred = self._item_credential(env_id, work_id, "stopping work", api_key_ok=True)
        force = self.body().get("force", False)
        if not isinstance(force, bool):
            raise bad_request("force must be a boolean")
        return self.service.stop(env_id, work_id, force=force, cred=cred)

    # -------------------------------------------------------------- agents

    async def list_agents(self) -> Any:
        self.api_key("listing agents")
        return self.service.list_agents(include_archived=self.q_bool("include_archived"), limit=clamp_limit(self.q("limit"), 20, 100), page=self.q("page"))

    async def create_agent(self) -> Any:
        self.api_key("creating agents")
        return self.service.create_agent(self.body())

    async def get_agent(self, agent_id: str) -> Any:
        self.api_key("reading agents")
        return self.service.agent(agent_id, self.q_int("version"))

    async def update_agent(self, agent_id: str) -> Any:
        self.api_key("updating agents")
        return self.service.update_agent(agent_id, self.body())

    async def archive_agent(self, agent_id: str) -> Any:
        self.api_key("archiving agents")
        return self.service.archive_agent(agent_id)

    async def agent_versions(self, agent_id: str) -> Any:
        self.api_key("listing agent versions")
        return self.service.agent_versions(agent_id, limit=clamp_limit(self.q("limit"), 20, 100), page=self.q("page"))

    # -------------------------------------------------------------- sessions

    async def list_sessions(self) -> Any:
        self.api_key("listing sessions")
        statuses = self.get_query_arguments("statuses[]") or self.get_query_arguments("statuses")
        order = self.q("order") or "desc"
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'")
        return self.service.list_sessions({
            "include_archived": self.q_bool("include_archived"),
            "agent_id": self.q("agent_id"),
            "agent_version": self.q("agent_version"),
            "statuses": statuses,
            "created_at": self.q_compare("created_at"),
            "order": order,
            "limit": clamp_limit(self.q("limit"), 20, 1000),
            "page": self.q("page"),
        })

    async def create_session(self) -> Any:
        self.api_key("creating sessions")
        return await self.service.create_session(self.body())

    async def get_session(self, session_id: str) -> Any:
        rec = self.service.require_session_access(self.cred(), session_id)
        return self.service.session_json(rec)

    async def update_session(self, session_id: str) -> Any:
        self.api_key("updating sessions")
        return self.service.update_session(session_id, self.body())

    async def delete_session(self, session_id: str) -> Any:
        self.api_key("deleting sessions")
        return self.service.delete_session(session_id)

    async def archive_session(self, session_id: str) -> Any:
        self.api_key("archiving sessions")
        return self.service.archive_session(session_id)

    async def list_events(self, session_id: str) -> Any:
        self.service.require_session_access(self.cred(), session_id)
        order = self.q("order") or "asc"
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'")
        return self.service.list_events(session_id, {
            "types": self.get_query_arguments("types[]") or self.get_query_arguments("types"),
            "created_at": self.q_compare("created_at"),
            "order": order,
            "limit": clamp_limit(self.q("limit"), 20, 1000),
            "page": self.q("page"),
        })

    async def send_events(self, session_id: str) -> Any:
        self.service.require_session_access(self.cred(), session_id)
        return await self.service.send_events(session_id, self.body().get("events"))

    async def stream_events(self, session_id: str) -> Any:
        """Live events only (no replay): `event: <type>` + `data: <json>` frames, pings between."""
        self.service.require_session_access(self.cred(), session_id)
        queue = self._stream_queue = self.service.subscribe(session_id)
        self.set_header("content-type", "text/event-stream")
        self.set_header("cache-control", "no-cache")
        try:
            self.write(": connected\n\n")
            await self.flush()
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.ping_interval)
                except asyncio.TimeoutError:
                    self.write('event: ping\ndata: {"type":"ping"}\n\n')
                    await self.flush()
                    continue
                if event is None:
                    break
                self.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            self.service.unsubscribe(session_id, queue)
        if not self._finished:
            self.finish()
        return _STREAMED

    def on_connection_close(self) -> None:
        # Wake a waiting stream at once so it unsubscribes when the client leaves.
        if self._stream_queue is not None:
            self._stream_queue.put_nowait(None)

    # -------------------------------------------------------------- skills

    def _uploaded(self) -> list[tuple[str, bytes]]:
        files = []
        for field_name, items in self.request.files.items():
            if field_name in ("files", "files[]"):
                files.extend((f["filename"], f["body"]) for f in items)
        return files

    async def list_skills(self) -> Any:
        self.api_key("listing skills")
        return {"data": list(self.service.skills.values()), "has_more": False, "next_page": None}

    async def create_skill(self) -> Any:
        self.api_key("creating skills")
        name = self.get_body_argument("display_name", None)
        return self.service.create_skill(self._uploaded(), name)

    async def get_skill(self, skill_id: str) -> Any:
        self.cred()
        return self.service.skill(skill_id)

    async def delete_skill(self, skill_id: str) -> Any:
        self.api_key("deleting skills")
        return self.service.delete_skill(skill_id)

    async def create_skill_version(self, skill_id: str) -> Any:
        self.api_key("creating skill versions")
        return self.service.create_skill_version(skill_id, self._uploaded())

    async def get_skill_version(self, skill_id: str, version: str) -> Any:
        self.cred()
        return self.service.skill_version(skill_id, version)

    async def skill_content(self, skill_id: str, version: str) -> Any:
        self.cred()
        data = self.service.skill_content(skill_id, version)
        self.set_header("content-type", "application/zip")
        self.finish(data)
        return _STREAMED

    # -------------------------------------------------------------- emulator admin

    async def admin_info(self) -> Any:
        self.api_key("emulator admin")
        return self.info

    async def admin_requests(self) -> Any:
        self.api_key("emulator admin")
        return {"data": list(self.request_log)}

    async def admin_webhooks(self) -> Any:
        self.api_key("emulator admin")
        sender = self.service.webhooks
        if sender is None:
            return {"data": []}
        return {"data": [
            {"webhook_id": d.webhook_id, "type": d.event_type, "body": json.loads(d.body), "attempts": d.attempts, "delivered": d.delivered, "gave_up": d.gave_up}
            for d in sender.deliveries
        ]}

    async def admin_mint_key(self, env_id: str) -> Any:
        self.api_key("minting environment keys")
        return {"environment_id": env_id, "environment_key": self.service.mint_environment_key(env_id)}

    async def admin_healthcheck(self, env_id: str) -> Any:
        self.api_key("enqueuing a healthcheck")
        return self.service.enqueue_healthcheck(env_id).to_json()

    async def admin_expire(self, work_id: str) -> Any:
        self.api_key("expiring a lease")
        item = self.service.work.get(work_id)
        if item is None:
            raise ApiError(404, "not_found_error", f"No such work: {work_id}")
        if item.state not in ("starting", "active"):
            raise bad_request(f"work {work_id} is {item.state}; only a held lease can expire")
        self.service.expire_lease(item)
        return item.to_json()


_STREAMED = object()


def make_application(service: Service, info: dict[str, Any], *, ping_interval: float = 15.0, log_requests: bool = False) -> web.Application:
    request_log: deque[dict[str, Any]] = deque(maxlen=10_000)
    settings: dict[str, Any] = {}
    if not log_requests:
        settings["log_function"] = lambda handler: None
    return web.Application(
        [(r"/.*", ApiHandler, {"service": service, "info": info, "request_log": request_log, "ping_interval": ping_interval})],
        **settings,
    )

