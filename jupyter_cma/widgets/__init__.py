"""Notebook widgets (anywidget): the live sessions dashboard and the egress log, in a cell's output.

    import jupyter_cma as cma
    cma.dashboard()                       # every session of this server, live
    cma.dashboard(state="active", tier="kernel")
    cma.egress_log(session="sesn_…")      # one session's requests out, denied ones highlighted

Each widget is one Python class here plus one ES module built from the extension's TypeScript
(`labextension/src/widget/*.ts` → `static/`). The browser side talks to the Jupyter server's REST API and live
channel directly (the page's base URL, token and `_xsrf` cookie), never through the kernel: a view keeps
updating while a long cell runs, and a page reload renders it again from the REST API. The Python side only
carries the filters (traits synced with the view).

This package runs in users' kernels: it imports no server module, and `import jupyter_cma` does not import it
(nor anywidget) until a widget is asked for.
"""

from __future__ import annotations

from .core import (
    SESSION_STATES,
    TIERS,
    Dashboard,
    EgressLogWidget,
    WidgetAssetsMissing,
    dashboard,
    egress_log,
    widget_bundle,
)

__all__ = [
    "SESSION_STATES",
    "TIERS",
    "Dashboard",
    "EgressLogWidget",
    "WidgetAssetsMissing",
    "dashboard",
    "egress_log",
    "widget_bundle",
]
