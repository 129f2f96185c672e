"""`jupyter cma demo`: the README scenario through the product, offline, on each sandbox tier.

    emulator ──webhook──▶ Jupyter server with jupyter-cma ──▶ kernel sandbox, then container sandbox
        ▲                          │ (claims the work item, runs the tools)
        └──────────── tool results ┘

It starts the emulator (in place of Anthropic's API) with webhooks pointed at
a Jupyter server it also starts, with jupyter-cma configured for the
emulator's environment. Through jupyter-cma's REST API it creates an agent
per tier and a session for each, then sends the request "write a Python
script that prints the squares of 1..10, run it, and report the result" as
an app would. The emulator's demo brain writes `squares.py` and runs it with
the tools the tier gives: the kernel's `python` tool, or `bash` in the
container. The transcripts stream live; each run ends with the reported
result and the cold start the server measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Unicode
from traitlets.config import Application

PROMPT = "Write a Python script that prints the squares of 1..10, run it, and report the result."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoApp(Application):
    """Run the README scenario through jupyter-cma against the built-in emulator."""

    name = "jupyter-cma-demo"
    description = "Run the README scenario (squares of 1..10): emulator → webhook → Jupyter server → a sandbox of each tier."

    prompt = Unicode(PROMPT, help="What to ask the agent (default: the README scenario).").tag(config=True)
    tier = Unicode(
        "auto",
        help="The sandbox tier(s) to run the scenario on: kernel, container, or auto (default): the kernel tier, then "
        "the container tier when a Docker engine answers.",
    ).tag(config=True)
    container_wait = Float(300.0, help="Seconds to wait for the container tier's image and first warm container (default 300).").tag(config=True)
    timeout = Float(120.0, help="Seconds to wait for the agent's turn to end (default 120).").tag(config=True)
    model_delay = Float(0.2, help="Seconds each emulated model request takes, so the transcript reads like a real run (default 0.2).").tag(config=True)
    aliases = {"prompt": "DemoApp.prompt", "tier": "DemoApp.tier", "timeout": "DemoApp.timeout", "model-delay": "DemoApp.model_delay"}

    def start(self) -> None:
        self.exit(asyncio.run(self._run()))

    async def _run(self) -> int:
        if self.tier not in ("auto", "kernel", "container"):
            print(f"--tier must be kernel, container or auto, not {self.tier!r}", file=sys.stderr)
            return 2
        port = _free_port()
        token = secrets.token_hex(16)
        work = tempfile.mkdtemp(prefix="cma-demo-")
        emulator = subprocess.Popen(
            [sys.executable, "-m", "jupyter_cma", "emulator", "--model-delay", str(self.model_delay),
             "--webhook-url", f"http://127.0.0.1:{port}/cma/webhooks", "--EmulatorApp.webhook_retry_delays=[0.5,1,2,4]"],
            stdout=subprocess.PIPE, text=True,
        )
        server: subprocess.Popen[bytes] | None = None
        try:
            assert emulator.stdout is not None
            info = json.loads(emulator.stdout.readline())
            server = subprocess.Popen(
                [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
                 *(["--allow-root"] if os.geteuid() == 0 else []),
                 f"--CMAApp.data_dir={os.path.join(work, 'cma')}", f"--CMAApp.api_base_url={info['base_url']}",
                 f"--CMAApp.environment_id={info['environment_id']}", "--CMAApp.idle_release_seconds=5"],
                env={**os.environ, "ANTHROPIC_API_KEY": info["api_key"], "ANTHROPIC_ENVIRONMENT_KEY": info["environment_key"],
                     "ANTHROPIC_WEBHOOK_SIGNING_KEY": info["webhook_secret"]},
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "wb"),
            )
            api = _Api(f"http://127.0.0.1:{port}/cma/api", token)
            status = await api.wait_ready(server)
            print(f"emulator  {info['base_url']}  environment {info['environment_id']}")
            print(f"server    http://127.0.0.1:{port}  mode {status['mode']}  (log {work}/server.log)")
            tiers = await self._tiers(api)
            failed = not tiers
            for tier in tiers:
                failed = (await self._on_tier(info, api, tier, work)) != 0 or failed
            return 1 if failed else 0
        finally:
            for proc in (server, emulator):
                stop_process(proc)
            _remove_sandboxes(os.path.join(work, "cma"))

    async def _tiers(self, api: _Api) -> list[str]:
        """The tiers to run on; in auto mode the container tier only where a Docker engine answers."""
        if self.tier in ("kernel", "container"):
            return [self.tier]
        probe = await api.wait_probed()
        if probe["container"].get("available"):
            return ["kernel", "container"]
        print(f"\n(the container tier is skipped: {probe['container'].get('reason')})")
        return ["kernel"]

    async def _on_tier(self, info: dict[str, Any], api: _Api, tier: str, work: str) -> int:
        if tier == "container" and not await self._container_tier_ready(api):
            return 1
        agent = await api.call("POST", "/agents", {"name": f"squares-demo ({tier})", "tier": tier})
        session = await api.call("POST", "/sessions", {"agent_id": agent["id"], "title": f"squares demo ({tier} tier)"})
        print(f"\nsession   {session['id']}  agent {agent['id']} on the {agent['tier']} tier\n")
        try:
            return await asyncio.wait_for(self._converse(info, api, session["id"]), self.timeout)
        except asyncio.TimeoutError:
            print(f"\nno answer within {self.timeout:.0f}s; see {work}/server.log", file=sys.stderr)
            return 1

    async def _container_tier_ready(self, api: _Api) -> bool:
        """Wait for the sandbox image and a warm container (the first start of a machine may build the image)."""
        deadline = time.monotonic() + self.container_wait
        shown = False
        pool: dict[str, Any] = {}
        while time.monotonic() < deadline:
            container = (await api.call("GET", "/status"))["tiers"]["container"]
            pool = container.get("pool") or {}
            if container.get("image_error"):
                print(f"the container tier cannot start: {container['image_error']}", file=sys.stderr)
                return False
            if container.get("image_id") and (pool.get("ready") or not pool.get("size")):
                return True
            if not shown:
                print(f"\nwaiting for the container tier (image {container.get('image')}, warm pool)…")
                shown = True
            await asyncio.sleep(0.5)
        print(f"the container tier was not ready within {self.container_wait:.0f}s: {pool.get('last_error')}", file=sys.stderr)
        return False

    async def _converse(self, info: dict[str, Any], api: _Api, session_id: str) -> int:
        from anthropic import AsyncAnthropic

        # The app side talks to the API directly, as any client of Managed Agents would.
        client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
        answer = ""
        async with client:
            stream = await client.beta.sessions.events.stream(session_id)
            sent = time.monotonic()
            await client.beta.sessions.events.send(
                session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": self.prompt}]}]
            )
            first_result = None
            async with stream:
                async for event in stream:
                    if event.type == "user.message":
                        _show("you", event.content[0].text)
                    elif event.type == "agent.message":
                        answer = event.content[0].text
                        _show("agent", answer)
                    elif event.type in ("agent.tool_use", "agent.custom_tool_use"):
                        shown = event.input.get("code") or event.input.get("command") or json.dumps(event.input)
                        _show(f"tool {event.name}", shown)
                    elif event.type in ("user.tool_result", "user.custom_tool_result"):
                        first_result = first_result or time.monotonic()
                        text = "\n".join(b.text for b in event.content or [] if b.type == "text")
                        _show("  result" + (" (error)" if event.is_error else ""), text)
                    elif event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
                        break
        row = await api.call("GET", f"/sessions/{session_id}")
        if row.get("cold_start_ms") is not None:
            print(f"\ncold start (work item claimed → first tool result ready, measured by the server): {row['cold_start_ms']:.0f} ms")
        if first_result is not None:
            print(f"message sent → first tool result (webhook, claim, sandbox, tool): {first_result - sent:.2f} s")
        numbers = [line for line in answer.splitlines() if line.strip().isdigit()]
        if not numbers:
            print("the agent did not report a result", file=sys.stderr)
            return 1
        print(f"result: {' '.join(numbers)}")
        return 0


class _Api:
    """A tiny client for jupyter-cma's REST API (token auth)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.http = AsyncHTTPClient()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = HTTPRequest(self.base + path, method=method, headers=self.headers, body=None if body is None else json.dumps(body))
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as exc:
            detail = exc.response.body.decode() if exc.response is not None else str(exc)
            raise SystemExit(f"jupyter-cma API {method} {path} failed: {exc.code} {detail}") from None
        return json.loads(response.body)

    async def wait_ready(self, server: subprocess.Popen[bytes]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit("the Jupyter server exited during start-up; see its log")
            try:
                return await self.call("GET", "/status")
            except (SystemExit, OSError):
                await asyncio.sleep(0.2)
        raise SystemExit("the Jupyter server did not answer within 60 s")

    async def wait_probed(self) -> dict[str, Any]:
        """The tiers once the server has probed what this machine can run."""
        deadline = time.monotonic() + 60
        while True:
            tiers = (await self.call("GET", "/status"))["tiers"]
            if tiers["container"].get("available") is not None or time.monotonic() > deadline:
                return tiers
            await asyncio.sleep(0.2)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """Stop a server or the emulator the command started: SIGTERM (a Jupyter server asks for confirmation on
    SIGINT), then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _remove_sandboxes(data_dir: str) -> None:
    """The demo's sessions are throw-away: their containers and workspace volumes go with the demo (`jupyter cma cleanup`)."""
    try:
        import docker

        from .sandboxes.cleanup import apply_cleanup, plan_cleanup

        client = docker.from_env(timeout=10)
    except Exception:
        return  # no engine: the demo made no container
    try:
        for error in apply_cleanup(plan_cleanup(client, data_dir), volumes=True):
            print(f"cleanup: {error}", file=sys.stderr)
    except Exception as exc:  # the demo's result stands; say what was left
        print(f"cleanup: {type(exc).__name__}: {exc}; `jupyter cma cleanup --volumes --data-dir {data_dir}` removes it", file=sys.stderr)
    finally:
        client.close()


def _show(who: str, text: str) -> None:
    body = textwrap.indent(text.strip(), " " * 12).lstrip()
    print(f"{who:>10}  {body}")
