"""What sandbox tiers this machine can run, and why not when it cannot.

Probing touches the Docker engine and runs a throw-away bubblewrap process, so
it is done off the event loop and cached by the caller.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from typing import Any


def probe_kernel_tier() -> dict[str, Any]:
    """The kernel (isolate) tier needs ipykernel; bubblewrap adds network isolation."""
    if importlib.util.find_spec("ipykernel") is None:
        return {"available": False, "reason": "ipykernel is not installed: pip install ipykernel"}
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return {"available": True, "isolation": "none", "reason": "bubblewrap (bwrap) is not installed; kernels would run without network isolation"}
    try:
        result = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--die-with-parent", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": True, "isolation": "none", "reason": f"bubblewrap failed to start: {exc}"}
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[:200]
        return {"available": True, "isolation": "none", "reason": f"bubblewrap cannot create namespaces here: {detail}"}
    return {"available": True, "isolation": "bubblewrap"}


def probe_container_tier() -> dict[str, Any]:
    """The container tier needs a Docker engine that answers."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            version = client.version().get("Version", "unknown")
        finally:
            client.close()
    except Exception as exc:  # any failure means "not available", with the reason shown
        return {"available": False, "reason": f"no Docker engine answers: {type(exc).__name__}; start one (see scripts/docker-engine.sh)"}
    return {"available": True, "engine": f"docker {version}"}


def probe_tiers() -> dict[str, dict[str, Any]]:
    return {"container": probe_container_tier(), "kernel": probe_kernel_tier()}
