"""Resolution: the policies that apply to a session, merged (`EffectivePolicy`), and `PolicyResolver`, which builds it.

`PolicyResolver.resolve(context)` reads the current policies (cached by the
store's revision) and chains those that apply, most specific first;
`EffectivePolicy.decide` walks the order of a decision (see the package's
docstring): the system allowance, fail closed, every deny list, the deciding
policy's rules, then the middleware.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .decisions import Decision, EgressRequest, NamedMiddleware
from .errors import PolicyError
from .hosts import display_host, normalize_host, parse_port
from .mail import parse_address
from .rules import FORBIDDEN_INJECTION_HEADERS, HEADER_NAME, SECRET_NAME, AllowRule, Injection, PrivateService
from .scopes import SessionContext
from .storage import CorruptPolicy, PolicyRecord, PolicyStore, specificity
from .system_allowance import SYSTEM_API_RULE, WORKER_SCOPE_RULE, SystemAllowance

class EffectivePolicy:
    """The policies that apply to one session, merged: call `decide` per request.

    `chain` is the applicable policies, most specific first; the first decides
    what is allowed, the deny lists of all of them hold.
    """

    def __init__(
        self,
        context: SessionContext,
        *,
        system: SystemAllowance | None,
        chain: Sequence[PolicyRecord] = (),
        middleware: Sequence[NamedMiddleware] = (),
        error: tuple[str, str] | None = None,
    ) -> None:
        self.context = context
        self.system = system
        self.chain = tuple(chain)
        self.middleware = tuple(middleware)
        self.error = error  # (rule, reason): fail closed

    @property
    def deciding(self) -> PolicyRecord | None:
        return self.chain[0] if self.chain else None

    def describe(self) -> dict[str, Any]:
        return {
            "system_allowance": str(self.system) if self.system else None,
            "error": None if self.error is None else {"rule": self.error[0], "reason": self.error[1]},
            "policies": [
                {"id": r.id, "name": r.policy.name, "scope": r.policy.scope.to_document(), "role": "decides" if i == 0 else "deny rules only"}
                for i, r in enumerate(self.chain)
            ],
            "middleware": [m.name for m in self.middleware],
        }

    def decide(self, method: str, scheme: str, host: str, port: int | None, path: str | None, *, websocket: bool = False) -> Decision:
        """Decide one request on its name. Never raises: any failure is a deny (`error:…`)."""
        try:
            request = EgressRequest.parse(self.context, method, scheme, host, port, path, websocket)
        except PolicyError as exc:
            return Decision.deny("invalid:request", f"refused: {exc}", 400)
        except Exception as exc:
            return Decision.deny("error:request", f"the request could not be read ({type(exc).__name__}); refused", 400)
        if self.system is not None and self.system.for_worker(request):
            return Decision.allow(SYSTEM_API_RULE, f"this sandbox's worker calls {self.system} for its own work item")
        if self.error is not None:
            decision = Decision.deny(self.error[0], self.error[1])
        else:
            try:
                decision = self._run_middleware(request, self._by_policy(request))
            except Exception as exc:
                decision = Decision.deny("error:internal", f"the egress policy could not be evaluated ({type(exc).__name__}); refused")
        if (not decision.allowed and not decision.rule.startswith("error:") and request.context.worker is not None
                and self.system is not None and self.system.allows(request)):
            shown = (request.path or "").split("?", 1)[0][:200]
            return Decision.deny(WORKER_SCOPE_RULE, f"{request.method} {shown} on {self.system} is not a call this sandbox's "
                                 "worker makes for its own work item (its heartbeat and stop, its session and events, the "
                                 "session's skills and memory stores), and no egress policy allows it", policy_id=decision.policy_id)
        return decision

    def decide_recipient(self, address: str) -> Decision:
        """Whether this session may send mail to `address`: the deciding policy's `email.recipients` (none by default).

        Never raises. As for hosts, the deny lists of every applicable policy hold first (a deny pattern without a port
        covers the recipient's domain), then the most specific policy's list alone decides; no policy, or a fail-closed
        error, refuses. Middleware decides requests, not recipients, so it is not consulted. The address is read with
        `mail.parse_address` (send to that canonical form).
        """
        try:
            canonical = parse_address(address)
        except PolicyError as exc:
            return Decision.deny("invalid:recipient", f"refused: {exc}", 400)
        if self.error is not None:
            return Decision.deny(self.error[0], self.error[1])
        domain = canonical.rpartition("@")[2]
        for each in self.chain:
            for denied in each.policy.deny:
                # A deny with a port is about one service on that host; one without covers the whole name, mail included.
                if denied.port is None and denied.matches_host(domain):
                    return Decision.deny(f"policy:{each.id}:deny:{denied}",
                                         f"mail to {canonical} is refused: {domain} is denied by policy {each.policy.name!r} "
                                         f"({each.id}), rule deny {denied}", policy_id=each.id)
        record = self.deciding
        if record is None:
            return Decision.deny("default:no-policy", f"no egress policy applies to this session, so mail to {canonical} is "
                                 'refused; add "email": {"recipients": [...]} to a policy (see docs/email.md)')
        label = f"policy {record.policy.name!r} ({record.id})"
        pattern = record.policy.email.match(canonical)
        if pattern is None:
            return Decision.deny(f"policy:{record.id}:email:not-allowed",
                                 f"{canonical} is not among the email recipients of {label}; add it (or a pattern such as "
                                 f'"*@{domain}") to "email": {{"recipients": [...]}} there', policy_id=record.id)
        return Decision.allow(f"policy:{record.id}:email:{pattern}", f"{canonical} is allowed by {label}, email recipient {pattern}",
                              policy_id=record.id)

    def needs_inspection(self, host: str, port: int) -> bool:
        """Whether an allowed CONNECT to host:port must be opened (TLS interception).

        True when a rule can only hold by seeing each request inside: an
        injection toward https://host:port, or an allow rule for this host
        with method or path conditions. Otherwise the tunnel carries the
        client's TLS untouched (the host itself was allowed).
        """
        try:
            host, port = normalize_host(host), parse_port(port)
        except PolicyError:
            return False
        record = self.deciding
        if record is None or self.error is not None:
            return False
        policy = record.policy
        if any(rule.applies("https", host, port) for rule in policy.inject):
            return True
        return any(
            (rule.methods is not None or rule.paths is not None) and rule.pattern.matches("https", host, port)
            for rule in policy.allow_rules
        )

    def _by_policy(self, req: EgressRequest) -> Decision:
        where = f"{display_host(req.host)}:{req.port}"
        for record in self.chain:
            for pattern in record.policy.deny:
                if pattern.matches_host(req.host) and (pattern.port is None or pattern.port == req.port):
                    return Decision.deny(
                        f"policy:{record.id}:deny:{pattern}",
                        f"{where} is denied by policy {record.policy.name!r} ({record.id}), rule deny {pattern}",
                        policy_id=record.id,
                    )
        record = self.deciding
        if record is None:
            return Decision.deny("default:no-policy", f"no egress policy applies to this session, so {where} is denied; add a policy (see docs/egress.md)")
        policy, pid, label = record.policy, record.id, f"policy {record.policy.name!r} ({record.id})"
        decision: Decision | None = None
        for service in policy.private_services:
            if service.applies(req.scheme, req.host, req.port):
                decision = Decision.allow(f"policy:{pid}:{service.rule_id}", f"{where} is the private service {service.name_text} → {service.target} in {label}",
                                          private_service=service, policy_id=pid)
                break
        if decision is None:
            host_matched: list[AllowRule] = []
            for rule in policy.allow_rules:
                if not rule.pattern.matches(req.scheme, req.host, req.port):
                    continue
                if rule.permits(req.method, req.path):
                    decision = Decision.allow(f"policy:{pid}:{rule.rule_id}", f"{where} is allowed by {label}, rule {rule.rule_id}", policy_id=pid)
                    break
                host_matched.append(rule)
            if decision is None and host_matched:
                rule = host_matched[0]
                return Decision.deny(
                    f"policy:{pid}:{rule.rule_id}",
                    f"{req.method} on {where}: {label} allows this host {rule.describe_conditions()} (rule {rule.rule_id})",
                    policy_id=pid,
                )
            if decision is None:
                return Decision.deny(f"policy:{pid}:not-allowed", f"{where} is not in the allow list of {label}; add it there", policy_id=pid)
        if req.websocket and policy.websocket != "allow":
            return Decision.deny(f"policy:{pid}:websocket", f"WebSocket connections are not allowed by {label}; set \"websocket\": \"allow\" there", policy_id=pid)
        injections = tuple(rule.injection for rule in policy.inject if rule.applies(req.scheme, req.host, req.port))
        if injections:
            decision = dataclasses.replace(decision, injections=injections)
        return decision

    def _run_middleware(self, request: EgressRequest, decision: Decision) -> Decision:
        for mw in self.middleware:
            try:
                result = mw.hook(request, decision)
            except Exception as exc:
                return Decision.deny(f"error:middleware:{mw.name}", f"egress middleware {mw.name} failed ({type(exc).__name__}); refused")
            if result is None or result is decision:
                continue
            problem = _check_middleware_decision(result)
            if problem:
                return Decision.deny(f"error:middleware:{mw.name}", f"egress middleware {mw.name} returned {problem}; refused")
            rule = result.rule if result.rule.startswith(f"middleware:{mw.name}") else f"middleware:{mw.name}:{result.rule or 'decided'}"
            status = result.status if result.action == "deny" else None
            decision = dataclasses.replace(result, rule=rule, status=status or (403 if result.action == "deny" else None))
        return decision


def _check_middleware_decision(result: object) -> str | None:
    if not isinstance(result, Decision):
        return f"a {type(result).__name__}, not a Decision or None"
    if result.action not in ("allow", "deny"):
        return f"the action {result.action!r}"
    if not isinstance(result.rule, str):
        return "a rule that is not text"
    for injection in result.injections:
        if not isinstance(injection, Injection) or not HEADER_NAME.fullmatch(injection.header) or not SECRET_NAME.fullmatch(injection.secret_name):
            return "an invalid injection"
        if injection.header.lower() in FORBIDDEN_INJECTION_HEADERS:
            return f"an injection into {injection.header}"
    if result.private_service is not None and not isinstance(result.private_service, PrivateService):
        return "a private service that is not a PrivateService"
    return None


class PolicyResolver:
    """`resolve(context) -> EffectivePolicy`, reading the current policies every time.

    Built once by the app with the API base URL (the system allowance) and
    the operator's middleware. A `setup_error` (bad api_base_url, middleware
    that cannot be loaded) makes every decision a deny.
    """

    def __init__(
        self,
        policies: PolicyStore,
        *,
        api_base_url: str,
        middleware: Sequence[NamedMiddleware] = (),
        setup_error: str | None = None,
    ) -> None:
        self.policies = policies
        self.middleware = tuple(middleware)
        self.setup_error = setup_error
        self.system: SystemAllowance | None
        try:
            self.system = SystemAllowance.from_base_url(api_base_url)
        except PolicyError as exc:
            self.system = None
            self.setup_error = self.setup_error or str(exc)

    def context_for(self, session_id: str | None = None, *, agent_id: str | None = None, metadata: Mapping[str, str] | None = None) -> SessionContext:
        """A context for a session served here: agent and metadata come from the store when not given."""
        if session_id and (agent_id is None or metadata is None):
            row = self.policies.store.session(session_id) or {}
            agent_id = agent_id if agent_id is not None else row.get("agent_id")
            metadata = metadata if metadata is not None else row.get("metadata")
        return SessionContext(session_id, agent_id, dict(metadata or {}))

    def resolve(self, context: SessionContext) -> EffectivePolicy:
        """The effective policy for one session now. Never raises: failures resolve to deny-all."""
        if self.setup_error:
            return EffectivePolicy(context, system=self.system, middleware=self.middleware,
                                   error=("error:setup", f"egress is misconfigured ({self.setup_error}); every request is refused"))
        try:
            records = self.policies.current()
            chain: list[PolicyRecord] = []
            for record in records:
                if isinstance(record, CorruptPolicy):
                    if record.might_apply(context):
                        return EffectivePolicy(context, system=self.system, middleware=self.middleware,
                                               error=(f"error:policy:{record.id}", f"policy {record.name!r} ({record.id}) is corrupt ({record.error}); every request is refused until it is fixed or deleted"))
                    continue
                if record.policy.scope.applies(context):
                    chain.append(record)
            chain.sort(key=specificity)
            return EffectivePolicy(context, system=self.system, chain=chain, middleware=self.middleware)
        except Exception as exc:
            return EffectivePolicy(context, system=self.system, middleware=self.middleware,
                                   error=("error:resolve", f"egress policies could not be read ({type(exc).__name__}); every request is refused"))

    def decide(self, context: SessionContext, method: str, scheme: str, host: str, port: int | None, path: str | None, *, websocket: bool = False) -> Decision:
        """`resolve(context).decide(…)` in one call."""
        return self.resolve(context).decide(method, scheme, host, port, path, websocket=websocket)
