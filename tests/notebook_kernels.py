"""Notebook kernels as JupyterLab makes them: a session of the real Jupyter server under test, and a client of it.

`NotebookKernel` starts a kernel through the server's session manager for a notebook path (so the kernel is the
server's, with its connection key and `JPY_SESSION_NAME`, as when a user opens the notebook), then runs cells
on it the way a frontend does, over its own client.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from jupyter_client.session import Session


class CellError(AssertionError):
    """A cell raised; the message is its traceback's last line."""


class NotebookKernel:
    def __init__(self, serverapp: Any, path: str = "analysis.ipynb") -> None:
        self.serverapp = serverapp
        self.path = path
        self.kernel_id: str | None = None
        self.client: Any = None

    async def start(self) -> NotebookKernel:
        model = await self.serverapp.session_manager.create_session(path=self.path, type="notebook", kernel_name="python3")
        self.kernel_id = model["kernel"]["id"]
        manager = self.serverapp.kernel_manager.get_kernel(self.kernel_id)
        # A session of its own, as a frontend's connection has: the kernel routes replies by session id.
        self.client = manager.client(session=Session(key=manager.session.key, signature_scheme=manager.session.signature_scheme))
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=60)
        return self

    def submit(self, code: str) -> str:
        """Send a cell without waiting for it (like pressing Shift-Enter on a long cell); its message id."""
        return self.client.execute(textwrap.dedent(code), store_history=True)

    async def finish(self, msg_id: str, timeout: float = 120) -> list[dict[str, Any]]:
        """The outputs of a submitted cell once it ends; CellError if it raised."""
        outputs: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            msg = await self.client.get_iopub_msg(timeout=max(left, 0.1))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"type": kind, **content})
            if kind == "status" and content["execution_state"] == "idle":
                break
        errors = [o for o in outputs if o["type"] == "error"]
        if errors:
            raise CellError(f"{errors[0]['ename']}: {errors[0]['evalue']}\n" + "\n".join(errors[0]["traceback"][-3:]))
        return outputs

    async def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell and return what it printed (and its result's text)."""
        outputs = await self.finish(self.submit(code), timeout)
        return "".join(o.get("text") or (o.get("data") or {}).get("text/plain", "") for o in outputs)

    async def restart(self) -> None:
        await self.serverapp.kernel_manager.restart_kernel(self.kernel_id)
        await self.client.wait_for_ready(timeout=60)

    async def shutdown(self) -> None:
        """Shut the kernel down (once; later calls do nothing)."""
        if self.kernel_id not in self.serverapp.kernel_manager:
            return
        self.client.stop_channels()
        await self.serverapp.kernel_manager.shutdown_kernel(self.kernel_id)


@asynccontextmanager
async def notebook_of(h: Any, path: str = "analysis.ipynb") -> AsyncIterator[NotebookKernel]:
    """The started server of a test harness (tests/test_dispatch.py) with a notebook kernel of its own, shut down
    at the end."""
    await h.start()
    kernel = await NotebookKernel(h.serverapp, path).start()
    try:
        yield kernel
    finally:
        await kernel.shutdown()
