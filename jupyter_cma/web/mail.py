"""`{base_url}cma/api/mail`: the operator's mail log — every message the email built-ins sent, received or refused.

`GET mail?session_id=&limit=` → `{"data": [message, …]}`, newest first. A message is `{"id", "at", "direction"
("in" | "out"), "status" (in: "accepted" | "refused"; out: "sent" | "failed" | "refused"), "reason", "session_id",
"agent_id", "message_id", "in_reply_to", "refs", "sender", "recipients", "subject", "size"}`; the text itself is
left out (a session reads its own with `email_read`), and refused mail never had its text kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tornado.web
from jupyter_server.auth.decorator import authorized

from .base import CMAHandler
from .schemas import MailQuery

if TYPE_CHECKING:
    from ..store import Store

MAIL_FIELDS = ("id", "at", "direction", "status", "reason", "session_id", "agent_id", "message_id", "in_reply_to", "refs",
               "sender", "recipients", "subject", "size")


def mail_document(row: dict[str, Any]) -> dict[str, Any]:
    """A stored mail row as the API shows it (without its text)."""
    return {name: row.get(name) for name in MAIL_FIELDS}


class MailHandler(CMAHandler):
    """`GET cma/api/mail`: the mail log, newest first; of one session when `session_id` is given."""

    def initialize(self, name: str, *, store: Store) -> None:  # type: ignore[override]
        super().initialize(name)
        self._store = store

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        query = self.query(MailQuery)
        if query.session_id:
            rows = self._store.session_mail(query.session_id, limit=query.limit)
        else:
            rows = self._store.recent_mail(limit=query.limit)
        self.finish({"data": [mail_document(row) for row in rows]})
