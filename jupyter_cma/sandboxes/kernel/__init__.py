"""The kernel tier: each session's tool calls run in a dedicated IPython kernel.

A session's sandbox is an ipykernel of its own, isolated with bubblewrap where
that works. The agent gets the SDK's file tools, confined to the session's
workspace, and a `python` tool that runs code in the kernel like a notebook
cell; every call is recorded, so a session can be exported as a notebook.

One module per job:

- `tier.py`: `KernelTier`, the settings, isolation, lifecycle and egress events; it makes the sandboxes;
- `pool.py`: the warm pool of kernels, and handing a pooled kernel over to a session;
- `process.py`: one kernel process (`Kernel`), what running code in it produced (`Execution`), its end;
- `sandbox.py`: `KernelSandbox`, the SDK's worker flow for one work item, the file tools and the python tool;
- `results.py`: a python call's outputs as the agent's tool result;
- `recording.py`: the cells recorded for a session, and the notebook built from them;
- `orphans.py`: kernels a crashed server left behind, found in /proc and killed.

The names other code imports from `jupyter_cma.sandboxes.kernel` (e.g. the
default of `CMAApp.kernel_tier_class`, `jupyter_cma.sandboxes.kernel.KernelTier`)
are re-exported here.
"""

from .orphans import clean_orphans, kernel_processes
from .process import (
    DEATH_POLL,
    ENV_MARKER,
    INTERRUPT_GRACE,
    KERNEL_ARGV,
    KERNEL_SHUTDOWN_TIMEOUT,
    RECORD_LIMIT,
    Execution,
    Kernel,
    KernelStartError,
)
from .recording import Recorder
from .results import IMAGE_LIMIT, IMAGE_TYPES, MAX_IMAGES, OUTPUT_LIMIT
from .sandbox import (
    FILE_TOOLS,
    KERNEL_DIED,
    PYTHON_INPUT_SCHEMA,
    SDK_TOOL_TIMEOUT,
    STOP_TIMEOUT,
    STOPPED,
    KernelSandbox,
    KernelSandboxStatus,
    python_tool_description,
)
from .tier import EGRESS_HOOK_TIMEOUT, SCRUBBED_ENV_PREFIXES, KernelIsolationStatus, KernelTier, KernelTierStatus

__all__ = [
    "DEATH_POLL",
    "EGRESS_HOOK_TIMEOUT",
    "ENV_MARKER",
    "FILE_TOOLS",
    "IMAGE_LIMIT",
    "IMAGE_TYPES",
    "INTERRUPT_GRACE",
    "KERNEL_ARGV",
    "KERNEL_DIED",
    "KERNEL_SHUTDOWN_TIMEOUT",
    "MAX_IMAGES",
    "OUTPUT_LIMIT",
    "PYTHON_INPUT_SCHEMA",
    "RECORD_LIMIT",
    "SCRUBBED_ENV_PREFIXES",
    "SDK_TOOL_TIMEOUT",
    "STOPPED",
    "STOP_TIMEOUT",
    "Execution",
    "Kernel",
    "KernelIsolationStatus",
    "KernelSandbox",
    "KernelSandboxStatus",
    "KernelStartError",
    "KernelTier",
    "KernelTierStatus",
    "Recorder",
    "clean_orphans",
    "kernel_processes",
    "python_tool_description",
]
