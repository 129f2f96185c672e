"""Pytest fixtures that run the emulator for real: a subprocess started through
its command line, read back from its one JSON line, stopped with SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest


@dataclass
class EmulatorProcess:
    """A running emulator and handy ways to talk to it."""

    proc: subprocess.Popen[str]
    info: dict[str, Any]
    stderr_lines: list[str] = field(default_factory=list)
    environment_keys: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.info["base_url"]

    @property
    def api_key(self) -> str:
        return self.info["api_key"]

    def http(self, token: str | None = None) -> httpx.Client:
        """A plain HTTP client; authenticated with `token` (default: the API key)."""
        headers = {"authorization": f"Bearer {token or self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def client(self, **kw: Any) -> Any:
        from anthropic import AsyncAnthropic

        return AsyncAnthropic(api_key=self.api_key, base_url=self.base_url, **kw)

    def new_environment(self, name: str = "test") -> tuple[str, str]:
        """A fresh self-hosted environment and its key, so tests never share a queue."""
        with self.http() as http:
            env = http.post("/v1/environments", json={"name": name, "config": {"type": "self_hosted"}}).json()
            key = http.post(f"/_emulator/environments/{env['id']}/keys").json()["environment_key"]
        self.environment_keys[env["id"]] = key
        return env["id"], key

    async def work_items(self, environment_id: str) -> list[Any]:
        """The environment's work items, listed the way a worker may (with its environment key)."""
        client = self.client().with_options(api_key=self.environment_keys[environment_id])
        return [w async for w in client.beta.environments.work.list(environment_id)]

    def requests(self) -> list[dict[str, Any]]:
        with self.http() as http:
            return http.get("/_emulator/requests").json()["data"]

    def webhooks(self) -> list[dict[str, Any]]:
        with self.http() as http:
            return http.get("/_emulator/webhooks").json()["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_emulator(*args: str) -> EmulatorProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_cma", "emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"emulator did not start: {proc.stderr.read()}")
    emu = EmulatorProcess(proc=proc, info=json.loads(line))
    # Drain stderr so a chatty emulator never blocks on a full pipe.
    threading.Thread(target=lambda: emu.stderr_lines.extend(proc.stderr), daemon=True).start()
    return emu


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    """An emulator with default settings, shared by a test module (use `new_environment`)."""
    emu = start_emulator()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def short_lease_emulator() -> Iterator[EmulatorProcess]:
    """An emulator whose leases last 2 s, for lease-expiry and heartbeat tests."""
    emu = start_emulator("--lease-ttl", "2")
    yield emu
    emu.stop()
