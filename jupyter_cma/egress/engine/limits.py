"""The bounds on what one sandbox can make the engine do: `Limits` (from the server) and the `TokenBucket` of its rates."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Limits:
    """Bounds on what one sandbox can make the engine do (`EgressProxy`'s traits, where the defaults live)."""

    max_header_bytes: int
    header_timeout: float
    idle_timeout: float
    max_connection_seconds: float
    max_body_bytes: int
    max_websocket_message_bytes: int
    connections_per_sandbox: int
    connections_total: int
    requests_per_second: float
    request_burst: int


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
