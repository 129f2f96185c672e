"""`jupyter cma demo` runs the README scenario through the product and reports the real result:
emulator → webhook → Jupyter server with jupyter-cma → kernel sandbox."""

from __future__ import annotations

import subprocess
import sys


def test_demo_prints_the_squares_from_a_real_tool_run():
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_cma", "demo", "--model-delay", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "result: 1 4 9 16 25 36 49 64 81 100"
    assert any(line.strip().startswith("tool write") for line in lines), "the agent writes the script"
    assert any(line.strip().startswith("tool python") for line in lines), "and runs it in the kernel sandbox"
    assert any(line.startswith("server ") and "mode webhook" in line for line in lines)
    assert any("cold start (work item claimed" in line for line in lines), "the server measures the cold start"
