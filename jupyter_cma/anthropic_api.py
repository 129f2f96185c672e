"""Credentials and SDK clients: the one place that knows how jupyter-cma talks to Anthropic.

Three bearer credentials exist (the SDK sends each as `Authorization: Bearer`):
the API key (control plane), the environment key (the worker's standing
credential for one self-hosted environment) and the per-work-item sessions
token carried in a work item's `secret`. Secrets are read from an environment
variable or from a file only its owner can read (mode 0600 or stricter); they
are held in `Secret` objects, whose repr and str never show the value, so a
stray log line or error message cannot leak one.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


class Secret:
    """A secret value that does not print itself. Call `reveal()` where the value is needed."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source  # where it came from, e.g. "env:ANTHROPIC_API_KEY" — safe to show

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretFileError(ValueError):
    """A secret file exists but may not be used (readable by others, unreadable, empty)."""


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """Read a secret from a file that only its owner can read.

    A file that group or others can read is refused rather than used: the
    secret would already be exposed, and silently accepting it teaches
    operators that the mode does not matter.
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {p}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"secret file {p} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretFileError(
            f"secret file {p} has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable by its owner only — run: chmod 600 {p}"
        )
    value = p.read_text(encoding="utf-8").strip()
    if not value:
        raise SecretFileError(f"secret file {p} is empty")
    return value


def load_secret(env_var: str | None, file: str | None) -> Secret | None:
    """A secret from its file (when configured) or else its environment variable; None if neither is set.

    The file wins because it is the explicit, per-deployment choice; the
    environment variable is the convenient default.
    """
    if file:
        return Secret(read_secret_file(file), f"file:{file}")
    if env_var:
        value = os.environ.get(env_var, "").strip()
        if value:
            return Secret(value, f"env:{env_var}")
    return None


@dataclass(frozen=True)
class Credentials:
    """What this server holds for talking to Anthropic. Any part may be missing."""

    api_key: Secret | None
    environment_key: Secret | None
    webhook_secret: Secret | None


def item_credential(secret: str | None, environment_key: Secret | None) -> str | None:
    """The bearer credential for calls made for one work item, as the SDK's worker chooses it:
    the sessions token inside the item's `secret`, else the environment key. Never log it."""
    from anthropic.lib.environments._worker import _sessions_token_from_secret  # the SDK's own decoder

    token = _sessions_token_from_secret(secret)
    if token:
        return token
    return environment_key.reveal() if environment_key is not None else None
