"""How notebook code reaches its Jupyter server's jupyter-cma REST API, and as whom.

In a kernel the server started, nothing is configured: the server puts its own address in its kernels'
environment (`JUPYTER_CMA_SERVER_URL`, never a token), and each request is signed with the kernel's own
message key (`client/signing.py`), which the server checks — so the kernel needs no token, and the server
knows which kernel asks. Elsewhere (a script, a kernel of another server) `connect(url, token=...)` or the
environment variables `JUPYTER_CMA_URL` and `JUPYTER_CMA_TOKEN` say where and with which Jupyter token.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .signing import authorization

SERVER_URL_ENV = "JUPYTER_CMA_SERVER_URL"  # set by the server for the kernels it starts (an address, not a secret)
USER_URL_ENV, USER_TOKEN_ENV = "JUPYTER_CMA_URL", "JUPYTER_CMA_TOKEN"  # set by a user, for scripts
API = "cma/api/"

__all__ = ["CMAError", "Connection", "connect", "connection"]


class CMAError(Exception):
    """The server refused a request, or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class KernelIdentity:
    """The kernel this code runs in, as the server knows it: its id and its message-signing key."""

    kernel_id: str
    key: bytes


def current_kernel() -> KernelIdentity | None:
    """This process's kernel identity, when it is an ipykernel started from a connection file named by its id."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    session = getattr(kernel, "session", None)
    if session is None or not getattr(session, "key", None):
        return None
    try:
        from ipykernel.connect import get_connection_file

        name = Path(get_connection_file()).name
    except Exception:
        return None
    if not (name.startswith("kernel-") and name.endswith(".json")):
        return None
    return KernelIdentity(name[len("kernel-"):-len(".json")], bytes(session.key))


@dataclass(frozen=True)
class Connection:
    """Where the server is (its base URL, ending in '/') and how to prove who asks (a kernel's key or a token)."""

    base_url: str
    kernel: KernelIdentity | None = None
    token: str | None = None
    timeout: float = 60.0

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        return self.base_url + API + path.lstrip("/") + (f"?{urlencode(query)}" if query else "")

    def _headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if body else {}
        if self.kernel is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            uri = parts.path + (f"?{parts.query}" if parts.query else "")
            headers["Authorization"] = authorization(self.kernel.key, self.kernel.kernel_id, method, uri, body)
        elif self.token:
            headers["Authorization"] = f"token {self.token}"
        return headers

    def request(self, method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """One REST call: the answer's JSON (None for an empty answer); CMAError with the server's message."""
        import httpx

        url = self.url(path, params)
        data = b"" if body is None else json.dumps(body).encode()
        try:
            response = _http().request(method, url, content=data or None, headers=self._headers(method, url, data),
                                       timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise CMAError(f"could not reach the jupyter-cma server at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise CMAError(_message(response), response.status_code)
        return response.json() if response.content else None

    def download(self, path: str, *, timeout: float | None = None) -> bytes:
        """A binary answer (e.g. a notebook export)."""
        import httpx

        url = self.url(path)
        try:
            response = _http().get(url, headers=self._headers("GET", url, b""), timeout=timeout or self.timeout)
        except httpx.HTTPError as exc:
            raise CMAError(f"could not reach the jupyter-cma server at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise CMAError(_message(response), response.status_code)
        return response.content


_client: Any = None  # one httpx.Client for the process: a new client per request costs ~30 ms (its TLS context)
_client_lock = threading.Lock()


def _http() -> Any:
    """The process's HTTP client, made on first use (httpx is imported then: importing jupyter_cma stays cheap)."""
    global _client
    with _client_lock:
        if _client is None:
            import httpx

            _client = httpx.Client()
        return _client


def _message(response: Any) -> str:
    try:
        message = response.json().get("message")
    except ValueError:
        message = None
    if response.status_code == 403 and not message:
        message = "the server refused the request (403): check the token, or run this in a kernel the server started"
    if response.status_code == 404 and not message:
        message = "not found (404): is jupyter-cma enabled on this Jupyter server? (`jupyter server extension list`)"
    return f"{message or response.reason_phrase} ({response.status_code})"


_explicit: Connection | None = None


def connect(url: str, token: str | None = None) -> Connection:
    """Use the jupyter-cma server at `url` (its Jupyter base URL) with a Jupyter `token`, instead of finding it."""
    global _explicit
    _explicit = Connection(url.rstrip("/") + "/", token=token)
    return _explicit


def connection() -> Connection:
    """The connection to use now: `connect(...)`'s, else the environment's, else this kernel's own server."""
    if _explicit is not None:
        return _explicit
    if os.environ.get(USER_URL_ENV):
        return Connection(os.environ[USER_URL_ENV].rstrip("/") + "/", token=os.environ.get(USER_TOKEN_ENV) or None)
    server = os.environ.get(SERVER_URL_ENV)
    kernel = current_kernel()
    if server and kernel is not None:
        return Connection(server.rstrip("/") + "/", kernel=kernel)
    raise CMAError("jupyter-cma could not find its Jupyter server: run this in a notebook opened from a Jupyter server "
                   "with jupyter-cma enabled, or call cma.connect(url, token=...) (or set JUPYTER_CMA_URL and "
                   "JUPYTER_CMA_TOKEN)")
