"""The container tier's side of the Docker engine: clients and threads, labels and paths, the image, one container.

Docker calls block, so they run on a small thread pool with a client per
thread (`_docker`); a workspace transfer, which may take long, gets a thread
and a client of its own (`_workspace_call`); each container's output is
followed by a thread of its own (`slots.Follower`).

What a container gets (and nothing else) is decided here, in `_new_slot`: see
the package's docstring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..isolation import proxy_environment
from ..sizes import memory_bytes
from .labels import DATA_DIR_LABEL, KIND_LABEL, MANAGED, SESSION_LABEL, VOLUME_PREFIX
from .slots import ContainerFailed, Follower, Slot, describe_exit

if TYPE_CHECKING:
    import docker

    from ..image import ImageSettings

log = logging.getLogger(__name__)

CA_PATH_INSIDE = "/etc/ssl/certs/ca-certificates.crt"  # where Debian's tools and Python's ssl look
SOCKET_DIR_INSIDE = "/run/cma"
USER = "1000:1000"


class DockerEngine:
    """A part of `ContainerTier` (a mixin, see `tier.py`): Docker clients, the sandbox image, making, starting and
    removing one container."""

    # What this part uses of the tier (its settings and state, set in ContainerTier).
    docker_url: str
    data_dir: str
    ca_bundle: str
    tmp_size: str
    start_timeout: float
    instance_sizes: dict[str, dict[str, Any]]
    image: ImageSettings
    image_id: str | None
    image_error: str | None
    engine_error: str | None
    _executor: concurrent.futures.ThreadPoolExecutor
    _local: threading.local
    _slots: dict[str, Slot]
    _image_ready: asyncio.Future[str] | None

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

    # ------------------------------------------------------------------ the image

    async def _prepare_image(self) -> str:
        def check_or_build(client: docker.DockerClient) -> str:
            import docker.errors

            from ..image import build_sandbox_image

            if self.image.auto_build:
                return build_sandbox_image(client, self.image, progress=lambda message, **_: log.debug("image: %s", message))
            try:
                return client.images.get(self.image.tag).id
            except docker.errors.ImageNotFound:
                raise RuntimeError(f"the sandbox image {self.image.tag} is missing: run `jupyter cma build-image`") from None

        try:
            self.image_id = await self._docker(check_or_build)
            self.image_error = self.engine_error = None
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

    # ------------------------------------------------------------------ sizes

    def _resources(self, size: str) -> dict[str, Any]:
        spec = self.instance_sizes[size]
        memory = memory_bytes(spec["memory"])
        return {"nano_cpus": int(float(spec["cpus"]) * 1e9), "mem_limit": memory, "memswap_limit": memory,
                "pids_limit": int(spec["pids"])}

    # ------------------------------------------------------------------ containers

    def serves(self, session_id: str) -> bool:
        """Whether a container of this tier is serving (or about to serve) the session."""
        return any(slot.session_id == session_id for slot in self._slots.values())

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
        Follower(self, slot, asyncio.get_running_loop()).start()

    async def _wait_ready(self, slot: Slot) -> None:
        ready = asyncio.ensure_future(slot.ready.wait())
        try:
            await asyncio.wait([ready, slot.exited], timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if slot.exited.done():
            raise ContainerFailed(f"the container ended before its worker was ready: {describe_exit(slot.exited.result())}; "
                                  f"last lines: {' | '.join(slot.backlog[-5:])[:800]}")
        if not slot.ready.is_set():
            raise ContainerFailed(f"the container's worker was not ready within {self.start_timeout:g} s")

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
