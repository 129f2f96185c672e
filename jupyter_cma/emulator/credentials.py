"""Credentials: the bearer tokens the emulator accepts and what each may do.

Three kinds, told apart by value: the API key (minted when the service starts),
environment keys (minted per environment on request) and sessions tokens (one
per poll delivery of a work item, revoked when the item stops). The `require*`
checks are what `http.py` applies per route.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .wire import ApiError

if TYPE_CHECKING:
    from .sessions import SessionRecord
    from .work import WorkItem


@dataclass
class Credential:
    """A bearer token and what it may do. Tokens are told apart by value, as the
    real service does: the SDK sends every kind as `Authorization: Bearer`."""

    kind: str  # "api_key" | "environment_key" | "sessions_token"
    environment_id: str | None = None
    work_id: str | None = None
    session_id: str | None = None
    delivery: int | None = None  # sessions tokens: which poll delivery of the item issued it


class Credentials:
    """The token table, a part of `Service` (see service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, Credential] = {}

    def credential(self, token: str | None) -> Credential:
        cred = self.tokens.get(token or "")
        if cred is None:
            raise ApiError(401, "authentication_error", "invalid bearer token: pass a valid API key, environment key or sessions token in Authorization: Bearer")
        return cred

    def mint_environment_key(self, environment_id: str) -> str:
        self.environment(environment_id)
        key = "sk-ant-envkey-emu-" + secrets.token_urlsafe(24)
        self.tokens[key] = Credential("environment_key", environment_id=environment_id)
        return key

    def _mint_sessions_token(self, item: WorkItem) -> str:
        """A new sessions token per delivery. Earlier ones stay valid until the item
        stops, so a holder that lost its lease hears 412 from its next heartbeat
        (the lease protocol's answer), not 401; `stale_delivery` keeps such a
        token from touching the newer holder's lease."""
        item.deliveries += 1
        token = "sk-ant-sesstok-emu-" + secrets.token_urlsafe(24)
        self.tokens[token] = Credential(
            "sessions_token", environment_id=item.environment_id, work_id=item.id, session_id=item.session_id,
            delivery=item.deliveries,
        )
        item.tokens.append(token)
        return token

    def _revoke_sessions_tokens(self, item: WorkItem) -> None:
        for token in item.tokens:
            self.tokens.pop(token, None)
        item.tokens.clear()

    @staticmethod
    def require(cred: Credential, *kinds: str, what: str) -> None:
        if cred.kind not in kinds:
            readable = " or ".join(k.replace("_", " ") for k in kinds)
            raise ApiError(403, "permission_error", f"{what} requires an {readable}; this credential is a {cred.kind.replace('_', ' ')}")

    def require_environment_access(self, cred: Credential, environment_id: str, *, what: str) -> None:
        if cred.kind == "api_key":
            return
        if cred.environment_id != environment_id:
            raise ApiError(403, "permission_error", f"{what}: this credential belongs to another environment")

    def require_session_access(self, cred: Credential, session_id: str) -> SessionRecord:
        rec = self._session(session_id)
        if cred.kind == "environment_key" and cred.environment_id != rec.data["environment_id"]:
            raise ApiError(403, "permission_error", "this environment key belongs to another environment")
        if cred.kind == "sessions_token" and cred.session_id != session_id:
            raise ApiError(403, "permission_error", "this sessions token is scoped to another session")
        return rec
