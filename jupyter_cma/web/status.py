"""`GET {base_url}cma/api/status`: what this server is and can do now (the app composes it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler


class StatusHandler(CMAHandler):
    """`GET cma/api/status`: version, mode, missing settings (names only), tiers, counters."""

    def initialize(self, name: str, *, status: Callable[[], dict[str, Any]]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._status = status

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self._status())
