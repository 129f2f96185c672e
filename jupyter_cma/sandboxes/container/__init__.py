"""The container tier: one Docker container per session, full Linux, no network but the egress proxy.

A session's container runs the sandbox image (`sandbox/Dockerfile`): the SDK's
`EnvironmentWorker.handle_item` serves the session inside it with the standard
toolset (`bash`, `read`, `write`, `edit`, `glob`, `grep`), in `/workspace`.

What a container gets (and nothing else):

- `--network none`: only its own loopback. The image's entrypoint bridges
  127.0.0.1:3128 (the proxy variables) to `/run/cma/egress.sock`, which is a
  bind mount of the container's own directory `<data_dir>/containers/<id>/`
  (read-only; only the server writes there). The egress proxy listens on that
  socket while the container serves a session, so the socket is the
  container's identity.
- a per-session named volume at `/workspace` (`jupyter-cma-ws-…`): files
  survive the container, session sleeps and server restarts;
- the image's user `agent` (uid 1000), every capability dropped,
  `no-new-privileges`, a read-only root with small tmpfs mounts for `/tmp`,
  `/var/tmp` and the home directory, an init process that reaps zombies, and
  CPU, memory (no swap on top) and process limits from its instance size;
- the proxy's CA bundle in place of the system one (read-only), so TLS that
  the proxy must open is trusted;
- no credential: its work item's secret carries a placeholder that the proxy
  swaps for the item's real token on the way to the API host only.

Lifecycle: the container exits when its worker flow ends (the session idled
past `max_idle`, its lease ended); the next item of the session starts a new
container on the same volume. A warm pool of started containers (imports
done, each with a fresh volume) serves sessions that have no volume yet: the
pool container's volume becomes the session's. A container that exits
non-zero, is killed or runs out of memory fails the session with the reason;
the work item is then force-stopped unless the container reported its lease
lost (the SDK's own rule: a lost lease belongs to someone else). Every line the
container prints is kept in `<data_dir>/logs/<session id>.log`.

Docker calls block, so they run on a small thread pool with a client per
thread; each container's output is followed by a thread of its own.

The modules:

- `tier.py`: `ContainerTier`, its settings, start and close, how a session gets its container, its status;
- `engine.py`: Docker clients and threads, the sandbox image, making, starting and removing one container;
- `slots.py`: one container (`Slot`) and the thread that follows its output;
- `pool.py`: the warm pool and standby containers;
- `volumes.py`: sessions' workspace volumes, export, import, push and pull;
- `volume_archives.py`: a volume as a tar.gz, out and back in, and the checks an archive passes;
- `sandbox.py`: `ContainerSandbox`, serving one work item in a container;
- `labels.py`: the names and labels of what the tier makes in Docker.

The names other code imports from `jupyter_cma.sandboxes.container` (the
default of `CMAApp.container_tier_class` is
`jupyter_cma.sandboxes.container.ContainerTier`) are re-exported here.
"""

from __future__ import annotations

from ..base import WorkspaceArchiveError, WorkspaceBusy
from .labels import (
    CONTAINER_PREFIX,
    DATA_DIR_LABEL,
    HELPER_KIND,
    KIND_LABEL,
    LABEL,
    MANAGED,
    SESSION_LABEL,
    VOLUME_PREFIX,
)
from .pool import PoolStatus, StandbyStatus
from .sandbox import ContainerSandbox, ContainerSandboxStatus
from .slots import START_DESCRIPTIONS, ContainerFailed, Slot
from .tier import ContainerTier, ContainerTierStatus
from .volume_archives import CleanArchive, clean_archive, export_workspace, import_workspace, volume_in_use

__all__ = [
    "CONTAINER_PREFIX",
    "DATA_DIR_LABEL",
    "HELPER_KIND",
    "KIND_LABEL",
    "LABEL",
    "MANAGED",
    "SESSION_LABEL",
    "START_DESCRIPTIONS",
    "VOLUME_PREFIX",
    "CleanArchive",
    "ContainerFailed",
    "ContainerSandbox",
    "ContainerSandboxStatus",
    "ContainerTier",
    "ContainerTierStatus",
    "PoolStatus",
    "Slot",
    "StandbyStatus",
    "WorkspaceArchiveError",
    "WorkspaceBusy",
    "clean_archive",
    "export_workspace",
    "import_workspace",
    "volume_in_use",
]
