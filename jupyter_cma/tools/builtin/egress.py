"""`ToolEgress`: the one way a built-in tool reaches the network, as the session it runs for.

A built-in runs in the Jupyter server, which has a network of its own; a tool must not use it, or the
session's egress policy, its log and its injections would not apply to what the model asked for. So each
session gets a proxy socket attached *as that session* (sandbox id `tools-<session_id>`, through the
server's `EgressHook`, so policy matching sees the session's agent and metadata as for its sandbox), and
every request of a built-in goes through that socket, http and https alike (`http_client`).

Two things a sandbox's socket has are off on these. Calls to `http://cma.internal/` (the session's tools)
are refused on every tool socket: what a web page makes a tool (or the browser) request must never run the
session's tools. And the browser gets a socket of its own, `socket_path(session_id, injections=False)`
(sandbox id `browser-<session_id>`), through which the policy's injections are not added: a page's
JavaScript would otherwise make authenticated requests with the session's credentials. Both kinds are
decided and logged as the session all the same, and `release` detaches both.

What a tool shows the model of an answer passes through `scrub`: the values of the secrets the session's
policy injects (raw, JSON-escaped, URL-encoded, base64) are withheld, best effort (a service can always
transform a credential beyond recognition). `public_url` is the one check of a URL a tool is asked to open.

No egress engine means no socket, and then no network at all (fail closed): `unavailable()` says why and
what fixes it, and `socket_path` raises `ToolError` instead of ever falling back to a direct connection.

A refusal by the proxy is an HTTP answer carrying `X-CMA-Egress-Rule` and a text reason. For an https URL
it is the answer to the CONNECT, which httpcore turns into a bare `ProxyError("403 Forbidden")`, losing the
rule and the reason; the socket's stream here reads them as they arrive and raises `EgressRefused` (a
`ToolError` with the policy's reason) instead. A refused plain-http request (or a request refused inside
an opened tunnel) is an ordinary response, turned into the same error by the client's transport.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import logging
import os
import re
import shutil
import ssl
import tempfile
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import httpcore
import httpx

from .base import ToolError

if TYPE_CHECKING:
    from ...egress.policy import PolicyResolver
    from ...egress.proxy import EgressProxy
    from ...egress.secrets import SecretStore
    from ...sandboxes.base import EgressHook

log = logging.getLogger(__name__)

RULE_HEADER = "X-CMA-Egress-Rule"
SANDBOX_PREFIX = "tools-"  # a socket with the policy's injections
BROWSER_PREFIX = "browser-"  # a socket without them (socket_path(..., injections=False))
MIN_SECRET_TO_SCRUB = 4  # a shorter secret would blank out ordinary text; such a secret protects nothing anyway
# sun_path holds 108 bytes on Linux (104 on the BSDs) with its terminating NUL: stay well under it.
MAX_SOCKET_PATH = 100
MAX_REFUSAL_BYTES = 64 * 1024  # a refusal's answer is a line or two; more than this is not one of ours
# Any placeholder: connections never go to this name, the network backend below opens the session's socket instead.
PROXY_URL = "http://session-egress-socket.invalid/"
_REFUSAL_PREFIX = "jupyter-cma egress: "


class EgressRefused(ToolError):
    """The session's egress policy (or a proxy limit) refused a request: the message names the rule and the reason."""

    def __init__(self, status: int, rule: str, reason: str) -> None:
        self.status, self.rule, self.reason = status, rule, reason
        super().__init__(f"refused by the session's egress policy ({rule}): {reason}")


def refusal(status: int, rule: str, body: bytes) -> EgressRefused:
    """The error for a refusal answer (`status`, its `X-CMA-Egress-Rule`, its text body)."""
    text = body[:MAX_REFUSAL_BYTES].decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else ""
    reason = first[len(_REFUSAL_PREFIX):] if first.startswith(_REFUSAL_PREFIX) else text[:500]
    return EgressRefused(status, rule, reason or f"HTTP {status}")


def public_url(url: str) -> str:
    """`url` checked for a tool to open: http or https, with a host, without credentials; returned stripped.

    Raises `ToolError` saying what to send instead. Where it leads is the egress policy's to decide (the proxy
    refuses internal addresses and hosts the policy does not allow); this only keeps out what no policy
    should be asked about: other schemes (file:, data:, javascript:, …) and `user:password@` in the URL
    (credentials reach a service through the policy's injections, not through what the model writes).
    """
    text = url.strip() if isinstance(url, str) else ""
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ToolError(f"send an http:// or https:// URL with a host, such as https://example.org/page; got {str(url)[:200]!r}")
    if parsed.userinfo:
        raise ToolError("send the URL without a user name or password before the host (user:password@); credentials "
                        "for a service are added by the session's egress policy, never written into a URL")
    return str(parsed)


class _SniffingStream(httpcore.AsyncNetworkStream):
    """A connection to the session's socket that turns a refused CONNECT into `EgressRefused`.

    httpcore sends the CONNECT as this connection's first write and reads its answer through `read`; a
    non-2xx answer naming an egress rule is read whole (head and its short body) and raised here, so the
    reason reaches the tool. Once the tunnel is up (`start_tls`), the TLS stream is used as it is.
    """

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._first_write = True
        self._watching = False  # the first request on this connection is a CONNECT whose answer is not read yet
        self._head = b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._first_write:
            self._first_write = False
            self._watching = buffer.startswith(b"CONNECT ")
        await self._stream.write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._stream.read(max_bytes, timeout)
        if self._watching:
            self._head += data
            if b"\r\n\r\n" in self._head or not data or len(self._head) > MAX_REFUSAL_BYTES:
                self._watching = False
                await self._raise_refusal(timeout)
        return data

    async def _raise_refusal(self, timeout: float | None) -> None:
        head, _, body = self._head.partition(b"\r\n\r\n")
        self._head = b""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or 200 <= int(parts[1]) < 300:
            return  # the tunnel is open (or not an answer at all: httpcore says so itself)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        rule = headers.get(RULE_HEADER.lower())
        if not rule:
            return  # not the egress proxy's refusal: httpcore's ProxyError carries the status
        try:
            length = min(int(headers.get("content-length", "0")), MAX_REFUSAL_BYTES)
        except ValueError:
            length = 0
        while len(body) < length:
            chunk = await self._stream.read(length - len(body), timeout)
            if not chunk:
                break
            body += chunk
        raise refusal(int(parts[1]), rule, body)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return await self._stream.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _SocketBackend(httpcore.AsyncNetworkBackend):
    """Every connection httpcore opens (always to the proxy: see `_ProxyTransport`) is the session's Unix socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return await self.connect_unix_socket(self.socket_path, timeout)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return _SniffingStream(await self._backend.connect_unix_socket(self.socket_path, timeout))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _ProxyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its pool replaced by an HTTP-proxy pool over the session's Unix socket.

    Why the pool is replaced: httpx builds its proxy pool (`httpcore.AsyncHTTPProxy`) without a `uds`
    or a network backend, and `AsyncHTTPProxy`'s own `uds=` is not passed on to the forward and tunnel
    connections it makes (they dial the proxy's host and port over TCP). A network backend whose every
    connection is the socket is the one way to get both plain requests (absolute-form through the proxy)
    and https (CONNECT, then TLS verified end to end) onto it. Keeping httpx's transport around that
    pool keeps its exception mapping and response streams.
    """

    def __init__(self, socket_path: str, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.AsyncHTTPProxy(
            proxy_url=PROXY_URL, ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_SocketBackend(socket_path))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        rule = response.headers.get(RULE_HEADER)
        if rule and response.status_code >= 400:
            # The proxy refused this request (plain http, or one request inside an opened tunnel). A site could send
            # the header itself; it would only make its own error read as a refusal, which it can do in its body anyway.
            body = b""
            try:
                async for chunk in response.stream:  # type: ignore[union-attr]
                    body += chunk
                    if len(body) > MAX_REFUSAL_BYTES:
                        break
            finally:
                await response.aclose()
            raise refusal(response.status_code, rule, body)
        return response


class ToolEgress:
    """Per-session proxy sockets for built-in tools, and HTTP clients that use nothing else."""

    def __init__(self, *, hook: EgressHook, proxy: EgressProxy, socket_dir: Path, policies: PolicyResolver | None = None,
                 secrets: SecretStore | None = None) -> None:
        self.hook = hook
        self.proxy = proxy
        self.socket_dir = Path(socket_dir)
        # What `scrub` reads (the session's injections, their secrets); `bind` sets them when the server starts.
        self.policies = policies
        self.secrets = secrets
        self._sockets: dict[tuple[str, bool], str] = {}  # (session id, injections) → its attached socket's path
        self._locks: dict[tuple[str, bool], asyncio.Lock] = {}
        self._unbound_warned = False
        self._short_dir: Path | None = None  # used when socket_dir is too long a path for a socket
        self._ssl: tuple[tuple[Any, ...], ssl.SSLContext] | None = None

    @property
    def ca_bundle(self) -> Path:
        """The CAs a client of the proxy trusts: the system's plus the proxy's own (it signs the tunnels it opens)."""
        return self.proxy.ca_bundle

    def unavailable(self) -> str | None:
        """None when the egress engine runs; else why the tools cannot reach the network, and the fix."""
        if not self.proxy.available:
            return (f"the egress engine is not installed ({self.proxy.python} is missing), and built-in tools reach the "
                    "network only through it; run `jupyter cma install-egress-engine` and restart the server")
        if not self.proxy.running:
            why = self.proxy.error or "it has not started"
            return f"the egress engine is not running ({why}); built-in tools have no network until it runs (see the server log)"
        return None

    def bind(self, *, policies: PolicyResolver, secrets: SecretStore) -> None:
        """The server's policy resolver and secret store, for `scrub` (the server passes them when it starts)."""
        self.policies, self.secrets = policies, secrets

    async def socket_path(self, session_id: str, *, injections: bool = True) -> str:
        """The session's proxy socket, attached as the session on first use (ToolError when there is no engine).

        `injections=False`: a socket of its own (sandbox id `browser-<session_id>`) through which the session's
        policy injections are not added — for a browser, whose pages' JavaScript could otherwise spend them.
        Neither kind reaches http://cma.internal/ (the session's tools).
        """
        key = (session_id, bool(injections))
        sandbox_id = self._sandbox_id(session_id, injections=key[1])
        path = self._sockets.get(key)
        if path is not None and self.proxy.attachments.get(sandbox_id) is not None:
            return path
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            path = self._sockets.get(key)
            if path is not None and self.proxy.attachments.get(sandbox_id) is not None:
                return path
            reason = self.unavailable()
            if reason:
                raise ToolError(f"no network for built-in tools: {reason}")
            path = self._path_for(session_id, injections=key[1])
            await self.hook.attach(sandbox_id, path, session_id=session_id, internal_route=False, inject=key[1])
            if self.proxy.attachments.get(sandbox_id) is None or not os.path.exists(path):
                # The proxy made no socket (its engine is gone): never fall back to a direct connection.
                raise ToolError("no network for built-in tools: the egress proxy did not attach this session; "
                                f"{self.unavailable() or 'see the server log'}")
            self._sockets[key] = path
            return path

    def scrub(self, session_id: str, text: str) -> str:
        """`text` with the values of the secrets the session's policy injects withheld: `[secret NAME withheld]`.

        Best effort: each value is replaced as it is, HTML- and JSON-escaped, URL-encoded (`quote`, `quote_plus`, either case of
        hex) and base64-encoded (standard and URL-safe, with or without padding; the injected header value with its
        prefix too). A service can still transform a credential in ways no scrub recognises (a part of it, a
        hash, another encoding); the first defence is that tools which load arbitrary pages (the browser) get no
        injections at all. Secrets shorter than 4 characters are not scrubbed (they would blank out ordinary text).
        """
        if not text:
            return text
        forms = self._secret_forms(session_id)
        for form, name in forms:
            if form in text:
                text = text.replace(form, f"[secret {name} withheld]")
        return text

    def http_client(self, session_id: str, socket_path: str, *, timeout: float) -> httpx.AsyncClient:
        """An HTTP client whose every request goes through `socket_path` as the session; redirects are not followed.

        TLS is verified against `ca_bundle` (and the operator's `EgressProxy.upstream_ca`, which the proxy
        trusts for private services). The environment's proxy and certificate settings are ignored. A
        refusal raises `EgressRefused`.
        """
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
        transport = _ProxyTransport(socket_path, self._ssl_context(), limits)
        return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=False,
                                 trust_env=False, headers={"Accept-Encoding": "gzip, deflate"})

    async def release(self, session_id: str) -> None:
        """The session's sandbox is gone: its sockets (both kinds) stop being served (a later call attaches again)."""
        for injections in (True, False):
            key = (session_id, injections)
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                path = self._sockets.pop(key, None)
                if path is not None:
                    await self.hook.detach(self._sandbox_id(session_id, injections=injections), path, session_id=session_id)
                    Path(path).unlink(missing_ok=True)
            self._locks.pop(key, None)

    async def close(self) -> None:
        """The server is stopping: detach every session's sockets."""
        for session_id in {sid for sid, _ in self._sockets}:
            try:
                await self.release(session_id)
            except Exception:  # keep releasing the others
                pass
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _sandbox_id(session_id: str, *, injections: bool = True) -> str:
        return f"{SANDBOX_PREFIX if injections else BROWSER_PREFIX}{session_id}"

    def _path_for(self, session_id: str, *, injections: bool = True) -> str:
        """A short socket path: a digest of the sandbox id, in `socket_dir` or, if that is too long, a private temp dir."""
        name = hashlib.sha256(self._sandbox_id(session_id, injections=injections).encode()).hexdigest()[:20] + ".sock"
        directory = self.socket_dir
        if len(str(directory / name).encode()) > MAX_SOCKET_PATH:
            if self._short_dir is None:
                self._short_dir = Path(tempfile.mkdtemp(prefix="cma-tools-"))  # 0700
            directory = self._short_dir
        else:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(directory / name)

    def _secret_forms(self, session_id: str) -> list[tuple[str, str]]:
        """(form, secret name) of every injected value's recognisable forms, longest first (so a longer form is
        withheld whole before a shorter one inside it)."""
        if self.policies is None or self.secrets is None:
            if not self._unbound_warned:
                self._unbound_warned = True
                log.warning("jupyter-cma: ToolEgress.scrub has no policy resolver or secret store (bind was not called); "
                            "tool results are not scrubbed of injected secrets")
            return []
        effective = self.policies.resolve(self.policies.context_for(session_id))
        record = effective.deciding  # injections come from the deciding policy only (EffectivePolicy.decide)
        forms: dict[str, str] = {}
        for rule in record.policy.inject if record is not None else ():
            injection = rule.injection
            try:
                secret = self.secrets.get(injection.secret_name)
            except Exception:  # an unreadable secret is not injected either
                secret = None
            if secret is None:
                continue
            raw = secret.reveal()
            if len(raw) < MIN_SECRET_TO_SCRUB:
                continue
            candidates = _encodings(raw)
            if injection.prefix:
                # The header value's other forms hold the raw value's (the prefix stays readable); its base64 does not.
                candidates |= _base64_forms(injection.prefix + raw)
            for form in candidates:
                forms.setdefault(form, injection.secret_name)
        return sorted(forms.items(), key=lambda item: -len(item[0]))

    def _ssl_context(self) -> ssl.SSLContext:
        """Made once per CA bundle version (loading the system's CAs costs milliseconds)."""
        files = [Path(self.ca_bundle)]
        upstream = self.proxy.upstream_ca
        if upstream:
            files.append(Path(upstream))
        key = tuple((str(f), f.stat().st_mtime_ns if f.exists() else None) for f in files)
        if self._ssl is not None and self._ssl[0] == key:
            return self._ssl[1]
        if not files[0].exists():
            raise ToolError("no network for built-in tools: the egress proxy's CA bundle is not written yet "
                            "(the engine has not started); see the server log")
        context = ssl.create_default_context(cafile=str(files[0]))
        for extra in files[1:]:
            if extra.exists():
                context.load_verify_locations(cafile=str(extra))
        self._ssl = (key, context)
        return context


def _encodings(value: str) -> set[str]:
    """The forms of `value` a service's answer may carry it in: as it is, HTML- and JSON-escaped, URL-encoded, base64."""
    forms = {value, html.escape(value), html.escape(value, quote=False)}
    escaped = json.dumps(value)[1:-1]  # \uXXXX for non-ASCII
    forms.add(escaped)
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.add(escaped.replace("/", "\\/"))  # PHP's escaped slashes
    forms.add(escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))  # Go's HTML-safe JSON
    for encoded in (quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")):
        forms.add(encoded)
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded))
    forms |= _base64_forms(value)
    return {form for form in forms if len(form) >= MIN_SECRET_TO_SCRUB}


def _base64_forms(value: str) -> set[str]:
    """`value` in base64, standard and URL-safe, with and without its padding."""
    forms = set()
    data = value.encode()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = encoded.decode("ascii")
        forms.update((text, text.rstrip("=")))
    return forms
