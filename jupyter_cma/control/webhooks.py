"""Webhook ingest: verify (Standard Webhooks) → dedupe by webhook-id → record → react.

Answers in well under a millisecond of work: anything slow (draining the
queue, starting sandboxes) is handed to `on_event`, which only schedules it.
A signed delivery of an unknown type or shape is still stored and answered 200:
the sender did its part, and a 5xx would only make it retry. A signed body that
is not acceptable JSON (`jsonbody.read_json`: syntax, nesting depth, NaN,
duplicate keys, …) is answered 400 and not stored: nothing could be done with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from standardwebhooks import Webhook, WebhookVerificationError

from ..jsonbody import JSONBodyError, read_json

if TYPE_CHECKING:
    from ..anthropic_api import Secret
    from ..store import Store

log = logging.getLogger(__name__)

REQUIRED_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SIGNATURE_ENTRY = re.compile(r"v1,[A-Za-z0-9+/]+={0,2}")


class WebhookIngest:
    """Turns one HTTP delivery into (status, JSON body), and a stored, deduplicated event."""

    def __init__(self, *, store: Store, secret: Secret | None, on_event: Callable[[dict[str, Any], str | None], None]) -> None:
        self._store = store
        self._on_event = on_event
        self._verifier: Webhook | None = None
        self.config_error: str | None = None
        if secret is not None:
            try:
                self._verifier = Webhook(secret.reveal())
            except Exception:  # a malformed secret must not print itself
                self.config_error = "the webhook signing secret is not a valid whsec_… / base64 secret"
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0

    def receive(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Verify, parse, deduplicate and store one delivery; (status, JSON answer). Nothing is stored unless 200."""
        if self._verifier is None:
            self.rejected += 1
            why = self.config_error or "this server has no webhook signing secret"
            return 503, {"message": f"webhooks are not accepted: {why}; set the webhook secret (see README) or use poll mode"}
        lowered = {k.lower(): v for k, v in headers.items()}
        missing = [h for h in REQUIRED_HEADERS if not lowered.get(h)]
        if missing:
            self.rejected += 1
            return 401, {"message": f"missing Standard Webhooks headers: {', '.join(missing)}"}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            self.rejected += 1
            return 400, {"message": "the body is not UTF-8 text"}
        # standardwebhooks stops at the first entry it cannot parse; keep only well-formed
        # `v1,<base64>` entries so a stray token (or two header lines joined by a comma)
        # cannot hide a valid signature.
        lowered["webhook-signature"] = " ".join(SIGNATURE_ENTRY.findall(lowered["webhook-signature"]))
        try:
            self._verifier.verify(text, lowered, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            # Wrong secret, tampered body, malformed signature, or a timestamp outside ±5 minutes.
            self.rejected += 1
            return 401, {"message": f"signature verification failed: {exc}"}
        try:
            payload = read_json(text, max_bytes=None)  # the route has bounded the body
        except JSONBodyError as exc:
            self.rejected += 1
            return exc.status, {"message": f"the delivery is signed, but its body is refused: {exc.message}"}
        data = payload.get("data") if isinstance(payload, dict) else None
        event_type = data.get("type") if isinstance(data, dict) and isinstance(data.get("type"), str) else "unknown"
        object_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        if not self._store.record_delivery(lowered["webhook-id"], event_type, object_id, text):
            self.duplicates += 1
            return 200, {"status": "duplicate"}
        self.accepted += 1
        if isinstance(data, dict):
            try:
                created_at = payload.get("created_at")  # the envelope's: deliveries may arrive out of order
                self._on_event(data, created_at if isinstance(created_at, str) else None)
            except Exception:  # reacting is best effort; the delivery is recorded either way
                log.exception("reacting to webhook %s failed", event_type)
        else:
            log.warning("webhook %s carries no data object; stored, nothing to do", lowered["webhook-id"])
        return 200, {"status": "accepted"}
