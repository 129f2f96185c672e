"""Where the in-sandbox runtime (`sandbox/` in the source tree) is on this machine.

The runtime is what runs inside a sandbox: the egress bridge (kernels and
containers) and the container worker. It imports nothing from `jupyter_cma`,
so it is shipped as plain files: a wheel carries them as
`jupyter_cma/_sandbox/` (see pyproject.toml), a source checkout has them at
`sandbox/` next to the package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def runtime_dir() -> Path:
    """The directory holding `Dockerfile`, `requirements.txt` and `cma_sandbox/`."""
    for candidate in (_PACKAGE / "_sandbox", _PACKAGE.parent / "sandbox"):
        if (candidate / "cma_sandbox").is_dir():
            return candidate
    raise RuntimeError(
        f"the sandbox runtime is missing: neither {_PACKAGE / '_sandbox'} nor {_PACKAGE.parent / 'sandbox'} exists; "
        "reinstall jupyter-cma"
    )


RUNTIME_DIR = runtime_dir()
BRIDGE_SCRIPT = RUNTIME_DIR / "cma_sandbox" / "bridge.py"
