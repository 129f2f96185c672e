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
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import ipaddress
import json
import re
import secrets as _random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import idna

if TYPE_CHECKING:
    from ..store import Store

SYSTEM_API_RULE = "system:api-host"  # the rule of the system allowance (the worker's own API calls)
WORKER_SCOPE_RULE = "api:outside-worker-scope"  # a worker's sandbox asked the API host for something its worker never does
# The server's own endpoint for sandboxes (its tool registry), plain http on port 80 only. The proxy answers it
# itself before any policy, DNS or connection: it is never a destination, and no policy rule about it applies.
INTERNAL_HOST = "cma.internal"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# ws/wss are the http/https of a WebSocket upgrade: same ports, same rules.
SCHEME_FAMILY = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
READ_ONLY = ("GET", "HEAD")

# Wildcards over these would span unrelated owners (`*.co.uk`), or hosting
# platforms where anyone gets a subdomain (`*.github.io`, `*.amazonaws.com`):
# an easy exfiltration target. Any single-label base (`*.com`, `*.io`, `*.dev`)
# is refused as well, and so is `*.<co|com|net|org|ac|gov|…>.<two-letter TLD>`.
PUBLIC_SUFFIXES = frozenset(
    """
    co.uk org.uk me.uk ltd.uk plc.uk net.uk ac.uk gov.uk nhs.uk sch.uk police.uk
    com.au net.au org.au edu.au gov.au asn.au id.au co.nz net.nz org.nz govt.nz ac.nz
    co.jp ne.jp or.jp ac.jp go.jp ed.jp gr.jp lg.jp com.br net.br org.br gov.br
    com.cn net.cn org.cn gov.cn edu.cn ac.cn com.hk org.hk com.tw org.tw com.sg com.my
    co.in net.in org.in firm.in gen.in ind.in co.za org.za co.kr or.kr co.il org.il
    com.mx com.ar com.tr com.ua com.pl co.id or.id com.vn com.ph com.pk com.eg com.sa
    com.co com.pe com.ec co.th in.th eu.org us.org uk.com us.com eu.com de.com
    github.io gitlab.io bitbucket.io readthedocs.io herokuapp.com herokudns.com
    appspot.com blogspot.com googleusercontent.com storage.googleapis.com googleapis.com
    run.app cloudfunctions.net web.app firebaseapp.com amazonaws.com s3.amazonaws.com
    cloudfront.net elasticbeanstalk.com awsapprunner.com on.aws azurewebsites.net
    azureedge.net cloudapp.net trafficmanager.net windows.net blob.core.windows.net
    web.core.windows.net azurestaticapps.net netlify.app vercel.app now.sh pages.dev
    workers.dev r2.dev trycloudflare.com ngrok.io ngrok.app ngrok-free.app glitch.me
    repl.co replit.dev onrender.com fly.dev railway.app surge.sh pythonanywhere.com
    ddns.net duckdns.org no-ip.org dyndns.org hopto.org loca.lt
    """.split()
)
_SECOND_LEVEL = frozenset("co com net org ac gov edu or ne go gob nic mil ltd plc me sch nom gen firm ind biz info".split())

PRESETS: dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]] = {
    # (host pattern, methods or None for any). Read-only wherever the protocol allows.
    "pypi": (("pypi.org", READ_ONLY), ("files.pythonhosted.org", READ_ONLY)),
    "npm": (("registry.npmjs.org", READ_ONLY),),
    # git's smart HTTP fetches with POST (git-upload-pack), so github.com takes any method.
    "github": (("github.com", None), ("codeload.github.com", READ_ONLY), ("*.githubusercontent.com", READ_ONLY)),
    "huggingface": (("huggingface.co", READ_ONLY), ("*.huggingface.co", READ_ONLY), ("*.hf.co", READ_ONLY)),
}

# Headers an injection may not set: they frame or route the request (smuggling, hijacking).
FORBIDDEN_INJECTION_HEADERS = frozenset(
    "host content-length transfer-encoding connection upgrade te trailer keep-alive "
    "proxy-authorization proxy-authenticate proxy-connection expect".split()
)
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|[46][1-9a-fA-F]|[57][0-9aA]|3[0-9])")
MAX_METADATA_VALUE = 256


class PolicyError(ValueError):
    """A policy, pattern or request that cannot be accepted. The message says what to fix."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PolicyConflict(ValueError):
    """Another policy already has this name, or already covers this scope."""


# ---------------------------------------------------------------------- names and patterns


def normalize_host(raw: object) -> str:
    """The canonical form of a host name or IP literal, or PolicyError.

    Lower case, one trailing dot dropped, internationalised names in their
    IDNA (xn--) form, IPv6 without brackets and compressed. A name whose last
    label is a number (`127.1`, `0x7f.1`) is refused: URL parsers read those
    as IPv4 addresses, so they are not names.
    """
    if not isinstance(raw, str) or not raw:
        raise PolicyError("a host must be a non-empty string")
    return _normalize_host_text(raw)


@functools.lru_cache(maxsize=4096)  # the proxy normalises the same few names on every request
def _normalize_host_text(raw: str) -> str:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in raw):
        raise PolicyError(f"host {raw!r} contains whitespace or control characters")
    if "%" in raw:
        raise PolicyError(f"host {raw!r} contains a '%' (escapes and IPv6 zone ids are not allowed)")
    text = raw
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise PolicyError(f"{raw!r} is not an IPv6 address") from None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    for bad, why in (("/", "a '/'"), ("\\", "a backslash"), ("@", "an '@' (userinfo)"), (":", "a ':'"), ("*", "a '*'")):
        if bad in text:
            raise PolicyError(f"host {raw!r} contains {why}")
    if text.endswith("."):
        text = text[:-1]
    if not text or text.endswith(".") or ".." in text or text.startswith("."):
        raise PolicyError(f"host {raw!r} has an empty label")
    if not text.isascii() or "xn--" in text.lower():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
            idna.decode(text)
        except idna.IDNAError as exc:
            raise PolicyError(f"host {raw!r} is not a valid internationalised name ({exc})") from None
    text = text.lower()
    if len(text) > 253:
        raise PolicyError(f"host {raw!r} is longer than 253 characters")
    labels = text.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise PolicyError(f"host {raw!r}: label {label!r} may hold only letters, digits and inner hyphens (1-63 characters)")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise PolicyError(f"host {raw!r} ends in a number, which URL parsers read as an IPv4 address; write the address itself")
    return text


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_public_suffix(base: str) -> bool:
    """Whether `*.<base>` would span unrelated owners (see PUBLIC_SUFFIXES)."""
    labels = base.split(".")
    if len(labels) < 2 or base in PUBLIC_SUFFIXES:
        return True
    return len(labels) == 2 and len(labels[1]) == 2 and labels[0] in _SECOND_LEVEL


def _split_port(text: str, raw: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise PolicyError(f"{raw!r}: an IPv6 address needs its closing ']'")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise PolicyError(f"{raw!r}: only ':port' may follow an IPv6 address")
        return host, parse_port(rest[1:], raw)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, parse_port(port, raw)
    return text, None  # no port, or a bare IPv6 address (checked by normalize_host)


def parse_port(text: object, raw: object = None) -> int:
    """A TCP port 1-65535 from an int or a string of digits, or PolicyError."""
    if isinstance(text, bool):
        raise PolicyError(f"{raw or text!r}: the port must be a number 1-65535")
    if isinstance(text, int):
        value = text
    elif isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 5:
        value = int(text)
    else:
        raise PolicyError(f"{raw or text!r}: the port must be a number 1-65535")
    if not 1 <= value <= 65535:
        raise PolicyError(f"{raw or text!r}: the port must be between 1 and 65535")
    return value


@dataclass(frozen=True)
class HostPattern:
    """One host pattern: exact name, `*.` subdomain wildcard, exact IP, or `*` (every host).

    `port` None means the default port of the request's scheme only, so that
    allowing `example.com` never opens `example.com:22`.
    """

    host: str  # canonical; for a wildcard, the base after "*."; "" for `*`
    wildcard: bool = False
    port: int | None = None

    @property
    def every_host(self) -> bool:
        return self.host == "" and self.wildcard

    @classmethod
    def parse(cls, text: object, *, allow_all: bool = False, in_deny: bool = False) -> HostPattern:
        """Parse and check a pattern; PolicyError says what is wrong and what to write instead.

        `allow_all` admits `*`; `in_deny` admits any wildcard (a deny list may
        block a whole public suffix).
        """
        if not isinstance(text, str) or not text:
            raise PolicyError(f"{text!r}: a host pattern must be a non-empty string such as 'pypi.org' or '*.example.com'")
        raw = text
        if len(text) > 300:
            raise PolicyError(f"{raw[:40]!r}…: a host pattern is at most 300 characters")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
            raise PolicyError(f"{raw!r}: a host pattern may not contain whitespace or control characters")
        if "://" in text:
            raise PolicyError(f"{raw!r}: write the host only, without a scheme (drop 'http://' or 'https://')")
        if "\\" in text:
            raise PolicyError(f"{raw!r}: a backslash is not allowed in a host pattern")
        if "@" in text:
            raise PolicyError(f"{raw!r}: userinfo ('user@') is not allowed in a host pattern; write the host only")
        if "/" in text:
            raise PolicyError(f"{raw!r}: a host pattern has no path (and no CIDR range); use a rule's 'paths', or list exact IP addresses")
        if "?" in text or "#" in text:
            raise PolicyError(f"{raw!r}: a host pattern has no query or fragment")
        hostpart, port = _split_port(text, raw)
        if hostpart in ("*", "*.*", "**"):
            if not (allow_all or in_deny):
                raise PolicyError(f"{raw!r} allows every host; if that is really meant, set \"allow_all\": true in the policy")
            return cls("", True, port)
        wildcard = False
        if hostpart.startswith("*."):
            wildcard, hostpart = True, hostpart[2:]
        if "*" in hostpart:
            raise PolicyError(f"{raw!r}: a wildcard may only be the whole first label, as in '*.example.com'")
        host = normalize_host(hostpart)
        if wildcard:
            if _is_ip(host):
                raise PolicyError(f"{raw!r}: IP addresses can only be listed exactly, without a wildcard")
            if not in_deny and is_public_suffix(host):
                raise PolicyError(
                    f"{raw!r} would match every site under the public suffix '{host}'; list the sites you need, such as '*.example.{host}' or 'api.example.{host}'"
                )
        return cls(host, wildcard, port)

    def matches_host(self, host: str) -> bool:
        """Whether a canonical host name is covered (ports aside)."""
        if self.every_host:
            return True
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.port is None:
            if port != DEFAULT_PORTS[scheme]:
                return False
        elif port != self.port:
            return False
        return self.matches_host(host)

    def __str__(self) -> str:
        base = "*" if self.every_host else ("*." if self.wildcard else "") + _display_host(self.host)
        return base if self.port is None else f"{base}:{self.port}"


# ---------------------------------------------------------------------- rules


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


def canonical_path(path: str | None) -> str | None:
    """The request path for matching path rules, or None when it is ambiguous.

    The query and fragment are dropped and escaped unreserved characters
    decoded. A path that a server could read differently than we do (dot
    segments, '//', backslashes, escaped '/' or '\\', bad escapes) matches no
    path rule: better a refused request than a `/simple/../admin` let through.
    """
    if path is None:
        return None
    path = path.split("#", 1)[0].split("?", 1)[0]
    if not path.startswith("/") or "\\" in path:
        return None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        return None
    path = _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or re.search(r"%(?![0-9a-f]{2})", lowered):
        return None
    if "//" in path or any(seg in (".", "..") for seg in path.split("/")):
        return None
    return path


def _path_matches(prefix: str, path: str) -> bool:
    # '/simple/' covers '/simple/x'; '/simple' covers '/simple' and '/simple/…', never '/simplex'.
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class AllowRule:
    """An allowed host pattern, optionally only for some methods and path prefixes."""

    pattern: HostPattern
    methods: tuple[str, ...] | None = None  # None: any method
    paths: tuple[str, ...] | None = None  # None: any path
    source: str = "allow"  # "allow", or "preset:<name>"

    @property
    def rule_id(self) -> str:
        return f"{self.source}:{self.pattern}"

    def permits(self, method: str, path: str | None) -> bool:
        """Method and path conditions. A CONNECT (path None) is decided on host and port only;
        the requests inside the tunnel are decided one by one."""
        if path is None and method == "CONNECT":
            return True
        if self.methods is not None and method not in self.methods:
            return False
        if self.paths is not None:
            canonical = canonical_path(path)
            if canonical is None or not any(_path_matches(p, canonical) for p in self.paths):
                return False
        return True

    def describe_conditions(self) -> str:
        parts = []
        if self.methods is not None:
            parts.append("only " + ", ".join(self.methods))
        if self.paths is not None:
            parts.append("under " + ", ".join(self.paths))
        return " ".join(parts)

    def to_document(self) -> str | dict[str, Any]:
        if self.methods is None and self.paths is None:
            return str(self.pattern)
        doc: dict[str, Any] = {"host": str(self.pattern)}
        if self.methods is not None:
            doc["methods"] = list(self.methods)
        if self.paths is not None:
            doc["paths"] = list(self.paths)
        return doc


@functools.cache
def preset_rules(name: str) -> tuple[AllowRule, ...]:
    """The allow rules a preset expands to (KeyError for an unknown preset)."""
    return tuple(AllowRule(HostPattern.parse(pattern), methods, None, f"preset:{name}") for pattern, methods in PRESETS[name])


@dataclass(frozen=True)
class Injection:
    """A header the proxy adds (replacing any the client sent): `prefix` + the secret's value."""

    header: str
    secret_name: str
    prefix: str = ""

    def value(self, secret: Any) -> Any:
        """The header value as a `Secret` (never printed), from the named secret."""
        from ..anthropic_api import Secret

        return Secret(self.prefix + secret.reveal(), f"egress-secret:{self.secret_name}")

    def to_json(self) -> dict[str, str]:
        return {"header": self.header, "secret": self.secret_name, "prefix": self.prefix}


@dataclass(frozen=True)
class InjectRule:
    """Inject a secret into one header of requests toward one exact scheme, host and port."""

    scheme: str
    host: str
    port: int
    injection: Injection

    @property
    def rule_id(self) -> str:
        return f"inject:{self.injection.header}@{self.target}"

    @property
    def target(self) -> str:
        return f"{self.scheme}://{_display_host(self.host)}:{self.port}"

    def applies(self, scheme: str, host: str, port: int) -> bool:
        return SCHEME_FAMILY[scheme] == self.scheme and host == self.host and port == self.port

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"host": _display_host(self.host), "scheme": self.scheme, "port": self.port,
                               "header": self.injection.header, "secret": self.injection.secret_name}
        if self.injection.prefix:
            doc["prefix"] = self.injection.prefix
        return doc


@dataclass(frozen=True)
class PrivateService:
    """A name the sandbox may call, routed to an internal `target_host:target_port`.

    The address checks would otherwise refuse an internal address; declaring
    it here is the operator saying this one is meant. `scheme` None means
    http or https; `port` None the scheme's default port.
    """

    name: str
    target_host: str
    target_port: int
    scheme: str | None = None
    port: int | None = None

    @property
    def target(self) -> str:
        return f"{_display_host(self.target_host)}:{self.target_port}"

    @property
    def rule_id(self) -> str:
        return f"private_service:{self.name_text}"

    @property
    def name_text(self) -> str:
        text = _display_host(self.name) if self.port is None else f"{_display_host(self.name)}:{self.port}"
        return f"{self.scheme}://{text}" if self.scheme else text

    def applies(self, scheme: str, host: str, port: int) -> bool:
        if host != self.name:
            return False
        if self.scheme is not None and SCHEME_FAMILY[scheme] != self.scheme:
            return False
        return port == (self.port if self.port is not None else DEFAULT_PORTS[scheme])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name_text, "target": self.target}


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
        return _compiled(str(self.value)).fullmatch(actual) is not None

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, self.op: list(self.value) if isinstance(self.value, tuple) else self.value}


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    compiled = _REGEX_CACHE.get(pattern)
    if compiled is None:
        compiled = _REGEX_CACHE[pattern] = re.compile(pattern)
    return compiled


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


# ---------------------------------------------------------------------- the policy document

POLICY_FIELDS = ("name", "description", "scope", "presets", "allow", "deny", "inject", "private_services", "websocket", "allow_all")
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
        _compiled(value)
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
            if not isinstance(m, str) or not _METHOD.fullmatch(m.upper()):
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
    if not isinstance(header, str) or not _TOKEN.fullmatch(header):
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
    if _is_ip(host):
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


# ---------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request.

    `rule` names the deciding rule in words a person can follow back to a
    policy (`policy:pol_…:deny:*.evil.com`, `system:api-host`,
    `default:no-policy`, `error:…`). A deny carries the HTTP `status` to answer
    and a `reason` to show the sandbox. Injections name secrets, never values.
    """

    action: Literal["allow", "deny"]
    rule: str
    injections: tuple[Injection, ...] = ()
    private_service: PrivateService | None = None
    status: int | None = None
    reason: str = ""
    policy_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @classmethod
    def allow(cls, rule: str, reason: str = "", **kw: Any) -> Decision:
        return cls("allow", rule, reason=reason, **kw)

    @classmethod
    def deny(cls, rule: str, reason: str, status: int = 403, **kw: Any) -> Decision:
        return cls("deny", rule, status=status, reason=reason, **kw)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "rule": self.rule,
            "reason": self.reason,
            "status": self.status,
            "policy_id": self.policy_id,
            "injections": [i.to_json() for i in self.injections],
            "private_service": self.private_service.to_json() if self.private_service else None,
        }


@dataclass(frozen=True)
class EgressRequest:
    """One request as the policy sees it: canonical host, explicit port, upper-case method.

    `path` is None for a CONNECT (the tunnel's requests are decided one by one).
    """

    context: SessionContext
    method: str
    scheme: str
    host: str
    port: int
    path: str | None
    websocket: bool = False

    @property
    def target(self) -> str:
        return f"{SCHEME_FAMILY[self.scheme]}://{_display_host(self.host)}:{self.port}"

    @classmethod
    def parse(cls, context: SessionContext, method: object, scheme: object, host: object, port: object, path: object, websocket: bool = False) -> EgressRequest:
        if not isinstance(method, str) or not _METHOD.fullmatch(method.upper()):
            raise PolicyError(f"method {method!r} is not an HTTP method")
        if not isinstance(scheme, str) or scheme.lower() not in DEFAULT_PORTS:
            raise PolicyError(f"scheme {scheme!r} is not one of http, https, ws, wss")
        scheme = scheme.lower()
        canonical = normalize_host(host)
        port_value = DEFAULT_PORTS[scheme] if port is None else parse_port(port)
        if path is not None and not isinstance(path, str):
            raise PolicyError("path must be a string (or None for CONNECT)")
        method = method.upper()
        return cls(context, method, scheme, canonical, port_value, path, bool(websocket) or scheme in ("ws", "wss"))


# A middleware: `hook(request, decision) -> Decision | None`. Called after the
# policy decided (never for the system allowance, an unparseable request or a
# fail-closed error); None keeps the decision, a Decision replaces it (use
# `dataclasses.replace(decision, …)` to modify one). It runs on the proxy's
# request path: keep it fast and free of blocking I/O. Raising, or returning
# anything else, denies the request (`error:middleware:<name>`).
Middleware = Callable[[EgressRequest, Decision], "Decision | None"]


@dataclass(frozen=True)
class NamedMiddleware:
    name: str
    hook: Middleware


def load_middleware(names: Sequence[str]) -> list[NamedMiddleware]:
    """Import `package.module.callable` (or `package.module:callable`) for each name; PolicyError says which failed."""
    loaded = []
    for name in names:
        module_name, sep, attr = name.partition(":")
        if not sep:
            module_name, _, attr = name.rpartition(".")
        if not module_name or not attr:
            raise PolicyError(f"egress middleware {name!r} must be a dotted name such as 'mypackage.hooks.check'")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except Exception as exc:  # ImportError, AttributeError, or the module's own error
            raise PolicyError(f"egress middleware {name!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not callable(target):
            raise PolicyError(f"egress middleware {name!r} is not callable")
        loaded.append(NamedMiddleware(name, target))
    return loaded


# ---------------------------------------------------------------------- the system allowance


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
        return f"{self.scheme}://{_display_host(self.host)}:{self.port}"


# ---------------------------------------------------------------------- stored policies


@dataclass(frozen=True)
class PolicyRecord:
    """A stored, valid policy."""

    id: str
    policy: Policy
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.policy.to_document(), "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(frozen=True)
class CorruptPolicy:
    """A stored row that no longer validates. It denies everything for whoever it might apply to."""

    id: str
    name: str
    scope_key: str | None
    error: str
    created_at: float
    updated_at: float

    def might_apply(self, ctx: SessionContext) -> bool:
        if self.scope_key == "environment" or self.scope_key is None:
            return True
        kind, _, target = self.scope_key.partition(":")
        if kind == "agent":
            return ctx.agent_id == target
        if kind == "session":
            return ctx.session_id == target
        return True  # a scope we cannot read might be anyone's

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "error": self.error, "created_at": self.created_at, "updated_at": self.updated_at}


def _record_from_row(row: Mapping[str, Any]) -> PolicyRecord | CorruptPolicy:
    try:
        policy = parse_policy_json(row["document"])
        if policy.scope.key != row["scope_key"]:
            raise PolicyError("its scope does not agree with the stored scope key")
        return PolicyRecord(row["id"], policy, row["created_at"], row["updated_at"])
    except Exception as exc:  # anything wrong with a stored row makes it corrupt, never fatal
        return CorruptPolicy(row["id"], str(row["name"]), row["scope_key"], f"stored policy is invalid: {exc}", row["created_at"], row["updated_at"])


class PolicyStore:
    """Create, update, delete, list and validate policies (SQLite through `Store`).

    Documents are validated on write and again on read. Reads for resolution
    are cached by the store's policy revision, which every write bumps in the
    same transaction, so an edit is seen by the very next resolution.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache_revision: int | None = None
        self._cache: list[PolicyRecord | CorruptPolicy] = []

    @staticmethod
    def validate(doc: object) -> Policy:
        """Check a document without storing it (PolicyError on problems)."""
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if k not in READ_ONLY_FIELDS}
        return Policy.from_document(doc)

    def create(self, doc: object) -> PolicyRecord:
        policy = self.validate(doc)
        policy_id = "pol_" + _random.token_hex(10)
        self._write(lambda: self.store.insert_egress_policy(policy_id, name=policy.name, scope_key=policy.scope.key, document=json.dumps(policy.to_document())), policy)
        record = self.get(policy_id)
        assert isinstance(record, PolicyRecord)
        return record

    def update(self, policy_id: str, doc: object) -> PolicyRecord | None:
        """Replace a policy's document; None if there is no such policy."""
        policy = self.validate(doc)
        found = self._write(lambda: self.store.update_egress_policy(policy_id, name=policy.name, scope_key=policy.scope.key, document=json.dumps(policy.to_document())), policy)
        if not found:
            return None
        record = self.get(policy_id)
        assert isinstance(record, PolicyRecord)
        return record

    def delete(self, policy_id: str) -> bool:
        return self.store.delete_egress_policy(policy_id)

    def get(self, policy_id: str) -> PolicyRecord | CorruptPolicy | None:
        row = self.store.egress_policy(policy_id)
        return None if row is None else _record_from_row(row)

    def list(self) -> list[PolicyRecord | CorruptPolicy]:
        """Every stored policy, most specific scope first (the order resolution uses)."""
        return sorted((_record_from_row(r) for r in self.store.egress_policies()), key=_list_order)

    def current(self) -> list[PolicyRecord | CorruptPolicy]:
        """All policies as of now: re-read only when the revision moved."""
        revision = self.store.egress_revision()
        if revision != self._cache_revision:
            self._cache = [_record_from_row(r) for r in self.store.egress_policies()]
            self._cache_revision = revision
        return self._cache

    def _write(self, op: Callable[[], Any], policy: Policy) -> Any:
        from ..store import Conflict

        try:
            return op()
        except Conflict as exc:
            if exc.field == "name":
                raise PolicyConflict(f"a policy named {policy.name!r} already exists; choose another name or update that policy") from None
            raise PolicyConflict(f"a policy for {policy.scope.describe()} already exists; update it instead (one policy per scope)") from None


def _specificity(record: PolicyRecord) -> tuple[int, int, float, str]:
    scope = record.policy.scope
    return (SCOPE_RANK[scope.kind], -len(scope.matchers), -record.updated_at, record.id)


def _list_order(record: PolicyRecord | CorruptPolicy) -> tuple[int, int, float, str]:
    if isinstance(record, CorruptPolicy):
        return (-1, 0, -record.updated_at, record.id)  # broken ones first: they need attention
    return _specificity(record)


# ---------------------------------------------------------------------- resolution


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
        where = f"{_display_host(req.host)}:{req.port}"
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
            return Decision.deny("default:no-policy", f"no egress policy applies to this session, so {where} is denied; add a policy (see the README, Egress policies)")
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
        if not isinstance(injection, Injection) or not _TOKEN.fullmatch(injection.header) or not SECRET_NAME.fullmatch(injection.secret_name):
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
            chain.sort(key=_specificity)
            return EffectivePolicy(context, system=self.system, chain=chain, middleware=self.middleware)
        except Exception as exc:
            return EffectivePolicy(context, system=self.system, middleware=self.middleware,
                                   error=("error:resolve", f"egress policies could not be read ({type(exc).__name__}); every request is refused"))

    def decide(self, context: SessionContext, method: str, scheme: str, host: str, port: int | None, path: str | None, *, websocket: bool = False) -> Decision:
        """`resolve(context).decide(…)` in one call."""
        return self.resolve(context).decide(method, scheme, host, port, path, websocket=websocket)
