"""Where a sandbox may connect: resolve a name once, check every address it has, pin the checked one.

`address_problem` says why an address is not globally routable (loopback,
private, link-local and cloud metadata, CGNAT, unique-local, multicast,
reserved, and those embedded in IPv4-mapped, -compatible, NAT64 or 6to4
forms). `Resolver.pin` gives the address a connection uses, so nothing
resolves the name again (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from .refusals import Refused

RESOLVE_TIMEOUT = 5.0
RESOLVE_CACHE_SECONDS = 30.0


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a sandbox may not connect to this address (None: globally routable)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or _ipv4_compatible(ip) or ip.sixtofour or _nat64(ip)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (in an IPv6 form)" if problem else "an IPv6 form of an IPv4 address (use the IPv4 address itself)"
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives here)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (CGNAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and (ip in _UNIQUE_LOCAL or ip.is_site_local):
        return "a unique-local or site-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _ipv4_compatible(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: and ::1, which are themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _nat64(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class Resolver:
    """Resolve once, check every answer, remember the checked answer for a short while.

    A name is refused if *any* of its addresses is not globally routable: a
    name that mixes public and internal answers is an attack, not a
    configuration. The checked address is what the connection uses.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, bool], tuple[float, str]] = {}

    async def pin(self, host: str, port: int, *, check: bool = True) -> str:
        """The address to connect to; `check=False` only for a destination the operator named (the API host)."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            if check:
                self._check(host, literal)
            return str(literal)
        key = (host, port, check)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError, UnicodeError) as exc:
            raise Refused(502, f"{host} could not be resolved ({type(exc).__name__}); nothing was sent", "resolve:failed") from None
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
            if check:
                self._check(host, address)
            addresses.append(str(address))
        if not addresses:
            raise Refused(502, f"{host} has no address; nothing was sent", "resolve:failed")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now + RESOLVE_CACHE_SECONDS, addresses[0])
        return addresses[0]

    @staticmethod
    def _check(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        problem = address_problem(address)
        if problem is not None:
            shown = host if host.strip("[]") == str(address) else f"{host} ({address})"
            raise Refused(
                403,
                f"{shown} is {problem}; sandboxes may only reach public addresses. To reach an internal "
                "service, an operator declares it as a private service in the egress policy",
                "address:not-public",
            )
