"""Kernel-tier benchmarks: cold start with and without the warm pool, with and without isolation, memory.

Cold start here = from the moment a claimed item is handed to
`KernelSandbox.serve()` until the API has accepted the first tool result:
the `processed_at` the emulator stamps on the session's first
`user.custom_tool_result` event minus the wall-clock time just before
`serve()` was called (same machine, same clock). It covers everything a
session waits for after its item is claimed: taking a kernel (from the pool,
or starting one), entering the workspace, the SDK worker flow's set-up
(session fetch, event stream, history), running the first python call
(`1 + 1`) and posting its result. The model's part is excluded: each
measurement waits until the emulator has emitted the tool call before the
item is claimed.

Each configuration serves N fresh sessions one after another: WITH the warm
pool (pool_size 2, pool refilled before each session) and WITHOUT
(pool_size 0: every kernel starts on demand), each with kernels in bubblewrap
sandboxes (`isolation="bubblewrap"`, the default where bwrap works) and
without (`isolation="none"`). Another configuration is the floor any sandbox
pays: the same SDK worker flow (`EnvironmentWorker.handle_item`) against the
same emulator with the same file tools, and a `python` tool answered
in-process at once (no kernel).

Kernel start = launch → ready (kernel_info answered, warm-up execution done),
what a pool refill costs in the background, with and without the sandbox.
Memory is the proportional set size (PSS: shared pages split between
processes) of all processes of an idle pooled kernel's sandbox (bwrap, its
reaper, the egress bridge and the kernel; just the kernel without isolation),
and the kernel process's resident set (RSS).

Target (issue: kernel tier): warm-pool p50 ≤ 50 ms, with isolation (the
sandbox's cost belongs in the pool start-up, not the take).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker
from anthropic.lib.tools import beta_async_tool
from anthropic.lib.tools.agent_toolset import beta_agent_toolset_20260401

from jupyter_cma.anthropic_api import Secret
from jupyter_cma.sandboxes.base import ClaimedItem, WorkerSettings
from jupyter_cma.sandboxes.isolation import probe_bubblewrap
from jupyter_cma.sandboxes.kernel import FILE_TOOLS, Kernel, KernelTier, kernel_processes

SESSIONS = 10
TARGET_MS = 50.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    try:
        pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
    except (OSError, StopIteration):
        pss = 0
    return rss, pss


def sandbox_memory_kb(tier: KernelTier, kernel: Kernel) -> tuple[int, int]:
    """(RSS of the ipykernel process, PSS of every process of the kernel's sandbox) in KiB."""
    pids = kernel_processes(tier.directory).get(str(kernel.directory), set())
    kernel_rss, total_pss = 0, 0
    for pid in pids:
        try:
            rss, pss = memory_kb(pid)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        total_pss += pss
        if argv[1:3] == [b"-m", b"ipykernel_launcher"]:  # (not bwrap, nor the bridge whose argv names it too)
            kernel_rss = rss
    return kernel_rss, total_pss


@beta_async_tool(name="python")
async def instant_python(code: str) -> str:
    """Answers at once: the floor configuration's tool."""
    return "2"


def file_tools_and_instant_python(ctx: Any) -> list[Any]:
    """The kernel tier's tool set with the python tool answered in-process."""
    return [t for t in beta_agent_toolset_20260401(ctx) if t.name in FILE_TOOLS] + [instant_python]


async def serve_without_kernel(client: AsyncAnthropic, claimed: ClaimedItem, env_key: str, workspace: Path) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    worker = EnvironmentWorker(client, environment_key=env_key, workdir=workspace, tools=file_tools_and_instant_python, max_idle=0.1)
    await worker.handle_item(
        work_id=claimed.work_id, environment_id=claimed.environment_id, session_id=claimed.session_id, work_secret=claimed.secret
    )


async def one_session(client: AsyncAnthropic, info: dict[str, Any], agent_id: str, tier: KernelTier | None, workspace: Path) -> float:
    env_id, env_key = info["environment_id"], info["environment_key"]
    session = await client.beta.sessions.create(agent=agent_id, environment_id=env_id)
    message = {"cma_script": [{"tool": "python", "input": {"code": "1 + 1"}}]}
    await client.beta.sessions.events.send(session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": json.dumps(message)}]}])
    # Wait until the emulated model has asked for the call: what follows is the sandbox's part only.
    while not [e async for e in client.beta.sessions.events.list(session.id, limit=100) if e.type == "agent.custom_tool_use"]:
        await asyncio.sleep(0.01)
    items = [
        item
        async for item in client.beta.environments.work.poller(
            environment_id=env_id, environment_key=env_key, drain=True, auto_stop=False, block_ms=None
        )
    ]
    (item,) = [i for i in items if i.data.id == session.id]
    claimed = ClaimedItem(work_id=item.id, environment_id=env_id, session_id=session.id, secret=item.secret)
    started = time.time()
    if tier is None:
        task = asyncio.ensure_future(serve_without_kernel(client, claimed, env_key, workspace / session.id))
    else:
        sandbox = tier.create(claimed, workspace / session.id)
        task = asyncio.ensure_future(sandbox.serve(WorkerSettings(client=client, environment_key=Secret(env_key, "bench"), max_idle=0.1)))
    try:
        while True:
            results = [e async for e in client.beta.sessions.events.list(session.id, limit=100) if e.type == "user.custom_tool_result"]
            if results:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
    assert results[0].is_error is False, results[0]
    accepted = results[0].processed_at
    accepted_at = accepted.timestamp() if isinstance(accepted, datetime) else datetime.fromisoformat(str(accepted).replace("Z", "+00:00")).timestamp()
    return (accepted_at - started) * 1000


async def measure(
    info: dict[str, Any], pool_size: int | None, base: Path, isolation: str = "none"
) -> tuple[list[float], list[tuple[int, int]]]:
    """Cold starts of SESSIONS sessions; pool_size None: the floor (no kernel)."""
    client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
    tier = None
    if pool_size is not None:
        tier = KernelTier(pool_size=pool_size, kernel_dir=str(base / f"k{pool_size}{isolation[0]}"), isolation=isolation)
        await tier.start()
        assert tier.effective_isolation == isolation, tier.isolation_status()
    try:
        tools = (tier or KernelTier()).tools_for_agent()
        agent = await client.beta.agents.create(name="bench", model="claude-sonnet-4-5", tools=tools)
        memory: list[tuple[int, int]] = []
        if tier is not None and pool_size:
            await tier.wait_pool(60)
            await asyncio.sleep(1.0)  # let the idle kernels settle before reading their memory
            memory = [sandbox_memory_kb(tier, k) for k in tier.pooled]
        await one_session(client, info, agent.id, tier, base / "ws")  # warm-up (imports, connections), not counted
        times = []
        for _ in range(SESSIONS):
            if tier is not None and pool_size:
                await tier.wait_pool(60)
            times.append(await one_session(client, info, agent.id, tier, base / "ws"))
        return times, memory
    finally:
        if tier is not None:
            await tier.close()
        await client.close()


async def kernel_starts(base: Path, isolation: str, n: int = 7) -> list[float]:
    """Milliseconds from launch to a ready kernel (what a pool refill costs), n kernels one after another."""
    tier = KernelTier(pool_size=0, kernel_dir=str(base / f"starts-{isolation}"), isolation=isolation)
    await tier.start()
    try:
        await tier.release_kernel(await tier.take_kernel())  # warm-up, not counted
        times = []
        for _ in range(n):
            began = time.perf_counter()
            kernel = await tier.take_kernel()
            times.append((time.perf_counter() - began) * 1000)
            await tier.release_kernel(kernel)
        return times
    finally:
        await tier.close()


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f} ms"


def main() -> None:
    problem = probe_bubblewrap("bwrap")
    if problem is not None:
        sys.exit(f"bench_kernel needs a working bubblewrap: {problem}")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_cma", "emulator"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(proc.stdout.readline())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
            base = Path(tmp)
            floor, _ = asyncio.run(measure(info, None, base))  # (first: it also warms the emulator up)
            warm_plain, memory_plain = asyncio.run(measure(info, 2, base, "none"))
            warm, memory = asyncio.run(measure(info, 2, base, "bubblewrap"))
            cold_plain, _ = asyncio.run(measure(info, 0, base, "none"))
            cold, _ = asyncio.run(measure(info, 0, base, "bubblewrap"))
            starts = asyncio.run(kernel_starts(base, "bubblewrap"))
            starts_plain = asyncio.run(kernel_starts(base, "none"))
    finally:
        proc.terminate()
        proc.wait()

    w50, w95 = percentile(warm, 50), percentile(warm, 95)
    label = f"cold start, claimed → first tool result (N={SESSIONS})"
    rows = [
        (f"{label}, p50", ms(warm, 50), "warm pool, isolation none", ms(warm_plain, 50), f"{w50 - percentile(warm_plain, 50):+.0f} ms", f"≤ {TARGET_MS:.0f} ms", "yes" if w50 <= TARGET_MS else "NO"),
        (f"{label}, p95", ms(warm, 95), "warm pool, isolation none", ms(warm_plain, 95), f"{w95 - percentile(warm_plain, 95):+.0f} ms", "—", "—"),
        (f"{label}, p50", ms(warm, 50), "no pool (pool_size 0), bubblewrap", ms(cold, 50), f"{percentile(cold, 50) / w50:.1f}× faster", "—", "—"),
        (f"{label}, p50", ms(warm, 50), "no pool (pool_size 0), isolation none", ms(cold_plain, 50), f"{percentile(cold_plain, 50) / w50:.1f}× faster", "—", "—"),
        (f"{label}, p95", ms(warm, 95), "no pool (pool_size 0), bubblewrap", ms(cold, 95), f"{percentile(cold, 95) / w95:.1f}× faster", "—", "—"),
        (f"{label}, p50", ms(warm, 50), "floor: same flow, no kernel", ms(floor, 50), f"{w50 - percentile(floor, 50):+.0f} ms", "—", "—"),
        (f"{label}, p95", ms(warm, 95), "floor: same flow, no kernel", ms(floor, 95), f"{w95 - percentile(floor, 95):+.0f} ms", "—", "—"),
        (f"kernel start, launch → ready (pool refill), p50 of {len(starts)}", ms(starts, 50), "isolation none", ms(starts_plain, 50), f"{percentile(starts, 50) - percentile(starts_plain, 50):+.0f} ms", "—", "—"),
        (f"memory per idle pooled kernel, PSS of its processes (mean of {len(memory)})", f"{statistics.mean(m[1] for m in memory) / 1024:.0f} MB",
         "isolation none", f"{statistics.mean(m[1] for m in memory_plain) / 1024:.0f} MB", "—", "—", "—"),
        ("  of which the ipykernel process, RSS", f"{statistics.mean(m[0] for m in memory) / 1024:.0f} MB",
         "isolation none", f"{statistics.mean(m[0] for m in memory_plain) / 1024:.0f} MB", "—", "—", "—"),
    ]
    header = ("measure", "warm pool (pool_size 2), bubblewrap", "baseline", "baseline value", "difference", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    for name, values in (("warm pool, bubblewrap", warm), ("warm pool, none", warm_plain), ("no pool, bubblewrap", cold),
                         ("no pool, none", cold_plain), ("floor", floor), ("kernel start, bubblewrap", starts), ("kernel start, none", starts_plain)):
        print(f"{name + ',':<26} ms: {' '.join(f'{t:.0f}' for t in sorted(values))}")


if __name__ == "__main__":
    main()
