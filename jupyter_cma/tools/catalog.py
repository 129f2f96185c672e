"""The tool catalog (`GET cma/api/tools`): every tool an agent of this server can have, where it runs, and whether it
can run here now.

    {"standard": [{"tier", "available", "reason", "tools": [{"name", "kind", "runs", "enabled", "available", "reason",
                                                             "note"?, "description"?, "input_schema"?}]}],
     "builtin":  [{"family", "title", "summary", "requires", "available", "reason", "timeout", "settings_schema",
                   "tools": [{"name", "description", "input_schema", "runs": "server"}]}],
     "notebook": [the tools notebook kernels registered with @cma.tool],
     "server":   [the server's own custom tools]}

`standard` comes from each tier's `tools_for_agent()`: the Managed Agents toolset's tools (`kind` "toolset", on or
off as the tier configures them) and the custom tools a tier provides (`kind` "tier", e.g. the kernel tier's
`python`). `runs` says where a call runs: "sandbox" (the session's sandbox on this machine, behind its egress
policy), "anthropic" (web_fetch and web_search run on Anthropic's side, outside this server's egress policy),
"server" (built-ins: in this Jupyter server, through the session's egress path) or "kernel" (notebook tools).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..sandboxes.base import Tier
    from .builtin import BuiltinTools

# The tools of the Managed Agents toolset, in the API's order, and those of them that run at Anthropic.
TOOLSET_TYPE = "agent_toolset_20260401"
TOOLSET_TOOLS = ("bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search")
RUN_AT_ANTHROPIC = frozenset({"web_fetch", "web_search"})
ANTHROPIC_NOTE = ("runs at Anthropic, outside this server's egress policy; the web_fetch built-in fetches through "
                  "the session's egress policy instead")


def tool_catalog(*, tiers: Mapping[str, Tier], tier_status: Mapping[str, Mapping[str, Any]],
                 builtins: BuiltinTools | None, notebook: list[dict[str, Any]], server: list[dict[str, Any]]) -> dict[str, Any]:
    """The catalog document (see the module's docstring). `tier_status` is the status document's `tiers`."""
    return {
        "standard": [standard_tools(name, tier, tier_status.get(name) or {}) for name, tier in tiers.items()],
        "builtin": builtin_families(builtins),
        "notebook": notebook,
        "server": server,
    }


def toolset_enabled(entry: Mapping[str, Any]) -> dict[str, bool]:
    """Which toolset tools an `agent_toolset_20260401` entry turns on: its `configs` by name, else its
    `default_config`, else on."""
    default = (entry.get("default_config") or {}).get("enabled")
    default = True if default is None else bool(default)
    configs = {str(c.get("name")): c for c in entry.get("configs") or [] if isinstance(c, Mapping)}
    enabled: dict[str, bool] = {}
    for name in [*TOOLSET_TOOLS, *(n for n in configs if n not in TOOLSET_TOOLS)]:
        value = (configs.get(name) or {}).get("enabled")
        enabled[name] = default if value is None else bool(value)
    return enabled


def standard_tools(name: str, tier: Tier, status: Mapping[str, Any]) -> dict[str, Any]:
    """One tier's standard tools, each on or off as the tier gives them to agents, and available only when the
    tier itself is (the probe says so, or has not said otherwise yet)."""
    tier_reason = status.get("reason") if status.get("available") is False else None
    tier_available = tier_reason is None and status.get("available") is not False
    if not tier_available and tier_reason is None:
        tier_reason = f"the {name} tier is not available on this machine (GET cma/api/status says why)"
    tools: list[dict[str, Any]] = []
    for entry in tier.tools_for_agent():
        if entry.get("type") == TOOLSET_TYPE:
            for tool, enabled in toolset_enabled(entry).items():
                at_anthropic = tool in RUN_AT_ANTHROPIC
                reason = tier_reason if not tier_available else None
                if not enabled:
                    reason = f"the {name} tier gives agents no {tool} tool"
                row: dict[str, Any] = {"name": tool, "kind": "toolset", "runs": "anthropic" if at_anthropic else "sandbox",
                                       "enabled": enabled, "available": enabled and tier_available, "reason": reason}
                if at_anthropic:
                    row["note"] = ANTHROPIC_NOTE
                tools.append(row)
        elif entry.get("type") == "custom":
            tools.append({"name": entry.get("name"), "kind": "tier", "runs": "sandbox", "enabled": True,
                          "available": tier_available, "reason": tier_reason,
                          "description": entry.get("description"), "input_schema": entry.get("input_schema")})
    return {"tier": name, "available": tier_available, "reason": tier_reason, "tools": tools}


def builtin_families(builtins: BuiltinTools | None) -> list[dict[str, Any]]:
    """Each loaded built-in family: what it is, whether it can run here (and why not), its settings' schema, its
    timeout and every tool it can offer."""
    if builtins is None:
        return []
    rows = []
    for name, family in builtins.families.items():
        reason = builtins.unavailable(name)
        try:
            specs = family.all_tools()
        except Exception:  # a family that cannot list its tools without settings still shows (its tools unknown)
            specs = []
        rows.append({
            "family": name, "title": family.title, "summary": family.summary, "requires": family.requires,
            "available": reason is None, "reason": reason, "timeout": float(family.timeout),
            "settings_schema": family.settings_schema,
            "tools": [{"name": s.name, "description": s.description, "input_schema": s.input_schema, "runs": "server"}
                      for s in specs],
        })
    return rows


def with_standard_off(tools: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    """An agent's tool list with the toolset's own tools of these names turned off (a built-in of the same name,
    such as web_fetch, replaces the one that runs at Anthropic)."""
    off = sorted(set(names) & set(TOOLSET_TOOLS))
    if not off:
        return tools
    fitted = []
    for tool in tools:
        if tool.get("type") == TOOLSET_TYPE:
            configs = [c for c in tool.get("configs") or [] if c.get("name") not in off]
            tool = {**tool, "configs": configs + [{"name": name, "enabled": False} for name in off]}
        fitted.append(tool)
    return fitted
