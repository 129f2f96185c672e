"""Egress policies: which requests a session's sandbox may make, decided on the requested name.

The egress proxy asks, for every request a sandbox makes::

    effective = resolver.resolve(SessionContext(session_id=…, agent_id=…, metadata=…))
    decision = effective.decide(method, scheme, host, port, path)

and acts on the `Decision`: forward or refuse (with `decision.status` and
`decision.reason`), add `decision.injections` (header ← secret, looked up by
name in the secret store), and connect to `decision.private_service.target`
instead of resolving the name. Decisions are made on the requested *name*,
before any DNS lookup: a denied name is never resolved. Resolving, checking
the resolved address and pinning it are the proxy's job.

For the proxy: call `resolve` per request (it costs one indexed read of the
policy revision while nothing changed); pass `port=None` for the scheme's
default; a CONNECT is `decide("CONNECT", "https", host, port, None)` and is
decided on host and port alone, so method/path rules and injections hold
only if the proxy decides each request inside the tunnel as well; pass
`websocket=True` for an Upgrade request (or a ws/wss scheme). `decide` never
raises. `Decision.injections` is a tuple of `Injection(header, secret_name,
prefix)`; `SecretStore.get(secret_name)` gives the value.

The model
---------
A policy is a JSON document (see `Policy.from_document`)::

    {"name": "python", "scope": {"environment": true},
     "presets": ["pypi"],
     "allow": ["example.com", "*.example.org", "api.example.com:8443",
               {"host": "docs.example.com", "methods": ["GET"], "paths": ["/v2/"]}],
     "deny": ["upload.example.com"],
     "inject": [{"host": "api.github.com", "header": "Authorization",
                 "secret": "GITHUB_TOKEN", "prefix": "Bearer "}],
     "private_services": [{"name": "warehouse.internal", "target": "10.0.0.5:8080"}],
     "websocket": "deny", "allow_all": false}

Host patterns are exact names (`pypi.org`), subdomain wildcards (`*.example.com`
matches `a.example.com` and `a.b.example.com`, never `example.com`), or exact
IP literals, each with an optional port; without a port a pattern allows the
scheme's default port only (80 for http, 443 for https); in a deny list, no
port means every port. Names are normalised
(lower case, one trailing dot dropped, IDNA) on both sides. Patterns that
would open far more than intended are refused with a message saying why: `*`
(unless the policy sets `allow_all: true`), wildcards over a public suffix
(`*.com`, `*.co.uk`, `*.github.io`; a small built-in list, nothing is
downloaded), and anything with a scheme, path, userinfo, backslash or
whitespace. A deny list may use any wildcard (blocking a whole TLD is safe).

Scopes and resolution
---------------------
Each policy has one scope: the environment default (`{"environment": true}`),
one agent (`{"agent_id": …}`), one session (`{"session_id": …}`), or a list of
matchers on the session's metadata (`{"metadata": [{"key": "team", "equals":
"ml"}, {"key": "repo", "one_of": […]}, {"key": "branch", "matches": "feat/.*"}]}`,
all of which must hold; `matches` is a regular expression over the whole
value). At most one policy exists per environment, agent and session.

The policies that apply to a session are ordered, most specific first:

1. the session's policy,
2. the agent's policy,
3. metadata-matched policies: more matchers first, then the most recently
   updated first (then by id, so the order is total),
4. the environment default.

They merge in one way only: **the first (most specific) policy alone decides
what is allowed** — its allow list, presets, `allow_all`, injections, private
services and websocket setting — **and the deny lists of all of them hold**.
A session policy can therefore grant a session what its agent's policy does
not, but no policy can lift a deny that an operator put on a broader scope.
Nothing else is inherited: reading one policy and the applicable deny lists
tells the whole story. With no applicable policy, everything is denied
(`default:no-policy`).

Order of a decision
-------------------
1. A request that cannot be parsed (bad method, scheme, port, host) → deny 400.
2. The system allowance: a credential-free worker's own calls to the Managed
   Agents API (scheme, host and port of `CMAApp.api_base_url`; the calls are
   `WORKER_CALLS` for the work item, session, skills and memory stores of the
   sandbox's `WorkerScope`) are allowed before any user rule — a user deny
   cannot break the worker — and only on that exact host:
   `api.anthropic.com.evil.com` and `evilapi.anthropic.com` are not it. Any
   other request to the API host is decided by the policies like any host;
   from a worker's sandbox, a refusal then says so (`api:outside-worker-scope`).
   A sandbox without a worker (the kernel tier: its worker runs in the server)
   has no system allowance at all.
3. Fail closed: if loading or resolving failed (a corrupt stored policy that
   might apply, a bad middleware setting, a store error) → deny `error:…`.
4. Any applicable deny rule → deny.
5. The deciding policy's private services, then its allow rules (`allow_all`,
   presets, allow list; method and path conditions), then the websocket
   setting (default deny) → allow or deny; an allowed request toward an
   injection's exact scheme, host and port gets that injection.
6. The operator's middleware (`CMAApp.egress_middleware`), in order, may
   replace the decision (see `Middleware`). A middleware that raises or
   returns anything but a `Decision` or None turns the decision into a deny.

Policy changes apply on the next request: `resolve` reads the store's policy
revision (bumped in the same transaction as every write) and reloads when it
changed.

The modules
-----------
One module per noun; this package re-exports every public name, so
`jupyter_cma.egress.policy` is the import path for all of them:

- `errors`: `PolicyError` (what to fix) and `PolicyConflict` (name or scope taken).
- `hosts`: `normalize_host`, ports, `HostPattern`, public suffixes, `INTERNAL_HOST`.
- `rules`: allow rules and presets, injections, private services, `canonical_path`.
- `scopes`: `Scope` and its metadata `Matcher`s, `SessionContext` (who is asking).
- `system_allowance`: `SystemAllowance` (the API host) and `WorkerScope` (`WORKER_CALLS`).
- `document`: `Policy` and the validation of a document.
- `decisions`: `EgressRequest`, `Decision`, middleware and `load_middleware`.
- `storage`: `PolicyStore`, `PolicyRecord`, `CorruptPolicy`.
- `resolution`: `PolicyResolver` → `EffectivePolicy.decide`.
"""

from __future__ import annotations

from .decisions import (
    Decision,
    EgressRequest,
    Middleware,
    NamedMiddleware,
    load_middleware,
)
from .document import (
    MAX_VARIABLE_REPEATS,
    POLICY_FIELDS,
    READ_ONLY_FIELDS,
    Policy,
    parse_policy_json,
)
from .errors import (
    PolicyConflict,
    PolicyError,
)
from .hosts import (
    DEFAULT_PORTS,
    INTERNAL_HOST,
    PUBLIC_SUFFIXES,
    SCHEME_FAMILY,
    HostPattern,
    display_host,
    is_ip_literal,
    is_public_suffix,
    normalize_host,
    parse_port,
)
from .resolution import (
    EffectivePolicy,
    PolicyResolver,
)
from .rules import (
    FORBIDDEN_INJECTION_HEADERS,
    HEADER_NAME,
    HTTP_METHOD,
    PRESETS,
    READ_ONLY,
    SECRET_NAME,
    AllowRule,
    InjectRule,
    Injection,
    PrivateService,
    canonical_path,
    preset_rules,
)
from .scopes import (
    MAX_METADATA_VALUE,
    SCOPE_RANK,
    Matcher,
    Scope,
    SessionContext,
    compiled_regex,
)
from .storage import (
    CorruptPolicy,
    PolicyRecord,
    PolicyStore,
    specificity,
)
from .system_allowance import (
    SYSTEM_API_RULE,
    WORKER_CALLS,
    WORKER_SCOPE_RULE,
    WORKER_SESSION_CALL,
    SystemAllowance,
    WorkerScope,
)

__all__ = [
    "AllowRule",
    "CorruptPolicy",
    "DEFAULT_PORTS",
    "Decision",
    "EffectivePolicy",
    "EgressRequest",
    "FORBIDDEN_INJECTION_HEADERS",
    "HEADER_NAME",
    "HTTP_METHOD",
    "HostPattern",
    "INTERNAL_HOST",
    "InjectRule",
    "Injection",
    "MAX_METADATA_VALUE",
    "MAX_VARIABLE_REPEATS",
    "Matcher",
    "Middleware",
    "NamedMiddleware",
    "POLICY_FIELDS",
    "PRESETS",
    "PUBLIC_SUFFIXES",
    "Policy",
    "PolicyConflict",
    "PolicyError",
    "PolicyRecord",
    "PolicyResolver",
    "PolicyStore",
    "PrivateService",
    "READ_ONLY",
    "READ_ONLY_FIELDS",
    "SCHEME_FAMILY",
    "SCOPE_RANK",
    "SECRET_NAME",
    "SYSTEM_API_RULE",
    "Scope",
    "SessionContext",
    "SystemAllowance",
    "WORKER_CALLS",
    "WORKER_SCOPE_RULE",
    "WORKER_SESSION_CALL",
    "WorkerScope",
    "canonical_path",
    "compiled_regex",
    "display_host",
    "is_ip_literal",
    "is_public_suffix",
    "load_middleware",
    "normalize_host",
    "parse_policy_json",
    "parse_port",
    "preset_rules",
    "specificity",
]
