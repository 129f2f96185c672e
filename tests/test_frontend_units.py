"""The frontend's logic without a browser: `node --test labextension/test/` on the compiled TypeScript.

The TypeScript is compiled first (`jlpm build:lib:prod`, incremental), so the tests run against the sources as they
are; `scripts/setup.sh` installed the Node dependencies. Any failing node test fails this test, with node's report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_cma.live import KINDS

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "labextension"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # jlpm and jupyter-builder live in the venv that runs the tests
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(600)
def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    assert node, "Node.js is not on PATH: install Node 20 or later (scripts/setup.sh expects it) to run the frontend tests"
    assert (LAB / "node_modules").is_dir(), "labextension/node_modules is missing: run `make setup` (it runs jlpm install)"
    build = subprocess.run(["jlpm", "build:lib:prod"], cwd=LAB, env=_env(), capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"the TypeScript did not compile:\n{build.stdout}\n{build.stderr}"
    tests = sorted((LAB / "test").glob("*.test.mjs"))
    assert tests, "no frontend unit tests in labextension/test"
    run = subprocess.run(
        [node, "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON", "--test", "--test-reporter=spec", *map(str, tests)],
        cwd=LAB, env=_env(), capture_output=True, text=True, timeout=300,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test failed:\n{report}"
    assert "fail 0" in report.replace("ℹ ", "")


def test_the_live_client_knows_every_kind_the_server_sends() -> None:
    """The client leaves kinds it does not know out of its filter, so a kind missing there never reaches a view."""
    source = (LAB / "src" / "core" / "live.ts").read_text()
    listed = re.search(r"export const KINDS = \[(.*?)\];", source, re.S)
    assert listed, "core/live.ts no longer declares KINDS"
    assert re.findall(r"'([a-z.]+)'", listed.group(1)) == list(KINDS)
