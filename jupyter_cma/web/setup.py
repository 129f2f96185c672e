"""`{base_url}cma/api/setup`: what this server lacks and how to fix it; `setup/emulator`: try it on the local emulator.

`GET setup` answers the app's setup document (`jupyter_cma.setup`: one check per credential, the Docker
engine, the sandbox image, bubblewrap, the egress engine and the settings, each with its fix). `POST
setup/emulator` starts the built-in emulator as a loopback process this server owns and points the server
at it (`CMAApp.use_local_emulator`), then answers the new setup document; again, it answers the same
emulator. A server configured for another API gets 409, and a kernel's signed request 403: reconfiguring
the server is its user's decision, not a notebook's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..local_emulator import EmulatorStartError
from ..setup import EmulatorRefused
from .base import CMAHandler
from .schemas import EmptyBody


class SetupHandler(CMAHandler):
    """`GET cma/api/setup`: ready, mode, the emulator, and the checks with their fixes (names only, never values)."""

    def initialize(self, name: str, *, setup: Callable[[], dict[str, Any]]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._setup = setup

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self._setup())


class SetupEmulatorHandler(CMAHandler):
    """`POST cma/api/setup/emulator`: start the local emulator (once) and serve it; answers `GET setup`'s document."""

    def initialize(self, name: str, *, start_emulator: Callable[[], Awaitable[dict[str, Any]]]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._start_emulator = start_emulator

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        if self.kernel_id is not None:
            raise tornado.web.HTTPError(403, "a kernel cannot reconfigure the server; start the local emulator from "
                                             "JupyterLab's setup view or with the server's token")
        self.body(EmptyBody)
        try:
            document = await self._start_emulator()
        except EmulatorRefused as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        except EmulatorStartError as exc:
            raise tornado.web.HTTPError(503, f"{exc}; the server's log has the emulator's output") from None
        self.finish(document)
