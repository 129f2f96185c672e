"""The widget classes: `Dashboard` (sessions, live) and `EgressLogWidget` (the egress log, live).

Their traits are the view's filters, synced both ways: setting `dashboard.state = "active"` in a cell filters the
table in the browser, and a row the user selects there becomes `dashboard.session`. Each trait is checked when set,
so a misspelt state or a bad id fails in the cell with what to write instead, not silently in the browser.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anywidget
import traitlets

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

STATIC = Path(__file__).parent / "static"
# The states a session has on this server (its lifecycle), and "active": any of the serving ones.
SERVING_STATES = ("claimed", "starting", "running", "idle", "resumed")
SESSION_STATES = ("active", *SERVING_STATES, "sleeping", "stopped", "ended", "failed")
TIERS = ("kernel", "container")
DECISIONS = ("allowed", "denied", "injected")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_REBUILD = ("rebuild the extension: `cd labextension && jlpm install && jlpm build:prod` in a source checkout "
            "(or `pip install --force-reinstall jupyter-cma`), then restart the kernel")


class WidgetAssetsMissing(RuntimeError):
    """The widgets' JavaScript (built from the extension's TypeScript) is not where the package expects it."""


def _asset(name: str) -> Path | str:
    """A built file of `static/`, or — when the build has not run — an ES module that says so in the output.

    anywidget reads a Path when the class is defined, and a missing file would make this module fail to import
    (so `cma.Agent` could not even fall back to its HTML); the constructor raises `WidgetAssetsMissing` instead.
    """
    path = STATIC / name
    if path.is_file():
        return path
    if name.endswith(".css"):
        return ""
    message = f"jupyter-cma: the widget's JavaScript ({path}) is missing; {_REBUILD}."
    return ("export default { render({ el }) { el.textContent = " + _js_string(message) + "; } };")


def _js_string(text: str) -> str:
    return json.dumps(text)


def _require_assets(widget: anywidget.AnyWidget, *names: str) -> None:
    missing = [n for n in names if not (STATIC / n).is_file()]
    if missing:
        widget.close()
        raise WidgetAssetsMissing(f"the notebook widgets' JavaScript is missing ({', '.join(str(STATIC / n) for n in missing)}): "
                                  f"{_REBUILD}")


# ---------------------------------------------------------------------- what a trait takes


def _check_state(value: str) -> str:
    if value and value not in SESSION_STATES:
        raise traitlets.TraitError(
            f"state={value!r} is not a session state: use one of {', '.join(SESSION_STATES)} "
            f"('active' is any of {', '.join(SERVING_STATES)}), or '' for every state")
    return value


def _check_tier(value: str) -> str:
    if value and value not in TIERS:
        raise traitlets.TraitError(f"tier={value!r} is not a tier: use 'kernel' or 'container', or '' for both")
    return value


def _check_id(name: str, value: str, example: str) -> str:
    if value and not _ID.match(value):
        raise traitlets.TraitError(f"{name}={value!r} is not an id: give one such as '{example}' (1-128 letters, "
                                   f"digits, '_' or '-'), or '' for all")
    return value


def _check_text(name: str, value: str, limit: int = 256) -> str:
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise traitlets.TraitError(f"{name}={value[:40]!r}… is not a filter: at most {limit} characters on one line")
    return value


def _an_id_of(value: Any, kind: str) -> Any:
    """An Agent or Session object given where its id is meant: its id."""
    ident = getattr(value, "id", None)
    if isinstance(ident, str) and type(value).__name__ == kind:
        return ident
    return value


# ---------------------------------------------------------------------- the widgets


class Dashboard(anywidget.AnyWidget):  # type: ignore[misc]
    """The sessions this server serves: a live table (agent, tier, isolation, state, how the sandbox started, cold
    start, age, tool calls, last activity) with filters; selecting a row shows the session's conversation as it
    streams, its egress rows, and actions (stop, terminal, export as notebook, send a message).

    Traits (all synced with the view): `state` (a session state or 'active'), `tier` ('kernel' / 'container'),
    `agent` (an agent id or name), `text` (matched against ids, titles, agents and metadata), `session` (the
    session shown in detail; set by the user's selection too), `show_table` (False: only that session's detail,
    how a displayed `cma.Session` looks), `limit` (how many recent sessions the table loads, 1-500).
    """

    _esm = _asset("dashboard.js")
    _css = _asset("dashboard.css")

    state = traitlets.Unicode("").tag(sync=True)
    tier = traitlets.Unicode("").tag(sync=True)
    agent = traitlets.Unicode("").tag(sync=True)
    text = traitlets.Unicode("").tag(sync=True)
    session = traitlets.Unicode("").tag(sync=True)
    show_table = traitlets.Bool(True).tag(sync=True)
    limit = traitlets.Int(200).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the traits are checked first: a bad filter is named even without the build
        _require_assets(self, "dashboard.js")

    @traitlets.validate("state")
    def _valid_state(self, proposal: Mapping[str, Any]) -> str:
        return _check_state(proposal["value"])

    @traitlets.validate("tier")
    def _valid_tier(self, proposal: Mapping[str, Any]) -> str:
        return _check_tier(proposal["value"])

    @traitlets.validate("agent")
    def _valid_agent(self, proposal: Mapping[str, Any]) -> str:
        return _check_text("agent", proposal["value"])

    @traitlets.validate("text")
    def _valid_text(self, proposal: Mapping[str, Any]) -> str:
        return _check_text("text", proposal["value"])

    @traitlets.validate("session")
    def _valid_session(self, proposal: Mapping[str, Any]) -> str:
        return _check_id("session", proposal["value"], "sesn_…")

    @traitlets.validate("limit")
    def _valid_limit(self, proposal: Mapping[str, Any]) -> int:
        value = proposal["value"]
        if not 1 <= value <= 500:
            raise traitlets.TraitError(f"limit={value!r}: give how many recent sessions to load, from 1 to 500")
        return value

    def __repr__(self) -> str:
        shown = {k: getattr(self, k) for k in ("state", "tier", "agent", "text", "session") if getattr(self, k)}
        filters = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"<cma.Dashboard {filters or 'all sessions'}>"


class EgressLogWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """The egress log, live: one row per request a sandbox sent out, denied ones highlighted with the rule that
    decided; filterable, exportable as JSON lines.

    Traits (synced with the view): `session` (a session id: only its rows), `decision` ('allowed', 'denied' or
    'injected'), `host` (a host name).
    """

    _esm = _asset("egress.js")
    _css = _asset("egress.css")

    session = traitlets.Unicode("").tag(sync=True)
    decision = traitlets.Unicode("").tag(sync=True)
    host = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the traits are checked first: a bad filter is named even without the build
        _require_assets(self, "egress.js")

    @traitlets.validate("session")
    def _valid_session(self, proposal: Mapping[str, Any]) -> str:
        return _check_id("session", proposal["value"], "sesn_…")

    @traitlets.validate("decision")
    def _valid_decision(self, proposal: Mapping[str, Any]) -> str:
        value = proposal["value"]
        if value and value not in DECISIONS:
            raise traitlets.TraitError(f"decision={value!r}: use one of {', '.join(DECISIONS)}, or '' for all")
        return value

    @traitlets.validate("host")
    def _valid_host(self, proposal: Mapping[str, Any]) -> str:
        return _check_text("host", proposal["value"], 253)

    def __repr__(self) -> str:
        shown = {k: getattr(self, k) for k in ("session", "decision", "host") if getattr(self, k)}
        filters = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"<cma.EgressLogWidget {filters or 'every request'}>"


# ---------------------------------------------------------------------- the notebook API


def _filters(kind: str, given: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"{kind}() has no filter {', '.join(map(repr, unknown))}: it takes {', '.join(allowed)}")
    return {k: v for k, v in given.items() if v is not None}


def _widget_error(exc: traitlets.TraitError) -> ValueError:
    return ValueError(str(exc))


def dashboard(**filters: Any) -> Dashboard:
    """A live dashboard of this server's sessions, in the cell's output.

    Filters (each optional): `state` (a session state such as 'running', or 'active'), `tier` ('kernel' or
    'container'), `agent` (a `cma.Agent`, an agent id or its name), `text` (matched against ids, titles, agent
    names and metadata), `session` (a `cma.Session` or id: shown in detail below the table), `show_table`, `limit`.

    Raises:
        TypeError: an unknown filter (the message lists those it takes).
        ValueError: a filter's value is not one it takes (the message says what is).
        WidgetAssetsMissing: the widgets' JavaScript was not built.
    """
    given = _filters("cma.dashboard", filters, ("state", "tier", "agent", "text", "session", "show_table", "limit"))
    if "agent" in given:
        given["agent"] = _an_id_of(given["agent"], "Agent")
    if "session" in given:
        given["session"] = _an_id_of(given["session"], "Session")
    for key in ("state", "tier", "agent", "text", "session"):
        if key in given and not isinstance(given[key], str):
            raise TypeError(f"cma.dashboard({key}=...) takes a string, not {type(given[key]).__name__}")
    try:
        return Dashboard(**given)
    except traitlets.TraitError as exc:
        raise _widget_error(exc) from None


def egress_log(session: Any = None, **filters: Any) -> EgressLogWidget:
    """The egress log, live and filterable, in the cell's output; denied requests are highlighted with the rule
    that decided, and the view exports what it shows as JSON lines.

    `session`: a `cma.Session` or a session id (only its requests); filters: `decision` ('allowed', 'denied',
    'injected'), `host` (a host name, as the log shows it).

    Raises:
        TypeError: an unknown filter. ValueError: a bad value. WidgetAssetsMissing: the JavaScript was not built.
    """
    given = _filters("cma.egress_log", filters, ("decision", "host"))
    if session is not None:
        given["session"] = _an_id_of(session, "Session")
    for key, value in given.items():
        if not isinstance(value, str):
            raise TypeError(f"cma.egress_log({key}=...) takes a string, not {type(value).__name__}")
    try:
        return EgressLogWidget(**given)
    except traitlets.TraitError as exc:
        raise _widget_error(exc) from None


# ---------------------------------------------------------------------- cma.Agent and cma.Session as views


def _in_a_kernel() -> bool:
    """Whether this runs in a kernel a frontend can show widgets from (not a script, not terminal IPython)."""
    ipython_module = sys.modules.get("IPython")
    if ipython_module is None:
        return False
    shell = ipython_module.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def widget_bundle(include: Any = None, exclude: Any = None, **traits: Any) -> dict[str, Any] | None:
    """The widget-view part of a display bundle for a `Dashboard` with these traits, or None when no widget can be
    shown here (not in a kernel, the format not wanted, the JavaScript not built): the caller's text and HTML
    stand alone then. `cma.Agent` and `cma.Session` use it in their `_repr_mimebundle_`."""
    if (include is not None and _WIDGET_MIME not in include) or (exclude is not None and _WIDGET_MIME in exclude):
        return None
    if not _in_a_kernel():
        return None
    try:
        widget = Dashboard(**traits)
    except (WidgetAssetsMissing, traitlets.TraitError):
        return None
    data, _metadata = widget._repr_mimebundle_()
    view = data.get(_WIDGET_MIME)
    return {_WIDGET_MIME: view} if view else None
