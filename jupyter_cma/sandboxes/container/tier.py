"""`ContainerTier`: the container tier's settings, its start and close, and how a session gets its container.

The tier is one configurable class (`c.ContainerTier.…`) put together from
parts, each in a module of its own, as mixins: `DockerEngine` (engine.py:
clients, the image, one container), `WarmPool` and `Standby` (pool.py:
containers started before they are asked for), `WorkspaceVolumes`
(volumes.py: sessions' volumes, export, import, push, pull). Mixins rather
than helper objects, because the parts share everything: the tier's settings
(one configuration section, `ContainerTier`, unchanged), its registry of live
containers, its per-session workspace lock and its store; and their methods
are the tier's (`tier.take`, `tier.wait_pool`, `tier.standby_status`,
`tier._discard`, which the sandbox, tests and benchmarks call). Helper objects
would each reach back into the tier for all of that, behind forwarding
methods. The parts hold no settings (no traits): every setting is declared
here, each part lists at its top what it uses of the tier. What is left here
is what composes them: `start`/`close`, `take` (pool, standby or new), the
egress attach, and the tier's status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Float, Integer, Unicode, default

from ...tasks import BackgroundTasks
from ..base import REFILL_DELAY, ClaimedItem, IsolationStatus, TierStatus
from ..image import ImageSettings
from ..objectstore import ObjectStoreStatus, WorkspaceObjectStore
from ..sizes import SizedTier
from .labels import VOLUME_PREFIX
from .pool import PoolStatus, StandbyStatus, WarmPool
from .sandbox import ContainerSandbox
from .slots import ContainerFailed, Slot
from .volumes import WorkspaceVolumes

log = logging.getLogger(__name__)


class ContainerTierStatus(TierStatus, total=False):
    """The container tier now (`GET cma/api/status`: `tiers.container`, over the machine probe's keys)."""

    image: str  # the sandbox image's tag
    image_id: str | None  # once checked (or built)
    image_error: str | None  # why it is not ready
    pool: PoolStatus
    standby: StandbyStatus
    containers: int  # live containers of this tier: pooled, on standby, serving
    object_store: ObjectStoreStatus


class ContainerTier(WarmPool, WorkspaceVolumes, SizedTier):
    """Sandboxes that are Docker containers, with a pool of warm ones."""

    name: ClassVar[str] = "container"

    pool_size = Integer(
        2, config=True,
        help="Warm containers kept started, SDK imported, each with a fresh workspace volume, so that a new "
        "session does not wait for a container and Python to start (default 2; 0: none). Resumed sessions need "
        "their own volume and always start a container of their own.",
    )
    standby_seconds = Float(
        0.0, config=True,
        help="When a session's container ends idle, start another on its volume at once and keep it waiting this many "
        "seconds for the session's next turn, which then starts as fast as from the warm pool (the SDK import, about "
        "1.5 s, is paid while the session sleeps). Each waiting container holds an idle container's memory (about "
        "80 MB). Default 0: off.",
    )
    standby_max = Integer(4, config=True, help="Most containers on standby at once (default 4); the oldest makes way.")
    tmp_size = Unicode("512m", config=True, help="Size of the tmpfs at /tmp (default 512m); /var/tmp and the home directory get a quarter each.")
    stop_timeout = Float(5.0, config=True, help="Seconds a stopped container has to end its work item before it is killed (default 5).")
    start_timeout = Float(60.0, config=True, help="Seconds a container may take from start to its worker being ready (default 60).")
    docker_url = Unicode("", config=True, help="Docker engine URL (default: $DOCKER_HOST, else the local socket).")
    data_dir = Unicode(config=True, help="The server's data directory: container socket directories go in <data_dir>/containers, logs in <data_dir>/logs.")
    # Tier.ca_bundle, with the container tier's own help: how containers get it differs from the kernel tier.
    ca_bundle = Unicode("", config=True, help="The CA bundle (PEM) containers trust, mounted over the system one (the server sets the egress proxy's bundle).")
    api_base_url = Unicode("", config=True, help="The Managed Agents API base URL the containers' workers use (the server sets its own).")
    docker_cli = Unicode(
        "docker", config=True,
        help="The docker command-line client (a name on PATH, or a path) that terminals into sandboxes run: "
        "POST cma/api/sessions/{id}/terminal opens `docker exec -it -w /workspace <container> /bin/bash -l` "
        "(with -H docker_url when that is set). Default 'docker'.",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        value = getattr(self.parent, "data_dir", None)
        return value if isinstance(value, str) else ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image = ImageSettings(parent=self)
        self.object_store = WorkspaceObjectStore(parent=self)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="cma-docker")
        self._local = threading.local()
        self._pool: list[Slot] = []
        self._filling = 0
        self._slots: dict[str, Slot] = {}  # every live container of this tier
        self._standby: dict[str, asyncio.Task[Slot]] = {}  # session id → its standby container, started or starting
        self._workspace_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._image_ready: asyncio.Future[str] | None = None
        self._fill_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._refill_not_before = 0.0  # monotonic time: REFILL_DELAY after the last take from the pool
        self._closed = False
        self._chores = BackgroundTasks("container tier")  # clean-ups started from callbacks
        self.image_error: str | None = None
        self.image_id: str | None = None
        self.engine_error: str | None = None  # no Docker engine answered when the tier started (until the image is ready)
        self.cleaned: list[str] = []
        self.last_start_error: str | None = None

    # ------------------------------------------------------------------ start and close

    async def start(self) -> None:
        """Remove what a previous server left, then get the image ready and fill the pool (in the background)."""
        # 0700: a container sees only its own directory (a bind mount), never this one.
        self.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._wake = asyncio.Event()
        try:
            self.cleaned = await self._docker(self._remove_leftovers)
        except Exception as exc:
            self.last_start_error = self.engine_error = f"no Docker engine: {type(exc).__name__}: {exc}"
            log.warning("container tier: %s", self.last_start_error)
        self._image_ready = asyncio.ensure_future(self._prepare_image())
        self._fill_task = asyncio.ensure_future(self._fill())

    async def close(self) -> None:
        """Remove every container of this tier (sessions were stopped first; pooled and half-started ones too)."""
        self._closed = True
        if self._fill_task is not None:
            self._fill_task.cancel()
            with contextlib.suppress(BaseException):
                await self._fill_task
        if self._image_ready is not None:
            self._image_ready.cancel()
        self._pool = []
        standby, self._standby = list(self._standby.values()), {}
        for task in standby:
            task.cancel()
        await asyncio.gather(*standby, return_exceptions=True)
        await self._chores.close(60.0, cancel=False)  # removals under way: let them finish
        slots = list(self._slots.values())
        await asyncio.gather(*(self._discard(slot, keep_volume=slot.session_id is not None or slot.standby_for is not None)
                               for slot in slots), return_exceptions=True)
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ serving

    def create(self, item: ClaimedItem, workspace: Path) -> ContainerSandbox:
        return ContainerSandbox(item, workspace, tier=self)

    async def take(self, session_id: str, size: str) -> tuple[Slot, str]:
        """A container for the session and how it got it (a key of START_DESCRIPTIONS): a pooled one if the session
        has no volume yet and fits, its standby one if that is on its volume, else a new one on its volume.

        Under the session's workspace lock until the container is this tier's (`serves` holds from then on).
        """
        async with self._workspace_lock(session_id):
            return await self._take(session_id, size)

    async def _take(self, session_id: str, size: str) -> tuple[Slot, str]:
        row = self.store.session(session_id) if self.store is not None else {}
        if row is None:
            # The server records a session before serving it; without its row the volume could not be recorded,
            # and the session's next container would start on an empty workspace.
            raise ContainerFailed(f"session {session_id} is not in the server's store; its workspace could not be recorded")
        volume = row.get("workspace_volume")
        if self.object_store.sync and self.object_store.enabled:
            volume = await self._sync_before_start(session_id, volume)
        if volume is None and size == self.default_size:
            while self._pool:
                slot = self._pool.pop(0)
                if not slot.exited.done():
                    self._remember_volume(session_id, slot.volume)
                    slot.session_id = session_id
                    self._refill_not_before = time.monotonic() + REFILL_DELAY
                    if self._wake is not None:
                        asyncio.get_running_loop().call_later(REFILL_DELAY, self._wake.set)  # refill
                    return slot, "pool"
        if volume is not None and (slot := await self._take_standby(session_id, size, volume)) is not None:
            return slot, "standby"
        if volume is None:
            volume = VOLUME_PREFIX + session_id
            await self._docker(self._ensure_volume, volume, session_id)
            self._remember_volume(session_id, volume)
        slot = await self._new_slot(size, volume=volume, session_id=session_id)
        return slot, "new"

    async def attach_egress(self, slot: Slot, session_id: str, api_token: str | None, *, work_id: str, environment_id: str) -> str | None:
        if self.egress_hook is None:
            return None
        return await self.egress_hook.attach(slot.id, str(slot.socket_path), session_id=session_id, api_token=api_token,
                                             work_id=work_id, environment_id=environment_id, socket_mode=0o666)

    async def detach_egress(self, slot: Slot, session_id: str) -> None:
        if self.egress_hook is None:
            return
        await self.egress_hook.detach(slot.id, str(slot.socket_path), session_id=session_id)

    # ------------------------------------------------------------------ status

    def status(self) -> ContainerTierStatus:
        return {"image": self.image.tag, "image_id": self.image_id, "image_error": self.image_error,
                "pool": self.pool_status(), "standby": self.standby_status(), "containers": len(self._slots),
                "object_store": self.object_store.describe()}

    def isolation_status(self) -> IsolationStatus:
        """Docker's: a container per session (see the package docstring), usable once the engine answered and the
        image is ready. From what the tier already knows: no Docker call."""
        if self.image_id is not None and self.image_error is None:
            return {"isolation": "docker", "available": True, "reason": None, "error": None}
        if self.engine_error is not None:
            reason, error = "no Docker engine answered", self.engine_error
        elif self.image_error is not None:
            reason, error = "the sandbox image is not ready", self.image_error
        elif self._image_ready is None:
            reason, error = "the container tier has not started", None
        else:
            reason, error = "the sandbox image is being checked (or built)", None
        return {"isolation": "docker", "available": False, "reason": reason, "error": error}
