"""Sessions' workspace volumes on the container tier: which volume is a session's, moving it in and out, removing it.

A session's workspace is a named volume (`jupyter-cma-ws-…`) mounted at
`/workspace`: its files survive the container, session sleeps and server
restarts. The session's row in the store records its volume
(`workspace_volume`), and, when the object store is on, the version of the
store's object the volume holds (`workspace_etag`).

One workspace step per session runs at a time (`_workspace_lock`). The archive
format and the helper container that reads and writes a volume are in
`volume_archives.py`; the lifecycle of a session moved in from elsewhere is the
control plane's (`control/workspaces.py`): by the time a volume is recorded
here, the session has a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
import time
import weakref
from typing import IO, TYPE_CHECKING, Any

from ..base import ObjectStoreError, ObjectStoreNotConfigured, WorkspaceBusy, WorkspaceTransfer, finish_shielded
from .labels import VOLUME_PREFIX
from .pool import Standby
from .slots import ContainerFailed
from .volume_archives import clean_archive, export_workspace, import_workspace

if TYPE_CHECKING:
    import docker

    from ..objectstore import WorkspaceObjectStore

log = logging.getLogger(__name__)


class WorkspaceVolumes(Standby):
    """A part of `ContainerTier` (a mixin, see `tier.py`): sessions' volumes, export, import, push, pull, removal.

    On top of `Standby`: a standby container holds its session's volume, so a step that replaces or removes the
    volume lets it go first.
    """

    # What this part uses of the tier (its settings and state, set in ContainerTier).
    object_store: WorkspaceObjectStore
    _workspace_locks: weakref.WeakValueDictionary[str, asyncio.Lock]

    def _workspace_lock(self, session_id: str) -> asyncio.Lock:
        """One workspace step per session at a time: choosing (or pulling) the volume a container of it starts on,
        export, import, push, pull, removal. Otherwise a push could read a volume a new container already writes to,
        or two pulls each make a volume and one of them be left unrecorded."""
        lock = self._workspace_locks.get(session_id)
        if lock is None:
            lock = self._workspace_locks[session_id] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------------ the session's volume

    def _ensure_volume(self, client: docker.DockerClient, name: str, session_id: str) -> None:
        import docker.errors

        try:
            client.volumes.get(name)
        except docker.errors.NotFound:
            client.volumes.create(name, labels=self._labels("workspace", session_id))

    def _volume_of(self, session_id: str) -> str | None:
        row = self.store.session(session_id) if self.store is not None else None
        return (row or {}).get("workspace_volume")

    def _remember_volume(self, session_id: str, volume: str) -> None:
        if self.store is not None:
            self.store.update_session(session_id, workspace_volume=volume)

    async def workspace_volume(self, session_id: str, create: bool = True) -> str | None:
        """The session's workspace volume. With `create`, it is made (labelled) if missing and recorded for the session,
        so that the session's next container mounts it (the control plane has recorded a session moved in from
        elsewhere before its files are)."""
        volume = self._volume_of(session_id)
        if volume is None and not create:
            return None
        volume = volume or VOLUME_PREFIX + session_id
        if create:
            await self._workspace_call(self._ensure_volume, volume, session_id)
            self._remember_volume(session_id, volume)
        return volume

    async def has_workspace(self, session_id: str) -> bool:
        """Whether the session has a workspace volume here (what `export_workspace` reads)."""
        return await self.workspace_volume(session_id, create=False) is not None

    async def remove_workspace(self, session_id: str) -> bool:
        """Remove a session's workspace volume (its session ended); False when it has none or it is in use."""
        async with self._workspace_lock(session_id):
            return await self._remove_workspace(session_id)

    async def _remove_workspace(self, session_id: str) -> bool:
        await self._drop_standby(session_id)
        volume = self._volume_of(session_id)
        if volume is None or any(s.session_id == session_id for s in self._slots.values()):
            return False

        await self._docker(self._remove_volume, volume)
        if self.store is not None:
            self.store.update_session(session_id, workspace_volume=None, workspace_etag=None)
        if self.object_store.sync and self.object_store.enabled:
            try:  # the session cannot run again: its copy in the store goes too
                await asyncio.to_thread(self.object_store.delete, session_id)
            except ObjectStoreError as exc:
                log.warning("container tier: session %s ended: %s", session_id, exc)
        return True

    def _remove_volume(self, client: docker.DockerClient, volume: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)

    # ------------------------------------------------------------------ export and import

    async def export_workspace(self, session_id: str, fileobj: IO[bytes]) -> WorkspaceTransfer:
        """Write the session's workspace to `fileobj` as a tar.gz (see volume_archives.py); LookupError if it has none."""
        async with self._workspace_lock(session_id):
            return await self._export(session_id, fileobj)

    async def _export(self, session_id: str, fileobj: IO[bytes]) -> WorkspaceTransfer:
        volume = await self.workspace_volume(session_id, create=False)
        if volume is None:
            raise LookupError(f"session {session_id} has no workspace volume here (it has not run on the container tier on this server)")
        image = await self.image_ready()
        return await self._workspace_call(export_workspace, volume, image, fileobj, labels=self._labels("workspace-helper", session_id))

    async def import_workspace(self, session_id: str, fileobj: IO[bytes], *, replace: bool = False,
                               max_bytes: int | None = None) -> WorkspaceTransfer:
        """Check an archive, then put its files into the session's volume (made and recorded if missing).

        With `replace`, the files go into a fresh volume instead, which becomes the session's only once they are
        all in (the old one is then removed): what the session had is never mixed with the archive, and a failure
        leaves it as it was. Raises WorkspaceArchiveError (refused archive: nothing made or written) and
        WorkspaceBusy (a container serves it).
        """
        async with self._workspace_lock(session_id):
            return await self._import(session_id, fileobj, replace=replace, max_bytes=max_bytes)

    async def _import(self, session_id: str, fileobj: IO[bytes], *, replace: bool, max_bytes: int | None) -> WorkspaceTransfer:
        await self._drop_standby(session_id)  # it would hold the volume a replacing import removes
        if self.serves(session_id):
            raise WorkspaceBusy(f"a container is serving session {session_id}; stop it first (POST cma/api/sessions/{session_id}/stop)")
        row = self.store.session(session_id) if self.store is not None else None
        if row is not None and row["status"] == "ended":
            raise WorkspaceBusy(f"session {session_id} ended upstream and cannot run again; import into a new session")
        clean = await asyncio.to_thread(clean_archive, fileobj, max_bytes=max_bytes)
        old = self._volume_of(session_id)
        try:
            image = await self.image_ready()
            if replace:
                volume = f"{VOLUME_PREFIX}{session_id}-{secrets.token_hex(3)}"
            else:
                volume = await self.workspace_volume(session_id, create=True)
        except BaseException:
            clean.data.close()
            raise
        try:
            result = await self._workspace_call(import_workspace, volume, image, clean, labels=self._labels("workspace-helper", session_id),
                                                volume_labels=self._labels("workspace", session_id))
        except BaseException:
            if replace:
                await finish_shielded(self._workspace_call(self._remove_volume, volume))
            raise
        if replace:
            self._remember_volume(session_id, volume)
            if old is not None and old != volume:
                await self._workspace_call(self._remove_volume, old)
        return result

    # ------------------------------------------------------------------ the object store

    async def push_workspace(self, session_id: str) -> WorkspaceTransfer:
        """Export the session's workspace into the object store (WorkspaceObjectStore); LookupError if it has none here.

        The new object's version (ETag) is recorded: the volume here is that version.
        """
        async with self._workspace_lock(session_id):
            return await self._push(session_id)

    async def _push(self, session_id: str) -> WorkspaceTransfer:
        if not self.object_store.enabled:
            raise ObjectStoreNotConfigured()
        with tempfile.TemporaryFile(dir=self.data_dir or None) as spool:
            summary = await self._export(session_id, spool)
            spool.seek(0)
            etag = await asyncio.to_thread(self.object_store.upload, session_id, spool)
        result: WorkspaceTransfer = {**summary, "object": self.object_store.location(session_id)}
        self._note_sync(session_id, "push", result, etag=etag)
        return result

    async def pull_workspace(self, session_id: str) -> WorkspaceTransfer | None:
        """Replace the session's volume here by the store's object for it; None when the store has none.

        The object is checked like any imported archive (and bounded by WorkspaceObjectStore.max_bytes); refused
        while a container serves the session.
        """
        async with self._workspace_lock(session_id):
            return await self._pull(session_id)

    async def _pull(self, session_id: str) -> WorkspaceTransfer | None:
        if not self.object_store.enabled:
            raise ObjectStoreNotConfigured()
        with tempfile.TemporaryFile(dir=self.data_dir or None) as spool:
            etag = await asyncio.to_thread(self.object_store.download, session_id, spool)
            if etag is None:
                return None
            spool.seek(0)
            summary = await self._import(session_id, spool, replace=True, max_bytes=self.object_store.max_bytes)
        result: WorkspaceTransfer = {**summary, "object": self.object_store.location(session_id)}
        self._note_sync(session_id, "pull", result, etag=etag)
        return result

    async def _sync_before_start(self, session_id: str, volume: str | None) -> str | None:
        """The session's volume once it holds the store's latest version (pulled when there is none here, or when
        the object moved since this host last pushed or pulled it: another host ran the session since)."""
        try:
            if volume is not None:
                latest = await asyncio.to_thread(self.object_store.etag, session_id)
                held = (self.store.session(session_id) or {}).get("workspace_etag") if self.store is not None else None
                if latest is None or latest == held:  # nothing in the store yet, or the version this volume holds
                    return volume
            pulled = await self._pull(session_id)
        except Exception as exc:
            # Starting on an empty or outdated workspace would hide the session's files from it: refuse instead.
            error = f"the session's workspace could not be pulled from the object store, so no container was started on an " \
                    f"empty or outdated one: {exc}"
            self._note_sync(session_id, "pull", error=error)
            raise ContainerFailed(error) from None
        if pulled is None:
            return volume
        log.info("container tier: session %s: workspace pulled from %s (%s files)", session_id, pulled["object"], pulled.get("files"))
        return self._volume_of(session_id)

    def _note_sync(self, session_id: str, action: str, result: WorkspaceTransfer | None = None, *, etag: str | None = None,
                   error: str | None = None) -> None:
        """The last push or pull, shown with the session (GET cma/api/sessions/{id}: workspace_sync)."""
        if self.store is None or self.store.session(session_id) is None:
            return
        note: dict[str, Any] = {"action": action, "at": time.time(), "object": self.object_store.location(session_id)}
        if result is not None:
            note.update(files=result.get("files"), bytes=result.get("bytes"))
        if error is not None:
            note["error"] = error
            self.store.update_session(session_id, workspace_sync=note)
        else:
            self.store.update_session(session_id, workspace_sync=note, workspace_etag=etag)
