"""What every REST handler under `{base_url}cma/api/` shares: `CMAHandler`, input checking, error writing.

Every REST handler is `@tornado.web.authenticated` and `@authorized` with the
`cma` auth resource, so a JupyterHub or custom authorizer can grant or deny
jupyter-cma separately from the rest of the server. The webhook route is the
one exception, guarded by its signature (`web/webhooks.py`). Dependencies
arrive as typed `initialize(...)` keyword arguments, each handler only those
it uses (the route table, `web/handlers.py`, hands them out), never through
globals.

A notebook kernel this server started needs no token: it signs each request with its own message key
(`client/signing.py`), `prepare` checks the signature against the server's kernels (`KernelCredentials`,
given in the tornado setting `KERNEL_CREDENTIALS`), and the handler knows the kernel (`self.kernel_id`). A
kernel's signature opens jupyter-cma's routes only, not the rest of the Jupyter server.

Errors are JSON `{"message": …}` with a message that says what to do. Every
input is checked before any call to Anthropic's API or write to the store: a
JSON body is read by `jsonbody.read_json` (one way for every route) and
validated with the route's model in `web/schemas.py`, as is each query string;
path parameters are held to their patterns by the route table. Bad input gets a
4xx, never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import tornado.web
from jupyter_server.auth import User
from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, ValidationError

from ..client.signing import SCHEME
from ..jsonbody import JSONBodyError, read_json
from ..tools.kernels import KernelAuthError
from .schemas import explain

if TYPE_CHECKING:
    from ..sandboxes.base import Tier
    from ..tools.kernels import KernelCredentials

AUTH_RESOURCE = "cma"
KERNEL_CREDENTIALS = "jupyter_cma_kernel_credentials"  # the tornado setting holding the KernelCredentials
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class CMAHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-cma REST handler: JSON in, JSON out, `cma` auth resource.

    Subclasses take what they use as keyword arguments of `initialize(self, name, *, …)`, and pass `name` (the
    extension's, added by `ExtensionApp`) on to this one.
    """

    auth_resource = AUTH_RESOURCE
    kernel_id: str | None = None  # the kernel of this server that signed the request, if one did

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate a kernel-signed request by its signature; any other the Jupyter server's way."""
        credentials: KernelCredentials | None = self.settings.get(KERNEL_CREDENTIALS)
        header = self.request.headers.get("Authorization", "")
        if credentials is None or not header.startswith(f"{SCHEME} "):
            await super().prepare()
            return
        # What JupyterHandler.prepare does for any request, with the kernel as the user.
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        if not self.check_host():
            raise tornado.web.HTTPError(403)
        try:
            kernel_id = credentials.verify(header, self.request.method or "", self.request.uri or "", self.request.body)
        except KernelAuthError as exc:
            self.current_user = self._jupyter_current_user = None
            raise tornado.web.HTTPError(403, str(exc)) from None
        self.kernel_id = kernel_id
        self.current_user = self._jupyter_current_user = User(username=f"kernel-{kernel_id}", name=f"kernel {kernel_id}")
        self.set_cors_headers()
        # No XSRF check: XSRF rides on a browser's cookie, and this request is authenticated by its signature alone
        # (over its method, path and body), which no page can make without the kernel's key.

    def json_object(self) -> dict[str, Any]:
        """The request body as a JSON object (no body: `{}`); 400 (413 when too large) saying what to send.

        The Content-Type is not checked: `curl -d` labels JSON as a form, and the body decides.
        """
        if not self.request.body:
            return {}
        try:
            value = read_json(self.request.body)
        except JSONBodyError as exc:
            raise tornado.web.HTTPError(exc.status, exc.message) from None
        if not isinstance(value, dict):
            raise tornado.web.HTTPError(400, f"the body must be a JSON object ({{…}}), not {_json_kind(value)}")
        return value

    def body(self, model: type[M]) -> M:
        """The request body validated by the route's model (`web/schemas.py`)."""
        data = self.json_object()
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise tornado.web.HTTPError(400, explain(model, exc)) from None

    def query(self, model: type[M]) -> M:
        """The query string validated by the route's model; only its own parameters are read (the last of repeated ones)."""
        # get_query_argument refuses text that is not UTF-8 with a 400; body arguments of a form never count here.
        values = {name: self.get_query_argument(name) for name in model.model_fields if name in self.request.query_arguments}
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise tornado.web.HTTPError(400, explain(model, exc)) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """APIHandler's JSON error, with the message as it was raised.

        APIHandler shows `HTTPError.log_message`, which tornado escapes for logging (a `%` in a message that
        quotes the client's input came out doubled); `get_message()` is the message itself.
        """
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, tornado.web.HTTPError) or not exc.get_message():
            super().write_error(status_code, **kwargs)  # "Unhandled error", never the exception's text
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": exc.get_message(), "reason": exc.reason}))

    async def upstream(self, call: Awaitable[T]) -> T:
        """Await a call to Anthropic's API, turning its failures into clear JSON errors."""
        import anthropic

        try:
            return await call
        except anthropic.AuthenticationError:
            raise tornado.web.HTTPError(502, "Anthropic's API rejected this server's API key; check the api_key setting") from None
        except anthropic.NotFoundError as exc:
            raise tornado.web.HTTPError(404, f"not found upstream: {_upstream_message(exc)}") from None
        except anthropic.APIStatusError as exc:
            status = exc.status_code if 400 <= exc.status_code < 500 else 502
            raise tornado.web.HTTPError(status, f"Anthropic's API answered {exc.status_code}: {_upstream_message(exc)}") from None
        except anthropic.APIConnectionError:
            raise tornado.web.HTTPError(502, "could not reach the Managed Agents API; check api_base_url and the network") from None


def _upstream_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return type(exc).__name__


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def known_tier(tiers: Mapping[str, Tier], tier: str) -> str:
    """A tier a client named, checked against the tiers this server runs."""
    if tier not in tiers:
        raise tornado.web.HTTPError(400, f"tier must be one of {sorted(tiers)} on this server")
    return tier
