"""The container tier: one Docker container per session, full Linux, no network but the egress proxy.

A session's container runs the sandbox image (`sandbox/Dockerfile`): the SDK's
`EnvironmentWorker.handle_item` serves the session inside it with the standard
toolset (`bash`, `read`, `write`, `edit`, `glob`, `grep`), in `/workspace`.

What a container gets (and nothing else):

- `--network none`: only its own loopback. The image's entrypoint bridges
  127.0.0.1:3128 (the proxy variables) to `/run/cma/egress.sock`, which is a
  bind mount of the container's own directory `<data_dir>/containers/<id>/`
  (read-only; only the server writes there). The egress proxy listens on that
  socket while the container serves a session, so the socket is the
  container's identity.
- a per-session named volume at `/workspace` (`jupyter-cma-ws-…`): files
  survive the container, session sleeps and server restarts;
- the image's user `agent` (uid 1000), every capability dropped,
  `no-new-privileges`, a read-only root with small tmpfs mounts for `/tmp`,
  `/var/tmp` and the home directory, an init process that reaps zombies, and
  CPU, memory (no swap on top) and process limits from its instance size;
- the proxy's CA bundle in place of the system one (read-only), so TLS that
  the proxy must open is trusted;
- no credential: its work item's secret carries a placeholder that the proxy
  swaps for the item's real token on the way to the API host only.

Lifecycle: the container exits when its worker flow ends (the session idled
past `max_idle`, its lease ended); the next item of the session starts a new
container on the same volume. A warm pool of started containers (imports
done, each with a fresh volume) serves sessions that have no volume yet: the
pool container's volume becomes the session's. A container that exits
non-zero, is killed or runs out of memory fails the session with the reason;
the work item is then force-stopped unless the container reported its lease
lost (the SDK's own rule: a lost lease belongs to someone else). Every line the
container prints is kept in `<data_dir>/logs/<session id>.log`.

Docker calls block, so they run on a small thread pool with a client per
thread; each container's output is followed by a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import select
import shutil
import signal
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Float, Integer, Unicode, default

from ..anthropic_api import item_credential
from .base import REFILL_DELAY, ClaimedItem, Sandbox, WorkerSettings, finish_shielded
from .image import ImageSettings
from .isolation import proxy_environment
from .objectstore import ObjectStoreError, WorkspaceObjectStore
from .sizes import SizedTier, memory_bytes

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

LABEL = "org.jupyter-cma"
"""Every container and volume this tier makes carries `org.jupyter-cma.managed=1` (see `jupyter cma cleanup`)."""
MANAGED = f"{LABEL}.managed"
DATA_DIR_LABEL = f"{LABEL}.data-dir"  # which server made it: a server removes only its own leftovers
SESSION_LABEL = f"{LABEL}.session"
KIND_LABEL = f"{LABEL}.kind"  # "sandbox" (container) or "workspace" (volume)
VOLUME_PREFIX = "jupyter-cma-ws-"
CONTAINER_PREFIX = "jupyter-cma-"
CA_PATH_INSIDE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian's tools and Python's ssl look
SOCKET_DIR_INSIDE = "/run/cma"
USER = "1000:1000"
# How a session got its container: taken from the warm pool, kept on standby since its last turn, or started for it.
START_DESCRIPTIONS = {"pool": "from the pool", "standby": "on standby since the last turn", "new": "started for this item"}
EXIT_WORKER_FAILED = 3  # cma_sandbox.worker's exit code when the SDK flow raised

class ContainerFailed(RuntimeError):
    """The session's container ended badly; the message says how and what happened to the work item."""


def _describe_exit(state: dict[str, Any]) -> str:
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        return f"it ran out of memory and was killed (exit code {code})"
    if isinstance(code, int) and code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"it was killed by {name} (exit code {code})"
    if code == EXIT_WORKER_FAILED:
        return "its worker failed (exit code 3)"
    error = state.get("Error")
    return f"it exited with code {code}" + (f" ({error})" if error else "")


# --------------------------------------------------------------------------- one container


@dataclass
class Slot:
    """One container with its volume and its private socket directory; pooled or serving a session."""

    id: str
    directory: Path
    volume: str
    size: str
    container_id: str | None = None
    session_id: str | None = None
    created_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    ready_at: float | None = None
    assigned_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    lease_lost: bool = False
    tools: int = 0
    in_tool: str | None = None  # the tool call running now, if any
    worker_error: str | None = None
    log_path: Path | None = None
    backlog: list[str] = field(default_factory=list)  # lines printed before the slot had a session
    on_tool: Any = None
    standby_for: str | None = None  # started on this session's volume for its next turn (see ContainerTier.standby_seconds)
    expiry: asyncio.TimerHandle | None = None  # when a standby container is let go

    @property
    def socket_path(self) -> Path:
        return self.directory / "egress.sock"

    @property
    def assignment_path(self) -> Path:
        return self.directory / "assignment"

    @property
    def name(self) -> str:
        return CONTAINER_PREFIX + self.id

    def line(self, stream: str, text: str) -> None:
        """A line the container printed (called on the event loop)."""
        if stream == "stdout" and text.startswith('{"cma"'):
            try:
                event = json.loads(text)
            except ValueError:
                event = {}
            self._event(event)
        self._keep(f"{stream}: {text}")

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("cma")
        if kind == "ready" and self.ready_at is None:
            self.ready_at = time.monotonic()
            self.ready.set()
        elif kind == "tool_start":
            self.in_tool = str(event.get("name"))[:64]
        elif kind == "tool":
            self.tools += 1
            self.in_tool = None
            if self.on_tool is not None:
                self.on_tool()
        elif kind == "lease_lost":
            self.lease_lost = True
        elif kind == "error":
            self.worker_error = str(event.get("message"))[:1000]

    def _keep(self, text: str) -> None:
        if self.log_path is None:
            self.backlog.append(text)
            del self.backlog[:-200]
            return
        with contextlib.suppress(OSError):
            with self.log_path.open("a") as fh:
                fh.write(text + "\n")

    def open_log(self, path: Path, *, start: str) -> None:
        self.log_path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        backlog, self.backlog = self.backlog, []
        with path.open("a") as fh:
            fh.write(f"--- container {self.name} ({self.container_id and self.container_id[:12]}, "
                     f"{START_DESCRIPTIONS[start]}, volume {self.volume}) "
                     f"serving from {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
            fh.writelines(line + "\n" for line in backlog)


class _Follower(threading.Thread):
    """Follows one container's output until it exits, then reports its final state (a thread: docker-py blocks)."""

    def __init__(self, tier: ContainerTier, slot: Slot, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"cma-follow-{slot.id}", daemon=True)
        self.tier, self.slot, self.loop = tier, slot, loop

    def run(self) -> None:
        import docker

        api = docker.APIClient(**self.tier._client_kwargs())
        buffers = {"stdout": b"", "stderr": b""}
        try:
            stream = api.attach(self.slot.container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            for out, err in stream:
                for name, chunk in (("stdout", out), ("stderr", err)):
                    if not chunk:
                        continue
                    data = buffers[name] + chunk
                    *lines, buffers[name] = data.split(b"\n")
                    for raw in lines:
                        self._emit(name, raw)
            for name, rest in buffers.items():
                if rest:
                    self._emit(name, rest)
            api.wait(self.slot.container_id, timeout=60)
            state = api.inspect_container(self.slot.container_id)["State"]
        except Exception as exc:  # the container vanished (removed, engine restarted)
            state = {"ExitCode": None, "Error": f"lost track of the container: {type(exc).__name__}: {exc}"}
        finally:
            api.close()
        self.loop.call_soon_threadsafe(self._exited, state)

    def _emit(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")[:8000]
        self.loop.call_soon_threadsafe(self.slot.line, stream, text)

    def _exited(self, state: dict[str, Any]) -> None:
        if not self.slot.exited.done():
            self.slot.exited.set_result(state)


# --------------------------------------------------------------------------- the tier


class ContainerTier(SizedTier):
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
    ca_bundle = Unicode("", config=True, help="The CA bundle (PEM) containers trust, mounted over the system one (the server sets the egress proxy's bundle).")
    api_base_url = Unicode("", config=True, help="The Managed Agents API base URL the containers' workers use (the server sets its own).")

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
        self.image_error: str | None = None
        self.image_id: str | None = None
        self.cleaned: list[str] = []
        self.last_start_error: str | None = None

    # ------------------------------------------------------------------ docker plumbing

    def _client_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.docker_url} if self.docker_url else {}

    def _client(self) -> docker.DockerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_docker_client()
        return client

    async def _docker(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(client, …)` on the tier's docker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._client(), *args, **kwargs))

    @property
    def containers_dir(self) -> Path:
        return Path(self.data_dir) / "containers"

    @property
    def logs_dir(self) -> Path:
        return Path(self.data_dir) / "logs"

    def log_path(self, session_id: str) -> Path:
        return self.logs_dir / f"{session_id}.log"

    def _labels(self, kind: str, session_id: str | None = None) -> dict[str, str]:
        labels = {MANAGED: "1", KIND_LABEL: kind, DATA_DIR_LABEL: str(Path(self.data_dir).absolute())}
        if session_id:
            labels[SESSION_LABEL] = session_id
        return labels

    # ------------------------------------------------------------------ start and close

    async def start(self) -> None:
        """Remove what a previous server left, then get the image ready and fill the pool (in the background)."""
        # 0700: a container sees only its own directory (a bind mount), never this one.
        self.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._wake = asyncio.Event()
        try:
            self.cleaned = await self._docker(self._remove_leftovers)
        except Exception as exc:
            self.last_start_error = f"no Docker engine: {type(exc).__name__}: {exc}"
            log.warning("container tier: %s", self.last_start_error)
        self._image_ready = asyncio.ensure_future(self._prepare_image())
        self._fill_task = asyncio.ensure_future(self._fill())

    def _remove_leftovers(self, client: docker.DockerClient) -> list[str]:
        """Containers of this data directory left by a server that is gone (their sessions' leases will expire)."""
        removed = []
        mine = f"{DATA_DIR_LABEL}={Path(self.data_dir).absolute()}"
        for container in client.containers.list(all=True, filters={"label": [f"{MANAGED}=1", mine]}):
            with contextlib.suppress(Exception):
                container.remove(force=True)
                removed.append(container.name)
        for path in self.containers_dir.iterdir():
            shutil.rmtree(path, ignore_errors=True)
        if removed:
            log.info("container tier: removed %d container(s) left by a previous server: %s", len(removed), ", ".join(removed))
        return removed

    async def _prepare_image(self) -> str:
        def check_or_build(client: docker.DockerClient) -> str:
            import docker.errors

            from .image import build_sandbox_image

            if self.image.auto_build:
                return build_sandbox_image(client, self.image, progress=lambda message, **_: log.debug("image: %s", message))
            try:
                return client.images.get(self.image.tag).id
            except docker.errors.ImageNotFound:
                raise RuntimeError(f"the sandbox image {self.image.tag} is missing: run `jupyter cma build-image`") from None

        try:
            self.image_id = await self._docker(check_or_build)
            self.image_error = None
            return self.image_id
        except Exception as exc:
            self.image_error = f"{type(exc).__name__}: {exc}"[:2000]
            log.error("container tier: the sandbox image is not ready: %s", self.image_error)
            raise

    async def image_ready(self) -> str:
        if self._image_ready is None:
            self._image_ready = asyncio.ensure_future(self._prepare_image())
        try:
            return await asyncio.shield(self._image_ready)
        except Exception as exc:
            if self._image_ready.done():
                self._image_ready = None  # try again next time (e.g. the engine came back)
            raise ContainerFailed(f"the sandbox image is not ready: {exc}") from exc

    async def close(self) -> None:
        """Remove every container of this tier (sessions were stopped first; pooled and half-started ones too)."""
        self._closed = True
        if self._fill_task is not None:
            self._fill_task.cancel()
            with contextlib.suppress(BaseException):
                await self._fill_task
        self._pool = []
        standby, self._standby = list(self._standby.values()), {}
        for task in standby:
            task.cancel()
        await asyncio.gather(*standby, return_exceptions=True)
        slots = list(self._slots.values())
        await asyncio.gather(*(self._discard(slot, keep_volume=slot.session_id is not None or slot.standby_for is not None)
                               for slot in slots), return_exceptions=True)
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ sizes

    def _resources(self, size: str) -> dict[str, Any]:
        spec = self.instance_sizes[size]
        memory = memory_bytes(spec["memory"])
        return {"nano_cpus": int(float(spec["cpus"]) * 1e9), "mem_limit": memory, "memswap_limit": memory,
                "pids_limit": int(spec["pids"])}

    # ------------------------------------------------------------------ containers

    async def _new_slot(self, size: str, volume: str | None = None, session_id: str | None = None, *,
                        standby: bool = False) -> Slot:
        """Create (not start) a container: its own socket directory, the volume (a fresh one unless given).

        A `standby` one is labelled with its session but does not serve it (yet): `serves` stays false.
        """
        image = await self.image_ready()
        slot_id = secrets.token_hex(6)
        directory = self.containers_dir / slot_id
        slot = Slot(id=slot_id, directory=directory, volume=volume or VOLUME_PREFIX + slot_id, size=size,
                    session_id=None if standby else session_id, standby_for=session_id if standby else None)
        try:
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)  # the container's user (not this server's) must reach the socket in it
            os.mkfifo(slot.assignment_path)
            slot.assignment_path.chmod(0o644)  # the container's worker reads it; only this server writes
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._slots[slot_id] = slot

        def create(client: docker.DockerClient) -> str:
            from docker.types import LogConfig, Mount

            if volume is None:
                client.volumes.create(slot.volume, labels=self._labels("workspace"))
            mounts = [
                Mount("/workspace", slot.volume, type="volume"),
                Mount(SOCKET_DIR_INSIDE, str(directory), type="bind", read_only=True),
            ]
            ca_inside = None
            if self.ca_bundle and os.path.isfile(self.ca_bundle):
                mounts.append(Mount(CA_PATH_INSIDE, self.ca_bundle, type="bind", read_only=True))
                ca_inside = CA_PATH_INSIDE
            small = f"{max(1, memory_bytes(self.tmp_size) // 4 // 1024**2)}m"
            container = client.containers.create(
                image,
                name=slot.name,
                hostname="sandbox",
                user=USER,
                network_mode="none",
                init=True,
                read_only=True,
                tmpfs={
                    "/tmp": f"rw,nosuid,nodev,size={self.tmp_size}",
                    "/var/tmp": f"rw,nosuid,nodev,size={small}",
                    "/home/agent": f"rw,nosuid,nodev,size={small},uid=1000,gid=1000,mode=0700",
                },
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ipc_mode="private",
                mounts=mounts,
                environment={**proxy_environment(ca_inside), "PYTHONUNBUFFERED": "1"},
                labels=self._labels("sandbox", session_id),
                log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
                **self._resources(size),
            )
            return container.id

        try:
            slot.container_id = await self._docker(create)
        except BaseException:
            await self._discard(slot)
            raise
        return slot

    async def _start(self, slot: Slot) -> None:
        await self._docker(lambda client: client.api.start(slot.container_id))
        slot.started_at = time.monotonic()
        _Follower(self, slot, asyncio.get_running_loop()).start()

    async def _discard(self, slot: Slot, *, keep_volume: bool = True, timeout: float = 0) -> None:
        """Stop and remove the container and its socket directory; the volume stays unless it was never used."""
        self._slots.pop(slot.id, None)

        def remove(client: docker.DockerClient) -> None:
            import docker.errors

            if slot.container_id is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    if timeout:
                        client.api.stop(slot.container_id, timeout=int(timeout))
                    client.api.remove_container(slot.container_id, force=True)
            if not keep_volume:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.volumes.get(slot.volume).remove(force=True)

        try:
            await self._docker(remove)
        finally:
            shutil.rmtree(slot.directory, ignore_errors=True)

    # ------------------------------------------------------------------ the pool

    async def _fill(self) -> None:
        """Keep `pool_size` warm containers; back off while starting them fails."""
        delay = 1.0
        while not self._closed:
            # A take has just started a session: its container gets the engine first (the periodic tick too waits).
            if (wait := self._refill_not_before - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            while len(self._pool) + self._filling < self.pool_size and not self._closed:
                self._filling += 1
                try:
                    slot = await self._new_slot(self.default_size)
                    await self._start(slot)
                    await self._wait_ready(slot)
                    if slot.exited.done():
                        raise ContainerFailed(f"a pooled container ended: {_describe_exit(slot.exited.result())}")
                    self._pool.append(slot)
                    slot.exited.add_done_callback(lambda _, s=slot: self._drop_from_pool(s))
                    delay = 1.0
                    self.last_start_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.last_start_error = str(exc)[:1000]
                    log.warning("container tier: could not start a pooled container: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                finally:
                    self._filling -= 1
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)

    def _drop_from_pool(self, slot: Slot) -> None:
        if slot in self._pool:
            self._pool.remove(slot)
            log.warning("container tier: pooled container %s ended while waiting: %s", slot.name, _describe_exit(slot.exited.result()))
            asyncio.ensure_future(self._discard(slot, keep_volume=False))
            if self._wake is not None:
                self._wake.set()

    async def _wait_ready(self, slot: Slot) -> None:
        ready = asyncio.ensure_future(slot.ready.wait())
        try:
            await asyncio.wait([ready, slot.exited], timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if slot.exited.done():
            raise ContainerFailed(f"the container ended before its worker was ready: {_describe_exit(slot.exited.result())}; "
                                  f"last lines: {' | '.join(slot.backlog[-5:])[:800]}")
        if not slot.ready.is_set():
            raise ContainerFailed(f"the container's worker was not ready within {self.start_timeout:g} s")

    def pool_status(self) -> dict[str, Any]:
        return {"size": self.pool_size, "ready": len(self._pool), "starting": self._filling, "last_error": self.last_start_error}

    async def wait_pool(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._pool) >= self.pool_size:
                return True
            await asyncio.sleep(0.05)
        return False

    # ------------------------------------------------------------------ standby

    def keep_standby(self, session_id: str, size: str) -> None:
        """The session's container ended idle: with `standby_seconds`, start one on its volume for its next turn."""
        if self.standby_seconds <= 0 or self._closed or session_id in self._standby:
            return
        row = self.store.session(session_id) if self.store is not None else None
        if row is None or row["status"] == "ended" or not row.get("workspace_volume"):
            return
        while len(self._standby) >= self.standby_max:
            oldest = self._standby.pop(next(iter(self._standby)))
            asyncio.ensure_future(self._let_go(oldest))
        self._standby[session_id] = asyncio.ensure_future(self._start_standby(session_id, size, row["workspace_volume"]))

    async def _start_standby(self, session_id: str, size: str, volume: str) -> Slot:
        task = asyncio.current_task()
        try:
            slot = await self._new_slot(size, volume=volume, session_id=session_id, standby=True)
        except Exception as exc:
            self._failed_standby(session_id, task, exc)
            raise
        try:
            await self._start(slot)
            await self._wait_ready(slot)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._failed_standby(session_id, task, exc)
            await finish_shielded(self._discard(slot))
            raise
        slot.expiry = asyncio.get_running_loop().call_later(
            self.standby_seconds, lambda: asyncio.ensure_future(self._drop_standby(session_id, only=task)))
        slot.exited.add_done_callback(lambda _: asyncio.ensure_future(self._drop_standby(session_id, only=task)))
        return slot

    def _failed_standby(self, session_id: str, task: asyncio.Task[Any] | None, exc: Exception) -> None:
        """A standby container that could not start: the session resumes on a new one, as without standby."""
        log.warning("container tier: session %s: no standby container: %s", session_id, exc)
        if self._standby.get(session_id) is task:
            del self._standby[session_id]

    async def _take_standby(self, session_id: str, size: str, volume: str) -> Slot | None:
        """The session's standby container (waited for if still starting) when it is on `volume` and of `size`."""
        task = self._standby.pop(session_id, None)
        if task is None:
            return None
        try:
            slot = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                return None  # the standby container was let go meanwhile
            asyncio.ensure_future(self._let_go(task))  # this take was cancelled (a stop): not left running
            raise
        except Exception:
            return None  # logged where it failed
        if slot.expiry is not None:
            slot.expiry.cancel()
        if slot.exited.done() or slot.volume != volume or slot.size != size:
            await self._discard(slot)
            return None
        slot.standby_for, slot.session_id = None, session_id
        return slot

    async def _drop_standby(self, session_id: str, only: asyncio.Task[Slot] | None = None) -> None:
        """Let the session's standby container go (its volume stays); with `only`, just if it is that one."""
        task = self._standby.get(session_id)
        if task is None or (only is not None and task is not only):
            return
        del self._standby[session_id]
        await self._let_go(task)

    async def _let_go(self, task: asyncio.Task[Slot]) -> None:
        if not task.done():
            task.cancel()  # it removes what it made
            return
        if task.cancelled() or task.exception() is not None:
            return
        slot = task.result()
        if slot.expiry is not None:
            slot.expiry.cancel()
        await self._discard(slot)

    def standby_status(self) -> dict[str, Any]:
        ready = [t for t in self._standby.values() if t.done() and not t.cancelled() and t.exception() is None]
        return {"seconds": self.standby_seconds, "max": self.standby_max, "ready": len(ready),
                "starting": len(self._standby) - len(ready)}

    # ------------------------------------------------------------------ serving

    def _workspace_lock(self, session_id: str) -> asyncio.Lock:
        """One workspace step per session at a time: choosing (or pulling) the volume a container of it starts on,
        export, import, push, pull, removal. Otherwise a push could read a volume a new container already writes to,
        or two pulls each make a volume and one of them be left unrecorded."""
        lock = self._workspace_locks.get(session_id)
        if lock is None:
            lock = self._workspace_locks[session_id] = asyncio.Lock()
        return lock

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

    async def attach_egress(self, slot: Slot, session_id: str, api_token: str | None, *, work_id: str, environment_id: str) -> str | None:
        if self.egress_hook is None:
            return None
        return await self.egress_hook.attach(slot.id, str(slot.socket_path), session_id=session_id, api_token=api_token,
                                             work_id=work_id, environment_id=environment_id, socket_mode=0o666)

    async def detach_egress(self, slot: Slot, session_id: str) -> None:
        if self.egress_hook is None:
            return
        await self.egress_hook.detach(slot.id, str(slot.socket_path), session_id=session_id)

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

    def create(self, item: ClaimedItem, workspace: Path) -> ContainerSandbox:
        return ContainerSandbox(item, workspace, tier=self)

    def status(self) -> dict[str, Any]:
        return {"image": self.image.tag, "image_id": self.image_id, "image_error": self.image_error,
                "pool": self.pool_status(), "standby": self.standby_status(), "containers": len(self._slots),
                "object_store": self.object_store.describe()}

    # ------------------------------------------------------------------ terminals and workspace transfer

    docker_cli = Unicode(
        "docker", config=True,
        help="The docker command-line client (a name on PATH, or a path) that terminals into sandboxes run: "
        "POST cma/api/sessions/{id}/terminal opens `docker exec -it -w /workspace <container> /bin/bash -l` "
        "(with -H docker_url when that is set). Default 'docker'.",
    )

    def _new_docker_client(self) -> docker.DockerClient:
        import docker

        return docker.DockerClient(**self._client_kwargs()) if self.docker_url else docker.from_env()

    async def _workspace_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(client, …)` on a thread of its own with a client of its own (a transfer may take long)."""
        def run() -> Any:
            client = self._new_docker_client()
            try:
                return fn(client, *args, **kwargs)
            finally:
                client.close()

        return await asyncio.to_thread(run)

    def serves(self, session_id: str) -> bool:
        """Whether a container of this tier is serving (or about to serve) the session."""
        return any(slot.session_id == session_id for slot in self._slots.values())

    async def workspace_volume(self, session_id: str, create: bool = True) -> str | None:
        """The session's workspace volume. With `create`, it is made (labelled) if missing and recorded for the session,
        so that the session's next container mounts it; a session unknown here is recorded as sleeping."""
        volume = self._volume_of(session_id)
        if volume is None and not create:
            return None
        volume = volume or VOLUME_PREFIX + session_id
        if create:
            await self._workspace_call(self._ensure_volume, volume, session_id)
            self._record_volume(session_id, volume)
        return volume

    def _record_volume(self, session_id: str, volume: str) -> None:
        """The session's volume from now on; a session unknown here is recorded as sleeping (its next item resumes it)."""
        if self.store is not None and self.store.session(session_id) is None:
            self.store.transition(session_id, "sleeping", "workspace imported; its next work item starts a container on it")
        self._remember_volume(session_id, volume)

    async def export_workspace(self, session_id: str, fileobj: Any) -> dict[str, Any]:
        """Write the session's workspace to `fileobj` as a tar.gz (see sandboxes/workspace.py); LookupError if it has none."""
        async with self._workspace_lock(session_id):
            return await self._export(session_id, fileobj)

    async def _export(self, session_id: str, fileobj: Any) -> dict[str, Any]:
        from .workspace import export_workspace

        volume = await self.workspace_volume(session_id, create=False)
        if volume is None:
            raise LookupError(f"session {session_id} has no workspace volume here (it has not run on the container tier on this server)")
        image = await self.image_ready()
        return await self._workspace_call(export_workspace, volume, image, fileobj, labels=self._labels("workspace-helper", session_id))

    async def import_workspace(self, session_id: str, fileobj: Any, *, replace: bool = False,
                               max_bytes: int | None = None) -> dict[str, Any]:
        """Check an archive, then put its files into the session's volume (made and recorded if missing).

        With `replace`, the files go into a fresh volume instead, which becomes the session's only once they are
        all in (the old one is then removed): what the session had is never mixed with the archive, and a failure
        leaves it as it was. Raises WorkspaceArchiveError (refused archive: nothing made or written) and
        WorkspaceBusy (a container serves it).
        """
        async with self._workspace_lock(session_id):
            return await self._import(session_id, fileobj, replace=replace, max_bytes=max_bytes)

    async def _import(self, session_id: str, fileobj: Any, *, replace: bool, max_bytes: int | None) -> dict[str, Any]:
        from .workspace import WorkspaceBusy, clean_archive, import_workspace

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
            self._record_volume(session_id, volume)
            if old is not None and old != volume:
                await self._workspace_call(self._remove_volume, old)
        return result

    async def push_workspace(self, session_id: str) -> dict[str, Any]:
        """Export the session's workspace into the object store (WorkspaceObjectStore); LookupError if it has none here.

        The new object's version (ETag) is recorded: the volume here is that version.
        """
        async with self._workspace_lock(session_id):
            return await self._push(session_id)

    async def _push(self, session_id: str) -> dict[str, Any]:
        if not self.object_store.enabled:
            raise ObjectStoreError("no object store is configured: set WorkspaceObjectStore.url (s3://bucket/prefix)")
        with tempfile.TemporaryFile(dir=self.data_dir or None) as spool:
            summary = await self._export(session_id, spool)
            spool.seek(0)
            etag = await asyncio.to_thread(self.object_store.upload, session_id, spool)
        result = {**summary, "object": self.object_store.location(session_id)}
        self._note_sync(session_id, "push", result, etag=etag)
        return result

    async def pull_workspace(self, session_id: str) -> dict[str, Any] | None:
        """Replace the session's volume here by the store's object for it; None when the store has none.

        The object is checked like any imported archive (and bounded by WorkspaceObjectStore.max_bytes); refused
        while a container serves the session.
        """
        async with self._workspace_lock(session_id):
            return await self._pull(session_id)

    async def _pull(self, session_id: str) -> dict[str, Any] | None:
        if not self.object_store.enabled:
            raise ObjectStoreError("no object store is configured: set WorkspaceObjectStore.url (s3://bucket/prefix)")
        with tempfile.TemporaryFile(dir=self.data_dir or None) as spool:
            etag = await asyncio.to_thread(self.object_store.download, session_id, spool)
            if etag is None:
                return None
            spool.seek(0)
            summary = await self._import(session_id, spool, replace=True, max_bytes=self.object_store.max_bytes)
        result = {**summary, "object": self.object_store.location(session_id)}
        self._note_sync(session_id, "pull", result, etag=etag)
        return result

    def _note_sync(self, session_id: str, action: str, result: dict[str, Any] | None = None, *, etag: str | None = None,
                   error: str | None = None) -> None:
        """The last push or pull, shown with the session (GET cma/api/sessions/{id}: workspace_sync)."""
        if self.store is None or self.store.session(session_id) is None:
            return
        note = {"action": action, "at": time.time(), "object": self.object_store.location(session_id)}
        if result is not None:
            note.update(files=result.get("files"), bytes=result.get("bytes"))
        if error is not None:
            note["error"] = error
            self.store.update_session(session_id, workspace_sync=note)
        else:
            self.store.update_session(session_id, workspace_sync=note, workspace_etag=etag)


class ContainerSandbox(Sandbox):
    """Serves one claimed item in a container of its own; the worker flow runs inside."""

    tier: ClassVar[str] = "container"

    def __init__(self, item: ClaimedItem, workspace: Path, *, tier: ContainerTier) -> None:
        super().__init__(item, workspace)
        self._tier = tier
        self._slot: Slot | None = None
        self._state = "created"
        self._how_started: str | None = None  # how it got its container: a key of START_DESCRIPTIONS
        self._size: str | None = None
        self._error: str | None = None
        self._exit: dict[str, Any] | None = None
        self._served = False

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"bash", "files", "terminal"})

    @property
    def container_id(self) -> str | None:
        return None if self._slot is None else self._slot.container_id

    @property
    def container_name(self) -> str | None:
        return None if self._slot is None else self._slot.name

    def status(self) -> dict[str, Any]:
        slot = self._slot
        return {
            "tier": self.tier,
            "state": self._state,
            "session_id": self.session_id,
            "work_id": self.item.work_id,
            "size": self._size,
            "start": self._how_started,
            "container": None if slot is None else {
                "id": slot.container_id and slot.container_id[:12], "name": slot.name, "volume": slot.volume,
                "image": self._tier.image.tag,
            },
            "tool_calls": 0 if slot is None else slot.tools,
            "in_tool": None if slot is None else slot.in_tool,
            "exit": self._exit,
            "error": self._error,
            "log": str(self._tier.log_path(self.session_id)),
        }

    async def serve(self, worker: WorkerSettings) -> None:
        from ..egress.proxy import placeholder_work_secret

        if self._served:
            raise RuntimeError("a ContainerSandbox serves one work item; create a new one")
        self._served = True
        self._state = "starting"
        tier = self._tier
        session_id = self.session_id
        agent_id = (tier.store.session(session_id) or {}).get("agent_id") if tier.store is not None else None
        self._size = tier.size_for(agent_id)
        slot: Slot | None = None
        attached = False
        try:
            slot, self._how_started = await tier.take(session_id, self._size)
            self._slot = slot
            slot.on_tool = self.note_tool_result
            slot.open_log(tier.log_path(session_id), start=self._how_started)
            token = item_credential(self.item.secret, worker.environment_key)
            placeholder = await tier.attach_egress(slot, session_id, token, work_id=self.item.work_id,
                                                   environment_id=self.item.environment_id)
            attached = True
            if placeholder is None:
                raise ContainerFailed("the container tier needs the egress proxy (its worker reaches the API only through "
                                      "it, with a placeholder token): install it with `jupyter cma install-egress-engine`")
            assignment = {
                "work_id": self.item.work_id,
                "environment_id": self.item.environment_id,
                "session_id": session_id,
                "work_secret": placeholder_work_secret(placeholder),
                "api_base_url": tier.api_base_url or str(worker.client.base_url),
                "max_idle": worker.max_idle,
            }
            if self._how_started == "new":
                await tier._start(slot)
                await tier._wait_ready(slot)
            _send_assignment(slot.assignment_path, assignment)
            slot.assigned_at = time.monotonic()
            self._state = "serving"
            # Shielded so that a cancel (a stop) lands here at once; the stop itself is below.
            state = await asyncio.shield(slot.exited)
            self._exit = {"code": state.get("ExitCode"), "oom_killed": bool(state.get("OOMKilled"))}
            if state.get("ExitCode") == 0:
                self._state = "ended"
                return
            raise ContainerFailed(await self._after_crash(slot, state, worker))
        except asyncio.CancelledError:
            self._state = "stopped"
            if slot is not None:
                await finish_shielded(self._stop(slot, worker))
            raise
        except ContainerFailed as exc:
            self._state, self._error = "failed", str(exc)
            raise
        except Exception as exc:
            self._state, self._error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if slot is not None:
                await finish_shielded(self._release(slot, attached))

    async def _after_crash(self, slot: Slot, state: dict[str, Any], worker: WorkerSettings) -> str:
        how = _describe_exit(state)
        during = f" during a `{slot.in_tool}` call" if slot.in_tool else ""
        if slot.worker_error:
            how += f": {slot.worker_error}"
        if slot.lease_lost:
            item = "its work item's lease was already lost, so the item was left to whoever holds it now"
        elif await self._force_stop(worker):
            item = "its work item was force-stopped"
        else:
            item = "its work item could not be force-stopped and ends when its lease expires"
        return f"the session's container ended{during}: {how}; {item}"

    async def _stop(self, slot: Slot, worker: WorkerSettings) -> None:
        """A stop: SIGTERM lets the worker force-stop its item; a container that does not end in time is killed."""
        try:
            await self._tier._docker(lambda client: client.api.stop(slot.container_id, timeout=int(self._tier.stop_timeout)))
            state = await asyncio.wait_for(asyncio.shield(slot.exited), 10)
        except Exception as exc:
            log.warning("session %s: stopping container %s: %s", self.session_id, slot.name, exc)
            state = {}
        self._exit = {"code": state.get("ExitCode"), "oom_killed": bool(state.get("OOMKilled"))}
        if state.get("ExitCode") != 0 and not slot.lease_lost:
            await self._force_stop(worker)  # it was killed before its worker could (a 409 means it had)

    async def _force_stop(self, worker: WorkerSettings) -> bool:
        token = item_credential(self.item.secret, worker.environment_key)
        if token is None:
            return False
        try:
            client = worker.client.with_options(api_key=token, max_retries=1)
            await client.beta.environments.work.stop(self.item.work_id, environment_id=self.item.environment_id, force=True)
            return True
        except Exception as exc:
            if getattr(exc, "status_code", None) == 409:
                return True  # already stopped
            log.warning("session %s: force-stop of work item %s failed: %s", self.session_id, self.item.work_id, type(exc).__name__)
            return False

    async def _release(self, slot: Slot, attached: bool) -> None:
        if attached:
            await self._tier.detach_egress(slot, self.session_id)
        await self._tier._discard(slot)
        if self._tier.object_store.sync and self._tier.object_store.enabled:
            await self._push_workspace()
        if self._state == "ended" and self._size is not None:  # ended idle: the session sleeps until its next turn
            self._tier.keep_standby(self.session_id, self._size)

    async def _push_workspace(self) -> None:
        """With sync on, the workspace goes to the object store once the container is gone (nothing writes to it then).

        Before this sandbox is let go, so that the session's next container (here or on another host) starts from it.
        A failure is shown with the session (workspace_sync); the files stay in the volume here.
        """
        try:
            await self._tier.push_workspace(self.session_id)
        except Exception as exc:
            error = f"the workspace could not be pushed to the object store (the files are kept here): {exc}"[:1000]
            self._tier._note_sync(self.session_id, "push", error=error)
            log.warning("session %s: %s", self.session_id, error)


def _send_assignment(fifo: Path, assignment: dict[str, Any]) -> None:
    """Hand the assignment to the container's worker through its FIFO (it holds the read end open once ready).

    Non-blocking throughout, on the event loop: an assignment is far smaller than PIPE_BUF, so its one write
    is whole or fails.
    """
    data = json.dumps(assignment).encode()
    if len(data) > select.PIPE_BUF:
        raise ContainerFailed(f"the assignment is {len(data)} bytes, more than one pipe write ({select.PIPE_BUF})")
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:  # ENXIO: nobody reads, the worker is not waiting
        raise ContainerFailed(f"the container's worker is not waiting for its assignment ({exc.strerror})") from None
    try:
        os.write(fd, data)
    except OSError as exc:  # EPIPE: the worker went away; EAGAIN: its pipe is full (it was written to before)
        raise ContainerFailed(f"the assignment could not be handed to the container's worker ({exc.strerror})") from None
    finally:
        os.close(fd)
