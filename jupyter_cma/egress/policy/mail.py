"""Mail in a policy: the `email` field (`EmailRules`), its address patterns and the one way addresses are read.

The email built-ins send mail only to recipients the session's deciding policy
lists under `"email": {"recipients": [...]}`; with no list, nothing is allowed
(fail closed). A pattern is `local@domain`: the local part exact (compared
without regard to case) or `*` for any, the domain written like a host pattern
(an exact name, or `*.example.org` for its subdomains at any depth, never a
public suffix), without a port and never an IP address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from .errors import PolicyError
from .hosts import HostPattern, is_ip_literal, normalize_host

# The dot-atom of RFC 5322 (no quoted local parts: they are rare and easy to misread).
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
MAX_RECIPIENT_PATTERNS = 1000


def _check_local(local: str, raw: str) -> None:
    if not local or len(local) > 64 or not _LOCAL.fullmatch(local):
        raise PolicyError(f"{raw!r}: the part before '@' must be 1-64 letters, digits and !#$%&'*+/=?^_`{{|}}~.- "
                          "(no quotes, no leading, trailing or double dots)")


def parse_address(raw: object) -> str:
    """One mail address in canonical form (`local@domain`, the domain normalised like a host), or PolicyError.

    Takes `ada@example.org` or `Ada Lovelace <ada@example.org>`; refuses lists,
    line breaks, quoted local parts, IP-address domains and anything that does
    not name exactly one address.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise PolicyError("an address must be a non-empty string such as 'ada@example.org'")
    if len(raw) > 400 or any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise PolicyError(f"{raw[:60]!r}: an address is one line of at most 400 characters")
    found = getaddresses([raw])
    if len(found) != 1 or not found[0][1] or found[0][1].count("@") != 1:
        raise PolicyError(f"{raw!r} is not one mail address; write it as 'ada@example.org'")
    local, domain = found[0][1].rsplit("@", 1)
    _check_local(local, raw)
    try:
        host = normalize_host(domain)
    except PolicyError as exc:
        raise PolicyError(f"{raw!r}: the domain is not valid ({exc})") from None
    if is_ip_literal(host):
        raise PolicyError(f"{raw!r}: mail goes to a domain name, not an IP address")
    if "." not in host:
        raise PolicyError(f"{raw!r}: the domain needs a dot, as in 'example.org'")
    return f"{local}@{host}"


@dataclass(frozen=True)
class AddressPattern:
    """One allowed address or set of addresses: `ops@example.com`, `*@example.org`, `*@*.example.org`."""

    local: str  # "" for any local part
    domain: HostPattern  # port None; a wildcard matches subdomains only, as for hosts

    @classmethod
    def parse(cls, text: object) -> AddressPattern:
        """Parse and check a pattern; PolicyError says what to write instead."""
        if not isinstance(text, str) or "@" not in text:
            raise PolicyError(f"{text!r}: an address pattern is 'ops@example.com', '*@example.org' or '*@*.example.org'")
        if len(text) > 320 or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
            raise PolicyError(f"{text[:60]!r}: an address pattern is at most 320 characters, without whitespace")
        local, _, domain = text.rpartition("@")
        if local != "*":
            _check_local(local, text)
        if domain in ("*", "*.*", "**"):
            raise PolicyError(f"{text!r} would allow mail to any domain; list the domains the agent may write to")
        if ":" in domain or domain.startswith("["):
            raise PolicyError(f"{text!r}: a mail domain has no port and no brackets")
        try:
            pattern = HostPattern.parse(domain)
        except PolicyError as exc:
            raise PolicyError(f"{text!r}: {'; '.join(exc.problems)}") from None
        if is_ip_literal(pattern.host):
            raise PolicyError(f"{text!r}: mail goes to a domain name, not an IP address")
        return cls("" if local == "*" else local.lower(), pattern)

    def matches(self, address: str) -> bool:
        """Whether a canonical address (see `parse_address`) is covered."""
        local, _, domain = address.rpartition("@")
        if self.local and self.local != local.lower():
            return False
        return self.domain.matches_host(domain)

    def __str__(self) -> str:
        return f"{self.local or '*'}@{self.domain}"


@dataclass(frozen=True)
class EmailRules:
    """A policy's `email` field: the recipients its sessions may mail (none by default)."""

    recipients: tuple[AddressPattern, ...] = ()

    @classmethod
    def from_document(cls, raw: object) -> EmailRules:
        """`{"recipients": ["*@example.org", "ops@example.com"]}` → EmailRules; PolicyError lists every problem."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise PolicyError('email must be an object such as {"recipients": ["*@example.org"]}')
        extra = sorted(set(raw) - {"recipients"})
        if extra:
            raise PolicyError(f"unknown field(s) {extra}; email has recipients")
        listed = raw.get("recipients", [])
        if not isinstance(listed, list):
            raise PolicyError("recipients must be a list of address patterns such as [\"*@example.org\"]")
        if len(listed) > MAX_RECIPIENT_PATTERNS:
            raise PolicyError(f"recipients may hold at most {MAX_RECIPIENT_PATTERNS} entries")
        problems: list[str] = []
        patterns: list[AddressPattern] = []
        for i, entry in enumerate(listed):
            try:
                pattern = AddressPattern.parse(entry)
            except PolicyError as exc:
                problems.extend(f"recipients[{i}]: {p}" for p in exc.problems)
                continue
            if pattern not in patterns:
                patterns.append(pattern)
        if problems:
            raise PolicyError(problems)
        return cls(tuple(patterns))

    def to_document(self) -> dict[str, Any]:
        return {"recipients": [str(p) for p in self.recipients]}

    def match(self, address: str) -> AddressPattern | None:
        """The first pattern covering a canonical address, or None."""
        return next((p for p in self.recipients if p.matches(address)), None)
