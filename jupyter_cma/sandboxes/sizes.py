"""Instance sizes: how much CPU, memory and how many processes one sandbox of an agent gets, on either tier.

Both tiers offer the same size names (`small`, `medium`, `large` by default),
so an agent's size means the same whichever tier serves it. An agent's size is
the one stored for it (REST `PATCH cma/api/agents/{id} {"size": …}`), else the
tier's `agent_sizes`, else `default_size`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from traitlets import Dict, Instance, TraitError, Unicode, validate

from .base import Tier

log = logging.getLogger(__name__)

DEFAULT_SIZES: dict[str, dict[str, Any]] = {
    "small": {"cpus": 1.0, "memory": "1g", "pids": 256},
    "medium": {"cpus": 2.0, "memory": "4g", "pids": 512},
    "large": {"cpus": 4.0, "memory": "8g", "pids": 1024},
}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)


def memory_bytes(value: Any) -> int:
    """'512m', '4g', 1073741824 → bytes."""
    if isinstance(value, int) and value > 0:
        return value
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise ValueError(f"memory {value!r}: write a size like 512m or 4g")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


class SizedTier(Tier):
    """A tier whose sandboxes are sized per agent (the settings and the lookup both tiers share)."""

    instance_sizes = Dict(
        default_value=DEFAULT_SIZES, config=True,
        help="Instance sizes: name → {cpus, memory (e.g. '4g'), pids}. Default: small (1 CPU, 1g, 256 "
        "processes), medium (2, 4g, 512), large (4, 8g, 1024). Memory is a hard limit with no swap on top.",
    )
    default_size = Unicode("small", config=True, help="Instance size of agents that have none (default 'small'); pooled sandboxes have it.")
    agent_sizes = Dict(
        default_value={}, config=True,
        help="Instance size per agent id, e.g. {'agent_…': 'large'} (default none). The REST API's "
        "PATCH cma/api/agents/{id} {\"size\": …} sets it too (stored), and wins over this.",
    )
    store = Instance("jupyter_cma.store.Store", allow_none=True, help="The server's store: agents' sizes (and what the tier keeps there).")

    @validate("instance_sizes")
    def _check_sizes(self, proposal: Any) -> dict[str, dict[str, Any]]:
        sizes = proposal["value"]
        for name, size in sizes.items():
            try:
                cpus, memory, pids = float(size["cpus"]), memory_bytes(size["memory"]), int(size["pids"])
            except (KeyError, TypeError, ValueError) as exc:
                raise TraitError(f"instance size {name!r} needs cpus, memory (e.g. '4g') and pids: {exc}") from exc
            if cpus <= 0 or memory < 64 * 1024**2 or pids < 16:
                raise TraitError(f"instance size {name!r}: cpus must be above 0, memory at least 64m, pids at least 16")
        return sizes

    def size_names(self) -> list[str]:
        """The instance sizes an agent on this tier may have: those configured in `instance_sizes`, by name."""
        return sorted(self.instance_sizes)

    def size_for(self, agent_id: str | None) -> str:
        """The instance size for an agent: stored (REST) > agent_sizes > default_size."""
        stored = self.store.agent(agent_id) if (self.store is not None and agent_id) else None
        name = (stored or {}).get("size") or self.agent_sizes.get(agent_id or "") or self.default_size
        if name not in self.instance_sizes:
            log.warning("instance size %r is not configured; using %r", name, self.default_size)
            name = self.default_size
        return name

    def size_of_session(self, session_id: str) -> str:
        """The instance size for a session's agent (as stored when its work was claimed)."""
        row = self.store.session(session_id) if self.store is not None else None
        return self.size_for((row or {}).get("agent_id"))
