"""Kernel credentials: how a notebook kernel proves to its Jupyter server which kernel it is.

A kernel started by a Jupyter server shares one secret with it: the HMAC key in the kernel's connection
file, with which both sign every Jupyter message. A kernel signs its requests to jupyter-cma's REST API with
that key, so the server knows which of its kernels sent a request — without any token in the kernel's
environment (where `!env` or a shared notebook would show it), and so that no kernel can register tools for
another. The request carries

    Authorization: CMA-Kernel kernel=<kernel id>, ts=<unix seconds>, nonce=<hex>, sig=<hex>

where `sig` is HMAC-SHA256(key, the canonical request below). The server accepts a signature once
(nonce), within `MAX_SKEW` seconds of its clock.

Standard library only: both the kernel side and the server import it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from urllib.parse import unquote

SCHEME = "CMA-Kernel"
MAX_SKEW = 300  # seconds either way: a request older (or newer) than this is refused
_HEADER = re.compile(r"^CMA-Kernel kernel=([0-9a-fA-F-]{1,64}), ts=(\d{1,12}), nonce=([0-9a-f]{16,64}), sig=([0-9a-f]{64})$")


def canonical(kernel_id: str, ts: int, nonce: str, method: str, uri: str, body: bytes) -> bytes:
    """What is signed: the kernel, the time, the nonce, the method, the path with its query, the body's hash.

    The path is compared decoded (`/a%40b/` and `/a@b/` are one path to a server) and an empty query is none, so
    a client and the server agree however each spells the request line.
    """
    path, _, query = uri.partition("?")
    target = unquote(path) + (f"?{query}" if query else "")
    return "\n".join([kernel_id, str(ts), nonce, method.upper(), target, hashlib.sha256(body).hexdigest()]).encode()


def authorization(key: bytes, kernel_id: str, method: str, uri: str, body: bytes = b"", *, now: float | None = None) -> str:
    """The Authorization header value for one request of kernel `kernel_id` (`uri`: path and query as sent)."""
    ts = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    sig = hmac.new(key, canonical(kernel_id, ts, nonce, method, uri, body), hashlib.sha256).hexdigest()
    return f"{SCHEME} kernel={kernel_id}, ts={ts}, nonce={nonce}, sig={sig}"


class KernelSignature:
    """A parsed `CMA-Kernel` Authorization header (not yet verified)."""

    def __init__(self, kernel_id: str, ts: int, nonce: str, sig: str) -> None:
        self.kernel_id, self.ts, self.nonce, self.sig = kernel_id, ts, nonce, sig

    @classmethod
    def parse(cls, header: str | None) -> KernelSignature | None:
        """The signature in an Authorization header; None when the header uses another scheme (or none)."""
        if not header or not header.startswith(SCHEME + " "):
            return None
        match = _HEADER.fullmatch(header.strip())
        if match is None:
            raise ValueError(f"a {SCHEME} Authorization header is `{SCHEME} kernel=<id>, ts=<seconds>, nonce=<hex>, sig=<hex>`")
        kernel_id, ts, nonce, sig = match.groups()
        return cls(kernel_id.lower(), int(ts), nonce, sig)

    def matches(self, key: bytes, method: str, uri: str, body: bytes) -> bool:
        """Whether this signature was made with `key` over this very request."""
        expected = hmac.new(key, canonical(self.kernel_id, self.ts, self.nonce, method, uri, body), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.sig)

    def fresh(self, now: float | None = None) -> bool:
        return abs((time.time() if now is None else now) - self.ts) <= MAX_SKEW
