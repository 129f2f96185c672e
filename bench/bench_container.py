"""Container-tier benchmarks: cold start with and without the warm pool, resumed sessions, memory.

Cold start here = from the moment a claimed item is handed to
`ContainerSandbox.serve()` until the API has accepted the first tool result:
the `processed_at` the emulator stamps on the session's first
`user.tool_result` event minus the wall-clock time just before `serve()` was
called (same machine, same clock). The emulated model's first step is the
SDK's `bash` tool (`echo hi`), so this covers everything a session waits for
after its item is claimed: getting a container (taken from the pool, or
created and started on the session's volume), attaching its egress socket to
the proxy, the assignment reaching the worker, the SDK worker flow's set-up
inside the container (the custom-tool lookup on the proxy's internal route,
session fetch, event stream: every request through the in-container bridge and
the egress proxy, with the placeholder token swapped for the real one), running
`bash` and posting its result. The model's part is excluded: each measurement
waits until the emulator has emitted the tool call before the item is claimed.

Configurations, N sessions each, one after another (plus one warm-up session
each, not counted):

- WITH the warm pool (pool_size 2; the bench waits for the pool to be full
  before each session, `ContainerTier.wait_pool`): a new session takes a started
  container whose worker has already imported the SDK.
- WITHOUT (pool_size 0): a container is created and started per session.
- RESUMED: a session that already has a workspace volume always gets a new
  container on that volume (never a pooled one), pool or not. Each resumed
  measurement is the second work item of a session whose first item ended (its
  container exited after `max_idle`); measured on the pool_size 2 tier (the
  default), pool full.
- RESUMED ON STANDBY: the same, on a tier with `standby_seconds` (60 s): when
  the first item's container ends idle, the tier starts another on the
  session's volume, which waits for its next item; the second item is claimed
  once it is ready (as when a user answers after a few seconds).
- A diagnostic: the warm pool with its refill held until the session ended
  (the bench lowers the tier's `pool_size` by one while it serves). The tier
  starts a replacement container a second after one is taken (REFILL_DELAY), so
  that its start (docker plus the SDK import) does not compete for the CPU with
  the session that took it; this shows whether that second is enough.

Where the time goes: for each session, docker's own `create` and `start` event
times (a `docker events` stream filtered on this run's data-dir label; only
for containers of a session's own, the pooled ones were created earlier) and
the worker's progress lines in the session's log (`ready`, `assigned`,
`tool_start`, stamped with the container's clock, which is the host's).

Wiring as in the server (`CMAApp`): a real `EgressProxy` (the mitmproxy engine,
its data dir in a temp dir) answering the internal route with a `ToolRegistry`
(empty, as on a default server), its CA bundle mounted in the containers, the
server's own `control.egress.SessionEgress` as the tier's `egress_hook`, and a
real `Store` (sessions' rows as `SessionManager.route` writes them,
so the tier records each session's workspace volume there).

Baselines in the same run, with the same image: `docker run --rm --network
none --entrypoint true <image>` (a container's start alone, docker CLI
included) and the same running `python -c "import anthropic.lib.environments"`
(start + the SDK import that a pooled container has already paid for).

Memory per idle pooled container: its cgroup's memory usage as `docker stats`
computes it (`memory_stats.usage` minus `total_inactive_file` on cgroup v1,
`inactive_file` on v2: page cache that can be dropped at once), read once the
pool is full; baseline: a container of the same image that has only imported
the SDK and sleeps. Also its CPU while idle (its worker sleeps on its
assignment FIFO).

Memory: a standby container is an idle container like a pooled one (the same
image and worker, waiting on the same FIFO), so the pooled figure holds for it.

Target (issue: container tier): cold start p50 ≤ 1 s. Missing it is reported,
never an error: the script exits non-zero only when something crashes.
`--quick` (or BENCH_QUICK=1) measures 4 sessions per configuration instead of 10.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
from anthropic import AsyncAnthropic

from jupyter_cma.control.egress import SessionEgress
from jupyter_cma.anthropic_api import Secret
from jupyter_cma.egress.log import EgressLog
from jupyter_cma.egress.proxy import EgressProxy, default_engine_dir
from jupyter_cma.sandboxes.base import ClaimedItem, WorkerSettings
from jupyter_cma.sandboxes.container import DATA_DIR_LABEL, KIND_LABEL, MANAGED, SESSION_LABEL, ContainerTier
from jupyter_cma.sandboxes.image import ImageSettings, build_sandbox_image
from jupyter_cma.store import Store
from jupyter_cma.tools.registry import ToolRegistry

SESSIONS = 10
QUICK_SESSIONS = 4
TARGET_MS = 1000.0
POOL = 2
STANDBY_SECONDS = 60.0
MAX_IDLE = 0.1  # seconds: the worker in the container ends soon after its turn, so serve() returns
SDK_IMPORT = "import anthropic.lib.environments"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timestamp(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- baselines (docker CLI)


def docker_run_times(image: str, n: int, command: list[str]) -> list[float]:
    """Milliseconds for `docker run --rm --network none --entrypoint … <image> …`, n runs after one warm-up."""
    argv = ["docker", "run", "--rm", "--network", "none", "--entrypoint", command[0], image, *command[1:]]
    times = []
    for i in range(n + 1):
        began = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        if i:
            times.append((time.perf_counter() - began) * 1000)
    return times


def memory_of(stats: dict[str, Any]) -> tuple[int, int]:
    """(usage minus inactive file, anonymous/RSS) in bytes from one `docker stats` sample (cgroup v1 or v2)."""
    memory = stats.get("memory_stats") or {}
    usage, detail = int(memory.get("usage") or 0), memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    anon = detail.get("total_rss", detail.get("anon", 0))
    return usage - inactive if inactive < usage else usage, int(anon)


def cpu_ns(stats: dict[str, Any]) -> int:
    return int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)


def idle_usage(api: docker.APIClient, container_ids: list[str], seconds: float = 3.0) -> list[tuple[int, int, float]]:
    """(memory, anon, CPU ms per second) of each container, CPU sampled over `seconds`."""
    first = {c: api.stats(c, stream=False, one_shot=True) for c in container_ids}
    began = time.monotonic()
    time.sleep(seconds)
    second = {c: api.stats(c, stream=False, one_shot=True) for c in container_ids}
    elapsed = time.monotonic() - began
    return [(*memory_of(second[c]), (cpu_ns(second[c]) - cpu_ns(first[c])) / 1e6 / elapsed) for c in container_ids]


def sdk_only_container_usage(image: str, data_dir: Path) -> tuple[int, int, float]:
    """Memory baseline: a container of the same image that imported the SDK and sleeps."""
    script = f"{SDK_IMPORT}, anthropic.lib.tools.agent_toolset, time; print('ready', flush=True); time.sleep(600)"
    container_id = subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--label", f"{MANAGED}=1", "--label", f"{DATA_DIR_LABEL}={data_dir.absolute()}",
         "--entrypoint", "/opt/venv/bin/python", image, "-c", script],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while "ready" not in subprocess.run(["docker", "logs", container_id], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the SDK-only container did not get ready in 60 s")
            time.sleep(0.1)
        time.sleep(1.0)
        api = docker.APIClient()
        try:
            return idle_usage(api, [container_id])[0]
        finally:
            api.close()
    finally:
        subprocess.run(["docker", "rm", "-f", container_id], check=False, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- sessions


class DockerEvents(threading.Thread):
    """Docker's own create/start times (timeNano) of the containers of one data dir, by their session label."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(name="bench-docker-events", daemon=True)
        self.api = docker.APIClient()
        self.stream = self.api.events(decode=True, filters={"type": "container", "event": ["create", "start"],
                                                            "label": f"{DATA_DIR_LABEL}={data_dir.absolute()}"})
        self.times: dict[str, dict[str, float]] = {}  # session id → {"create": t, "start": t} (the latest container)

    def run(self) -> None:
        with contextlib.suppress(Exception):  # ends when the stream is closed
            for event in self.stream:
                session = ((event.get("Actor") or {}).get("Attributes") or {}).get(SESSION_LABEL)
                if session:
                    if event.get("Action") == "create":
                        self.times[session] = {}
                    self.times.setdefault(session, {})[event["Action"]] = event["timeNano"] / 1e9

    def close(self) -> None:
        self.stream.close()
        self.api.close()


class Bench:
    """One emulator environment, one store, one egress proxy; tiers come and go."""

    def __init__(self, info: dict[str, Any], base: Path, image: str) -> None:
        self.info = info
        self.base = base
        self.image = image
        self.data = base / "cma"
        self.client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
        self.store = Store(self.data / "cma.sqlite3")
        # As the server: custom tools are answered on the proxy's internal route (an empty registry, as on a default server).
        self.tools = ToolRegistry()
        self.proxy = EgressProxy(data_dir=self.data, api_base_url=info["base_url"], middleware=[], egress_log=EgressLog(self.store),
                                 internal_handler=self.tools.handle_internal)
        self.agent_id = ""
        self.tiers: list[ContainerTier] = []
        self.docker_events = DockerEvents(self.data)

    async def start(self) -> None:
        self.docker_events.start()
        if not await self.proxy.start():
            raise RuntimeError(f"the egress proxy did not start: {self.proxy.error}")
        agent = await self.client.beta.agents.create(name="bench", model="claude-sonnet-4-5", tools=[{"type": "agent_toolset_20260401"}])
        self.agent_id = agent.id
        self.store.set_agent(agent.id, tier="container", name="bench")

    async def tier(self, pool_size: int, standby_seconds: float = 0.0) -> ContainerTier:
        tier = ContainerTier(pool_size=pool_size, data_dir=str(self.data), store=self.store, egress_hook=SessionEgress(store=self.store, proxy=self.proxy),
                             api_base_url=self.info["base_url"], ca_bundle=str(self.proxy.ca_bundle), stop_timeout=2.0,
                             standby_seconds=standby_seconds)
        tier.image.auto_build = False  # built (or found up to date) once before the run: one image for every part
        self.tiers.append(tier)
        await tier.start()
        await tier.image_ready()
        return tier

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()
        self.remove_volumes()
        await self.proxy.stop()
        await self.client.close()
        self.docker_events.close()

    def remove_volumes(self) -> list[str]:
        """The bench's sessions' workspace volumes (from the store), then anything else labelled with this data dir."""
        client = docker.from_env()
        removed = []
        try:
            names = {row["workspace_volume"] for row in self.store.sessions(limit=100_000) if row.get("workspace_volume")}
            mine = f"{DATA_DIR_LABEL}={self.data.absolute()}"
            for container in client.containers.list(all=True, filters={"label": [f"{MANAGED}=1", mine]}):
                container.remove(force=True)  # (none after close(); a leftover would hold its volume)
            names |= {v.name for v in client.volumes.list(filters={"label": [f"{MANAGED}=1", mine]})}
            for name in sorted(names):
                try:
                    client.volumes.get(name).remove(force=True)
                    removed.append(name)
                except docker.errors.NotFound:
                    pass
        finally:
            client.close()
        return removed

    async def new_session(self, command: str = "echo hi") -> str:
        env_id = self.info["environment_id"]
        session = await self.client.beta.sessions.create(agent=self.agent_id, environment_id=env_id)
        self.store.upsert_session(session.id, status="created", environment_id=env_id, agent_id=self.agent_id)
        await self.ask(session.id, command)
        return session.id

    async def ask(self, session_id: str, command: str = "echo hi") -> None:
        message = {"cma_script": [{"tool": "bash", "input": {"command": command}}]}
        await self.client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": json.dumps(message)}]}])

    async def events(self, session_id: str, kind: str) -> list[Any]:
        return [e async for e in self.client.beta.sessions.events.list(session_id, limit=100) if e.type == kind]

    async def claim(self, session_id: str, tool_uses: int) -> ClaimedItem:
        """Wait until the emulated model has asked for its `tool_uses`-th call, then claim the session's item."""
        env_id, env_key = self.info["environment_id"], self.info["environment_key"]
        deadline = time.monotonic() + 30
        while len(await self.events(session_id, "agent.tool_use")) < tool_uses:
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id}: the emulator did not call a tool")
            await asyncio.sleep(0.01)
        while True:
            items = [
                item
                async for item in self.client.beta.environments.work.poller(
                    environment_id=env_id, environment_key=env_key, drain=True, auto_stop=False, block_ms=None
                )
            ]
            mine = [i for i in items if i.data.id == session_id]
            if mine:
                return ClaimedItem(work_id=mine[0].id, environment_id=env_id, session_id=session_id, secret=mine[0].secret)
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {session_id}: no work item was queued")
            await asyncio.sleep(0.02)

    async def serve(self, tier: ContainerTier, claimed: ClaimedItem, nth_result: int, resumed: bool) -> dict[str, float]:
        """Serve one claimed item; the cold start and its stages in ms (from the container's progress lines)."""
        sid = claimed.session_id
        self.store.transition(sid, "resumed" if resumed else "claimed", f"claimed work item {claimed.work_id}",
                              work_id=claimed.work_id, tier="container", environment_id=claimed.environment_id, agent_id=self.agent_id)
        settings = WorkerSettings(client=self.client, environment_key=Secret(self.info["environment_key"], "bench"), max_idle=MAX_IDLE)
        started = time.time()
        sandbox = tier.create(claimed, self.base / "ws" / sid)
        await asyncio.wait_for(sandbox.serve(settings), 90)
        self.store.transition(sid, "sleeping", "worker ended")
        results = await self.events(sid, "user.tool_result")
        result = results[nth_result - 1]
        text = "".join(getattr(b, "text", "") for b in result.content or [])
        if result.is_error or text.strip() != "hi":
            raise RuntimeError(f"session {sid}: unexpected tool result {text!r} (is_error={result.is_error})")
        accepted = timestamp(result.processed_at)
        start = sandbox.status()["start"]
        stages = {"cold": (accepted - started) * 1000, "pooled": float(start == "pool"), "standby": float(start == "standby")}
        # The worker's progress lines of this container (after the last header the tier wrote in the session's log).
        progress: dict[str, float] = {}
        for line in tier.log_path(sid).read_text().splitlines():
            if line.startswith("--- container "):
                progress = {}
            elif line.startswith('stdout: {"cma"'):
                event = json.loads(line[len("stdout: "):])
                progress.setdefault(event["cma"], float(event.get("t", 0)))
        for name in ("ready", "assigned", "tool_start"):
            if name in progress:
                stages[name] = (progress[name] - started) * 1000
        if start == "new":  # a container started for this item: docker's create and start times
            for name, at in self.docker_events.times.pop(sid, {}).items():
                stages[name] = (at - started) * 1000
        return stages


async def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def measure(bench: Bench, pool_size: int, n: int, hold_refill: bool = False) -> list[dict[str, float]]:
    """Cold starts of n fresh sessions on a tier with `pool_size` (pool full before each).

    hold_refill (a diagnostic): the tier's pool_size is lowered by one while the session is served, so the
    container taken is not replaced before the session ends (the tier starts a replacement at once otherwise).
    """
    tier = await bench.tier(pool_size)
    try:
        runs = []
        for i in range(n + 1):  # the first is a warm-up (imports, connections, the engine's first API host lookup)
            if pool_size:
                if not await tier.wait_pool(120):
                    raise RuntimeError(f"the pool did not fill: {tier.pool_status()}")
            sid = await bench.new_session()
            claimed = await bench.claim(sid, 1)
            if hold_refill:
                tier.pool_size = pool_size - 1
            try:
                stages = await bench.serve(tier, claimed, 1, resumed=False)
            finally:
                tier.pool_size = pool_size
            if bool(stages["pooled"]) != bool(pool_size):
                raise RuntimeError(f"expected a {'pooled' if pool_size else 'new'} container, got the other: {tier.pool_status()}")
            if i:
                runs.append(stages)
        return runs
    finally:
        await tier.close()


async def measure_resumed(bench: Bench, n: int, standby: bool = False) -> tuple[list[dict[str, float]], list[tuple[int, int, float]]]:
    """Cold starts of n resumed sessions (second item of a session with a volume), and the idle pool's usage.

    With `standby`, on a tier with standby_seconds: the second item is claimed once the session's standby container is ready.
    """
    tier = await bench.tier(POOL, standby_seconds=STANDBY_SECONDS if standby else 0.0)
    try:
        if not await tier.wait_pool(120):
            raise RuntimeError(f"the pool did not fill: {tier.pool_status()}")
        await asyncio.sleep(1.0)  # let the idle containers settle before reading their memory
        api = docker.APIClient()
        try:
            mine = [f"{MANAGED}=1", f"{KIND_LABEL}=sandbox", f"{DATA_DIR_LABEL}={bench.data.absolute()}"]
            pooled = [c["Id"] for c in api.containers(filters={"label": mine, "status": "running"})
                      if SESSION_LABEL not in (c.get("Labels") or {})]
            usage = await asyncio.to_thread(idle_usage, api, pooled)
        finally:
            api.close()
        runs = []
        for i in range(n + 1):  # the first is a warm-up
            sid = await bench.new_session()
            await bench.serve(tier, await bench.claim(sid, 1), 1, resumed=False)  # its first item (from the pool)
            if not await tier.wait_pool(120):
                raise RuntimeError(f"the pool did not fill: {tier.pool_status()}")
            if standby and not await wait_for(lambda: tier.standby_status()["ready"] == 1, 120):
                raise RuntimeError(f"no standby container was ready: {tier.standby_status()}")
            await bench.ask(sid)
            stages = await bench.serve(tier, await bench.claim(sid, 2), 2, resumed=True)
            if stages["pooled"] or bool(stages["standby"]) != standby:
                raise RuntimeError(f"a resumed session was given the wrong container ({'pooled' if stages['pooled'] else 'other'})")
            if i:
                runs.append(stages)
        return runs, usage
    finally:
        await tier.close()


async def run_tiers(bench: Bench, n: int) -> dict[str, Any]:
    await bench.start()
    try:
        out: dict[str, Any] = {}
        out["warm"] = await measure(bench, POOL, n)
        out["held"] = await measure(bench, POOL, n, hold_refill=True)
        out["cold"] = await measure(bench, 0, n)
        out["resumed"], out["memory"] = await measure_resumed(bench, n)
        out["standby"], _ = await measure_resumed(bench, n, standby=True)
        return out
    finally:
        await bench.close()


# --------------------------------------------------------------------------- report


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SESSIONS} sessions per configuration (also BENCH_QUICK=1)")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    n = QUICK_SESSIONS if quick else SESSIONS
    began = time.perf_counter()

    engine = default_engine_dir() / "bin" / "python"
    if not engine.exists():
        sys.exit(f"bench_container needs the egress engine ({engine}): run `jupyter cma install-egress-engine`")
    client = docker.from_env()
    try:
        client.ping()
        settings = ImageSettings()
        build_began = time.perf_counter()
        image_id = build_sandbox_image(client, settings)
        print(f"image {settings.tag} ({image_id[:19]}) ready in {time.perf_counter() - build_began:.1f} s", flush=True)
    finally:
        client.close()
    image = settings.tag

    proc = subprocess.Popen([sys.executable, "-m", "jupyter_cma", "emulator"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(proc.stdout.readline())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-container-") as tmp:
            base = Path(tmp)
            start_only = docker_run_times(image, n, ["true"])
            start_import = docker_run_times(image, n, ["/opt/venv/bin/python", "-c", SDK_IMPORT])
            sdk_only = sdk_only_container_usage(image, base / "cma")
            bench = Bench(info, base, image)
            results = asyncio.run(run_tiers(bench, n))
    finally:
        proc.terminate()
        proc.wait()

    warm = [r["cold"] for r in results["warm"]]
    held = [r["cold"] for r in results["held"]]
    cold = [r["cold"] for r in results["cold"]]
    resumed = [r["cold"] for r in results["resumed"]]
    standby = [r["cold"] for r in results["standby"]]
    memory = results["memory"]
    label = f"cold start, claimed → first tool result (N={n})"
    base_true, base_import = "docker run … true", "docker run … python -c 'import SDK'"
    rows = []
    for name, values in (("warm pool (pool_size 2)", warm), ("no pool (pool_size 0)", cold), ("resumed (own volume)", resumed),
                         (f"resumed on standby ({STANDBY_SECONDS:g} s)", standby)):
        p50, p95 = percentile(values, 50), percentile(values, 95)
        rows += [
            (f"{label}, {name}, p50", ms(values, 50), base_true, ms(start_only, 50), f"{p50 / percentile(start_only, 50):.2f}×",
             f"≤ {TARGET_MS:.0f} ms", "met" if p50 <= TARGET_MS else "missed"),
            (f"{label}, {name}, p95", ms(values, 95), base_true, ms(start_only, 95), f"{p95 / percentile(start_only, 95):.2f}×", "—", "—"),
            (f"{label}, {name}, p50", ms(values, 50), base_import, ms(start_import, 50), f"{p50 / percentile(start_import, 50):.2f}×", "—", "—"),
        ]
        if values is warm:
            rows += [
                (f"{label}, {name}, p50", ms(warm, 50), "warm pool, refill held until the session ended", ms(held, 50),
                 f"{p50 - percentile(held, 50):+.0f} ms", "—", "—"),
                (f"{label}, {name}, p95", ms(warm, 95), "warm pool, refill held until the session ended", ms(held, 95),
                 f"{p95 - percentile(held, 95):+.0f} ms", "—", "—"),
            ]
    mem = [m[0] / 1024**2 for m in memory]
    anon = [m[1] / 1024**2 for m in memory]
    cpu = [m[2] for m in memory]
    sdk_mem = sdk_only[0] / 1024**2
    rows += [
        (f"memory per idle pooled container, usage − inactive file, mean of {len(mem)}", f"{statistics.mean(mem):.0f} MB",
         "container that only imported the SDK", f"{sdk_mem:.0f} MB", f"{statistics.mean(mem) / sdk_mem:.2f}×", "—", "—"),
        (f"memory per idle pooled container, usage − inactive file, max of {len(mem)}", f"{max(mem):.0f} MB",
         "container that only imported the SDK", f"{sdk_mem:.0f} MB", f"{max(mem) / sdk_mem:.2f}×", "—", "—"),
        ("  of which anonymous memory (cgroup rss / anon), mean", f"{statistics.mean(anon):.0f} MB",
         "container that only imported the SDK", f"{sdk_only[1] / 1024**2:.0f} MB", "—", "—", "—"),
        ("CPU of an idle pooled container (3 s), mean", f"{statistics.mean(cpu):.1f} ms/s",
         "container that only imported the SDK", f"{sdk_only[2]:.1f} ms/s", "—", "—", "—"),
    ]
    header = ("measure", "container tier", "baseline", "baseline value", "ratio / diff", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print("where the time goes (p50 of each step, ms after serve() was called; docker's event times, the worker's progress lines):")
    stages = (("create", "container created"), ("start", "started"), ("ready", "SDK imported"), ("assigned", "assignment seen"),
              ("tool_start", "bash call starts"), ("cold", "result accepted"))
    for name, runs in (("warm pool", results["warm"]), ("refill held", results["held"]), ("no pool", results["cold"]),
                       ("resumed", results["resumed"]), ("standby", results["standby"])):
        parts = []
        for stage, what in stages:
            values = [r[stage] for r in runs if stage in r]
            if values and not (stage == "ready" and all(r["pooled"] or r["standby"] for r in runs)):  # started before
                parts.append(f"{what} {percentile(values, 50):.0f}")
        print(f"  {name + ':':<13} " + " → ".join(parts))
    for name, values in (("warm pool", warm), ("refill held", held), ("no pool", cold), ("resumed", resumed), ("standby", standby),
                         ("docker run true", start_only), ("docker run import", start_import)):
        print(f"{name + ',':<19} ms: {' '.join(f'{t:.0f}' for t in sorted(values))}")
    print(f"({'quick mode, ' if quick else ''}{time.perf_counter() - began:.0f} s)")

if __name__ == "__main__":
    main()
