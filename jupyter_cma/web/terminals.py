"""`POST {base_url}cma/api/sessions/{id}/terminal`: a JupyterLab terminal with a login shell in a session's sandbox.

The terminal itself is jupyter_server_terminals' (terminado): this route only asks the session's live sandbox how
to open a shell in it (`Sandbox.terminal_command()`) and starts a terminal running that, with the server's
environment left out. A tier without terminals (the kernel tier) says so with `NotSupported`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..sandboxes.base import NotSupported, TerminalCommand, TerminalUnavailable
from .base import CMAHandler
from .schemas import EmptyBody

if TYPE_CHECKING:
    from ..control.sessions import SessionManager
    from ..store import Store

# What the docker CLI of a terminal keeps of the server's environment; the rest (API keys among it) is dropped.
# `docker exec` passes none of its own environment into the container anyway.
_TERMINAL_ENV_KEEP = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM", "COLUMNS", "LINES",
                                "XDG_RUNTIME_DIR"})


def _terminal_env(manager: Any) -> dict[str, str | None]:
    """terminado's `extra_env` that removes every variable of the server's environment but the few the docker CLI needs."""
    import os

    names = set(os.environ) | set(getattr(manager, "extra_env", None) or {})
    return {name: None for name in names if name not in _TERMINAL_ENV_KEEP and not name.startswith(("DOCKER_", "LC_"))}


def _no_terminal(session_id: str, tier: str, row: dict[str, Any] | None) -> tornado.web.HTTPError:
    agent = (row or {}).get("agent_id") or "{agent_id}"
    return tornado.web.HTTPError(409, f"session {session_id} runs on the {tier} tier, and the {tier} tier has no terminal "
                                 "(its sandbox is a Python kernel, not a Linux machine); move the agent to the container tier "
                                 f"(PATCH cma/api/agents/{agent} {{\"tier\": \"container\"}}) and its sessions get one")


def _not_serving(session_id: str, row: dict[str, Any] | None) -> tornado.web.HTTPError:
    now = f" (it is {row['status']})" if row else " (no session of that id has been served here)"
    return tornado.web.HTTPError(409, f"no container is serving session {session_id} now{now}; a terminal needs a live "
                                 "container: send the session a message to wake it, wait until it runs, then try again")


class SessionTerminalHandler(CMAHandler):
    """`POST cma/api/sessions/{id}/terminal`: a JupyterLab terminal running a login shell in the session's container.

    Answers 201 `{"name", "url": "terminals/<name>", "container", "container_id", "session_id"}`; open it in
    JupyterLab with the `terminal:open` command and that name (it is listed in the Running panel too).
    """

    def initialize(self, name: str, *, store: Store, sessions: SessionManager) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store
        self._sessions = sessions

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str) -> None:
        self.body(EmptyBody)
        manager = self.settings.get("terminal_manager")
        if manager is None or not self.settings.get("terminals_available", False):
            raise tornado.web.HTTPError(503, "terminals are disabled on this server: enable the jupyter_server_terminals extension "
                                        "(c.ServerApp.jpserver_extensions = {'jupyter_server_terminals': True}) and keep "
                                        "c.ServerApp.terminals_enabled = True, then restart the server")
        sandbox = self._sessions.sandbox_of(session_id)
        row = self._store.session(session_id)
        if sandbox is None:
            # Nothing live to ask: a resting session's stored tier tells whether it could ever have a terminal.
            if (row or {}).get("tier") == "kernel":
                raise _no_terminal(session_id, "kernel", row)
            raise _not_serving(session_id, row)
        command: TerminalCommand | TerminalUnavailable
        try:
            command = sandbox.terminal_command()
        except NotSupported as exc:
            raise _no_terminal(session_id, exc.tier, row) from None
        except TerminalUnavailable as exc:  # e.g. no docker client: said after "not serving", which matters more
            command = exc
        # A sandbox that is not serving (yet, or any more) has no container to open a shell in, whatever it answered.
        if sandbox.status().get("state") != "serving":
            raise _not_serving(session_id, row)
        if isinstance(command, TerminalUnavailable):
            raise tornado.web.HTTPError(503, str(command))
        model = manager.create(shell_command=command.argv, extra_env=_terminal_env(manager))
        name = model["name"]
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: terminal %s opened into session %s's container %s by %s", name, session_id, command.name, user)
        self.set_status(201)
        self.finish({"name": name, "url": f"terminals/{name}", "container": command.name,
                     "container_id": command.short_id, "session_id": session_id})
