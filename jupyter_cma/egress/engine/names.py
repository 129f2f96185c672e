"""The names a request carries: its Host header against its destination, and cma.internal in any spelling."""

from __future__ import annotations

from mitmproxy.net.http import url

from ..policy import DEFAULT_PORTS, INTERNAL_HOST, PolicyError, display_host, normalize_host


def hostport(host: str, port: int, scheme: str = "https") -> str:
    """A canonical host (as `normalize_host` gives it) with its port, the port left out when it is the scheme's default."""
    shown = display_host(host)
    return shown if port == DEFAULT_PORTS.get(scheme) else f"{shown}:{port}"


def is_internal_host(host: str | None) -> bool:
    """Whether a requested host is cma.internal (in any spelling `normalize_host` accepts)."""
    try:
        return bool(host) and normalize_host(host) == INTERNAL_HOST
    except PolicyError:
        return False


def authority_names(authority: str | None, host: str, port: int, scheme: str) -> bool:
    """Whether a Host header (or :authority) names host:port (no port: the scheme's default)."""
    if not authority:
        return False
    try:
        name, named_port = url.parse_authority(authority, check=True)
        return normalize_host(name) == host and (named_port or DEFAULT_PORTS[scheme]) == port
    except (ValueError, PolicyError, KeyError):
        return False
