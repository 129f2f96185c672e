"""What `jupyter cma cleanup` finds and removes: the container tier's containers, volumes and socket directories.

Everything the tier makes carries `org.jupyter-cma.managed=1` and the data
directory of the server that made it (`org.jupyter-cma.data-dir`). A volume
that a session of that data directory records as its workspace holds a user's
files (a sleeping session resumes on it; a stopped or failed one can be sent a
message again), so it is listed apart and removed only when asked for. When a
data directory's database cannot be read, none of its volumes can be told
apart, and all count as sessions' volumes. Removing a session's volume also
clears it from the session's row (its next container gets a new one).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .container.labels import DATA_DIR_LABEL, KIND_LABEL, MANAGED, SESSION_LABEL

if TYPE_CHECKING:
    import docker


@dataclass
class Found:
    kind: str  # "container", "volume", "session volume", "socket directory"
    name: str
    data_dir: str
    detail: str = ""
    ref: Any = None  # the docker object, or the path
    session_id: str | None = None


@dataclass
class CleanupPlan:
    data_dirs: list[str]
    containers: list[Found] = field(default_factory=list)
    volumes: list[Found] = field(default_factory=list)  # held by no session
    session_volumes: list[Found] = field(default_factory=list)  # hold sessions' files: only with --volumes
    directories: list[Found] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.containers or self.volumes or self.session_volumes or self.directories)


def _session_volumes(data_dir: str) -> dict[str, tuple[str, str]] | None:
    """volume → (session id, status) from the data directory's database; None when it cannot be read."""
    from ..store import Store

    path = Path(data_dir) / "cma.sqlite3"
    if not path.is_file():
        return None
    try:
        store = Store.read_only(path)
    except Exception:
        return None
    try:
        rows = store.sessions(limit=1_000_000)
    finally:
        store.close()
    # An ended session (reaped: it cannot run again) holds no one's files any more.
    return {r["workspace_volume"]: (r["id"], r["status"]) for r in rows if r.get("workspace_volume") and r["status"] != "ended"}


def plan_cleanup(client: docker.DockerClient, data_dir: str, *, all_data_dirs: bool = False) -> CleanupPlan:
    """What cleanup would remove for this data directory (or for every one, with all_data_dirs); removes nothing."""
    mine = str(Path(data_dir).absolute())
    labels = [f"{MANAGED}=1"] + ([] if all_data_dirs else [f"{DATA_DIR_LABEL}={mine}"])
    containers = client.containers.list(all=True, filters={"label": labels})
    volumes = client.volumes.list(filters={"label": labels})
    dirs = {mine}
    dirs.update(c.labels.get(DATA_DIR_LABEL, "") for c in containers)
    dirs.update((v.attrs.get("Labels") or {}).get(DATA_DIR_LABEL, "") for v in volumes)
    dirs.discard("")
    plan = CleanupPlan(data_dirs=sorted(dirs))
    for c in sorted(containers, key=lambda c: (c.labels.get(DATA_DIR_LABEL, ""), c.name)):
        session = c.labels.get(SESSION_LABEL, "")
        detail = f"{c.status}, {c.labels.get(KIND_LABEL, '?')}" + (f", session {session}" if session else "")
        plan.containers.append(Found("container", c.name, c.labels.get(DATA_DIR_LABEL, "?"), detail, c))
    if any(c.status == "running" for c in containers):
        plan.notes.append("running containers serve sessions of a server that is up: removing them ends those sessions' sandboxes")
    recorded: dict[str, dict[str, tuple[str, str]] | None] = {d: _session_volumes(d) for d in plan.data_dirs}
    for v in sorted(volumes, key=lambda v: ((v.attrs.get("Labels") or {}).get(DATA_DIR_LABEL, ""), v.name)):
        vlabels = v.attrs.get("Labels") or {}
        owner_dir = vlabels.get(DATA_DIR_LABEL, "?")
        sessions = recorded.get(owner_dir)
        if sessions is None:
            label = vlabels.get(SESSION_LABEL)
            detail = f"session {label}; " if label else ""
            plan.session_volumes.append(Found("session volume", v.name, owner_dir, detail + "its data directory has no readable database", v))
        elif v.name in sessions:
            session_id, status = sessions[v.name]
            plan.session_volumes.append(Found("session volume", v.name, owner_dir, f"session {session_id} ({status})", v, session_id))
        else:
            plan.volumes.append(Found("volume", v.name, owner_dir, "held by no session", v))
    for d in plan.data_dirs:
        sockets = Path(d) / "containers"
        try:
            entries = sorted(p for p in sockets.iterdir() if p.is_dir())
        except OSError:
            continue
        plan.directories.extend(Found("socket directory", str(p), d, "", p) for p in entries)
    return plan


def apply_cleanup(plan: CleanupPlan, *, volumes: bool) -> list[str]:
    """Remove what the plan lists (sessions' volumes only with `volumes`); return the errors."""
    import docker.errors

    errors: list[str] = []

    def remove(found: Found, kind: str) -> bool:
        """Remove a container or volume (gone already counts); False, with the error kept, when it could not be."""
        try:
            found.ref.remove(force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            errors.append(f"{kind} {found.name}: {exc}")
            return False
        return True

    for found in plan.containers:
        remove(found, "container")
    forgotten: dict[str, list[str]] = {}
    for found in plan.volumes + (plan.session_volumes if volumes else []):
        if remove(found, "volume") and found.session_id:
            forgotten.setdefault(found.data_dir, []).append(found.session_id)
    for data_dir, sessions in forgotten.items():
        errors.extend(_forget_volumes(data_dir, sessions))
    for found in plan.directories:
        try:
            shutil.rmtree(found.ref)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"directory {found.name}: {exc}")
    return errors


def _forget_volumes(data_dir: str, sessions: list[str]) -> list[str]:
    """Clear the removed volumes from their sessions' rows, so that a session's next container gets a new, labelled one."""
    from ..store import Store

    try:
        store = Store(Path(data_dir) / "cma.sqlite3")
    except Exception as exc:
        return [f"database of {data_dir}: {exc}"]
    try:
        for session_id in sessions:
            store.update_session(session_id, workspace_volume=None)
    finally:
        store.close()
    return []


def format_plan(plan: CleanupPlan, *, volumes: bool, removing: bool) -> str:
    """The plan as tables, one per kind."""
    verb = "Removing" if removing else "Would remove"
    lines = [f"Data directories: {', '.join(plan.data_dirs)}"]

    def table(title: str, rows: list[Found]) -> None:
        lines.append("")
        lines.append(f"{title} ({len(rows)})" + (":" if rows else ""))
        if not rows:
            return
        width = max(len(r.name) for r in rows)
        dwidth = max(len(r.detail) for r in rows)
        for r in rows:
            lines.append(f"  {r.name:<{width}}  {r.detail:<{dwidth}}  {r.data_dir}")

    table(f"{verb}: containers", plan.containers)
    table(f"{verb}: volumes held by no session", plan.volumes)
    if volumes:
        table(f"{verb} (--volumes): volumes holding sessions' files", plan.session_volumes)
    else:
        table("Kept: volumes holding sessions' files (sleeping or resumable sessions; add --volumes to remove them too)",
              plan.session_volumes)
    table(f"{verb}: socket directories", plan.directories)
    for note in plan.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)
