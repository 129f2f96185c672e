"""The names and labels of what the container tier makes in Docker: containers, workspace volumes, helper containers.

How a server, and `jupyter cma cleanup`, tell their own containers and volumes
from anyone else's: every one carries `org.jupyter-cma.managed=1`, its kind,
the data directory of the server that made it and, when it belongs to a
session, the session's id.
"""

from __future__ import annotations

LABEL = "org.jupyter-cma"
"""Every container and volume this tier makes carries `org.jupyter-cma.managed=1` (see `jupyter cma cleanup`)."""
MANAGED = f"{LABEL}.managed"
DATA_DIR_LABEL = f"{LABEL}.data-dir"  # which server made it: a server removes only its own leftovers
SESSION_LABEL = f"{LABEL}.session"
KIND_LABEL = f"{LABEL}.kind"  # "sandbox" (container) or "workspace" (volume)
HELPER_KIND = "workspace-helper"  # the kind label of helper containers (never started)
VOLUME_PREFIX = "jupyter-cma-ws-"
CONTAINER_PREFIX = "jupyter-cma-"
