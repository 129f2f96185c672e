"""`jupyter cma demo` runs the README scenario through the product and reports the real result:
emulator → webhook → Jupyter server with jupyter-cma → a kernel sandbox, then a container."""

from __future__ import annotations

import subprocess
import sys

import docker


def test_demo_prints_the_squares_from_real_tool_runs_on_both_tiers(docker_client):
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_cma", "demo", "--model-delay", "0"],
        capture_output=True, text=True, timeout=400,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert any(line.startswith("server ") and "mode webhook" in line for line in lines)
    sessions = [i for i, line in enumerate(lines) if line.startswith("session ")]
    assert len(sessions) == 2, out.stdout
    kernel, container = lines[sessions[0]:sessions[1]], lines[sessions[1]:]
    assert kernel[0].endswith("on the kernel tier") and container[0].endswith("on the container tier")
    for run, runs_it in ((kernel, "tool python"), (container, "tool bash")):
        assert [line for line in run if line.startswith("result:")] == ["result: 1 4 9 16 25 36 49 64 81 100"]
        assert any(line.strip().startswith("tool write") for line in run), "the agent writes the script"
        assert any(line.strip().startswith(runs_it) for line in run), "and runs it in the tier's sandbox"
        assert any("cold start (work item claimed" in line for line in run), "the server measures the cold start"
    # The demo's sessions are throw-away: it leaves no container or volume behind.
    demo_made = [v.name for v in docker_client.volumes.list(filters={"label": "org.jupyter-cma.managed=1"})
                 if "cma-demo-" in (v.attrs.get("Labels") or {}).get("org.jupyter-cma.data-dir", "")]
    assert demo_made == []


def test_demo_on_one_tier_only():
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_cma", "demo", "--model-delay", "0", "--tier", "kernel"],
        capture_output=True, text=True, timeout=200,
    )
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith("session ")][0].endswith("on the kernel tier")
    assert out.stdout.count("result: 1 4 9") == 1
