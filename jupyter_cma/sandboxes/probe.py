"""What sandbox tiers this machine can run, and why not when it cannot.

Probing touches the Docker engine and runs a throw-away bubblewrap process, so
it is done off the event loop and cached by the caller.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .isolation import probe_bubblewrap


def probe_kernel_tier() -> dict[str, Any]:
    """The kernel (isolate) tier needs ipykernel and a working bubblewrap (kernels run isolated or not at all)."""
    if importlib.util.find_spec("ipykernel") is None:
        return {"available": False, "reason": "ipykernel is not installed: pip install ipykernel"}
    # The same probe the kernel tier runs before it isolates kernels: one definition of "bubblewrap works here".
    problem = probe_bubblewrap("bwrap")
    if problem is not None:
        return {"available": False, "isolation": "none",
                "reason": f"{problem}; kernels are refused without isolation (KernelTier.isolation='none' runs them "
                          "unisolated, for debugging only)"}
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
