"""`{base_url}cma/api/sessions/{id}/workspace`: a session's workspace as an archive, and through the object store.

`GET` streams the container tier's export (a tar.gz) as it is written, `PUT` imports an archive, and
`…/workspace/push|pull` move the workspace through the object store (how a session moves between hosts). The
tier moves the files (`Tier.export_workspace` and the rest of the workspace archive protocol); a session this
server has never served is recorded for an import or a pull by the control plane (`control/workspaces.py`). The
export runs on a thread that writes into a small asyncio queue, which this handler drains to the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, cast

import tornado.web
from jupyter_server.auth.decorator import authorized

from ..control.workspaces import import_workspace, pull_workspace
from ..sandboxes.base import (
    NotSupported,
    ObjectStoreError,
    ObjectStoreNotConfigured,
    WorkspaceArchiveError,
    WorkspaceBusy,
)
from .base import CMAHandler
from .schemas import EmptyBody

if TYPE_CHECKING:
    from ..control.sessions import SessionManager
    from ..sandboxes.base import Tier, WorkspaceTransfer
    from ..store import Store


class _QueueWriter:
    """A file for a thread to write into; each write waits its turn in a small asyncio queue (back-pressure)."""

    def __init__(self, loop: Any, queue: Any) -> None:
        self.loop, self.queue, self.cancelled = loop, queue, False

    def write(self, data: bytes) -> int:
        if self.cancelled:
            raise BrokenPipeError("the client went away")
        if data:
            try:
                asyncio.run_coroutine_threadsafe(self.queue.put(bytes(data)), self.loop).result(timeout=300)
            except TimeoutError:
                raise BrokenPipeError("the client stopped reading for 5 minutes") from None
        return len(data)

    def flush(self) -> None:
        pass


async def _drain(queue: Any, end: object) -> None:
    while await queue.get() is not end:
        pass


def _container_tier(tiers: Mapping[str, Tier]) -> Tier:
    tier = tiers.get("container")
    if tier is None:
        raise tornado.web.HTTPError(503, "this server runs no container tier (CMAApp.container_tier_class)")
    return tier


def _refuse_while_served(sessions: SessionManager, session_id: str, what: str) -> None:
    """409 while a sandbox serves the session: its workspace must not be replaced under it."""
    if sessions.is_serving(session_id):
        raise tornado.web.HTTPError(409, f"a sandbox is serving session {session_id} now; stop it first "
                                    f"(POST cma/api/sessions/{session_id}/stop) or wait until it sleeps, then {what}")


class _WorkspaceHandler(CMAHandler):
    """What both workspace routes use: the store, the sessions served here and the tiers."""

    def initialize(  # type: ignore[override]
        self, name: str, *, store: Store, sessions: SessionManager, tiers: Mapping[str, Tier],
    ) -> None:
        super().initialize(name)
        self._store = store
        self._sessions = sessions
        self._tiers = tiers


class SessionWorkspaceHandler(_WorkspaceHandler):
    """`GET cma/api/sessions/{id}/workspace`: the session's workspace volume as a tar.gz (streamed);
    `PUT` a tar or tar.gz body: its files go into the session's volume (made and recorded if missing), which the
    session's next container mounts. Refused while a container serves the session."""

    @tornado.web.authenticated
    @authorized
    async def get(self, session_id: str) -> None:
        from tornado.iostream import StreamClosedError

        tier = _container_tier(self._tiers)
        try:
            has_workspace = await tier.has_workspace(session_id)
        except NotSupported as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        if not has_workspace:
            raise tornado.web.HTTPError(404, f"session {session_id} has no container workspace on this server (a kernel-tier "
                                        "session keeps its files in the data directory; a new session has none until it runs)")
        end = object()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=8)
        writer = _QueueWriter(asyncio.get_running_loop(), queue)

        async def produce() -> WorkspaceTransfer:
            try:
                return await tier.export_workspace(session_id, cast(IO[bytes], writer))  # it only writes and flushes
            finally:
                await queue.put(end)

        producer = asyncio.ensure_future(produce())
        chunk = await queue.get()
        if chunk is end:  # nothing was written: the export failed before its first byte (or the workspace is empty)
            try:
                await producer
            except LookupError as exc:
                raise tornado.web.HTTPError(404, f"{exc}; nothing to export") from None
            except Exception as exc:
                raise tornado.web.HTTPError(503, f"could not read the workspace: {exc}") from None
        self.set_header("Content-Type", "application/gzip")
        self.set_header("Content-Disposition", f'attachment; filename="{session_id}-workspace.tar.gz"')
        try:
            while chunk is not end:
                self.write(chunk)
                await self.flush()
                chunk = await queue.get()
        except StreamClosedError:
            pass
        finally:
            if chunk is not end:  # the client went away (or the server is stopping): let the export end and remove its helper
                writer.cancelled = True
                await _drain(queue, end)  # the export's next write fails, so this ends soon
                await asyncio.gather(producer, return_exceptions=True)
        if chunk is not end:
            return
        await asyncio.gather(producer, return_exceptions=True)
        if producer.exception() is not None:
            # The headers are gone: end the connection without the last chunk, so the client sees a broken download.
            self.log.error("jupyter-cma: exporting session %s's workspace failed: %s", session_id, producer.exception())
            self.request.connection.close()
            return
        tornado.web.RequestHandler.finish(self)  # APIHandler.finish would relabel the body as JSON

    @tornado.web.authenticated
    @authorized
    async def put(self, session_id: str) -> None:
        import io

        tier = _container_tier(self._tiers)
        _refuse_while_served(self._sessions, session_id, "import")
        if not self.request.body:
            raise tornado.web.HTTPError(400, "send the archive as the request body: a tar or tar.gz of the workspace's contents "
                                        "(`tar -czf ws.tar.gz -C DIR .`, or what GET cma/api/sessions/{id}/workspace gave)")
        try:
            result = await import_workspace(self._store, tier, session_id, io.BytesIO(self.request.body))
        except WorkspaceArchiveError as exc:
            raise tornado.web.HTTPError(400, f"the archive was refused, nothing was written: {exc}") from None
        except WorkspaceBusy as exc:
            raise tornado.web.HTTPError(409, f"the workspace was not imported: {exc}") from None
        except NotSupported as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        except Exception as exc:
            raise tornado.web.HTTPError(503, f"could not write the workspace: {type(exc).__name__}: {exc}") from None
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: workspace of session %s imported by %s: %s", session_id, user, result)
        self.finish({"session_id": session_id, **result})


class SessionWorkspaceSyncHandler(_WorkspaceHandler):
    """`POST cma/api/sessions/{id}/workspace/push`: the session's workspace into the object store
    (`WorkspaceObjectStore.url`); `…/pull`: the store's object for the session into its volume here (refused while a
    sandbox serves it). How a session moves to another host: push here, pull there (or `WorkspaceObjectStore.sync`)."""

    @tornado.web.authenticated
    @authorized
    async def post(self, session_id: str, action: str) -> None:
        self.body(EmptyBody)
        tier = _container_tier(self._tiers)
        if action == "pull":
            _refuse_while_served(self._sessions, session_id, "pull")
        result: WorkspaceTransfer | None
        try:
            if action == "push":
                result = await tier.push_workspace(session_id)
            else:
                result = await pull_workspace(self._store, tier, session_id)
                if result is None:
                    raise tornado.web.HTTPError(404, f"the object store has no workspace for session {session_id}; "
                                                "push it from the host it ran on")
        except tornado.web.HTTPError:
            raise
        except (NotSupported, ObjectStoreNotConfigured) as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        except LookupError as exc:
            raise tornado.web.HTTPError(404, f"{exc}; nothing to push") from None
        except WorkspaceBusy as exc:
            raise tornado.web.HTTPError(409, f"the workspace was not pulled: {exc}") from None
        except WorkspaceArchiveError as exc:
            raise tornado.web.HTTPError(502, f"the store's object was refused, nothing was written: {exc}") from None
        except ObjectStoreError as exc:
            raise tornado.web.HTTPError(502, str(exc)) from None
        except Exception as exc:  # the Docker engine or the image, not the store
            raise tornado.web.HTTPError(503, f"could not {action} the workspace: {type(exc).__name__}: {exc}") from None
        user = self.current_user.username if self.current_user else "unknown"
        self.log.info("jupyter-cma: workspace of session %s: %s by %s: %s", session_id, action, user, result)
        self.finish({"session_id": session_id, "action": action, **result})
