"""Resource limits of kernel sandboxes, hit for real: memory, CPU and processes, with a second session beside.

Real bubblewrap kernels in real control groups (or rlimits where the host offers none), sessions of the
real emulator served by the SDK's worker flow. No timing is asserted: a limit is seen by what the agent
is told and by the sandbox's counters.
"""

from __future__ import annotations

import asyncio

import pytest

from jupyter_cma.sandboxes.kernel import KERNEL_DIED, KernelTier
from tests.test_kernel_tier import Session, py, require_bwrap, results, text

TINY = {"cpus": 0.5, "memory": "256m", "pids": 48}
SPIN = "while True:\n    pass"
FORK_PAST_THE_LIMIT = "import subprocess\nprocs = [subprocess.Popen(['sleep', '60']) for _ in range(100)]"
TOUCH_600_MB = "hog = b'x' * (600 * 1024 * 1024)"


@pytest.fixture
def tier(tmp_path):
    require_bwrap()
    return KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"), execute_timeout=4,
                      instance_sizes={"tiny": TINY, "small": {"cpus": 1, "memory": "1g", "pids": 256}}, default_size="tiny")


async def test_a_sandbox_past_its_limits_is_told_which_while_another_session_runs_on(emulator, tier):
    await tier.start()
    hog, neighbour = Session(emulator, tier), Session(emulator, tier)
    try:
        await hog.create(py(SPIN), py(FORK_PAST_THE_LIMIT), py(TOUCH_600_MB), py("'a fresh kernel'"))
        await neighbour.create(py("sum(range(10**6))"))
        hog_box = tier.create(await hog.claim(), tier.directory.parent / "ws-hog")
        neighbour_box = tier.create(await neighbour.claim(), tier.directory.parent / "ws-neighbour")
        hog_turn = asyncio.ensure_future(hog.serve_turn(hog_box))
        (neighbour_events, _), (hog_events, _) = await asyncio.gather(neighbour.serve_turn(neighbour_box), hog_turn)
        status = tier.pool_status()
    finally:
        await tier.close()
        await hog.close()
        await neighbour.close()

    (sum_result,) = results(neighbour_events)
    assert not sum_result.is_error and text(sum_result) == "499999500000"

    spin, fork, memory, after = results(hog_events)
    limits = status["limits"]
    assert limits["default_size"] == "tiny" and limits["sizes"]["tiny"]["pids"] == 48
    if limits["mechanism"] in ("v1", "v2"):
        assert spin.is_error and "timed out" in text(spin)
        assert "CPU limit of 0.5 CPUs" in text(spin)
        assert memory.is_error and "memory limit of 256 MiB" in text(memory) and KERNEL_DIED in text(memory)
    else:  # rlimits: no CPU quota; memory per process (Python raises MemoryError)
        assert memory.is_error and "MemoryError" in text(memory) and "memory limit of 256 MiB" in text(memory)
    assert fork.is_error and "BlockingIOError" in text(fork) and "process limit of 48 processes" in text(fork)
    assert not after.is_error and text(after) == "'a fresh kernel'"
    box = hog_box.status()
    assert any("process limit" in h for h in box["limit_hits"])
    # The session's detail shows the limits in force, and what enforces them.
    assert box["size"] == "tiny" and box["limits"]["pids"] == 48 and box["limits"]["memory_text"] == "256 MiB"
    assert box["limits"]["enforced_by"] == ("rlimits" if limits["mechanism"] == "rlimits" else "cgroup")
