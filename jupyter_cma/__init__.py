"""jupyter-cma: run Claude Managed Agents with the agent's hands on your own machines.

In a notebook:

    import jupyter_cma as cma

    @cma.tool
    def lookup(customer: str) -> dict:
        "The account of one customer."
        return accounts.loc[customer].to_dict()

    agent = cma.Agent.create("analyst", tools=[lookup, "bash"])
    session = agent.start("Which of our customers is most at risk?")
    print(session.wait())

This module stays light on purpose: it is imported inside user kernels, so the notebook API loads on first
use and server-side modules only when the server asks for the extension.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# The notebook API: name → (module, attribute), imported when first used.
_NOTEBOOK_API = {
    "tool": ("jupyter_cma.tools.notebook", "tool"),
    "unregister": ("jupyter_cma.tools.notebook", "unregister"),
    "NotebookTool": ("jupyter_cma.tools.notebook", "NotebookTool"),
    "tools": ("jupyter_cma.tools", None),  # a callable package: cma.tools() lists this kernel's tools
    "Agent": ("jupyter_cma.client.agents", "Agent"),
    "tool_catalog": ("jupyter_cma.client.agents", "tool_catalog"),  # every tool an agent can have, and where it runs
    "Session": ("jupyter_cma.client.sessions", "Session"),
    "egress": ("jupyter_cma.client.egress", None),  # policies, decide, secrets, the egress log
    "notebook_edits": ("jupyter_cma.client.notebook_edits", "notebook_edits"),  # agents' notebook edits, to undo
    "NotebookEdit": ("jupyter_cma.client.notebook_edits", "NotebookEdit"),
    "connect": ("jupyter_cma.client.connection", "connect"),
    "CMAError": ("jupyter_cma.client.connection", "CMAError"),
    "dashboard": ("jupyter_cma.widgets", "dashboard"),  # live widgets: anywidget loads only when one is asked for
    "egress_log": ("jupyter_cma.widgets", "egress_log"),
}

__all__ = ["__version__", *_NOTEBOOK_API]


def __getattr__(name: str) -> Any:
    if name not in _NOTEBOOK_API:
        raise AttributeError(f"module 'jupyter_cma' has no attribute {name!r}")
    module, attribute = _NOTEBOOK_API[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NOTEBOOK_API))


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_cma`: the `%%cma` cell magic."""
    from .client.magic import load_ipython_extension as load

    load(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CMAApp

    return [{"module": "jupyter_cma", "app": CMAApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the built JupyterLab extension is, for `jupyter-builder develop` (a wheel installs it as shared data)."""
    return [{"src": "labextension", "dest": "jupyter-cma"}]
