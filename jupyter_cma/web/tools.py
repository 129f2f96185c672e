"""`{base_url}cma/api/tools` (the tool catalog) and `…/kernels/{id}/tools`: the tools notebook kernels registered
with `@cma.tool`.

Only a kernel itself registers its tools: `PUT kernels/{id}/tools/{name}` must be signed with that kernel's
key (`client/signing.py`; `CMAHandler` checks the signature), so no one can put a tool into another notebook.
Anyone authenticated may list them, and withdraw one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler
from .schemas import NotebookToolPut

if TYPE_CHECKING:
    from ..tools.kernels import NotebookTools


class _ToolsHandler(CMAHandler):
    def initialize(self, name: str, *, notebook_tools: NotebookTools) -> None:  # type: ignore[override]
        super().initialize(name)
        self._notebook_tools = notebook_tools


class ToolsHandler(CMAHandler):
    """`GET cma/api/tools`: the tool catalog (`tools/catalog.py`): each tier's standard tools, the built-in families,
    the notebook tools every kernel registered, and the server's own custom tools."""

    def initialize(self, name: str, *, catalog: Callable[[], dict[str, Any]]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._catalog = catalog

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self._catalog())


class KernelToolsHandler(_ToolsHandler):
    """`GET cma/api/kernels/{id}/tools`: one kernel's notebook tools."""

    @tornado.web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self.finish({"data": [t.describe() for t in self._notebook_tools.tools(kernel_id)]})


class KernelToolHandler(_ToolsHandler):
    """`PUT cma/api/kernels/{id}/tools/{name}` (by that kernel only) registers or replaces a tool; `DELETE` withdraws it."""

    @tornado.web.authenticated
    @authorized
    async def put(self, kernel_id: str, tool_name: str) -> None:
        if self.kernel_id != kernel_id.lower():
            raise tornado.web.HTTPError(403, f"only kernel {kernel_id} itself registers its tools: define them with @cma.tool "
                                        "in a notebook running on that kernel")
        body = self.body(NotebookToolPut)
        tool = await self._notebook_tools.register(
            self.kernel_id, tool_name, description=body.description,
            input_schema=body.input_schema.model_dump(mode="json", exclude_unset=True), timeout=body.timeout)
        self.finish(tool.describe())

    @tornado.web.authenticated
    @authorized
    async def delete(self, kernel_id: str, tool_name: str) -> None:
        if not self._notebook_tools.unregister(kernel_id.lower(), tool_name):
            raise tornado.web.HTTPError(404, f"kernel {kernel_id} has no tool {tool_name!r} (GET cma/api/tools lists them)")
        self.set_status(204)
        self.finish()
