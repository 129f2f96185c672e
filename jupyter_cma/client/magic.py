"""The `%%cma` cell magic: a cell's text goes to an agent, and its transcript streams into the cell's output.

    %load_ext jupyter_cma

    %%cma analyst
    Which quarter had the highest revenue, and by how much?

The first cell for an agent starts a session; the next cells for that agent continue it (`--new` starts a fresh
one). Without an agent name the cell goes to the agent this kernel used last. The cell's value is the agent's
final text (so `_` holds it); `--timeout SECONDS` (default 300) bounds the wait.
"""

from __future__ import annotations

import shlex
from typing import Any

from .agents import Agent, _use, last_used
from .connection import CMAError
from .sessions import Session

__all__ = ["Reply", "load_ipython_extension", "session_for"]

DEFAULT_TIMEOUT = 300.0

# The session each agent's `%%cma` cells continue in this kernel: agent id → session.
_sessions: dict[str, Session] = {}


class Reply(str):
    """The agent's final text as a cell's value: a `str`, shown as the text itself (not a quoted repr)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def session_for(agent: Agent) -> Session | None:
    """The session `%%cma` cells for `agent` continue in this kernel, if any."""
    return _sessions.get(agent.id)


def _parse(line: str) -> tuple[str | None, bool, float]:
    from IPython.core.error import UsageError

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%cma: cannot read its arguments ({exc}); usage: %%cma [--new] [--timeout S] [agent]") from None
    agent, new, timeout = None, False, DEFAULT_TIMEOUT
    while words:
        word = words.pop(0)
        if word == "--new":
            new = True
        elif word == "--timeout":
            try:
                timeout = float(words.pop(0))
            except (IndexError, ValueError):
                raise UsageError("%%cma: --timeout takes a number of seconds, e.g. --timeout 600") from None
        elif word.startswith("-"):
            raise UsageError(f"%%cma: unknown option {word}; usage: %%cma [--new] [--timeout S] [agent name or id]")
        elif agent is None:
            agent = word
        else:
            raise UsageError(f"%%cma takes one agent name or id, not {line.strip()!r}; quote a name with spaces")
    return agent, new, timeout


def cma(line: str, cell: str) -> Reply:
    """`%%cma [--new] [--timeout S] [agent]`: send the cell to the agent (by name or id; default: the one used last)."""
    from IPython.core.error import UsageError

    name, new, timeout = _parse(line)
    text = cell.strip()
    if not text:
        raise UsageError("%%cma: the cell is empty; write the message to the agent below the %%cma line")
    if name is None:
        agent = last_used()
        if agent is None:
            raise UsageError("%%cma: which agent? Name one (%%cma analyst), or create one first with "
                             "cma.Agent.create(...) in this notebook")
    else:
        try:
            agent = Agent.get(name)
        except CMAError as exc:
            raise UsageError(f"%%cma: {exc}") from None
    _use(agent)
    session = None if new else _sessions.get(agent.id)
    if session is None:
        session = agent.start(text)
        _sessions[agent.id] = session
    else:
        session.send(text)
    return Reply(session.wait(timeout, display=True))


def load_ipython_extension(ipython: Any) -> None:
    """Register `%%cma` (what `%load_ext jupyter_cma` does)."""
    ipython.register_magic_function(cma, magic_kind="cell", magic_name="cma")
