"""The file tools against a sandbox that swaps a directory for a symlink out of its workspace, as fast as it can.

Inside the sandbox a process exchanges `d` (a directory in the workspace) with `d_alt` (a symlink to a
directory of the host outside the workspace) in a tight loop (renameat2 RENAME_EXCHANGE: `d` is each
of the two half of the time), while the agent calls read, write, edit, glob and grep on paths under
`d`, many times, on both tiers, through the whole server. A call may fail (the path led outside when
it was checked), but none may ever read or write the host's directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_container_tier import (  # noqa: F401  (the server's configuration: both tiers)
    container_agent,
    jp_server_config,
    pool_size,
    reap_interval,
)
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    Harness,
    cma_emulator,
    cma_mode,
    harness,
    script,
)
from tests.test_dispatch import jp_server_config as dispatch_server_config  # noqa: F401

pytestmark = pytest.mark.timeout(300)

ROUNDS = 40
SECRET = "CANARY-SECRET-never-in-a-result"
SWAPPER = '''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
os.makedirs("d", exist_ok=True)
with open("d/f.txt", "w") as f:
    f.write("shared text inside")
if not os.path.lexists("d_alt"):
    os.symlink(sys.argv[1], "d_alt")
open("swapping", "w").close()
while True:
    libc.renameat2(AT_FDCWD, b"d", AT_FDCWD, b"d_alt", RENAME_EXCHANGE)
'''


def file_tool_round(i: int) -> dict[str, Any]:
    """One model response calling every file tool on a path under the swapped directory."""
    return {"tools": [
        {"tool": "read", "input": {"file_path": "d/f.txt"}},
        {"tool": "write", "input": {"file_path": f"d/new-{i}.txt", "content": "written by the agent"}},
        {"tool": "edit", "input": {"file_path": "d/f.txt", "old_string": "shared text", "new_string": "shared text!"}},
        {"tool": "glob", "input": {"pattern": "d/*"}},
        {"tool": "grep", "input": {"pattern": "CANARY|shared", "path": "d"}},
    ]}


@pytest.fixture
def outside(tmp_path) -> Path:
    """A host directory outside every workspace, holding what the race would reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "f.txt").write_text(f"shared text {SECRET}")
    (path / "canary-only.txt").write_text(SECRET)
    return path


@pytest.mark.parametrize("tier", ["kernel", "container"])
async def test_a_symlink_swap_never_leads_a_file_tool_out_of_the_workspace(harness, outside, tier, docker_client):
    h: Harness = await harness.start()
    if tier == "kernel":
        agent = (await h.api("POST", "agents", {"name": "racer", "tier": "kernel"}))["id"]
        start = {"tool": "python", "input": {"code": (
            "import subprocess, sys, os, time\n"
            f"subprocess.Popen(['python3', 'swapper.py', {str(outside)!r}])\n"
            "while not os.path.exists('swapping'):\n    time.sleep(0.01)\n'swapping'")}}
    else:
        agent = await container_agent(h)
        start = {"tool": "bash", "input": {"command": (
            f"(python3 swapper.py {outside} > /dev/null 2>&1 &); while [ ! -e swapping ]; do sleep 0.01; done; echo swapping")}}
    steps = [{"tool": "write", "input": {"file_path": "swapper.py", "content": SWAPPER}}, start,
             *(file_tool_round(i) for i in range(ROUNDS)), {"say": "done"}]
    sid = await h.session(agent, script(*steps))
    events = await h.turn_ends(sid, timeout=300)

    results = [e for e in events if e.type in ("user.tool_result", "user.custom_tool_result")]
    assert len(results) == 2 + 5 * ROUNDS
    texts = [json.dumps([b.model_dump() for b in (e.content or [])]) for e in results]
    assert "swapping" in texts[1]
    leaked = [t for t in texts if SECRET in t or "canary-only" in t]
    assert leaked == [], leaked[:3]
    # The host's directory is exactly as it was: nothing written, nothing edited.
    assert sorted(p.name for p in outside.iterdir()) == ["canary-only.txt", "f.txt"]
    assert (outside / "f.txt").read_text() == f"shared text {SECRET}"
    # And the race was real: some calls did reach the workspace's own `d` (it was a directory then).
    assert any("shared text" in t and not t.startswith('[{"type": "text", "text": "path') for t in texts[2:])
