"""`@cma.tool`: a function in a notebook cell becomes a tool an agent can call, run in this very kernel.

    import jupyter_cma as cma

    @cma.tool
    def top_customers(n: int = 5) -> str:
        "The n customers with the highest revenue this quarter."
        return sales.nlargest(n, "revenue").to_string()   # `sales`: a DataFrame of this notebook

The name comes from the function (or `@cma.tool(name=...)`), the description from its docstring, the input
schema from its signature (`tools/schema.py`). Defining the tool registers it with the notebook's Jupyter
server for this kernel; running the cell again replaces it. When a session calls it, the server runs it here
(`tools/kernels.py`): in a thread beside the notebook's cells, with the notebook's globals as they are then.
What it returns becomes the tool result (`tools/results.py`): text, JSON, a table, an image.

Concurrency: calls to this notebook's tools run one at a time, in the order they come, in one thread that
is not the thread of the notebook's cells; so a call can run while a cell runs (e.g. the cell waiting for the
session), and both see the same objects. A tool that reads data a running cell is changing sees it halfway:
copy what you hand to the agent, or have the tool read only what no cell changes meanwhile.

This module runs in users' kernels: it imports nothing of the server, and what it needs only when a tool is
defined or called (pydantic, httpx) is imported then.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import warnings
from collections.abc import Callable
from typing import Any, overload

__all__ = ["NotebookTool", "tool", "tools", "unregister"]

DEFAULT_TIMEOUT = 120.0  # seconds; a tool's own is @cma.tool(timeout=...)
MAX_TIMEOUT = 140.0  # the SDK's worker gives any tool call 150 s; the tool's own bound must end first

_TOOLS: dict[str, NotebookTool] = {}
_RESULTS: dict[str, str] = {}  # call id → its result as JSON text, until the server reads it


class NotebookTool:
    """A function of this notebook offered to agents as a tool. Calling it calls the function."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, timeout: float | None = None) -> None:
        from .schema import ToolSignature

        self.fn = fn
        self.signature = ToolSignature(fn, name=name)
        self.name: str = self.signature.name
        self.timeout = float(timeout) if timeout is not None else DEFAULT_TIMEOUT
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(f"tool {self.name!r}: timeout must be more than 0 and at most {MAX_TIMEOUT:g} s (the worker "
                             f"gives each tool call 150 s), not {timeout!r}; hand longer work to a thread and return at once")
        self.registered: str | None = "not registered yet"  # None once the server has it; else why not
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def description(self) -> str:
        return self.signature.description

    @property
    def input_schema(self) -> dict[str, Any]:
        return self.signature.input_schema

    def definition(self) -> dict[str, Any]:
        """The tool as an agent gets it: name, description, input_schema."""
        return self.signature.definition()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        params = ", ".join(self.input_schema.get("properties") or {})
        where = "registered with the server" if self.registered is None else f"not registered: {self.registered}"
        return f"<cma.tool {self.name}({params}), {where}>"

    def _repr_html_(self) -> str:
        from html import escape

        schema = escape(json.dumps(self.input_schema, indent=2))
        state = "registered with the server" if self.registered is None else f"not registered: {escape(self.registered)}"
        return (f"<div><b>cma.tool</b> <code>{escape(self.name)}</code> — {state}<br>"
                f"<i>{escape(self.description.splitlines()[0] if self.description else '')}</i>"
                f"<details><summary>input schema</summary><pre>{schema}</pre></details></div>")


@overload
def tool(fn: Callable[..., Any], /) -> NotebookTool: ...
@overload
def tool(*, name: str | None = None, timeout: float | None = None) -> Callable[[Callable[..., Any]], NotebookTool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         timeout: float | None = None) -> NotebookTool | Callable[[Callable[..., Any]], NotebookTool]:
    """Make a function an agent tool that runs in this kernel: `@cma.tool` or `@cma.tool(name=..., timeout=...)`.

    Args:
        fn: a plain or async function with a docstring and type hints.
        name: the tool's name (default: the function's); letters, digits, '_' and '-'.
        timeout: seconds a call may take (default 120, at most 140: the worker gives each tool call 150 s); an
            async tool is cancelled then, a plain one is answered with an error while it finishes on its own.
    """
    def make(f: Callable[..., Any]) -> NotebookTool:
        if isinstance(f, NotebookTool):
            f = f.fn
        if not callable(f):
            raise TypeError(f"@cma.tool decorates a function, not {type(f).__name__}")
        made = NotebookTool(f, name=name, timeout=timeout)
        _TOOLS[made.name] = made
        _register(made)
        return made

    return make(fn) if fn is not None else make


def tools() -> list[dict[str, Any]]:
    """This kernel's tools: name, description, input_schema, timeout, and whether the server has them."""
    return [{**t.definition(), "timeout": t.timeout, "registered": t.registered is None,
             **({"not_registered_because": t.registered} if t.registered is not None else {})} for t in _TOOLS.values()]


def unregister(name: str) -> None:
    """Withdraw this kernel's tool `name` (agents given it get a tool error when they call it)."""
    item = name.name if isinstance(name, NotebookTool) else name
    if _TOOLS.pop(item, None) is None:
        raise KeyError(f"this kernel has no tool {item!r}; cma.tools() lists them")
    try:
        from ..client.connection import connection

        conn = connection()
        if conn.kernel is not None:
            conn.request("DELETE", f"kernels/{conn.kernel.kernel_id}/tools/{item}")
    except Exception as exc:
        warnings.warn(f"tool {item!r} is withdrawn here, but the server could not be told: {exc}", stacklevel=2)


def _register(made: NotebookTool) -> None:
    """Tell this kernel's server about the tool; a kernel without one keeps it local, with a warning that says why."""
    from ..client.connection import CMAError, connection

    try:
        conn = connection()
        if conn.kernel is None:
            raise CMAError("tools run in the kernel that defines them, and this code does not run in a kernel of a "
                           "Jupyter server with jupyter-cma; open the notebook in JupyterLab to serve the tool")
        conn.request("PUT", f"kernels/{conn.kernel.kernel_id}/tools/{made.name}",
                     {"description": made.description, "input_schema": made.input_schema, "timeout": made.timeout})
        made.registered = None
    except CMAError as exc:
        made.registered = str(exc)
        warnings.warn(f"tool {made.name!r} is defined here but not registered with a server: {exc}", stacklevel=3)


# ---------------------------------------------------------------------- what the server calls (tools/kernels.py)


async def serve_call(call_json: str) -> None:
    """Run one call the server sent (in a subshell of this kernel); its result waits in `_RESULTS`."""
    from .results import error_text, to_content

    call = json.loads(call_json)
    call_id, name = call["id"], call["name"]
    made = _TOOLS.get(name)
    try:
        if made is None:
            raise LookupError(f"this notebook has no tool {name!r} now (cma.unregister, or its cell was not run): "
                              "run the cell that defines it")
        args, kwargs = made.signature.bind(call.get("input") or {})
        value = made.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await asyncio.wait_for(value, call.get("timeout") or made.timeout)
        answer = {"content": to_content(value), "is_error": False}
    except asyncio.TimeoutError:
        answer = {"content": f"tool {name!r} did not finish within {made.timeout if made else 0:g} s and was cancelled",
                  "is_error": True}
    except Exception as exc:
        answer = {"content": error_text(exc), "is_error": True}
    _RESULTS[call_id] = json.dumps(answer)


def take_result(call_id: str) -> str:
    """The result of call `call_id` as JSON text, handed over once."""
    return _RESULTS.pop(call_id)
