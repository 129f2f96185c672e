"""The rules a policy is made of: allow rules (with presets), injections and private services.

Each rule knows what it matches and how it is written back into a document;
checking a document's entries and building these rules from them is
`document`'s job. `canonical_path` is how path conditions read a request's
path (an ambiguous path matches nothing).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from .hosts import DEFAULT_PORTS, SCHEME_FAMILY, HostPattern, display_host

READ_ONLY = ("GET", "HEAD")

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
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
HTTP_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_UNRESERVED_ESCAPE = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|[46][1-9a-fA-F]|[57][0-9aA]|3[0-9])")


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
        from ...anthropic_api import Secret

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
        return f"{self.scheme}://{display_host(self.host)}:{self.port}"

    def applies(self, scheme: str, host: str, port: int) -> bool:
        return SCHEME_FAMILY[scheme] == self.scheme and host == self.host and port == self.port

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"host": display_host(self.host), "scheme": self.scheme, "port": self.port,
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
        return f"{display_host(self.target_host)}:{self.target_port}"

    @property
    def rule_id(self) -> str:
        return f"private_service:{self.name_text}"

    @property
    def name_text(self) -> str:
        text = display_host(self.name) if self.port is None else f"{display_host(self.name)}:{self.port}"
        return f"{self.scheme}://{text}" if self.scheme else text

    def applies(self, scheme: str, host: str, port: int) -> bool:
        if host != self.name:
            return False
        if self.scheme is not None and SCHEME_FAMILY[scheme] != self.scheme:
            return False
        return port == (self.port if self.port is not None else DEFAULT_PORTS[scheme])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name_text, "target": self.target}
