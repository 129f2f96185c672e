"""The errors of egress policies: a document, pattern or request that cannot be accepted, and a clash in the store."""

from __future__ import annotations

from collections.abc import Sequence


class PolicyError(ValueError):
    """A policy, pattern or request that cannot be accepted. The message says what to fix."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PolicyConflict(ValueError):
    """Another policy already has this name, or already covers this scope."""
