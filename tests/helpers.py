"""Small helpers shared by the test modules."""

from __future__ import annotations

import asyncio
import time


async def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Await until `predicate()` (sync or async) returns something truthy, and return it; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")
