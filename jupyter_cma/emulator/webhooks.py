"""Webhook delivery, signed per Standard Webhooks, retried with backoff.

Each event is an envelope `{"type":"event","id":"whe_…","created_at","data"}`
POSTed to one URL. Every attempt carries the same `webhook-id` (the envelope
id) with a fresh `webhook-timestamp` and signature, so a receiver can dedupe
retries by id while still checking freshness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from standardwebhooks import Webhook
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)


def new_webhook_secret() -> str:
    """A signing secret in the `whsec_<base64>` form receivers expect."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class Delivery:
    webhook_id: str
    body: bytes
    event_type: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False
    gave_up: bool = False


class WebhookSender:
    """Queues events and delivers them in the background, in order of creation.

    Deliveries run concurrently (a slow receiver does not hold up the queue);
    each retries on any non-2xx answer or connection error, waiting
    `retry_delays[i]` seconds before attempt i+2, then gives up.
    """

    def __init__(self, url: str, secret: str, *, retry_delays: tuple[float, ...] = (1, 2, 4, 8, 16, 32), timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self._signer = Webhook(secret)
        self.retry_delays = retry_delays
        self.timeout = timeout
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = AsyncHTTPClient(force_instance=True, max_clients=32)

    def enqueue(self, data: dict[str, Any]) -> Delivery:
        envelope = {
            "type": "event",
            "id": "whe_" + secrets.token_hex(12),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "data": data,
        }
        delivery = Delivery(envelope["id"], json.dumps(envelope).encode(), data["type"])
        self.deliveries.append(delivery)
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    def headers_for(self, delivery: Delivery) -> dict[str, str]:
        now = datetime.now(timezone.utc)
        signature = self._signer.sign(delivery.webhook_id, now, delivery.body.decode())
        return {
            "content-type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "user-agent": "jupyter-cma-emulator",
        }

    async def _deliver(self, delivery: Delivery) -> None:
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                await asyncio.sleep(self.retry_delays[attempt - 1])
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                request = HTTPRequest(self.url, method="POST", body=delivery.body, headers=self.headers_for(delivery), request_timeout=self.timeout, follow_redirects=False)
                response = await self._client.fetch(request, raise_error=False)
                status = response.code
                if response.code == 599 and response.error is not None:
                    error = str(response.error)
            except (HTTPClientError, OSError) as exc:
                error = str(exc)
            delivery.attempts.append({"status": status, "error": error, "seconds": round(time.monotonic() - started, 4)})
            if status is not None and 200 <= status < 300:
                delivery.delivered = True
                return
            log.info("webhook %s (%s) attempt %d failed: %s", delivery.webhook_id, delivery.event_type, attempt + 1, error or status)
        delivery.gave_up = True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._client.close()
