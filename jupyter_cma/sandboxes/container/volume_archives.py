"""A session's workspace volume as a tar.gz, out and back in (to move a session between hosts).

Both directions go through a helper container that is created, never started:
the daemon reads and writes a stopped container's mounts (`get_archive` /
`put_archive`), so nothing of the image runs and no process sees the volume
but the daemon. The helper is removed afterwards, whatever happened.

Export: the volume's `/workspace` as a gzip'd tar whose names are relative to
it (`notes.txt`, `src/main.py`); devices and fifos are left out (an import
would refuse them). Import: a tar or tar.gz is read whole and checked before
anything is made — absolute names, `..`, devices, fifos, links pointing
outside the workspace (symbolic ones resolved through the archive's own
links), hard links to anything but an earlier file, and entries written
through a symbolic link are refused with the entry's name — and re-written as
a clean tar: owner uid/gid 1000 (the image's `agent`), permission bits only
(no set-uid, set-gid or sticky bits), no extended headers (so no xattrs or
file capabilities). Files land on top of what the volume holds.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ..base import WorkspaceArchiveError, WorkspaceBusy, WorkspaceTransfer
from .labels import HELPER_KIND, KIND_LABEL

if TYPE_CHECKING:
    import docker

WORKSPACE = "/workspace"
OWNER = 1000  # the sandbox image's user `agent`
_MAX_LINK_HOPS = 40
_SPOOL_IN_MEMORY = 16 * 1024 * 1024


@dataclass
class CleanArchive:
    """A checked archive, re-written as a plain tar (owner 1000), ready for `put_archive`."""

    data: IO[bytes]
    files: int = 0
    directories: int = 0
    links: int = 0
    bytes: int = 0

    def summary(self) -> dict[str, int]:
        return {"files": self.files, "directories": self.directories, "links": self.links, "bytes": self.bytes}


@dataclass
class _Seen:
    links: dict[str, str] = field(default_factory=dict)  # symbolic link name → target (as written)
    files: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- export


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (docker-py's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _relative(name: str, root: str) -> str | None:
    """'workspace/a/b' → 'a/b'; the root itself → None."""
    name = name.lstrip("/")
    if name in (root, f"{root}/", "."):
        return None
    for prefix in (f"{root}/", "./"):
        if name.startswith(prefix):
            return name[len(prefix):].rstrip("/") or None
    return name.rstrip("/") or None


def export_workspace(client: docker.DockerClient, volume: str, image: str, fileobj: IO[bytes], *,
                     labels: dict[str, str] | None = None) -> WorkspaceTransfer:
    """Write the volume's files to `fileobj` as a tar.gz (names relative to /workspace); return counts.

    Raises LookupError when the volume does not exist. On any failure the
    archive is left unfinished (no gzip trailer), so a reader sees it broken.
    """
    import docker.errors

    try:
        client.volumes.get(volume)
    except docker.errors.NotFound:
        raise LookupError(f"the workspace volume {volume} does not exist") from None
    helper = _helper(client, volume, image, labels)
    files = directories = links = size = 0
    skipped: list[str] = []
    try:
        stream, _ = helper.get_archive(WORKSPACE)
        source = tarfile.open(fileobj=_ChunkReader(stream), mode="r|")
        out = tarfile.open(fileobj=fileobj, mode="w|gz", format=tarfile.PAX_FORMAT)
        root = posixpath.basename(WORKSPACE)
        for member in source:
            name = _relative(member.name, root)
            if name is None:
                continue
            if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                skipped.append(name)  # a fifo or a device: an import refuses them
                continue
            info = tarfile.TarInfo(name)
            info.type = tarfile.REGTYPE if member.isreg() else member.type
            info.mode, info.uid, info.gid = member.mode & 0o7777, member.uid, member.gid
            info.uname, info.gname, info.mtime = member.uname, member.gname, member.mtime
            if member.issym():
                info.linkname = member.linkname
                links += 1
            elif member.islnk():
                info.linkname = _relative(member.linkname, root) or ""
                links += 1
            elif member.isdir():
                directories += 1
            data = None
            if member.isreg():
                info.size = member.size
                data = source.extractfile(member)
                files += 1
                size += member.size
            out.addfile(info, data)
        out.close()  # only now: the gzip trailer marks the archive complete
    finally:
        _remove(helper)
    return {"volume": volume, "files": files, "directories": directories, "links": links, "bytes": size, "skipped": skipped}


# --------------------------------------------------------------------------- import


def _normalize(name: str) -> str:
    """An entry name relative to the workspace, or an error for an absolute name or a `..`."""
    if "\x00" in name:
        raise WorkspaceArchiveError(f"entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise WorkspaceArchiveError(f"entry {name!r} has an absolute path; an archive of a workspace holds relative names only")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkspaceArchiveError(f"entry {name!r} contains '..', which would write outside the workspace")
    return "/".join(parts)


def _escapes(path: str, links: dict[str, str]) -> bool:
    """Whether resolving `path` (relative to the workspace root) through the archive's symlinks leaves the workspace."""
    pending = path.split("/")
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        resolved.append(part)
        target = links.get("/".join(resolved))
        if target is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            return True  # a loop: refuse rather than guess
        resolved.pop()
        if target.startswith("/"):
            inside = _inside_absolute(target)
            if inside is None:
                return True
            resolved, pending = [], inside.split("/") + pending
        else:
            pending = target.split("/") + pending
    return False


def _inside_absolute(target: str) -> str | None:
    """An absolute link target under /workspace → its path relative to the workspace; else None."""
    normal = posixpath.normpath(target)
    if normal == WORKSPACE:
        return ""
    if normal.startswith(WORKSPACE + "/"):
        return normal[len(WORKSPACE) + 1:]
    return None


def _through_link(name: str, links: dict[str, str]) -> str | None:
    """The first parent of `name` that is a symbolic link of the archive (writing there would follow it)."""
    parts = name.split("/")
    for n in range(1, len(parts)):
        parent = "/".join(parts[:n])
        if parent in links:
            return parent
    return None


def clean_archive(fileobj: IO[bytes], *, max_bytes: int | None = None) -> CleanArchive:
    """Read a tar or tar.gz whole, check every entry, and re-write it clean (owner 1000); raise on the first problem.

    Nothing outside this process happens here: a refused archive leaves no trace.
    """
    out_file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    clean = CleanArchive(data=out_file)
    seen = _Seen()
    out = tarfile.open(fileobj=out_file, mode="w", format=tarfile.PAX_FORMAT)
    try:
        try:
            source = tarfile.open(fileobj=fileobj, mode="r|*")
        except tarfile.ReadError as exc:
            raise WorkspaceArchiveError(f"this is not a tar or tar.gz archive ({exc}); make one with `tar -czf workspace.tar.gz -C DIR .`") from None
        try:
            for member in source:
                _add_member(source, member, out, clean, seen, max_bytes)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise WorkspaceArchiveError(f"the archive is damaged or truncated ({type(exc).__name__}: {exc})") from None
        for name, target in seen.links.items():
            if _escapes(name, seen.links):
                raise WorkspaceArchiveError(f"symbolic link {name!r} points outside the workspace ({target!r}); "
                                            "links in an imported workspace must stay inside it")
        for name in seen.names:
            parent = _through_link(name, seen.links)
            if parent is not None:
                raise WorkspaceArchiveError(f"entry {name!r} would be written through the symbolic link {parent!r}; "
                                            "archives may not write through links")
        out.close()
    except BaseException:
        out_file.close()
        raise
    out_file.seek(0)
    return clean


def _add_member(source: tarfile.TarFile, member: tarfile.TarInfo, out: tarfile.TarFile, clean: CleanArchive,
                seen: _Seen, max_bytes: int | None) -> None:
    name = _normalize(member.name)
    if member.ischr() or member.isblk():
        raise WorkspaceArchiveError(f"entry {member.name!r} is a device; a workspace holds files, directories and links only")
    if member.isfifo():
        raise WorkspaceArchiveError(f"entry {member.name!r} is a fifo; a workspace holds files, directories and links only")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise WorkspaceArchiveError(f"entry {member.name!r} has an unsupported type {member.type!r}")
    if not name:
        if member.isdir():
            return  # the workspace itself: keep its owner and mode
        raise WorkspaceArchiveError(f"entry {member.name!r} names the workspace itself but is not a directory")
    info = tarfile.TarInfo(name)
    info.uid = info.gid = OWNER
    info.uname = info.gname = "agent"
    info.mtime = member.mtime
    info.mode = member.mode & 0o777
    data = None
    if member.isdir():
        info.type = tarfile.DIRTYPE
        clean.directories += 1
    elif member.issym():
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, member.linkname, 0o777
        if not member.linkname:
            raise WorkspaceArchiveError(f"symbolic link {member.name!r} has no target")
        seen.links[name] = member.linkname
        clean.links += 1
    elif member.islnk():
        target = _normalize(member.linkname)
        if target not in seen.files:
            raise WorkspaceArchiveError(f"hard link {member.name!r} points to {member.linkname!r}, which is not a file "
                                        "earlier in the archive")
        info.type, info.linkname = tarfile.LNKTYPE, target
        seen.files.add(name)
        clean.links += 1
    else:
        info.type, info.size = tarfile.REGTYPE, member.size
        clean.bytes += member.size
        if max_bytes is not None and clean.bytes > max_bytes:
            raise WorkspaceArchiveError(f"the archive's files exceed {max_bytes} bytes")
        data = source.extractfile(member)
        seen.files.add(name)
        clean.files += 1
    if not member.issym():
        seen.links.pop(name, None)  # a later entry of the same name replaces the link
    seen.names.append(name)
    out.addfile(info, data)


def volume_in_use(client: docker.DockerClient, volume: str) -> list[str]:
    """Names of containers (not helpers) that mount the volume and run or are about to."""
    busy = []
    for container in client.containers.list(all=True, filters={"volume": volume}):
        if container.labels.get(KIND_LABEL) == HELPER_KIND:
            continue
        if container.status in ("created", "running", "restarting", "paused"):
            busy.append(container.name)
    return busy


def import_workspace(client: docker.DockerClient, volume: str, image: str, fileobj: IO[bytes] | CleanArchive, *,
                     labels: dict[str, str] | None = None, volume_labels: dict[str, str] | None = None) -> WorkspaceTransfer:
    """Put an archive's files into the volume (created with `volume_labels` if missing); return counts.

    The archive is checked whole first (`clean_archive`), so a refused one
    creates and writes nothing. Refused with WorkspaceBusy while a container
    (other than a helper) mounts the volume.
    """
    import docker.errors

    clean = fileobj if isinstance(fileobj, CleanArchive) else clean_archive(fileobj)
    try:
        try:
            client.volumes.get(volume)
        except docker.errors.NotFound:
            client.volumes.create(volume, labels=volume_labels or {})
        busy = volume_in_use(client, volume)
        if busy:
            raise WorkspaceBusy(f"the workspace volume {volume} is in use by {', '.join(busy)}; stop its session first "
                                "(POST cma/api/sessions/{id}/stop) or wait until it sleeps")
        helper = _helper(client, volume, image, labels)
        try:
            clean.data.seek(0)
            if not helper.put_archive(WORKSPACE, clean.data):
                raise RuntimeError(f"the Docker engine did not extract the archive into {volume}")
        finally:
            _remove(helper)
    finally:
        clean.data.close()
    return {"volume": volume, **clean.summary()}


# --------------------------------------------------------------------------- the helper container


def _helper(client: docker.DockerClient, volume: str, image: str, labels: dict[str, str] | None) -> Any:
    """A container that is created, never started, with the volume at /workspace (for the daemon's archive calls)."""
    from docker.types import Mount

    return client.containers.create(
        image,
        entrypoint=["/bin/false"],
        command=[],
        user=f"{OWNER}:{OWNER}",
        network_mode="none",
        mounts=[Mount(WORKSPACE, volume, type="volume")],
        labels={**(labels or {}), KIND_LABEL: HELPER_KIND},
    )


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:  # already gone; `jupyter cma cleanup` removes any leftover (it carries the tier's labels)
        pass
