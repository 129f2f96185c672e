"""`jupyter cma demo` runs the README scenario end to end and reports the real result."""

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
    assert any(line.strip().startswith("tool bash") for line in lines), "the script must really run in the sandbox"
    assert any("cold start" in line for line in lines)
