"""Agents given notebook tools: which kernel runs each tool, and keeping the agents' definitions up to date.

An agent created (or patched) with notebook tools (`@cma.tool` in a notebook) gets their definitions
upstream as custom tools, and this server stores where each runs (`agents.notebook_tools`: tool name → kernel,
notebook, definition). When a kernel registers one of those tools again with another definition (its cell was
changed and run again), `refresh_agents` updates every agent given it, so the model sees the new schema.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from ..store import Store
    from ..tools.kernels import NotebookTool

log = logging.getLogger("jupyter_cma.control")


def bindings(tools: list[NotebookTool]) -> dict[str, dict[str, Any]]:
    """What the store keeps of an agent's notebook tools: name → {"kernel_id", "notebook", "definition"}."""
    return {t.name: {"kernel_id": t.kernel_id, "notebook": t.notebook, "definition": t.definition()} for t in tools}


def with_tools(current: list[dict[str, Any]], drop: set[str], add: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An agent's tool list with the custom tools named in `drop` taken out and `add` put in their place."""
    kept = [t for t in current if not (t.get("type") == "custom" and t.get("name") in drop)]
    return kept + add


async def refresh_agents(client: AsyncAnthropic, store: Store, tool: NotebookTool) -> list[str]:
    """Give every agent that has `tool` its new definition upstream; the ids of the agents updated."""
    updated = []
    for row in store.agents_with_notebook_tool(tool.kernel_id, tool.name):
        agent_id = row["id"]
        try:
            current = await client.beta.agents.retrieve(agent_id)
            tools = with_tools([t.model_dump(mode="json", exclude_none=True) for t in current.tools], {tool.name}, [tool.definition()])
            await client.beta.agents.update(agent_id, version=current.version, tools=tools)
        except Exception as exc:  # the agent keeps its old definition; the next registration tries again
            log.warning("jupyter-cma: agent %s keeps the old definition of tool %s: %s", agent_id, tool.name, exc)
            continue
        store.set_agent_notebook_tools(agent_id, {**row["notebook_tools"], **bindings([tool])})
        updated.append(agent_id)
        log.info("jupyter-cma: agent %s has the new definition of notebook tool %s", agent_id, tool.name)
    return updated
