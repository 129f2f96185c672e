"""jupyter-cma: run Claude Managed Agents with the agent's hands on your own machines.

This module stays light on purpose: it is imported inside user kernels (for
notebook-side APIs), so server-side modules load only when the server asks
for the extension.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import CMAApp

    return [{"module": "jupyter_cma", "app": CMAApp}]
