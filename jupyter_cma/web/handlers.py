"""REST handlers under `{base_url}cma/api/`.

Every handler is `@tornado.web.authenticated` and `@authorized` with the
`cma` auth resource, so a JupyterHub or custom authorizer can grant or deny
jupyter-cma separately from the rest of the server. Dependencies arrive
through the handler tuple (`initialize` kwargs), never through globals.
"""

from __future__ import annotations

from typing import Any, Callable

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

AUTH_RESOURCE = "cma"


class CMAHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-cma REST handler: JSON in, JSON out, `cma` auth resource."""

    auth_resource = AUTH_RESOURCE


class StatusHandler(CMAHandler):
    """`GET cma/api/status`: version, mode, missing settings (names only), sandbox tiers."""

    def initialize(self, name: str, status: Callable[[], dict[str, Any]]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._status = status

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self._status())


def handlers(status: Callable[[], dict[str, Any]]) -> list[tuple[str, type, dict[str, Any]]]:
    """The extension's routes, relative to the server's base_url."""
    return [
        (r"/cma/api/status", StatusHandler, {"status": status}),
    ]
