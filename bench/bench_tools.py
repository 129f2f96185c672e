"""Notebook-tool benchmarks: the overhead of a custom tool call on both tiers, and what `@cma.tool` costs a kernel.

Call overhead = from the `agent.custom_tool_use` event to the
`user.custom_tool_result` the API accepted: both `processed_at` stamps of the
emulator (one clock), so it covers the event reaching the worker over the
SDK's event stream, the SDK dispatching the call, the call itself, and the
result being posted. The emulated model's own step between calls is not in it.
Each configuration is one scripted session of N+1 sequential calls (the
emulator's scripted brain, `{"cma_script": [{"tool": ..., "input": ...}, ...]}`);
the first call is a warm-up, not counted, and so is a short session of both
tools that each tier serves first (a tier's first session pays for first
uses). The tool's body is trivial: it records when it ran and returns its
input.

Configurations, on each tier:

- NOTEBOOK tool: `@cma.tool` defined by running a cell in a real notebook
  kernel, which a jupyter_server `AsyncMappingKernelManager` started in this
  process for `bench.ipynb` (through jupyter_server's `SessionManager`, as
  JupyterLab opens a notebook). With no HTTP server, the kernel's own
  registration only warns, so the bench registers the tool as the server's
  REST handler does (`NotebookTools.register`) and binds it to the agent as the
  agents API does (`Store.set_agent_notebook_tools`); the session reaches it
  through `ToolRegistry.agent_tools`, the server's `NotebookTools.call` running
  it in a subshell of that kernel.
- BASELINE: the same call to a tool the server handles in its own process
  (`ToolRegistry.register("echo_server", handler)`, the same body). The
  difference between the two is what running the call in the notebook's kernel
  costs.
- BUSY: the notebook tool while the notebook's kernel runs a cell
  (`time.sleep(...)` on its main shell, sent by the notebook's own client, as
  when the cell that started a session waits for it). The calls run in a
  subshell, so they complete; the cell is interrupted afterwards.

Wired as in the server (`CMAApp`): one `ToolRegistry` over the `NotebookTools`,
a real `Store` with the agent's and the sessions' rows as the agents API and
`SessionManager.route` write them. Kernel tier: a `KernelTier` with bubblewrap
(`pool_size` 1) and the registry as its `custom_tools`. Container tier: a
`ContainerTier` (`pool_size` 1, the sandbox image) whose worker calls custom
tools on the egress proxy's internal route: a real `EgressProxy` (the mitmproxy
engine) with `internal_handler=registry.handle_internal`, the server's
`SessionEgress` as the tier's `egress_hook`. On both tiers the pool is full
before each session and its refill held while the session runs (a refill starts
a kernel or a container, about a second of CPU on this machine, in the middle
of the calls otherwise).

Where the time goes: the tool body's own time stamp (in the kernel, or in the
server's handler), and on the container tier the worker's progress lines
(`tool_start`: the SDK has dispatched the call), against the use's stamp. And
`NotebookTools.call` alone, from this process (server → kernel subshell →
server), N calls.

Kernel start-up: in each of 5 fresh kernels (the same kernel manager), start →
ready (launch until `kernel_info` is answered) is the baseline; then, timed in
the kernel, `import jupyter_cma`, the first `@cma.tool` definition (imports
pydantic, builds the schema, and registers with the server: here a bare HTTP
server on loopback answering the PUT, named by `JUPYTER_CMA_SERVER_URL` as the
server names itself to its kernels, so the kernel pays its whole part: httpx's
import, signing with the kernel's key, one request) and a second definition.
Medians of 5. Where the first definition's time goes: `import pydantic` and
`import httpx` (what it imports), each timed alone in 5 other fresh kernels.

Targets (issue: notebook tools): notebook tool call overhead p50 ≤ 20 ms on the
kernel tier, ≤ 30 ms on the container tier. Missing one is reported, never an
error: the script exits non-zero only when something crashes. `--quick` (or
BENCH_QUICK=1) makes 8 calls per configuration instead of 30.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
from anthropic import AsyncAnthropic
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.services.sessions.sessionmanager import SessionManager

from bench_container import percentile, timestamp  # (bench/ is on sys.path when a bench script runs)
from jupyter_cma.anthropic_api import Secret
from jupyter_cma.control.agents import bindings
from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.proxy import EgressProxy, default_engine_dir
from jupyter_cma.sandboxes.base import ClaimedItem, WorkerSettings
from jupyter_cma.sandboxes.container import DATA_DIR_LABEL, MANAGED, ContainerTier
from jupyter_cma.sandboxes.image import ImageSettings, build_sandbox_image
from jupyter_cma.sandboxes.isolation import probe_bubblewrap
from jupyter_cma.sandboxes.kernel import KernelTier
from jupyter_cma.store import Store
from jupyter_cma.tools.kernels import NotebookTool, NotebookTools, ServerKernels
from jupyter_cma.tools.registry import ToolRegistry

CALLS = 30
QUICK_CALLS = 8
STARTS = 5
TARGETS_MS = {"kernel": 20.0, "container": 30.0}
MAX_IDLE = 0.1  # seconds: the worker ends soon after the turn, so serve() returns
NOTEBOOK = "bench.ipynb"
NB_TOOL, SERVER_TOOL = "echo_nb", "echo_server"
CONFIGS = (("notebook", NB_TOOL), ("server", SERVER_TOOL), ("busy", NB_TOOL))  # (name, tool), in the order run
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
DESCRIPTION = "Return the text as given."

# The notebook's cell. `_ran` keeps when each call's body ran (this machine's clock), by its input.
TOOL_CELL = f'''
import time
import jupyter_cma as cma

_ran = {{}}

@cma.tool
def {NB_TOOL}(text: str) -> str:
    """{DESCRIPTION}"""
    _ran[text] = time.time()
    return text
'''


# --------------------------------------------------------------------------- kernels


class KernelClient:
    """A client of one kernel of the kernel manager, as a frontend's (a session of its own)."""

    def __init__(self, manager: AsyncMappingKernelManager, kernel_id: str) -> None:
        from jupyter_client.session import Session

        kernel = manager.get_kernel(kernel_id)
        self.client = kernel.client(session=Session(key=kernel.session.key, signature_scheme=kernel.session.signature_scheme))
        self.client.start_channels()
        self.pending: dict[str, dict[str, Any]] = {}  # msg id → reply, read while waiting for another

    async def ready(self) -> None:
        await self.client.wait_for_ready(timeout=60)

    def submit(self, code: str) -> str:
        """Send a cell without waiting (like Shift-Enter on a long cell); its message id."""
        return self.client.execute(code, silent=False, store_history=False)

    async def reply(self, msg_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while msg_id not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no execute_reply for {msg_id} in {timeout:g} s")
            try:
                message = await self.client.get_shell_msg(timeout=left)
            except Exception:  # queue.Empty
                continue
            self.pending[message["parent_header"].get("msg_id", "")] = message["content"]
        return self.pending.pop(msg_id)

    async def answered(self, msg_id: str) -> bool:
        """Whether the reply to `msg_id` has come (reads what is waiting)."""
        while True:
            try:
                message = await self.client.get_shell_msg(timeout=0.01)
            except Exception:  # queue.Empty: nothing more is waiting
                break
            self.pending[message["parent_header"].get("msg_id", "")] = message["content"]
        return msg_id in self.pending

    async def run(self, code: str, expressions: dict[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Run a cell; the values of `expressions` afterwards (Python literals). RuntimeError if it raised."""
        msg_id = self.client.execute(code, silent=False, store_history=False, user_expressions=expressions or {})
        content = await self.reply(msg_id, timeout)
        if content.get("status") != "ok":
            raise RuntimeError(f"the cell failed: {content.get('ename')}: {content.get('evalue')}")
        values = {}
        for name, value in (content.get("user_expressions") or {}).items():
            if value.get("status") != "ok":
                raise RuntimeError(f"{name}: {value.get('ename')}: {value.get('evalue')}")
            values[name] = ast.literal_eval(value["data"]["text/plain"])
        return values

    def close(self) -> None:
        self.client.stop_channels()


class RegistrationServer(threading.Thread):
    """A bare HTTP server on loopback that accepts every tool registration (PUT → 200 `{}`)."""

    def __init__(self) -> None:
        super().__init__(name="bench-registration", daemon=True)

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def run(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def kernel_startup(manager: AsyncMappingKernelManager, n: int) -> dict[str, list[float]]:
    """In n fresh kernels: start → ready, then (timed in the kernel) `import jupyter_cma`, the first and a second `@cma.tool`."""
    registration = RegistrationServer()
    registration.start()
    # As the server tells its kernels where it is (the kernel signs its PUT with its own key; this server accepts any).
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CMA_URL", "JUPYTER_CMA_TOKEN")}
    env["JUPYTER_CMA_SERVER_URL"] = registration.url
    out: dict[str, list[float]] = {"start": [], "import": [], "first_tool": [], "second_tool": []}
    try:
        for _ in range(n):
            began = time.perf_counter()
            kernel_id = await manager.start_kernel(kernel_name="python3", env=env)
            client = KernelClient(manager, kernel_id)
            try:
                await client.ready()
                out["start"].append((time.perf_counter() - began) * 1000)
                first = await client.run(
                    "import sys, time\n"
                    "_before = sorted(m for m in ('jupyter_cma', 'pydantic', 'httpx') if m in sys.modules)\n"
                    "_t = time.perf_counter()\n"
                    "import jupyter_cma as cma\n"
                    "_ms = (time.perf_counter() - _t) * 1000\n"
                    "_after = sorted(m for m in ('pydantic', 'httpx') if m in sys.modules)\n",
                    {"ms": "_ms", "before": "_before", "after": "_after"})
                if first["before"] or first["after"]:
                    raise RuntimeError(f"a fresh kernel had {first['before']} before `import jupyter_cma` and {first['after']} after "
                                       "(it should import neither pydantic nor httpx)")
                out["import"].append(first["ms"])
                for key, name in (("first_tool", "echo_first"), ("second_tool", "echo_second")):
                    defined = await client.run(
                        "_t = time.perf_counter()\n"
                        "@cma.tool\n"
                        f"def {name}(text: str) -> str:\n"
                        f"    \"\"\"{DESCRIPTION}\"\"\"\n"
                        "    return text\n"
                        "_ms = (time.perf_counter() - _t) * 1000\n",
                        {"ms": "_ms", "registered": f"{name}.registered"})
                    if defined["registered"] is not None:
                        raise RuntimeError(f"tool {name} was not registered: {defined['registered']}")
                    out[key].append(defined["ms"])
            finally:
                client.close()
                await manager.shutdown_kernel(kernel_id, now=True)
        # Where the first definition's time goes: the two libraries it imports, timed alone in other fresh kernels.
        for _ in range(n):
            kernel_id = await manager.start_kernel(kernel_name="python3", env=env)
            client = KernelClient(manager, kernel_id)
            try:
                await client.ready()
                parts = await client.run(
                    "import time, jupyter_cma\n"
                    "_t = time.perf_counter()\n"
                    "import pydantic\n"
                    "_pydantic = (time.perf_counter() - _t) * 1000\n"
                    "_t = time.perf_counter()\n"
                    "import httpx\n"
                    "_httpx = (time.perf_counter() - _t) * 1000\n",
                    {"pydantic": "_pydantic", "httpx": "_httpx"})
                out.setdefault("pydantic", []).append(parts["pydantic"])
                out.setdefault("httpx", []).append(parts["httpx"])
            finally:
                client.close()
                await manager.shutdown_kernel(kernel_id, now=True)
    finally:
        registration.close()
    return out


# --------------------------------------------------------------------------- sessions


class Bench:
    """One emulator environment, one notebook kernel with its tool, one store and registry; tiers come and go."""

    def __init__(self, info: dict[str, Any], base: Path, manager: AsyncMappingKernelManager, sessions: SessionManager) -> None:
        self.info = info
        self.base = base
        self.data = base / "cma"
        self.data.mkdir(parents=True, exist_ok=True)
        self.client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
        self.store = Store(self.data / "cma.sqlite3")
        self.manager = manager
        self.sessions = sessions
        # As the server: the registry serves its own tools and the notebook tools bound to each session's agent.
        self.notebook_tools = NotebookTools(ServerKernels(manager, sessions))
        self.registry = ToolRegistry(self.notebook_tools,
                                     agent_tools=lambda agent_id: (self.store.agent(agent_id) or {}).get("notebook_tools") or {})
        self.server_ran: dict[str, float] = {}  # input text → when the server's handler ran

        def echo_server(session_id: str, tool_input: dict[str, Any]) -> str:
            self.server_ran[tool_input["text"]] = time.time()
            return tool_input["text"]

        self.registry.register(SERVER_TOOL, echo_server, description=DESCRIPTION, input_schema=SCHEMA)
        self.proxy: EgressProxy | None = None
        self.kernel_id = ""
        self.notebook: KernelClient | None = None
        self.tool: NotebookTool | None = None

    async def start_notebook(self) -> None:
        """The notebook's kernel, its tool defined by running the cell, registered as the server's REST handler does."""
        model = await self.sessions.create_session(path=NOTEBOOK, type="notebook", kernel_name="python3")
        self.kernel_id = model["kernel"]["id"]
        self.notebook = KernelClient(self.manager, self.kernel_id)
        await self.notebook.ready()
        definition = (await self.notebook.run(TOOL_CELL, {"d": f"{NB_TOOL}.definition()"}))["d"]
        self.tool = await self.notebook_tools.register(self.kernel_id, NB_TOOL, description=definition["description"],
                                                       input_schema=definition["input_schema"])

    async def kernel_ran(self) -> dict[str, float]:
        """When each call's body ran in the notebook's kernel (then forgotten there)."""
        assert self.notebook is not None
        return (await self.notebook.run("_ran_now = dict(_ran); _ran.clear()", {"ran": "_ran_now"}))["ran"]

    async def agent(self, tier: str, tools: list[dict[str, Any]]) -> str:
        """An agent with both custom tools upstream; the notebook tool bound to it as the agents API binds it."""
        assert self.tool is not None
        custom = [{"type": "custom", "name": n, "description": DESCRIPTION, "input_schema": SCHEMA} for n in (NB_TOOL, SERVER_TOOL)]
        agent = await self.client.beta.agents.create(name=f"bench-tools-{tier}", model="claude-sonnet-4-5", tools=[*tools, *custom])
        self.store.set_agent(agent.id, tier=tier, name=f"bench-tools-{tier}")
        self.store.set_agent_notebook_tools(agent.id, bindings([self.tool]))
        return agent.id

    async def events(self, session_id: str) -> list[Any]:
        return [e async for e in self.client.beta.sessions.events.list(session_id, limit=100)]

    async def claim(self, session_id: str) -> ClaimedItem:
        """Wait until the emulated model has asked for the first call, then claim the session's item."""
        env_id, env_key = self.info["environment_id"], self.info["environment_key"]
        deadline = time.monotonic() + 30
        while not [e for e in await self.events(session_id) if e.type == "agent.custom_tool_use"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id}: the emulator did not call a tool")
            await asyncio.sleep(0.01)
        while True:
            items = [item async for item in self.client.beta.environments.work.poller(
                environment_id=env_id, environment_key=env_key, drain=True, auto_stop=False, block_ms=None)]
            mine = [i for i in items if i.data.id == session_id]
            if mine:
                return ClaimedItem(work_id=mine[0].id, environment_id=env_id, session_id=session_id, secret=mine[0].secret)
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id}: no work item was queued")
            await asyncio.sleep(0.02)

    async def session(self, tier: KernelTier | ContainerTier, tier_name: str, agent_id: str, tools: tuple[str, ...], n: int,
                      label: str) -> dict[str, Any]:
        """One session of n+1 sequential calls (of `tools` in turn), served by `tier`: each counted call's overhead and stamps."""
        env_id = self.info["environment_id"]
        session = await self.client.beta.sessions.create(agent=agent_id, environment_id=env_id)
        sid = session.id
        self.store.upsert_session(sid, status="created", environment_id=env_id, agent_id=agent_id)
        texts = [f"{label} {i}" for i in range(n + 1)]
        script = {"cma_script": [{"tool": tools[i % len(tools)], "input": {"text": t}} for i, t in enumerate(texts)]}
        await self.client.beta.sessions.events.send(sid, events=[{"type": "user.message", "content": [{"type": "text", "text": json.dumps(script)}]}])
        claimed = await self.claim(sid)
        # As SessionManager.route records a claimed session (the sandbox finds the session's agent there).
        self.store.transition(sid, "claimed", f"claimed work item {claimed.work_id}", work_id=claimed.work_id, tier=tier_name,
                              environment_id=env_id, agent_id=agent_id)
        settings = WorkerSettings(client=self.client, environment_key=Secret(self.info["environment_key"], "bench"), max_idle=MAX_IDLE)
        sandbox = tier.create(claimed, self.base / "ws" / sid)
        await asyncio.wait_for(sandbox.serve(settings), 180)
        self.store.transition(sid, "sleeping", "worker ended")

        events = await self.events(sid)
        uses = {e.id: e for e in events if e.type == "agent.custom_tool_use"}
        results = [e for e in events if e.type == "user.custom_tool_result"]
        if len(results) != n + 1:
            raise RuntimeError(f"session {sid}: {len(results)} results for {n + 1} calls")
        calls = []
        for result in results:
            use = uses[result.custom_tool_use_id]
            text = "".join(getattr(b, "text", "") for b in result.content or [])
            if result.is_error or text != use.input["text"]:
                raise RuntimeError(f"session {sid}: unexpected result {text!r} (is_error={result.is_error}) for {use.input}")
            calls.append({"text": text, "use": timestamp(use.processed_at), "accepted": timestamp(result.processed_at)})
        calls.sort(key=lambda c: c["use"])
        counted = calls[1:]  # the first call is the warm-up
        # On the container tier: when the worker's SDK dispatched each call (its progress lines, the host's clock).
        dispatched: list[float] = []
        if isinstance(tier, ContainerTier):
            for line in tier.log_path(sid).read_text().splitlines():
                if line.startswith('stdout: {"cma"'):
                    event = json.loads(line[len("stdout: "):])
                    if event["cma"] == "tool_start" and event.get("name") in tools:
                        dispatched.append(float(event["t"]))
            dispatched = dispatched[1:] if len(dispatched) == n + 1 else []
        return {"session": sid, "calls": counted, "dispatched": dispatched}


def overheads(run: dict[str, Any]) -> list[float]:
    return [(c["accepted"] - c["use"]) * 1000 for c in run["calls"]]


def stage(run: dict[str, Any], ran: dict[str, float]) -> dict[str, list[float]]:
    """ms after the use's stamp: the SDK dispatched the call (container tier), the body ran, the result was accepted."""
    out: dict[str, list[float]] = {"body": [], "accepted": overheads(run), "dispatched": []}
    for call in run["calls"]:
        if call["text"] in ran:
            out["body"].append((ran[call["text"]] - call["use"]) * 1000)
    for call, at in zip(run["calls"], run["dispatched"]):
        out["dispatched"].append((at - call["use"]) * 1000)
    return out


async def measure_tier(bench: Bench, tier: KernelTier | ContainerTier, tier_name: str, agent_tools: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The three configurations on one tier: notebook tool, server tool (baseline), notebook tool with the kernel busy."""
    agent_id = await bench.agent(tier_name, agent_tools)
    pool = tier.pool_size
    out: dict[str, Any] = {}
    try:
        # A warm-up session (not counted): the tier's first session pays for first uses (imports, connections, code paths).
        if not await tier.wait_pool(120):
            raise RuntimeError(f"the {tier_name} tier's pool did not fill")
        await bench.session(tier, tier_name, agent_id, (NB_TOOL, SERVER_TOOL), 3, f"{tier_name}-warm-up")
        await bench.kernel_ran()
        bench.server_ran.clear()
        for config, tool in CONFIGS:
            if not await tier.wait_pool(120):
                raise RuntimeError(f"the {tier_name} tier's pool did not fill")
            busy = None
            if config == "busy":
                assert bench.notebook is not None
                busy = bench.notebook.submit("import time\ntime.sleep(600)  # the notebook is busy with a long cell\n")
                await asyncio.sleep(0.2)  # the cell is running on the kernel's main shell
                if await bench.notebook.answered(busy):
                    raise RuntimeError("the busy cell ended at once")
            tier.pool_size = 0  # hold the refill while the calls are measured
            try:
                run = await bench.session(tier, tier_name, agent_id, (tool,), n, f"{tier_name}-{config}")
            finally:
                tier.pool_size = pool
            if busy is not None:
                assert bench.notebook is not None
                if await bench.notebook.answered(busy):
                    raise RuntimeError("the busy cell ended before the calls did: the configuration measured an idle kernel")
                await bench.manager.interrupt_kernel(bench.kernel_id)
                content = await bench.notebook.reply(busy, 30)
                if content.get("ename") != "KeyboardInterrupt":
                    raise RuntimeError(f"the busy cell ended with {content.get('status')} {content.get('ename')}, not the interrupt")
            ran = await bench.kernel_ran() if tool == NB_TOOL else dict(bench.server_ran)
            bench.server_ran.clear()
            out[config] = {"overheads": overheads(run), "stages": stage(run, ran)}
        return out
    finally:
        await tier.close()


async def direct_calls(bench: Bench, n: int) -> dict[str, list[float]]:
    """NotebookTools.call and ToolRegistry.call of the server tool from this process, n each (after one warm-up)."""
    out: dict[str, list[float]] = {"notebook": [], "server": []}
    for i in range(n + 1):
        began = time.perf_counter()
        answer = await bench.notebook_tools.call(bench.kernel_id, NB_TOOL, {"text": f"direct {i}"})
        elapsed = (time.perf_counter() - began) * 1000
        if answer != {"content": f"direct {i}", "is_error": False}:
            raise RuntimeError(f"NotebookTools.call answered {answer}")
        began = time.perf_counter()
        answer = await bench.registry.call("direct", SERVER_TOOL, {"text": f"direct {i}"})
        if i:
            out["notebook"].append(elapsed)
            out["server"].append((time.perf_counter() - began) * 1000)
    await bench.kernel_ran()
    bench.server_ran.clear()
    return out


def remove_docker_leftovers(data: Path, store: Store) -> None:
    """The sessions' workspace volumes (from the store), and anything else labelled with this data dir."""
    client = docker.from_env()
    try:
        mine = [f"{MANAGED}=1", f"{DATA_DIR_LABEL}={data.absolute()}"]
        for container in client.containers.list(all=True, filters={"label": mine}):
            container.remove(force=True)
        names = {row["workspace_volume"] for row in store.sessions(limit=100_000) if row.get("workspace_volume")}
        names |= {v.name for v in client.volumes.list(filters={"label": mine})}
        for name in sorted(names):
            try:
                client.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
    finally:
        client.close()


async def run(info: dict[str, Any], base: Path, isolation: str, n: int) -> dict[str, Any]:
    manager = AsyncMappingKernelManager(root_dir=str(base))
    sessions = SessionManager(kernel_manager=manager, contents_manager=AsyncLargeFileManager(root_dir=str(base)))
    bench = Bench(info, base, manager, sessions)
    out: dict[str, Any] = {}
    try:
        out["startup"] = await kernel_startup(manager, STARTS)
        await bench.start_notebook()
        out["direct"] = await direct_calls(bench, n)

        kernel_tier = KernelTier(pool_size=1, kernel_dir=str(base / "kernels"), data_dir=str(bench.data), isolation=isolation,
                                 store=bench.store, recorder=bench.store.add_cell, custom_tools=bench.registry)
        await kernel_tier.start()
        if kernel_tier.effective_isolation != isolation:
            raise RuntimeError(f"the kernel tier runs {kernel_tier.effective_isolation}, not {isolation}: {kernel_tier.isolation_status()}")
        out["kernel"] = await measure_tier(bench, kernel_tier, "kernel", kernel_tier.tools_for_agent(), n)

        bench.proxy = EgressProxy(data_dir=bench.data, api_base_url=info["base_url"], middleware=[], egress_log=EgressLog(bench.store),
                                  internal_handler=bench.registry.handle_internal)
        if not await bench.proxy.start():
            raise RuntimeError(f"the egress proxy did not start: {bench.proxy.error}")
        container_tier = ContainerTier(pool_size=1, data_dir=str(bench.data), store=bench.store,
                                       egress_hook=SessionEgress(store=bench.store, proxy=bench.proxy), api_base_url=info["base_url"],
                                       ca_bundle=str(bench.proxy.ca_bundle), custom_tools=bench.registry, stop_timeout=2.0)
        container_tier.image.auto_build = False  # built (or found up to date) before the run
        await container_tier.start()
        await container_tier.image_ready()
        out["container"] = await measure_tier(bench, container_tier, "container", [{"type": "agent_toolset_20260401"}], n)
        return out
    finally:
        await bench.notebook_tools.close()
        if bench.notebook is not None:
            bench.notebook.close()
        await manager.shutdown_all(now=True)
        if bench.proxy is not None:
            await bench.proxy.stop()
        await asyncio.to_thread(remove_docker_leftovers, bench.data, bench.store)
        await bench.client.close()
        bench.store.close()


# --------------------------------------------------------------------------- report


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS} calls per configuration (also BENCH_QUICK=1)")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    n = QUICK_CALLS if quick else CALLS
    began = time.perf_counter()

    problem = probe_bubblewrap("bwrap")
    if problem is not None:
        sys.exit(f"bench_tools needs a working bubblewrap for the kernel tier: {problem}")
    engine = default_engine_dir() / "bin" / "python"
    if not engine.exists():
        sys.exit(f"bench_tools needs the egress engine ({engine}): run `jupyter cma install-egress-engine`")
    client = docker.from_env()
    try:
        client.ping()
        settings = ImageSettings()
        image_id = build_sandbox_image(client, settings)
        print(f"image {settings.tag} ({image_id[:19]}) ready", flush=True)
    finally:
        client.close()

    proc = subprocess.Popen([sys.executable, "-m", "jupyter_cma", "emulator"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(proc.stdout.readline())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
            results = asyncio.run(run(info, Path(tmp), "bubblewrap", n))
    finally:
        proc.terminate()
        proc.wait()

    rows = []
    for tier_name in ("kernel", "container"):
        r = results[tier_name]
        nb, server, busy = r["notebook"]["overheads"], r["server"]["overheads"], r["busy"]["overheads"]
        label = f"{tier_name} tier: custom_tool_use → result accepted (N={n})"
        target = TARGETS_MS[tier_name]
        p50, p95 = percentile(nb, 50), percentile(nb, 95)
        rows += [
            (f"{label}, notebook tool, p50", ms(nb, 50), "server tool (handler in the server)", ms(server, 50),
             f"{p50 - percentile(server, 50):+.1f} ms ({p50 / percentile(server, 50):.2f}×)", f"≤ {target:.0f} ms",
             "met" if p50 <= target else "missed"),
            (f"{label}, notebook tool, p95", ms(nb, 95), "server tool (handler in the server)", ms(server, 95),
             f"{p95 - percentile(server, 95):+.1f} ms ({p95 / percentile(server, 95):.2f}×)", "—", "—"),
            (f"{label}, notebook tool, kernel busy, p50", ms(busy, 50), "notebook tool, kernel idle", ms(nb, 50),
             f"{percentile(busy, 50) - p50:+.1f} ms", "—", "—"),
        ]
    direct = results["direct"]
    rows.append((f"NotebookTools.call alone: server → kernel subshell → server (N={n}), p50", ms(direct["notebook"], 50),
                 "ToolRegistry.call, server tool", f"{percentile(direct['server'], 50):.2f} ms",
                 f"{percentile(direct['notebook'], 50) - percentile(direct['server'], 50):+.1f} ms", "—", "—"))
    startup = results["startup"]
    start50 = percentile(startup["start"], 50)
    for key, what in (("import", "`import jupyter_cma` in a fresh kernel"),
                      ("first_tool", "first `@cma.tool` in a kernel (imports, schema, registration)"),
                      ("pydantic", "  of which `import pydantic` (timed alone)"),
                      ("httpx", "  of which `import httpx` (timed alone)"),
                      ("second_tool", "second `@cma.tool` in the same kernel (schema, registration)")):
        value = percentile(startup[key], 50)
        rows.append((f"{what}, median of {STARTS}", f"{value:.1f} ms", "kernel start → ready", f"{start50:.0f} ms",
                     f"{value / start50:.2f}×", "—", "—"))
    header = ("measure", "jupyter-cma", "baseline", "baseline value", "ratio / diff", "target", "met")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print("where the time goes (p50, ms after the agent.custom_tool_use stamp):")
    for tier_name in ("kernel", "container"):
        for config in ("notebook", "server", "busy"):
            stages = results[tier_name][config]["stages"]
            parts = []
            if stages["dispatched"]:
                parts.append(f"the worker's SDK dispatches the call {percentile(stages['dispatched'], 50):.1f}")
            if stages["body"]:
                parts.append(f"the body runs {percentile(stages['body'], 50):.1f}")
            parts.append(f"result accepted {percentile(stages['accepted'], 50):.1f}")
            print(f"  {tier_name + ', ' + config + ':':<20} " + " → ".join(parts))
    print()
    for tier_name in ("kernel", "container"):
        for config in ("notebook", "server", "busy"):
            values = results[tier_name][config]["overheads"]
            print(f"{tier_name + ', ' + config + ',':<20} ms: {' '.join(f'{t:.0f}' for t in sorted(values))}")
    print(f"{'NotebookTools.call,':<20} ms: {' '.join(f'{t:.1f}' for t in sorted(direct['notebook']))}")
    for key in ("start", "import", "first_tool", "pydantic", "httpx", "second_tool"):
        print(f"{key + ',':<20} ms: {' '.join(f'{t:.1f}' for t in sorted(startup[key]))}")
    print(f"({'quick mode, ' if quick else ''}{time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
