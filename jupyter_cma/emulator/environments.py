"""Environments: create, read, update, archive, delete and list.

Creating a self-hosted environment also opens its work queue (see work.py);
deleting one stops its live work.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .wire import bad_request, merge_metadata, new_id, not_found, now_iso, paginate


class Environments:
    """The environments, a part of `Service` (see service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.environments: dict[str, dict[str, Any]] = {}

    def environment(self, environment_id: str) -> dict[str, Any]:
        env = self.environments.get(environment_id)
        if env is None:
            raise not_found("environment", environment_id, "environment_not_found")
        return env

    def create_environment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("name is required: a non-empty string")
        config = body.get("config") or {"type": "self_hosted"}
        if not isinstance(config, dict) or config.get("type") not in ("self_hosted", "cloud"):
            raise bad_request("config.type must be 'self_hosted' or 'cloud'")
        if config["type"] == "cloud":
            config = {"type": "cloud", "networking": config.get("networking") or {"type": "unrestricted"}, "packages": config.get("packages") or {}}
        now = now_iso()
        env = {
            "id": new_id("env"),
            "type": "environment",
            "name": name,
            "description": body.get("description"),
            "metadata": merge_metadata(body.get("metadata") or {}, {}),
            "config": config,
            "scope": body.get("scope"),
            "created_at": now,
            "updated_at": now,
            "archived_at": None,
        }
        self.environments[env["id"]] = env
        self.queue_changed[env["id"]] = asyncio.Condition()
        self.queued[env["id"]] = {}
        self.workers_seen[env["id"]] = {}
        self._notify("environment.created", env["id"])
        return env

    def update_environment(self, environment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        env = self.environment(environment_id)
        if env["archived_at"]:
            raise bad_request("environment is archived; create a new one", error_code="environment_archived")
        if "config" in body and body["config"] is not None:
            if not isinstance(body["config"], dict):
                raise bad_request("config must be an object with a type")
            if body["config"].get("type") != env["config"]["type"]:
                raise bad_request("config.type cannot change; create a new environment", error_code="invalid_config_type_change")
            env["config"] = body["config"]
        for key in ("name", "scope"):
            if body.get(key) is not None:
                env[key] = body[key]
        if "description" in body:
            env["description"] = body["description"]
        if "metadata" in body and body["metadata"] is not None:
            env["metadata"] = merge_metadata(body["metadata"], env["metadata"])
        env["updated_at"] = now_iso()
        self._notify("environment.updated", environment_id)
        return env

    def archive_environment(self, environment_id: str) -> dict[str, Any]:
        env = self.environment(environment_id)
        if not env["archived_at"]:
            env["archived_at"] = env["updated_at"] = now_iso()
            self._notify("environment.archived", environment_id)
        return env

    def delete_environment(self, environment_id: str) -> dict[str, Any]:
        self.environment(environment_id)
        for item in self.work.values():
            if item.environment_id == environment_id and item.live:
                self._finish(item)
        del self.environments[environment_id]
        self.queued.pop(environment_id, None)
        self._notify("environment.deleted", environment_id)
        return {"id": environment_id, "type": "environment_deleted"}

    def list_environments(self, *, include_archived: bool, limit: int, page: str | None) -> dict[str, Any]:
        items = [e for e in self.environments.values() if include_archived or not e["archived_at"]]
        data, nxt = paginate(items, limit, page)
        return {"data": data, "next_page": nxt}
