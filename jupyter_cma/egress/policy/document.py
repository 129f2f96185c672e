"""The policy document: `Policy`, and the validation that turns a JSON document into one.

`Policy.from_document` lists every problem of a document at once, each saying
what to fix; `parse_policy_json` validates a stored document again (what is
read is not trusted). The checks of each entry (`_parse_allow`,
`_parse_inject`, `_parse_private_service`, `_parse_scope` and the cost of a
matcher's regular expression) live here, beside the document they read.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import PolicyError
from .hosts import DEFAULT_PORTS, HostPattern, is_ip_literal, parse_port
from .mail import EmailRules
from .rules import (
    FORBIDDEN_INJECTION_HEADERS,
    HEADER_NAME,
    HTTP_METHOD,
    PRESETS,
    SECRET_NAME,
    AllowRule,
    Injection,
    InjectRule,
    PrivateService,
    preset_rules,
)
from .scopes import Matcher, Scope, compiled_regex

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

POLICY_FIELDS = ("name", "description", "scope", "presets", "allow", "deny", "inject", "private_services", "websocket", "allow_all",
                 "email")
READ_ONLY_FIELDS = ("id", "created_at", "updated_at")


@dataclass(frozen=True)
class Policy:
    """A validated policy document. Build it with `Policy.from_document`; store `to_document()`."""

    name: str
    scope: Scope
    allow: tuple[AllowRule, ...] = ()
    deny: tuple[HostPattern, ...] = ()
    presets: tuple[str, ...] = ()
    inject: tuple[InjectRule, ...] = ()
    private_services: tuple[PrivateService, ...] = ()
    websocket: Literal["allow", "deny"] = "deny"
    allow_all: bool = False
    description: str = ""
    email: EmailRules = EmailRules()  # the recipients the email built-ins may mail (none by default)

    @property
    def allow_rules(self) -> tuple[AllowRule, ...]:
        """`allow_all`, then the presets' rules, then the allow list (the first matching rule is reported)."""
        rules: list[AllowRule] = []
        if self.allow_all:
            rules.append(AllowRule(HostPattern("", True), source="allow_all"))
        for preset in self.presets:
            rules.extend(preset_rules(preset))
        return (*rules, *self.allow)

    @classmethod
    def from_document(cls, doc: object) -> Policy:
        """Validate a policy document; PolicyError lists every problem, each saying what to fix."""
        if not isinstance(doc, dict):
            raise PolicyError("a policy must be a JSON object")
        problems: list[str] = []

        def check(where: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except PolicyError as exc:
                problems.extend(f"{where}: {p}" for p in exc.problems)
                return None

        unknown = sorted(set(doc) - set(POLICY_FIELDS) - set(READ_ONLY_FIELDS))
        if unknown:
            problems.append(f"unknown field(s) {unknown}; a policy has {list(POLICY_FIELDS)}")
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            problems.append("name is required: a non-empty string of at most 200 characters")
            name = ""
        description = doc.get("description", "")
        if not isinstance(description, str) or len(description) > 2000:
            problems.append("description must be a string of at most 2000 characters")
            description = ""
        scope = check("scope", lambda: _parse_scope(doc.get("scope")))
        allow_all = doc.get("allow_all", False)
        if not isinstance(allow_all, bool):
            problems.append("allow_all must be true or false")
            allow_all = False
        websocket = doc.get("websocket", "deny")
        if websocket not in ("allow", "deny"):
            problems.append("websocket must be \"allow\" or \"deny\" (default \"deny\")")
            websocket = "deny"
        presets = _list(doc, "presets", problems)
        good_presets: list[str] = []
        for i, preset in enumerate(presets):
            if not isinstance(preset, str) or preset not in PRESETS:  # a list or an object is not hashable
                problems.append(f"presets[{i}]: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
            elif preset not in good_presets:
                good_presets.append(preset)
        allow = [check(f"allow[{i}]", lambda e=e: _parse_allow(e, allow_all)) for i, e in enumerate(_list(doc, "allow", problems))]
        deny = [check(f"deny[{i}]", lambda e=e: HostPattern.parse(e, in_deny=True)) for i, e in enumerate(_list(doc, "deny", problems))]
        inject = [check(f"inject[{i}]", lambda e=e: _parse_inject(e)) for i, e in enumerate(_list(doc, "inject", problems))]
        services = [check(f"private_services[{i}]", lambda e=e: _parse_private_service(e)) for i, e in enumerate(_list(doc, "private_services", problems))]
        email = check("email", lambda: EmailRules.from_document(doc.get("email"))) or EmailRules()
        seen: set[tuple[str, str, int, str]] = set()
        for i, rule in enumerate(inject):
            if rule is None:
                continue
            key = (rule.scheme, rule.host, rule.port, rule.injection.header.lower())
            if key in seen:
                problems.append(f"inject[{i}]: {rule.injection.header} toward {rule.target} is injected twice; keep one")
            seen.add(key)
        names: set[tuple[str, str | None, int | None]] = set()
        for i, service in enumerate(services):
            if service is None:
                continue
            key = (service.name, service.scheme, service.port)
            if key in names:
                problems.append(f"private_services[{i}]: {service.name_text} is declared twice; keep one")
            names.add(key)
        if problems:
            raise PolicyError(problems)
        return cls(
            name=name.strip(),
            scope=scope,
            allow=tuple(allow),
            deny=tuple(deny),
            presets=tuple(good_presets),
            inject=tuple(inject),
            private_services=tuple(services),
            websocket=websocket,
            allow_all=allow_all,
            description=description,
            email=email,
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "scope": self.scope.to_document(),
            "presets": list(self.presets),
            "allow": [r.to_document() for r in self.allow],
            "deny": [str(p) for p in self.deny],
            "inject": [r.to_document() for r in self.inject],
            "private_services": [s.to_json() for s in self.private_services],
            "websocket": self.websocket,
            "allow_all": self.allow_all,
            "email": self.email.to_document(),
        }

    def warnings(self) -> list[str]:
        """Things that are valid but probably not what was meant."""
        notes = []
        for rule in self.inject:
            allowed = any(
                r.pattern.matches(rule.scheme, rule.host, rule.port) for r in self.allow_rules
            ) or any(s.applies(rule.scheme, rule.host, rule.port) for s in self.private_services)
            if not allowed:
                notes.append(f"inject {rule.injection.header} toward {rule.target}: that host is not allowed by this policy, so nothing will be injected; add it to allow")
            if any(p.matches_host(rule.host) for p in self.deny):
                notes.append(f"inject {rule.injection.header} toward {rule.target}: that host is denied by this policy")
        if self.allow_all:
            notes.append("allow_all is set: every host on ports 80/443 is allowed except those denied")
        return notes


def _list(doc: dict[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        problems.append(f"{key} must be a list")
        return []
    if len(value) > 1000:
        problems.append(f"{key} may hold at most 1000 entries")
        return []
    return value


def _parse_scope(raw: object) -> Scope:
    shapes = '{"environment": true}, {"agent_id": "agent_…"}, {"session_id": "sesn_…"} or {"metadata": [{"key": …, "equals"|"one_of"|"matches": …}]}'
    if not isinstance(raw, dict) or len(raw) != 1:
        raise PolicyError(f"scope is required: exactly one of {shapes}")
    ((kind, value),) = raw.items()
    if kind == "environment":
        if value is not True:
            raise PolicyError('write {"environment": true} for the environment default')
        return Scope("environment")
    if kind in ("agent_id", "session_id"):
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise PolicyError(f"{kind} must be an id (letters, digits, '_' and '-')")
        return Scope("agent" if kind == "agent_id" else "session", value)
    if kind == "metadata":
        if not isinstance(value, list) or not value:
            raise PolicyError("metadata needs a non-empty list of matchers; use {\"environment\": true} to match every session")
        matchers = []
        for i, m in enumerate(value):
            try:
                matchers.append(_parse_matcher(m))
            except PolicyError as exc:
                raise PolicyError(f"metadata[{i}]: {exc}") from None
        return Scope("metadata", None, tuple(matchers))
    raise PolicyError(f"unknown scope {kind!r}; use one of {shapes}")


def _parse_matcher(raw: object) -> Matcher:
    if not isinstance(raw, dict):
        raise PolicyError('a matcher is {"key": …, "equals": …} (or "one_of": [...], or "matches": "regex")')
    key = raw.get("key")
    if not isinstance(key, str) or not key or len(key) > 64:
        raise PolicyError("key must be a metadata key (a non-empty string of at most 64 characters)")
    ops = [op for op in ("equals", "one_of", "matches") if op in raw]
    extra = set(raw) - {"key", "equals", "one_of", "matches"}
    if len(ops) != 1 or extra:
        raise PolicyError("a matcher has a key and exactly one of equals, one_of, matches")
    op = ops[0]
    value = raw[op]
    if op == "equals":
        if not isinstance(value, str):
            raise PolicyError("equals takes a string")
        return Matcher(key, "equals", value)
    if op == "one_of":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise PolicyError("one_of takes a non-empty list of strings")
        return Matcher(key, "one_of", tuple(value))
    if not isinstance(value, str) or not value or len(value) > 200:
        raise PolicyError("matches takes a regular expression of at most 200 characters")
    try:
        compiled_regex(value)
    except re.error as exc:
        raise PolicyError(f"matches: {value!r} is not a valid regular expression ({exc})") from None
    problem = _regex_cost_problem(value)
    if problem:
        raise PolicyError(f"matches: {value!r} {problem}; simplify it (or use equals / one_of)")
    return Matcher(key, "matches", value)


MAX_VARIABLE_REPEATS = 3


def _regex_cost_problem(pattern: str) -> str | None:
    """Why a regex could take too long on the request path, or None.

    Matchers run while deciding requests, with Python's backtracking engine,
    so shapes with exponential or steep polynomial worst cases are refused:
    a variable repetition inside another, alternation inside a variable
    repetition, and more than MAX_VARIABLE_REPEATS variable repetitions.
    Values longer than MAX_METADATA_VALUE never match, which bounds the rest.
    """
    import re._parser as sre_parse  # the parser behind `re`; Python >= 3.11

    count = 0

    def walk(items: Any, inside_repeat: bool) -> str | None:
        nonlocal count
        for op, av in items:
            name = getattr(op, "name", str(op))
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, sub = av
                variable = high != low
                if variable:
                    count += 1
                    if inside_repeat:
                        return "repeats inside a repetition"
                problem = walk(sub, inside_repeat or variable)
            elif name == "SUBPATTERN":
                problem = walk(av[-1], inside_repeat)
            elif name == "BRANCH":
                if inside_repeat:
                    return "has alternatives inside a repetition"
                problem = next((p for branch in av[1] if (p := walk(branch, inside_repeat))), None)
            elif name in ("ASSERT", "ASSERT_NOT"):
                problem = walk(av[1], inside_repeat)
            elif name == "ATOMIC_GROUP":
                problem = walk(av, inside_repeat)
            elif name == "GROUPREF_EXISTS":
                problem = next((p for branch in av[1:] if branch is not None and (p := walk(branch, inside_repeat))), None)
            else:
                problem = None
            if problem:
                return problem
        return None

    problem = walk(sre_parse.parse(pattern), False)
    if problem is None and count > MAX_VARIABLE_REPEATS:
        problem = f"has more than {MAX_VARIABLE_REPEATS} variable repetitions"
    return problem

def _normalize_path_prefix(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise PolicyError(f"{where}: {value!r} must be a path starting with '/', such as '/simple/'")
    if len(value) > 1000 or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise PolicyError(f"{where}: {value!r} may not contain whitespace or control characters (at most 1000 characters)")
    for bad in ("?", "#", "\\", "%"):
        if bad in value:
            raise PolicyError(f"{where}: {value!r} may not contain {bad!r}; write the plain, decoded path prefix")
    if any(seg in (".", "..") for seg in value.split("/")) or "//" in value:
        raise PolicyError(f"{where}: {value!r} may not contain '.', '..' or empty segments")
    return value



def _parse_allow(entry: object, allow_all: bool) -> AllowRule:
    if isinstance(entry, str):
        return AllowRule(HostPattern.parse(entry, allow_all=allow_all))
    if not isinstance(entry, dict) or "host" not in entry:
        raise PolicyError('an allow entry is a host pattern, or {"host": …, "methods"?: [...], "paths"?: [...]}')
    extra = set(entry) - {"host", "methods", "paths"}
    if extra:
        raise PolicyError(f"unknown field(s) {sorted(extra)}; an allow rule has host, methods, paths")
    pattern = HostPattern.parse(entry["host"], allow_all=allow_all)
    methods = None
    if "methods" in entry:
        raw = entry["methods"]
        if not isinstance(raw, list) or not raw:
            raise PolicyError("methods must be a non-empty list such as [\"GET\", \"HEAD\"]")
        methods = []
        for m in raw:
            if not isinstance(m, str) or not HTTP_METHOD.fullmatch(m.upper()):
                raise PolicyError(f"methods: {m!r} is not an HTTP method")
            if m.upper() == "CONNECT":
                raise PolicyError("methods: CONNECT is decided by host and port; list the methods of the requests inside the tunnel")
            if m.upper() not in methods:
                methods.append(m.upper())
        methods = tuple(methods)
    paths = None
    if "paths" in entry:
        raw = entry["paths"]
        if not isinstance(raw, list) or not raw:
            raise PolicyError("paths must be a non-empty list of path prefixes such as [\"/simple/\"]")
        paths = tuple(_normalize_path_prefix(p, "paths") for p in raw)
    return AllowRule(pattern, methods, paths)


def _parse_scheme(value: object, default: str | None) -> str | None:
    if value is None:
        return default
    if value not in ("http", "https"):
        raise PolicyError("scheme must be \"http\" or \"https\"")
    return str(value)


def _parse_inject(entry: object) -> InjectRule:
    if not isinstance(entry, dict):
        raise PolicyError('an injection is {"host", "header", "secret", "prefix"?, "scheme"? (https), "port"?}')
    extra = set(entry) - {"host", "header", "secret", "prefix", "scheme", "port"}
    if extra:
        raise PolicyError(f"unknown field(s) {sorted(extra)}; an injection has host, header, secret, prefix, scheme, port")
    pattern = HostPattern.parse(entry.get("host"))
    if pattern.wildcard:
        raise PolicyError("an injection goes to one exact host; list each host separately, without '*'")
    scheme = _parse_scheme(entry.get("scheme"), "https")
    assert scheme is not None
    if "port" in entry and pattern.port is not None:
        raise PolicyError("give the port once: in host ('api.example.com:8443') or in port")
    port = parse_port(entry["port"]) if "port" in entry else (pattern.port or DEFAULT_PORTS[scheme])
    header = entry.get("header")
    if not isinstance(header, str) or not HEADER_NAME.fullmatch(header):
        raise PolicyError("header must be a header name such as \"Authorization\"")
    if header.lower() in FORBIDDEN_INJECTION_HEADERS:
        raise PolicyError(f"{header} frames or routes the request and cannot be injected; use Authorization or an API-specific header")
    secret = entry.get("secret")
    if not isinstance(secret, str) or not SECRET_NAME.fullmatch(secret):
        raise PolicyError("secret must be the NAME of a stored secret (letters, digits and '_', not starting with a digit)")
    prefix = entry.get("prefix", "")
    if not isinstance(prefix, str) or len(prefix) > 64 or not prefix.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise PolicyError("prefix must be printable text of at most 64 characters, such as \"Bearer \"")
    return InjectRule(scheme, pattern.host, port, Injection(header, secret, prefix))


_FORBIDDEN_TARGET_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})


def _parse_private_service(entry: object) -> PrivateService:
    if not isinstance(entry, dict) or set(entry) != {"name", "target"}:
        raise PolicyError('a private service is {"name": "warehouse.internal" (or "http://db-api:8080"), "target": "10.0.0.5:8080"}')
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise PolicyError("name must be the host the sandbox calls, such as \"warehouse.internal\" or \"http://db-api\"")
    scheme = None
    text = name
    if "://" in name:
        scheme_text, text = name.split("://", 1)
        scheme = _parse_scheme(scheme_text, None)
    text = text[:-1] if text.endswith("/") else text
    pattern = HostPattern.parse(text)
    if pattern.wildcard:
        raise PolicyError("a private service has one exact name, without '*'")
    target = entry["target"]
    if not isinstance(target, str) or not target:
        raise PolicyError("target must be 'host:port', such as '10.0.0.5:8080'")
    target_pattern = HostPattern.parse(target)
    if target_pattern.wildcard or target_pattern.port is None:
        raise PolicyError(f"target {target!r} must be one 'host:port', such as '10.0.0.5:8080'")
    host = target_pattern.host
    if host in _FORBIDDEN_TARGET_NAMES:
        raise PolicyError(f"target {target!r} is a cloud metadata service; it cannot be a private service")
    if is_ip_literal(host):
        address = ipaddress.ip_address(host)
        if address.is_link_local or address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
            raise PolicyError(f"target {target!r} is a link-local, unspecified or multicast address (cloud metadata lives there); use the service's own address")
    return PrivateService(pattern.host, host, target_pattern.port, scheme, pattern.port)


def parse_policy_json(text: str) -> Policy:
    """A stored document back into a Policy, validated again (what is read is not trusted)."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise PolicyError("the stored document is not JSON") from None
    return Policy.from_document(doc)
