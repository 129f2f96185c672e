"""What a user gets from `pip install` of the built wheel: the JupyterLab extension and the server extension, both
enabled and OK, in a fresh virtualenv with no other Jupyter configuration (the CI check of the issue).

The wheel is built from this checkout (`pip wheel --no-deps`); its build hook runs the extension build unless the
build output is already there (as `scripts/setup.sh` leaves it). Installing it into a new venv pulls the
dependencies from the package index (pip's cache after the first run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import jupyter_cma

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(1200)
def test_wheel_installs_both_extensions_enabled_and_ok(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # jlpm, if the hook must build
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)], env=env)
    (wheel,) = (tmp_path / "dist").glob("jupyter_cma-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    data = f"jupyter_cma-{jupyter_cma.__version__}.data/data/share/jupyter/labextensions/jupyter-cma"
    for name in (f"{data}/package.json", f"{data}/install.json", f"{data}/static/style.js",
                 f"{data}/schemas/jupyter-cma/plugin.json",
                 "jupyter_cma/widgets/static/dashboard.js", "jupyter_cma/widgets/static/egress.js"):
        assert name in names, f"the wheel lacks {name}"
    assert any(re.fullmatch(rf"{re.escape(data)}/static/remoteEntry\.[0-9a-f]+\.js", n) for n in names)
    assert not any("/node_modules/" in n for n in names)
    # `jupyter labextension list` shows the extension's package.json version: the same as the Python package's
    package = json.loads(zipfile.ZipFile(wheel).read(f"{data}/package.json"))
    assert package["version"] == jupyter_cma.__version__

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    bin_dir = target / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)])

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "PYTHON", "VIRTUAL_ENV"))}
    clean |= {
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    lab = _run([str(bin_dir / "jupyter"), "labextension", "list"], env=clean, timeout=300)
    lab_out = ANSI.sub("", lab.stdout + lab.stderr)  # it writes to stderr
    assert re.search(r"^\s+jupyter-cma v\S+ enabled OK \(python, jupyter_cma\)$", lab_out, re.M), lab_out
    assert f"jupyter-cma v{jupyter_cma.__version__} " in lab_out

    server = _run([str(bin_dir / "jupyter"), "server", "extension", "list"], env=clean, timeout=300)
    server_out = ANSI.sub("", server.stdout + server.stderr)
    assert re.search(r"^\s+jupyter_cma enabled$", server_out, re.M), server_out
    assert re.search(r"^\s+jupyter_cma \S+ OK$", server_out, re.M), server_out
