"""Names and host patterns: the canonical form of a host, ports, and the patterns policies list.

Every name a policy holds or a request carries goes through `normalize_host`
(lower case, one trailing dot dropped, IDNA, compressed IPv6), so both sides
compare canonical text. `HostPattern` is one entry of an allow or deny list;
`is_public_suffix` is why `*.co.uk` is refused. `display_host` and
`is_ip_literal` are shared with the egress engine, which shows and pins the
same canonical names.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import idna

from .errors import PolicyError

# The server's own endpoint for sandboxes (its tool registry), plain http on port 80 only. The proxy answers it
# itself before any policy, DNS or connection: it is never a destination, and no policy rule about it applies.
INTERNAL_HOST = "cma.internal"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# ws/wss are the http/https of a WebSocket upgrade: same ports, same rules.
SCHEME_FAMILY = {"http": "http", "https": "https", "ws": "http", "wss": "https"}

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
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


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


def is_ip_literal(host: str) -> bool:
    """Whether a canonical host is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def display_host(host: str) -> str:
    """A canonical host as it is written in a URL or next to a port: an IPv6 address in brackets."""
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
            if is_ip_literal(host):
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
        base = "*" if self.every_host else ("*." if self.wildcard else "") + display_host(self.host)
        return base if self.port is None else f"{base}:{self.port}"
