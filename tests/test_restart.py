"""A server crash mid-session loses nothing and leaves no orphan.

The Jupyter server runs as a real process here, so it can really crash
(SIGKILL, no clean-up), while the agent waits on a tool call running in the
session's kernel. A new server on the same data directory must release what
the old one left, re-claim the session once its lease expires, finish the
turn, and leave no kernel of the old process behind.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.emulator_fixtures import start_emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


class Server:
    """`jupyter server` with jupyter-cma as a subprocess, configured for an emulator."""

    def __init__(self, info: dict[str, Any], port: int, data_dir: Path, log: Path, *args: str) -> None:
        self.token = secrets.token_hex(8)
        self.port = port
        env = {**os.environ, "ANTHROPIC_API_KEY": info["api_key"], "ANTHROPIC_ENVIRONMENT_KEY": info["environment_key"],
               "ANTHROPIC_WEBHOOK_SIGNING_KEY": info["webhook_secret"]}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={data_dir.parent}",
             *(["--allow-root"] if os.geteuid() == 0 else []),
             f"--CMAApp.data_dir={data_dir}", f"--CMAApp.api_base_url={info['base_url']}",
             f"--CMAApp.environment_id={info['environment_id']}", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/cma/api", headers={"Authorization": f"token {self.token}"}, timeout=30)
        wait_for(self._ready, 60, "the server to answer")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "the server exited during start-up"
        try:
            return self.http.get("/status").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code < 300, response.text
        return response.json()

    def sandbox(self, session_id: str) -> dict[str, Any]:
        """The live sandbox serving the session here, or {} (404 until the session is claimed)."""
        response = self.http.get(f"/sessions/{session_id}")
        return (response.json().get("sandbox") or {}) if response.status_code == 200 else {}

    def crash(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_crash_mid_tool_call_loses_nothing_and_leaves_no_orphan(tmp_path):
    port = free_port()
    emu = start_emulator("--webhook-url", f"http://127.0.0.1:{port}/cma/webhooks", "--lease-ttl", "3",
                         "--EmulatorApp.webhook_retry_delays=[0.2,0.5,1,2]")
    data = tmp_path / "cma"
    log = tmp_path / "server.log"
    first = Server(emu.info, port, data, log, "--CMAApp.safety_drain_interval=1")
    second = None
    try:
        agent = first.api("POST", "/agents", {"name": "restart", "tier": "kernel"})["id"]
        steps = [
            {"tool": "python", "input": {"code": "open('before.txt', 'w').write('kept')\nprint('first')"}},
            {"tool": "python", "input": {"code": "import time, os\nprint(os.getpid(), flush=True)\ntime.sleep(4)\nprint('slept')"}},
            {"say": "done: {result}"},
        ]
        sid = first.api("POST", "/sessions", {"agent_id": agent, "message": json.dumps({"cma_script": steps})})["id"]
        # Wait until the second call is running in the kernel, then crash the server.
        kernel_pid = wait_for(lambda: (first.sandbox(sid).get("kernel") or {}).get("pid"), 60, "a kernel pid")
        with emu.http() as http:
            wait_for(lambda: sum(e["type"] == "agent.custom_tool_use" for e in http.get(f"/v1/sessions/{sid}/events", params={"limit": 1000}).json()["data"]) == 2, 60, "the second call")
        time.sleep(0.5)
        first.crash()

        second = Server(emu.info, port, data, log, "--CMAApp.safety_drain_interval=1", "--CMAApp.idle_release_seconds=1")
        # The old kernel must not outlive its server.
        wait_for(lambda: not alive(kernel_pid), 30, "the old kernel to be gone")
        # The lease expires, the item is re-queued and re-claimed; the open call runs again and the turn ends.
        with emu.http() as http:
            def turn_over() -> list[dict[str, Any]] | None:
                events = http.get(f"/v1/sessions/{sid}/events", params={"limit": 1000}).json()["data"]
                ends = events[-1]["type"] == "session.status_idle" and events[-1]["stop_reason"]["type"] == "end_turn"
                return events if ends else None

            events = wait_for(turn_over, 90, "the turn to finish after the restart")
        texts = ["".join(b["text"] for b in e.get("content") or []) for e in events if e["type"] == "user.custom_tool_result"]
        assert texts[0] == "first\n" and texts[-1].endswith("slept\n")
        assert events[-2]["content"][0]["text"].startswith("done:")
        assert (data / "workspaces" / sid / "before.txt").read_text() == "kept"
        row = second.api("GET", f"/sessions/{sid}")
        states = [t["to_state"] for t in row["transitions"]]
        assert "sleeping" in states and "resumed" in states  # released at restart, then re-claimed
        # No stuck lease: once the new sandbox idles out, every work item of the session is stopped.
        wait_for(lambda: second.api("GET", f"/sessions/{sid}")["status"] == "sleeping", 30, "the session to sleep")
        with emu.http(emu.info["environment_key"]) as http:
            items = http.get(f"/v1/environments/{emu.info['environment_id']}/work", params={"limit": 100}).json()["data"]
        assert {i["state"] for i in items if i["data"]["id"] == sid} == {"stopped"}
    finally:
        for server in (second, first):
            if server is not None:
                server.stop()
        emu.stop()
