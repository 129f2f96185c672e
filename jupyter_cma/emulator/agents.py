"""Agents: versioned definitions (model, system prompt, tools, skills).

Every update appends a version; sessions pin the version they were created
with. Tool definitions are normalised here to the shape the API returns.
"""

from __future__ import annotations

import re
from typing import Any

from .wire import bad_request, conflict, merge_metadata, new_id, not_found, now_iso, paginate

TOOLSET_TYPE = "agent_toolset_20260401"
TOOLSET_NAMES = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
CUSTOM_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


# What a custom tool's input_schema may not hold, as the API refuses it: references (the schema must be
# written out in full) and regular expressions with lookarounds or backreferences. Only keywords whose
# value is a schema are walked: `default`, `enum`, `const` are data, and a property may be *named* "$ref".
_SUBSCHEMA = ("additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then",
              "else", "unevaluatedItems", "unevaluatedProperties")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")
_LOOKAROUNDS = (("<=", "a lookbehind '(?<='"), ("<!", "a negative lookbehind '(?<!'"), ("=", "a lookahead '(?='"),
                ("!", "a negative lookahead '(?!'"), ("P=", "a named backreference '(?P=name)'"))


def _input_schema_problem(node: Any, path: str) -> str | None:
    if not isinstance(node, dict):
        return None
    if "$ref" in node:
        return f"{path} has a $ref; references are not supported: inline the schema it points to"
    for key in ("$defs", "definitions"):
        if key in node:
            return f"{path} has {key}; references are not supported: remove {key} and inline its schemas where they are used"
    pattern = node.get("pattern")
    if isinstance(pattern, str) and (feature := _regex_feature(pattern)):
        return f"{path}.pattern uses {feature}; lookarounds and backreferences are not supported: remove it"
    for key in node.get("patternProperties") or {}:
        if isinstance(key, str) and (feature := _regex_feature(key)):
            return f"{path}.patternProperties key {key!r} uses {feature}; lookarounds and backreferences are not supported: remove it"
    children: list[tuple[Any, str]] = [(node.get(k), f"{path}.{k}") for k in _SUBSCHEMA if isinstance(node.get(k), dict)]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(node.get(key), list):
            children += [(v, f"{path}.{key}[{i}]") for i, v in enumerate(node[key])]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            children += [(v, f"{path}.{key}.{name}") for name, v in node[key].items()]
    for child, child_path in children:
        problem = _input_schema_problem(child, child_path)
        if problem:
            return problem
    return None


def _regex_feature(pattern: str) -> str | None:
    """A lookaround or backreference in `pattern`, named; escapes and character classes are followed."""
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not in_class and nxt in tuple("123456789"):
                return f"a backreference '\\{nxt}'"
            if not in_class and nxt == "k" and pattern[i + 2 : i + 3] in ("<", "{", "'"):
                return "a named backreference '\\k<name>'"
            i += 2
        elif in_class:
            in_class = char != "]"
            i += 1
        elif char == "[":
            in_class = True
            i += 2 if pattern[i + 1 : i + 2] == "^" else 1
            i += 1 if pattern[i : i + 1] == "]" else 0  # a ']' first in a class is itself
        else:
            if char == "(" and pattern[i + 1 : i + 2] == "?":
                for start, feature in _LOOKAROUNDS:
                    if pattern[i + 2 :].startswith(start):
                        return feature
            i += 1
    return None


class Agents:
    """The agents and their versions, a part of `Service` (see service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.agents: dict[str, list[dict[str, Any]]] = {}  # id -> versions, oldest first

    def _normalise_tools(self, tools: Any) -> list[dict[str, Any]]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise bad_request("tools must be a list of tool definitions")
        out: list[dict[str, Any]] = []
        names: set[str] = set()
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == TOOLSET_TYPE:
                default_config = tool.get("default_config") or {}
                configs_in = tool.get("configs") or []
                if not isinstance(default_config, dict) or not isinstance(configs_in, list) or not all(isinstance(c, dict) for c in configs_in):
                    raise bad_request(f"{TOOLSET_TYPE}: configs must be a list of objects and default_config an object")
                default = {"enabled": True, "permission_policy": {"type": "always_allow"}, **default_config}
                given = {c.get("name"): c for c in configs_in}
                unknown = set(given) - set(TOOLSET_NAMES)
                if unknown:
                    raise bad_request(f"unknown tool names in {TOOLSET_TYPE} configs: {sorted(unknown)}; known: {list(TOOLSET_NAMES)}")
                configs = []
                for name in TOOLSET_NAMES:
                    cfg = given.get(name, {})
                    configs.append({
                        "name": name,
                        "type": name,
                        "enabled": cfg.get("enabled", default["enabled"]),
                        "permission_policy": cfg.get("permission_policy") or default["permission_policy"],
                    })
                out.append({"type": TOOLSET_TYPE, "configs": configs, "default_config": default})
            elif kind == "custom":
                name = tool.get("name")
                if not isinstance(name, str) or not CUSTOM_TOOL_NAME.match(name):
                    raise bad_request("custom tool name must be 1–128 characters of letters, digits, '_' or '-'")
                if name in names:
                    raise bad_request(f"duplicate tool name {name!r}")
                schema = tool.get("input_schema")
                if not isinstance(schema, dict) or schema.get("type") != "object":
                    raise bad_request(f"custom tool {name!r}: input_schema must be a JSON schema with type 'object'")
                problem = _input_schema_problem(schema, "input_schema")
                if problem:
                    raise bad_request(f"custom tool {name!r}: {problem}")
                names.add(name)
                out.append({"type": "custom", "name": name, "description": tool.get("description") or "", "input_schema": schema})
            elif kind == "mcp_toolset":
                out.append({"type": "mcp_toolset", "mcp_server_name": tool.get("mcp_server_name"), "configs": tool.get("configs") or [], "default_config": tool.get("default_config") or {"enabled": True, "permission_policy": {"type": "always_ask"}}})
            else:
                raise bad_request(f"unsupported tool type {kind!r}: use {TOOLSET_TYPE!r}, 'custom' or 'mcp_toolset'")
        if len(out) > 256:
            raise bad_request("an agent has at most 256 tools")
        return out

    @staticmethod
    def _model(model: Any) -> dict[str, Any]:
        if isinstance(model, str) and model:
            return {"id": model}
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            return model
        raise bad_request("model is required: a model id string or {\"id\": ...}")

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("name is required: a non-empty string")
        now = now_iso()
        agent = {
            "id": new_id("agent"),
            "type": "agent",
            "version": 1,
            "name": name,
            "description": body.get("description"),
            "system": body.get("system"),
            "model": self._model(body.get("model")),
            "tools": self._normalise_tools(body.get("tools")),
            "skills": [self._skill_ref(s) for s in body.get("skills") or []],
            "mcp_servers": body.get("mcp_servers") or [],
            "metadata": merge_metadata(body.get("metadata") or {}, {}),
            "execution_identity": body.get("execution_identity") or {"type": "service_account"},
            "multiagent": body.get("multiagent"),
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        self.agents[agent["id"]] = [agent]
        self._notify("agent.created", agent["id"])
        return agent

    def _skill_ref(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, dict) or not isinstance(ref.get("skill_id"), str):
            raise bad_request("skills entries must be {\"type\": \"custom\"|\"anthropic\", \"skill_id\": ..., \"version\"?: ...}")
        return {"type": ref.get("type", "custom"), "skill_id": ref["skill_id"], "version": str(ref.get("version") or "latest")}

    def agent(self, agent_id: str, version: int | None = None) -> dict[str, Any]:
        versions = self.agents.get(agent_id)
        if not versions:
            raise not_found("agent", agent_id)
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise not_found("agent version", f"{agent_id}@{version}")
        return versions[version - 1]

    def update_agent(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.agent(agent_id)
        if current["archived_at"]:
            raise bad_request("agent is archived; create a new agent")
        if body.get("version") is not None and body["version"] != current["version"]:
            raise conflict(f"agent {agent_id} is at version {current['version']}, not {body['version']}; re-read it and retry")
        new = dict(current)
        for key in ("name", "description", "system", "mcp_servers", "execution_identity", "multiagent"):
            if key in body:
                new[key] = body[key]
        if "model" in body:
            new["model"] = self._model(body["model"])
        if "tools" in body:
            new["tools"] = self._normalise_tools(body["tools"])
        if "skills" in body:
            new["skills"] = [self._skill_ref(s) for s in body["skills"] or []]
        if "metadata" in body:
            new["metadata"] = merge_metadata(body["metadata"] or {}, current["metadata"])
        new["version"] = current["version"] + 1
        new["updated_at"] = now_iso()
        self.agents[agent_id].append(new)
        self._notify("agent.updated", agent_id)
        return new

    def archive_agent(self, agent_id: str) -> dict[str, Any]:
        current = self.agent(agent_id)
        if not current["archived_at"]:
            current["archived_at"] = current["updated_at"] = now_iso()
            self._notify("agent.archived", agent_id)
        return current

    def list_agents(self, *, include_archived: bool, limit: int, page: str | None) -> dict[str, Any]:
        items = [v[-1] for v in self.agents.values() if include_archived or not v[-1]["archived_at"]]
        data, nxt = paginate(items, limit, page)
        return {"data": data, "next_page": nxt}

    def agent_versions(self, agent_id: str, *, limit: int, page: str | None) -> dict[str, Any]:
        self.agent(agent_id)
        data, nxt = paginate(list(reversed(self.agents[agent_id])), limit, page)
        return {"data": data, "next_page": nxt}
