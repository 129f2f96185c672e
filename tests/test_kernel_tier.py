"""The kernel tier with real ipykernel processes, served through the SDK's worker flow against the emulator."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import nbformat
import pytest
from anthropic.lib.tools._beta_session_runner import TOOL_TIMEOUT
from nbclient import NotebookClient
from traitlets import TraitError

from jupyter_cma.anthropic_api import Secret
from jupyter_cma.sandboxes.base import ClaimedItem, WorkerSettings
from jupyter_cma.sandboxes.isolation import probe_bubblewrap
from jupyter_cma.sandboxes.kernel import KERNEL_DIED, SDK_TOOL_TIMEOUT, STOPPED, KernelSandbox, KernelTier, kernel_processes
from jupyter_cma.sandboxes.kernel.recording import build_notebook
from tests.helpers import wait_until

# --------------------------------------------------------------------------- helpers


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A tiny valid PNG, made with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(png()).decode()
SHOW_PNG = f"from IPython.display import Image, display\nimport base64\ndisplay(Image(data=base64.b64decode({PNG_B64!r})))"


def script(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": json.dumps({"cma_script": list(steps)})}]}


def py(code: str) -> dict[str, Any]:
    return {"tool": "python", "input": {"code": code}}


# Which kernel process runs the code. Not os.getpid(): in a PID namespace every sandboxed kernel is pid 2.
KERNEL_IDENTITY = "os.environ['JUPYTER_CMA_KERNEL_DIR']"




def end_turns(events: list[Any]) -> int:
    return sum(1 for e in events if e.type == "session.status_idle" and e.stop_reason.type == "end_turn")


async def turn_ended(client, session_id: str, after: int = 0) -> list[Any] | None:
    """The session's events once its last event is an end_turn idle (the `after`+1-th one)."""
    events = [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]
    if events and end_turns(events) > after and events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn":
        return events
    return None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def results(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type in ("user.custom_tool_result", "user.tool_result")]


def text(result: Any) -> str:
    return "".join(b.text for b in result.content if b.type == "text")


class Session:
    """One emulator session of an agent that has the kernel tier's tools."""

    def __init__(self, emulator, tier: KernelTier) -> None:
        self.emulator = emulator
        self.env_id, self.env_key = emulator.new_environment()
        self.client = emulator.client()
        self.tier = tier
        self.id = ""

    async def create(self, *steps: dict[str, Any]) -> Session:
        agent = await self.client.beta.agents.create(name="kernel-tier", model="claude-sonnet-4-5", tools=self.tier.tools_for_agent())
        session = await self.client.beta.sessions.create(agent=agent.id, environment_id=self.env_id)
        self.id = session.id
        if steps:
            await self.send(*steps)
        return self

    async def send(self, *steps: dict[str, Any]) -> None:
        await self.client.beta.sessions.events.send(self.id, events=[script(*steps)])

    async def claim(self) -> ClaimedItem:
        items = [
            item
            async for item in self.client.beta.environments.work.poller(
                environment_id=self.env_id, environment_key=self.env_key, drain=True, auto_stop=False, block_ms=None
            )
        ]
        (item,) = items
        assert item.data.id == self.id
        return ClaimedItem(work_id=item.id, environment_id=item.environment_id, session_id=item.data.id, secret=item.secret)

    async def close(self) -> None:
        await self.client.close()

    def worker(self, max_idle: float = 0.5) -> WorkerSettings:
        return WorkerSettings(client=self.client, environment_key=Secret(self.env_key, "test"), max_idle=max_idle)

    async def serve_turn(self, sandbox: KernelSandbox) -> tuple[list[Any], int | None]:
        """Serve until the turn ends and serve() returns on its own; the events and the kernel pid it had."""
        before = end_turns([e async for e in self.client.beta.sessions.events.list(self.id, limit=1000)])
        task = asyncio.ensure_future(sandbox.serve(self.worker()))
        try:
            events = await wait_until(lambda: turn_ended(self.client, self.id, before))
            pid = sandbox.kernel.pid if sandbox.kernel is not None else None
            await asyncio.wait_for(asyncio.shield(task), 30)  # max_idle after the end of the turn
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=30)
        return events, pid


def require_bwrap() -> None:
    """Skip without a working bubblewrap; in CI (CI=true) that is a failure."""
    problem = probe_bubblewrap("bwrap")
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"bubblewrap is required in CI: {problem}", pytrace=False)
        pytest.skip(problem)


def recorder(into: list[tuple[str, dict[str, Any]]]):
    return lambda session_id, cell: into.append((session_id, cell))


# --------------------------------------------------------------------------- the pool


async def test_pool_fills_hands_out_live_ipc_kernels_refills_and_close_kills_all(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-must-not-reach-kernels")
    kernel_dir = tmp_path / "kernels"
    tier = KernelTier(pool_size=2, kernel_dir=str(kernel_dir))
    try:
        await tier.start()
        assert await tier.wait_pool(60)
        first = {k.pid for k in tier.pooled}
        assert len(first) == 2 and all(pid_alive(p) for p in first)

        kernel = await tier.take_kernel()
        assert kernel.pid in first and kernel.alive()
        # ipc transport: connection file and the five sockets inside the kernel's own directory.
        assert kernel.directory.parent == kernel_dir
        assert kernel.connection_info["transport"] == "ipc"
        assert kernel.connection_file.parent == kernel.directory
        assert json.loads(kernel.connection_file.read_text())["transport"] == "ipc"
        prefix = Path(kernel.connection_info["ip"])
        assert prefix.parent == kernel.directory / "ipc"
        for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            socket = Path(f"{prefix}-{kernel.connection_info[name]}")
            assert stat.S_ISSOCK(socket.stat().st_mode), socket
        assert kernel.directory.stat().st_mode & 0o777 == 0o700  # (jupyter_client adds the sticky bit)
        assert (kernel.directory / "kernel.pid").read_text().strip() == str(kernel.pid)

        ex = await kernel.execute("import os; sorted(k for k in os.environ if k.startswith('ANTHROPIC'))", timeout=30)
        assert ex.status == "ok" and ex.outputs[-1]["data"]["text/plain"] == "[]"

        assert await tier.wait_pool(60)  # refilled behind the take
        pooled = {k.pid for k in tier.pooled}
        assert len(pooled) == 2 and kernel.pid not in pooled
        everything = pooled | {kernel.pid}
    finally:
        await tier.close()
    assert not [p for p in everything if pid_alive(p)]
    assert not kernel_processes(kernel_dir)
    assert list(kernel_dir.iterdir()) == []


async def test_pool_size_zero_starts_kernels_on_demand(tmp_path):
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"))
    try:
        await tier.start()
        assert await tier.wait_pool(1) and tier.pooled == []
        kernel = await tier.take_kernel()
        assert kernel.alive()
        ex = await kernel.execute("6 * 7", timeout=30)
        assert ex.outputs[-1]["data"]["text/plain"] == "42"
        assert tier.pooled == []
        await tier.release_kernel(kernel)
        assert not pid_alive(kernel.pid) and not kernel.directory.exists()
    finally:
        await tier.close()


def test_settings_are_checked_against_the_sdk():
    assert SDK_TOOL_TIMEOUT == TOOL_TIMEOUT  # the SDK's per-call limit, which execute_timeout must stay under
    with pytest.raises(TraitError):
        KernelTier(execute_timeout=TOOL_TIMEOUT)
    with pytest.raises(TraitError):
        KernelTier(pool_size=-1)
    tools = KernelTier().tools_for_agent()
    assert tools[0]["type"] == "agent_toolset_20260401"
    assert {c["name"]: c["enabled"] for c in tools[0]["configs"]} == {"bash": False, "web_fetch": False, "web_search": False}
    assert tools[1]["name"] == "python" and tools[1]["input_schema"]["required"] == ["code"]
    assert "additionalProperties" not in tools[1]["input_schema"]


# --------------------------------------------------------------------------- end to end


async def test_a_session_runs_python_and_file_tools_end_to_end(emulator, tmp_path):
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"))
    cells: list[tuple[str, dict[str, Any]]] = []
    tier.recorder = recorder(cells)
    await tier.start()
    session = Session(emulator, tier)
    try:
        await session.create(
            py("x = 21"),
            py("print(x * 2)"),
            {"tool": "write", "input": {"file_path": "f.txt", "content": "hello from write\n"}},
            py("open('f.txt').read()"),
            py(SHOW_PNG),
            {"say": "done: {result}"},
        )
        workspace = tmp_path / "workspaces" / session.id
        sandbox = tier.create(await session.claim(), workspace)
        assert sandbox.capabilities == {"python", "files"}
        events, pid = await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()

    define, printed, wrote, read_back, image = results(events)
    assert [r.type for r in (define, printed, wrote, read_back, image)] == [
        "user.custom_tool_result", "user.custom_tool_result", "user.tool_result", "user.custom_tool_result", "user.custom_tool_result",
    ]
    assert not any(r.is_error for r in (define, printed, wrote, read_back, image))
    assert text(define) == "(no output)"
    assert text(printed) == "42\n"  # the variable survived between calls
    assert text(wrote) == "wrote 17 bytes to f.txt"
    assert text(read_back) == "'hello from write\\n'"
    (block,) = image.content
    assert block.type == "image" and block.source.media_type == "image/png"
    assert base64.b64decode(block.source.data) == png()
    assert (workspace / "f.txt").read_text() == "hello from write\n"

    # serve() returned on its own (max_idle) and released the kernel.
    assert sandbox.status()["state"] == "ended" and sandbox.status()["calls"] == 4
    assert sandbox.kernel is None and pid is not None and not pid_alive(pid)

    # Recorded: four code cells and a markdown cell for the write, in order.
    assert {sid for sid, _ in cells} == {session.id}
    kinds = [c["cell_type"] for _, c in cells]
    assert kinds == ["code", "code", "markdown", "code", "code"]
    assert cells[1][1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    assert "**write** `f.txt`" in cells[2][1]["source"] and "hello from write" in cells[2][1]["source"]
    assert cells[4][1]["outputs"][0]["data"]["image/png"].strip() == PNG_B64


async def test_python_errors_timeouts_and_long_output(emulator, tmp_path):
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"), execute_timeout=1.0)
    await tier.start()
    session = Session(emulator, tier)
    try:
        await session.create(
            py("kept = 5"),
            py("def f():\n    return 1 / 0\nf()"),
            py("import time; print('started', flush=True); time.sleep(30)"),
            py("kept"),
            py("print('x' * 300_000)"),
            py("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(30)"),
            py("'kept' in globals()"),
        )
        sandbox = tier.create(await session.claim(), tmp_path / "ws")
        events, _ = await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()
    ok, error, timeout, after, long, stubborn, fresh = results(events)
    assert not ok.is_error
    assert error.is_error
    assert "ZeroDivisionError" in text(error) and "----> 2     return 1 / 0" in text(error)
    assert "\x1b[" not in text(error)
    assert timeout.is_error
    assert text(timeout).startswith("the call timed out after 1 s and was interrupted; the kernel and its variables are kept")
    assert "started" in text(timeout) and "KeyboardInterrupt" in text(timeout)
    assert not after.is_error and text(after) == "5"  # the kernel survived the interrupt
    assert not long.is_error
    assert text(long).startswith("[output truncated]\n") and len(text(long)) <= 100 * 1024 + 100
    # Code that ignores the interrupt loses its kernel; the next call gets a fresh one.
    assert stubborn.is_error and "did not stop when interrupted" in text(stubborn)
    assert not fresh.is_error and text(fresh) == "False"
    assert sandbox.status()["restarted"] is True and sandbox.status()["kernel_deaths"] == 1


async def test_a_kernel_crash_is_an_error_and_the_next_call_gets_a_fresh_kernel(emulator, tmp_path):
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"))
    cells: list[tuple[str, dict[str, Any]]] = []
    tier.recorder = recorder(cells)
    await tier.start()
    session = Session(emulator, tier)
    try:
        await session.create(
            {"tool": "write", "input": {"file_path": "keep.txt", "content": "still here"}},
            py(f"y = 1\nimport os\n{KERNEL_IDENTITY}"),
            py("import os; os._exit(1)"),
            py(f"import os\n(open('keep.txt').read(), 'y' in globals(), {KERNEL_IDENTITY})"),
        )
        sandbox = tier.create(await session.claim(), tmp_path / "ws")
        events, _ = await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()
    _, before, crash, after = results(events)
    assert crash.is_error and text(crash) == KERNEL_DIED
    assert not after.is_error
    content, has_y, identity = ast.literal_eval(text(after))
    assert content == "still here" and has_y is False
    assert identity != ast.literal_eval(text(before))
    status = sandbox.status()
    assert status["restarted"] is True and status["kernels_started"] == 2
    crash_cell = cells[2][1]
    assert crash_cell["metadata"]["cma"]["status"] == "died" and crash_cell["outputs"][-1]["ename"] == "KernelDied"


async def test_a_resumed_session_finds_its_files_with_a_fresh_kernel(emulator, tmp_path):
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"))
    await tier.start()
    workspace = tmp_path / "workspaces" / "s"
    session = Session(emulator, tier)
    try:
        await session.create(
            py(f"state = 'in memory'\nopen('notes.txt', 'w').write('on disk')\nimport os\n{KERNEL_IDENTITY}"),
        )
        first = tier.create(await session.claim(), workspace)
        events, first_pid = await session.serve_turn(first)
        (made,) = results(events)
        assert first_pid is not None and not pid_alive(first_pid)  # the first sandbox released its kernel

        # The session sleeps; new input queues a new item, served by a new sandbox on the same workspace.
        await session.send(py(f"import os\n(open('notes.txt').read(), 'state' in globals(), {KERNEL_IDENTITY})"))
        second = tier.create(await session.claim(), workspace)
        events, _ = await session.serve_turn(second)
    finally:
        await tier.close()
        await session.close()
    resumed = results(events)[-1]
    content, has_state, identity = ast.literal_eval(text(resumed))
    assert content == "on disk" and has_state is False and identity != ast.literal_eval(text(made))


async def test_a_stop_ends_a_running_call_and_releases_the_kernel(emulator, tmp_path):
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"))
    await tier.start()
    session = Session(emulator, tier)
    try:
        await session.create(py("print('started', flush=True)\nimport time\ntime.sleep(120)"))
        sandbox = tier.create(await session.claim(), tmp_path / "ws")
        task = asyncio.ensure_future(sandbox.serve(session.worker()))
        await wait_until(lambda: _async(sandbox.kernel is not None and sandbox.status()["calls"] == 1))
        pid = sandbox.kernel.pid
        await asyncio.sleep(0.5)  # the call is running
        task.cancel()  # what the control plane does to stop a session
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)  # the SDK shields running tool calls: the stop must end the call itself
        events = [e async for e in session.client.beta.sessions.events.list(session.id, limit=1000)]
    finally:
        await tier.close()
        await session.close()
    assert sandbox.status()["state"] == "stopped" and not pid_alive(pid)
    (result,) = results(events)
    assert result.is_error and text(result).startswith(STOPPED) and "started" in text(result)


async def _async(value):
    return value


# --------------------------------------------------------------------------- orphans

CRASHING_SERVER = """
import asyncio, sys
from jupyter_cma.sandboxes.kernel import KernelTier

async def main():
    tier = KernelTier(pool_size=0, kernel_dir=sys.argv[1], isolation=sys.argv[2])
    await tier.start()
    kernel = await tier.take_kernel()
    ex = await kernel.execute("import subprocess\\nchild = subprocess.Popen(['sleep', '300'])\\nchild.pid", timeout=30)
    assert ex.status == "ok", ex.outputs
    print(kernel.pid, kernel.isolation, kernel.directory, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def host_pid_of(kernel_dir: Path, directory: Path, argv0: str) -> int:
    """The host pid of the kernel's process running `argv0` (found by the kernel's environment marker)."""
    for pid in kernel_processes(kernel_dir).get(str(directory), ()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == argv0:
                return pid
        except OSError:
            continue
    raise AssertionError(f"no {argv0} process of {directory}")


@pytest.mark.parametrize("isolation", ["none", "bubblewrap"])
async def test_kernels_left_by_a_crashed_server_are_killed_on_start(tmp_path, isolation):
    if isolation == "bubblewrap":
        require_bwrap()
    kernel_dir = tmp_path / "kernels"
    server = subprocess.Popen([sys.executable, "-c", CRASHING_SERVER, str(kernel_dir), isolation], stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        kernel_pid, mode, directory = line.split()
        kernel_pid, directory = int(kernel_pid), Path(directory)
        assert mode == isolation
        child_pid = host_pid_of(kernel_dir, directory, "sleep")  # (inside a PID namespace the kernel sees another pid)
        assert pid_alive(kernel_pid) and pid_alive(child_pid)

        # While that server runs, its kernels are its own: another tier on the same directory leaves them.
        bystander = KernelTier(pool_size=0, kernel_dir=str(kernel_dir), isolation=isolation)
        await bystander.start()
        assert bystander.cleaned_orphans() == [] and pid_alive(kernel_pid) and directory.exists()
        await bystander.close()
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()

    tier = KernelTier(pool_size=0, kernel_dir=str(kernel_dir), isolation=isolation)
    try:
        await tier.start()
        (cleaned,) = tier.cleaned_orphans()
    finally:
        await tier.close()
    assert cleaned["dir"] == directory.name
    if isolation == "none":
        # The kernel may have noticed its parent's death and exited by itself; its child cannot have.
        assert child_pid in cleaned["killed"]
    # (A sandboxed kernel dies with its server, children and all: --die-with-parent and its PID namespace.)
    assert not pid_alive(kernel_pid) and not pid_alive(child_pid)
    assert not directory.exists() and list(kernel_dir.iterdir()) == []
    assert not kernel_processes(kernel_dir)


# --------------------------------------------------------------------------- notebook export


async def test_recorded_cells_export_to_a_notebook_that_reruns_to_the_same_outputs(emulator, tmp_path):
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"))
    cells: list[tuple[str, dict[str, Any]]] = []
    tier.recorder = recorder(cells)
    await tier.start()
    workspace = tmp_path / "ws"
    session = Session(emulator, tier)
    try:
        await session.create(
            py("import math\nprint(math.sqrt(16))\nvalues = [i * i for i in range(5)]\nvalues"),
            {"tool": "write", "input": {"file_path": "data.csv", "content": "a,b\n1,2\n"}},
            {"tool": "edit", "input": {"file_path": "data.csv", "old_string": "1,2", "new_string": "3,4"}},
            py("print(open('data.csv').read())\nimport sys\nprint('to stderr', file=sys.stderr)"),
            py(SHOW_PNG),
            py("sum(values) / missing_name"),
            py("len(values)"),
        )
        sandbox = tier.create(await session.claim(), workspace)
        await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()

    records = [cell for _, cell in cells]
    assert [c["cell_type"] for c in records] == ["code", "markdown", "markdown", "code", "code", "code", "code"]
    assert "**edit** `data.csv`" in records[2]["source"]
    nb = build_notebook(records, session_id=session.id)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3" and nb.metadata["cma"]["session_id"] == session.id
    recorded = [outputs_text(c) for c in nb.cells if c.cell_type == "code"]

    rerun = nbformat.reads(nbformat.writes(nb), as_version=4)  # as a saved .ipynb file reads back
    client = NotebookClient(rerun, timeout=60, shutdown_kernel="immediate", resources={"metadata": {"path": str(workspace)}})
    await client.async_execute()
    replayed = [outputs_text(c) for c in rerun.cells if c.cell_type == "code"]
    assert replayed == recorded
    assert "4.0" in recorded[0] and "3,4" in recorded[1] and PNG_B64 in recorded[2] and "NameError" in recorded[3]


def outputs_text(cell: Any) -> str:
    """A code cell's outputs as comparable text (streams merged per name, tracebacks without colour)."""
    parts: list[str] = []
    stream = None
    for out in cell.outputs:
        if out.output_type == "stream" and stream == out.name:
            parts[-1] += out.text
            continue
        stream = out.name if out.output_type == "stream" else None
        if out.output_type == "stream":
            parts.append(f"{out.name}:{out.text}")
        elif out.output_type == "error":
            parts.append(f"error:{out.ename}:{out.evalue}")
        else:
            data = out.data
            parts.append("".join(str(data.get(m, "")).strip() for m in ("text/plain", "image/png")))
    return "\n".join(parts)
