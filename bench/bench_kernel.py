"""Kernel-tier benchmarks: cold start with and without the warm pool, memory per pooled kernel.

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
(pool_size 0: every kernel starts on demand). A third configuration is the
floor any sandbox pays: the same SDK worker flow (`EnvironmentWorker.
handle_item`) against the same emulator with the same file tools, and a
`python` tool answered in-process at once (no kernel). Memory is the resident set (RSS, and PSS,
which splits shared pages between processes) of each idle pooled kernel.

Target (issue: kernel tier): warm-pool p50 ≤ 50 ms.
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
from jupyter_cma.sandboxes.kernel import FILE_TOOLS, KernelTier

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


async def measure(info: dict[str, Any], pool_size: int | None, base: Path) -> tuple[list[float], list[tuple[int, int]]]:
    """Cold starts of SESSIONS sessions; pool_size None: the floor (no kernel)."""
    client = AsyncAnthropic(api_key=info["api_key"], base_url=info["base_url"])
    tier = None if pool_size is None else KernelTier(pool_size=pool_size, kernel_dir=str(base / f"k{pool_size}"))
    if tier is not None:
        await tier.start()
    try:
        tools = (tier or KernelTier()).tools_for_agent()
        agent = await client.beta.agents.create(name="bench", model="claude-sonnet-4-5", tools=tools)
        memory: list[tuple[int, int]] = []
        if tier is not None and pool_size:
            await tier.wait_pool(60)
            await asyncio.sleep(1.0)  # let the idle kernels settle before reading their memory
            memory = [memory_kb(k.pid) for k in tier.pooled if k.pid]
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


def main() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_cma", "emulator"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    info = json.loads(proc.stdout.readline())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-kernel-") as tmp:
            warm, memory = asyncio.run(measure(info, 2, Path(tmp)))
            cold, _ = asyncio.run(measure(info, 0, Path(tmp)))
            floor, _ = asyncio.run(measure(info, None, Path(tmp)))
    finally:
        proc.terminate()
        proc.wait()

    w50, w95, c50, c95 = percentile(warm, 50), percentile(warm, 95), percentile(cold, 50), percentile(cold, 95)
    f50, f95 = percentile(floor, 50), percentile(floor, 95)
    rss = statistics.mean(m[0] for m in memory) / 1024
    pss = statistics.mean(m[1] for m in memory) / 1024
    label = f"cold start, item claimed → first tool result accepted (N={SESSIONS})"
    rows = [
        (f"{label}, p50", f"{w50:.0f} ms", "no pool (pool_size 0)", f"{c50:.0f} ms", f"{c50 / w50:.1f}× faster", f"≤ {TARGET_MS:.0f} ms", "yes" if w50 <= TARGET_MS else "NO"),
        (f"{label}, p95", f"{w95:.0f} ms", "no pool (pool_size 0)", f"{c95:.0f} ms", f"{c95 / w95:.1f}× faster", "—", "—"),
        (f"{label}, p50", f"{w50:.0f} ms", "floor: same flow, no kernel", f"{f50:.0f} ms", f"+{w50 - f50:.0f} ms", "—", "—"),
        (f"{label}, p95", f"{w95:.0f} ms", "floor: same flow, no kernel", f"{f95:.0f} ms", f"+{w95 - f95:.0f} ms", "—", "—"),
        (f"memory per idle pooled kernel (mean of {len(memory)})", f"{rss:.0f} MB RSS", "PSS (shared pages split)", f"{pss:.0f} MB", "—", "—", "—"),
    ]
    header = ("measure", "warm pool (pool_size 2)", "baseline", "baseline value", "ratio", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"\nwarm pool, ms: {' '.join(f'{t:.0f}' for t in sorted(warm))}")
    print(f"no pool,   ms: {' '.join(f'{t:.0f}' for t in sorted(cold))}")
    print(f"floor,     ms: {' '.join(f'{t:.0f}' for t in sorted(floor))}")


if __name__ == "__main__":
    main()
