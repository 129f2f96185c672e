"""Skills: uploaded SKILL.md directories, versioned, stored as zip archives."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

from .wire import bad_request, new_id, not_found, now_iso


class Skills:
    """The skills, their versions and files, a part of `Service` (see service.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.skills: dict[str, dict[str, Any]] = {}
        self.skill_versions: dict[str, list[dict[str, Any]]] = {}  # skill id -> versions
        self.skill_files: dict[str, bytes] = {}  # version id -> zip archive

    def create_skill(self, files: list[tuple[str, bytes]], display_name: str | None) -> dict[str, Any]:
        skill_id = new_id("skill")
        now = now_iso()
        skill = {"id": skill_id, "type": "skill", "display_name": display_name or "", "source": "custom", "latest_version_id": "", "created_at": now, "updated_at": now}
        self.skills[skill_id] = skill
        self.skill_versions[skill_id] = []
        version = self.create_skill_version(skill_id, files)
        if not skill["display_name"]:
            skill["display_name"] = version["name"]
        return skill

    def create_skill_version(self, skill_id: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        skill = self.skill(skill_id)
        if not files:
            raise bad_request("files is required: upload a directory with a SKILL.md at its root")
        tops = {name.replace("\\", "/").split("/")[0] for name, _ in files}
        skill_md = next((data for name, data in files if name.replace("\\", "/").split("/")[1:] == ["SKILL.md"]), None)
        if len(tops) != 1 or skill_md is None:
            raise bad_request("all files must sit in one top-level directory with a SKILL.md at its root")
        front = _frontmatter(skill_md.decode("utf-8", "replace"))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files:
                zf.writestr(name, data)
        version_id = str(int(time.time() * 1_000_000))
        version = {
            "id": version_id,
            "type": "skill_version",
            "skill_id": skill_id,
            "name": front.get("name") or tops.pop(),
            "description": front.get("description", ""),
            "created_at": now_iso(),
        }
        self.skill_versions[skill_id].append(version)
        self.skill_files[version_id] = buf.getvalue()
        skill["latest_version_id"] = version_id
        skill["updated_at"] = version["created_at"]
        return version

    def skill(self, skill_id: str) -> dict[str, Any]:
        skill = self.skills.get(skill_id)
        if skill is None:
            raise not_found("skill", skill_id)
        return skill

    def skill_version(self, skill_id: str, version: str) -> dict[str, Any]:
        self.skill(skill_id)
        versions = self.skill_versions[skill_id]
        if version == "latest" and versions:
            return versions[-1]
        for v in versions:
            if v["id"] == version:
                return v
        raise not_found("skill version", f"{skill_id}@{version}")

    def skill_content(self, skill_id: str, version: str) -> bytes:
        return self.skill_files[self.skill_version(skill_id, version)["id"]]

    def delete_skill(self, skill_id: str) -> dict[str, Any]:
        self.skill(skill_id)
        for v in self.skill_versions.pop(skill_id):
            self.skill_files.pop(v["id"], None)
        del self.skills[skill_id]
        return {"id": skill_id, "type": "skill_deleted"}


def _frontmatter(text: str) -> dict[str, str]:
    """The `key: value` pairs of a SKILL.md front matter block."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out
