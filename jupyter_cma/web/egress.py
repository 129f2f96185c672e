"""`{base_url}cma/api/egress/…`: egress policies, what the proxy would decide, secrets to inject, and the egress log.

The rules live in `egress/` (policy documents validate themselves, the resolver decides, the secret store keeps
values that no answer here ever shows); these handlers only check the request and shape the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler
from .schemas import DecideBody, EgressLogQuery, SecretPut

if TYPE_CHECKING:
    from ..egress.log import EgressLog
    from ..egress.policy import CorruptPolicy, Policy, PolicyRecord, PolicyResolver, PolicyStore
    from ..egress.secrets import SecretStore


def _policy_problem(exc: Exception) -> tornado.web.HTTPError:
    return tornado.web.HTTPError(400, f"the policy is not valid: {exc}")


def _secret_set(secrets: SecretStore, name: str) -> bool | None:
    """Whether a secret exists; None when the secrets file cannot be read (the status says why)."""
    from ..egress.secrets import SecretStoreError

    try:
        return name in secrets
    except SecretStoreError:
        return None


class EgressHandler(CMAHandler):
    """Base of the egress policy handlers (no routes of its own): the policies, and the secrets their rules inject."""

    def initialize(self, name: str, *, policies: PolicyStore, secrets: SecretStore) -> None:  # type: ignore[override]
        super().initialize(name)
        self._policies = policies
        self._secrets = secrets

    def _warnings(self, policy: Policy) -> list[str]:
        notes = policy.warnings()
        for rule in policy.inject:
            name = rule.injection.secret_name
            if _secret_set(self._secrets, name) is False:
                notes.append(f"secret {name} is not set yet; set it with PUT cma/api/egress/secrets/{name}")
        return notes


class EgressPoliciesHandler(EgressHandler):
    """`GET cma/api/egress/policies` (most specific scope first; corrupt ones show their error) and `POST` to create one."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"data": [r.to_json() for r in self._policies.list()]})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from ..egress.policy import PolicyConflict, PolicyError

        body = self.json_object()  # the document's own rules are egress/policy/document.py's
        try:
            record = self._policies.create(body)
        except PolicyError as exc:
            raise _policy_problem(exc) from None
        except PolicyConflict as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        self.log.info("jupyter-cma: egress policy %s (%s) created", record.id, record.policy.name)
        self.set_status(201)
        self.finish({**record.to_json(), "warnings": self._warnings(record.policy)})


class EgressPolicyValidateHandler(EgressHandler):
    """`POST cma/api/egress/policies/validate`: check a document without storing it."""

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from ..egress.policy import PolicyError

        body = self.json_object()
        try:
            policy = self._policies.validate(body)
        except PolicyError as exc:
            self.finish({"valid": False, "errors": exc.problems, "warnings": [], "policy": None})
            return
        self.finish({"valid": True, "policy": policy.to_document(), "warnings": self._warnings(policy), "errors": []})


class EgressPolicyHandler(EgressHandler):
    """`GET`, `PUT` (replace the whole document) and `DELETE cma/api/egress/policies/{id}`."""

    def _record(self, policy_id: str) -> PolicyRecord | CorruptPolicy:
        record = self._policies.get(policy_id)
        if record is None:
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}; list them with GET cma/api/egress/policies")
        return record

    @tornado.web.authenticated
    @authorized
    async def get(self, policy_id: str) -> None:
        self.finish(self._record(policy_id).to_json())

    @tornado.web.authenticated
    @authorized
    async def put(self, policy_id: str) -> None:
        from ..egress.policy import PolicyConflict, PolicyError

        body = self.json_object()
        if body.get("id", policy_id) != policy_id:
            raise tornado.web.HTTPError(400, f"the body's id {str(body.get('id'))[:140]!r} is not {policy_id}; drop it or send it to its own URL")
        self._record(policy_id)
        try:
            record = self._policies.update(policy_id, body)
        except PolicyError as exc:
            raise _policy_problem(exc) from None
        except PolicyConflict as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        if record is None:
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}")
        self.log.info("jupyter-cma: egress policy %s (%s) updated", record.id, record.policy.name)
        self.finish({**record.to_json(), "warnings": self._warnings(record.policy)})

    @tornado.web.authenticated
    @authorized
    async def delete(self, policy_id: str) -> None:
        if not self._policies.delete(policy_id):
            raise tornado.web.HTTPError(404, f"no egress policy {policy_id}; list them with GET cma/api/egress/policies")
        self.log.info("jupyter-cma: egress policy %s deleted", policy_id)
        self.finish({"id": policy_id, "deleted": True})


class EgressDecideHandler(CMAHandler):
    """`POST cma/api/egress/decide`: explain what the proxy would do with one request of one session.

    Body: `{"session_id"?, "agent_id"?, "metadata"?: {…}, "method"?: "GET", "url": "https://…", "websocket"?: false}`.
    A CONNECT is `{"method": "CONNECT", "url": "https://host:port"}`.
    """

    def initialize(self, name: str, *, egress: PolicyResolver, secrets: SecretStore) -> None:  # type: ignore[override]
        super().initialize(name)
        self._egress = egress
        self._secrets = secrets

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        from urllib.parse import urlsplit

        from ..egress.policy import DEFAULT_PORTS

        body = self.body(DecideBody)
        method, websocket, url = body.method.upper(), body.websocket, body.url
        if "\\" in url or any(c.isspace() for c in url):
            raise tornado.web.HTTPError(400, "the url contains a backslash or whitespace; such requests are refused, send a plain URL")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket, a host that NFKC normalization changes
            raise tornado.web.HTTPError(400, f"the url cannot be parsed ({exc}); send an absolute URL such as https://pypi.org/simple/") from None
        if parts.scheme.lower() not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise tornado.web.HTTPError(400, "url must be an absolute http, https, ws or wss URL, such as https://pypi.org/simple/")
        if "@" in parts.netloc:
            raise tornado.web.HTTPError(400, "the url has userinfo ('user@host'); such requests are refused, send the URL without it")
        try:
            port = parts.port
        except ValueError:
            raise tornado.web.HTTPError(400, "the url's port must be a number 1-65535") from None
        host = parts.netloc.rsplit(":", 1)[0] if parts.port is not None or parts.netloc.endswith(":") else parts.netloc
        path = None if method == "CONNECT" else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # metadata absent: the stored session's own metadata
        context = self._egress.context_for(body.session_id, agent_id=body.agent_id, metadata=body.metadata)
        effective = self._egress.resolve(context)
        decision = effective.decide(method, parts.scheme, host, port, path, websocket=websocket)
        answer = decision.to_json()
        for injection in answer["injections"]:
            injection["secret_set"] = _secret_set(self._secrets, injection["secret"])
        self.finish({
            "decision": answer,
            "request": {"method": method, "scheme": parts.scheme.lower(), "host": host, "port": port or DEFAULT_PORTS.get(parts.scheme.lower()),
                        "path": path, "websocket": websocket},
            "context": context.to_json(),
            "resolution": effective.describe(),
        })


class _SecretsHandler(CMAHandler):
    """What both secret routes use: the secret store."""

    def initialize(self, name: str, *, secrets: SecretStore) -> None:  # type: ignore[override]
        super().initialize(name)
        self._secrets = secrets


class EgressSecretsHandler(_SecretsHandler):
    """`GET cma/api/egress/secrets`: names, times and fingerprints — never values."""

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        from ..egress.secrets import SecretStoreError

        try:
            secrets = self._secrets.list()
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        self.finish({"data": [s.to_json() for s in secrets]})


class EgressSecretHandler(_SecretsHandler):
    """`PUT cma/api/egress/secrets/{name}` `{"value"}` (the answer never echoes it) and `DELETE`."""

    def _name(self, name: str) -> str:
        from ..egress.secrets import SecretValueError, check_name

        try:
            return check_name(name)
        except SecretValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None

    @tornado.web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        from ..egress.secrets import SecretStoreError, SecretValueError

        name = self._name(name)
        body = self.body(SecretPut)
        try:
            info, created = self._secrets.set(name, body.value)
        except SecretValueError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        self.log.info("jupyter-cma: egress secret %s %s", name, "created" if created else "replaced")
        self.set_status(201 if created else 200)
        self.finish(info.to_json())

    @tornado.web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        from ..egress.secrets import SecretStoreError

        name = self._name(name)
        try:
            deleted = self._secrets.delete(name)
        except SecretStoreError as exc:
            raise tornado.web.HTTPError(500, str(exc)) from None
        if not deleted:
            raise tornado.web.HTTPError(404, f"no secret {name}; list them with GET cma/api/egress/secrets")
        self.log.info("jupyter-cma: egress secret %s deleted", name)
        self.finish({"name": name, "deleted": True})


class EgressLogHandler(CMAHandler):
    """`GET cma/api/egress/log`: egress records, newest first, filtered; `?format=jsonl` exports them all.

    Filters: session_id, agent_id, host, decision (allowed|denied|injected), since/until (Unix times);
    JSON pages by `before` (the previous page's `next_before`); JSON lines stream every match. `after` (a row's
    id) answers the rows after it, oldest first, with `next_after` to continue: a live view's catch-up.
    """

    def initialize(self, name: str, *, egress_log: EgressLog) -> None:  # type: ignore[override]
        super().initialize(name)
        self._egress_log = egress_log

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(EgressLogQuery)
        filters: dict[str, Any] = {name: getattr(query, name) for name in ("session_id", "agent_id", "decision", "since", "until")
                                   if getattr(query, name) is not None}
        if query.host is not None:
            filters["host"] = query.host.lower()
        if query.format == "jsonl":
            self.set_header("Content-Disposition", 'attachment; filename="egress-log.jsonl"')
            self.set_header("Content-Type", "application/x-ndjson")
            for n, line in enumerate(self._egress_log.export_jsonl(**filters), start=1):
                self.write(line)
                if n % 500 == 0:
                    await self.flush()
            # APIHandler.finish would relabel the body as JSON: finish as the plain handler does.
            tornado.web.RequestHandler.finish(self)
            return
        if query.after is not None:
            rows = self._egress_log.query(limit=query.limit, before=query.before, after=query.after, **filters)
            self.finish({"data": rows, "next_after": rows[-1]["id"] if rows else query.after})
            return
        rows = self._egress_log.query(limit=query.limit, before=query.before, **filters)
        self.finish({"data": rows, "next_before": rows[-1]["id"] if rows else None})
