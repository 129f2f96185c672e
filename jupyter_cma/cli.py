"""`jupyter cma …`: the command line of jupyter-cma.

Subcommands: `emulator` (run the local Managed Agents API emulator), `demo`
(the README scenario end to end against the emulator),
`install-egress-engine` (the egress proxy's own Python environment),
`build-image` (the container sandbox image), `workspace export|import` (a
container session's workspace as a tar.gz) and `cleanup` (what the container
tier left behind).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from jupyter_core.application import JupyterApp
from traitlets import Bool, Unicode

from ._version import __version__

if TYPE_CHECKING:  # the commands import what they use when they run: `jupyter cma --help` stays quick
    from .sandboxes.base import Tier, WorkspaceTransfer
    from .store import Store

T = TypeVar("T")


class CMACommand(JupyterApp):
    """jupyter-cma: Claude Managed Agents sandboxes for Jupyter."""

    name = "jupyter-cma"
    version = __version__
    description = "Run Claude Managed Agents with the agent's hands on your own machines."
    subcommands = {
        "emulator": ("jupyter_cma.emulator.app.EmulatorApp", "Run the local Managed Agents API emulator."),
        "demo": ("jupyter_cma.demo.DemoApp", "Run the README scenario end to end against the emulator."),
        "lab": ("jupyter_cma.lab.LabApp", "JupyterLab with jupyter-cma on the emulator: offline, no API key (try the examples)."),
        "install-egress-engine": ("jupyter_cma.cli.InstallEgressEngineApp", "Install the egress proxy's engine (mitmproxy) in its own environment."),
        "build-image": ("jupyter_cma.cli.BuildImageApp", "Build the container sandbox image (offline by default; cached)."),
        "workspace": ("jupyter_cma.cli.WorkspaceApp", "Export or import a container session's workspace (tar.gz)."),
        "cleanup": ("jupyter_cma.cli.CleanupApp", "Remove the containers, volumes and socket directories the container tier left."),
    }

    def start(self) -> None:
        if self.subapp is None:
            print(self.description)
            print("\nSubcommands:")
            for name, (_, help_text) in self.subcommands.items():
                print(f"  jupyter cma {name:10} {help_text}")
            self.exit(0)
        super().start()


class InstallEgressEngineApp(JupyterApp):
    """Create the egress engine's virtual environment (mitmproxy, pinned) beside this one.

    The engine runs in its own environment because mitmproxy pins versions of
    tornado, h11 and cryptography the Jupyter server must not be held to.
    Offline: pass pip options, e.g. --pip-args="--no-index --find-links /wheels".
    """

    name = "jupyter-cma-install-egress-engine"
    description = __doc__
    target = Unicode("", help="Where to create the environment (default: <sys.prefix>/share/jupyter-cma/egress-engine).").tag(config=True)
    pip_args = Unicode("", help="Extra pip install options, space separated.").tag(config=True)
    aliases = {"target": "InstallEgressEngineApp.target", "pip-args": "InstallEgressEngineApp.pip_args"}

    def start(self) -> None:
        from pathlib import Path

        from .egress.proxy import ENGINE_REQUIREMENTS, install_engine

        print(f"installing the egress engine ({', '.join(ENGINE_REQUIREMENTS)}) ...", flush=True)
        python = install_engine(Path(self.target) if self.target else None, pip_args=tuple(self.pip_args.split()))
        print(f"egress engine ready: {python}")


class BuildImageApp(JupyterApp):
    """Build the container sandbox image (sandbox/Dockerfile), or say it is up to date.

    Reads the same settings as the server (`c.ImageSettings.…` in
    jupyter_server_config.py). Offline by default: a Debian base made with
    debootstrap from this machine's package mirror, wheels downloaded here, no
    network in the build. --online builds FROM a public Python image instead.
    """

    name = "jupyter-cma-build-image"
    description = __doc__
    # The server's configuration files, so that the image built here is the one the server runs.
    config_file_name = Unicode("jupyter_server_config")
    aliases = {
        "tag": "ImageSettings.tag",
        "dockerfile": "ImageSettings.dockerfile",
        "online-base": "ImageSettings.online_base",
        "apt": "BuildImageApp.apt",
        "pip": "BuildImageApp.pip",
    }
    flags = {
        "online": ({"ImageSettings": {"mode": "online"}}, "Build FROM a public Python image, with apt and pip from the internet."),
        "offline": ({"ImageSettings": {"mode": "offline"}}, "Build with no network (the default)."),
    }
    apt = Unicode("", help="Extra Debian packages, space separated (added to ImageSettings.extra_apt_packages).").tag(config=True)
    pip = Unicode("", help="Extra pip requirements, space separated (added to ImageSettings.extra_pip_packages).").tag(config=True)

    def start(self) -> None:
        import docker

        from .sandboxes.image import ImageSettings, ProgressBar, build_sandbox_image

        settings = ImageSettings(parent=self)
        settings.extra_apt_packages = [*settings.extra_apt_packages, *self.apt.split()]
        settings.extra_pip_packages = [*settings.extra_pip_packages, *self.pip.split()]
        try:
            client = docker.from_env()
            client.ping()
        except Exception as exc:
            self.log.error("no Docker engine answers (%s); start one first", type(exc).__name__)
            self.exit(1)
        bar = ProgressBar(f"{settings.tag} ({settings.mode})")
        try:
            image_id = build_sandbox_image(client, settings, progress=bar)
        except Exception as exc:
            bar.close()
            self.log.error("the image build failed: %s", exc)
            self.exit(1)
        bar.close()
        image = client.images.get(image_id)
        print(f"{settings.tag}: {image_id[:19]}, {image.attrs['Size'] / 1e6:.0f} MB")


class _DataDirApp(JupyterApp):
    """A command that works on a server's data directory (--data-dir; else c.CMAApp.data_dir; else the CMAApp default)."""

    # The server's configuration files, so that c.CMAApp.data_dir, c.ContainerTier.… and c.ImageSettings.… apply here too.
    config_file_name = Unicode("jupyter_server_config")
    cma_data_dir = Unicode("", help="The server's data directory (default: c.CMAApp.data_dir, else <jupyter data dir>/cma).").tag(config=True)
    aliases = {"data-dir": "_DataDirApp.cma_data_dir"}

    def resolved_data_dir(self) -> str:
        from pathlib import Path

        from jupyter_core.paths import jupyter_data_dir

        configured = self.config.get("CMAApp", {}).get("data_dir")
        return str(Path(self.cma_data_dir or configured or Path(jupyter_data_dir()) / "cma").expanduser().absolute())

    def fail(self, message: str) -> None:
        import sys

        print(f"error: {message}", file=sys.stderr)
        self.exit(1)


class WorkspaceApp(JupyterApp):
    """Export or import a container session's workspace volume as a tar.gz.

    jupyter cma workspace export SESSION FILE   (FILE '-': standard output)
    jupyter cma workspace import SESSION FILE   (FILE '-': standard input)
    jupyter cma workspace push SESSION          (into the object store: c.WorkspaceObjectStore.url, or --url)
    jupyter cma workspace pull SESSION          (from the object store)

    They open the server's database (--data-dir) and use its Docker engine; an
    import or pull is refused while a container uses the session's volume, and
    records the volume for the session, whose next container then mounts it.
    """

    name = "jupyter-cma-workspace"
    description = __doc__
    subcommands = {
        "export": ("jupyter_cma.cli.WorkspaceExportApp", "Write SESSION's workspace to FILE as a tar.gz."),
        "import": ("jupyter_cma.cli.WorkspaceImportApp", "Put the files of FILE (a tar or tar.gz) into SESSION's workspace."),
        "push": ("jupyter_cma.cli.WorkspacePushApp", "Put SESSION's workspace into the object store (WorkspaceObjectStore.url)."),
        "pull": ("jupyter_cma.cli.WorkspacePullApp", "Put the object store's copy of SESSION's workspace into its volume here."),
    }

    def start(self) -> None:
        if self.subapp is None:
            print(self.description)
            self.exit(0)
        super().start()


class _WorkspaceCommand(_DataDirApp):
    action = ""

    operands: tuple[str, ...] = ("SESSION", "FILE")
    options = "[--data-dir DIR]"

    def arguments(self) -> list[str]:
        import re

        if len(self.extra_args) != len(self.operands):
            self.fail(f"usage: jupyter cma workspace {self.action} {' '.join(self.operands)} {self.options}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", self.extra_args[0]):
            self.fail(f"{self.extra_args[0]!r} is not a session id")
        return list(self.extra_args)

    def run(self, work: Callable[[Tier, Store], Awaitable[T]]) -> T:
        """Run `work(tier, store)` with a container tier on the data directory's database (opened read-write)."""
        import asyncio
        from pathlib import Path

        from .sandboxes.container import ContainerTier
        from .store import Store

        data_dir = Path(self.resolved_data_dir())
        database = data_dir / "cma.sqlite3"
        if self.action in ("export", "push") and not database.is_file():
            self.fail(f"there is no jupyter-cma database at {database}; pass the server's --data-dir")
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = Store(database)

        async def main() -> T:
            tier = ContainerTier(parent=self, data_dir=str(data_dir), store=store)
            tier.image.auto_build = False
            try:
                return await work(tier, store)
            finally:
                await tier.close()

        try:
            return asyncio.run(main())
        finally:
            store.close()


class WorkspaceExportApp(_WorkspaceCommand):
    """Write a session's workspace to FILE as a tar.gz (names relative to /workspace)."""

    name = "jupyter-cma-workspace-export"
    description = __doc__
    action = "export"

    def start(self) -> None:
        import contextlib
        import os
        import sys

        session_id, path = self.arguments()

        async def work(tier: Tier, store: Store) -> WorkspaceTransfer:
            if path == "-":
                return await tier.export_workspace(session_id, sys.stdout.buffer)
            tmp = f"{path}.partial"
            try:
                with open(tmp, "wb") as fh:
                    result = await tier.export_workspace(session_id, fh)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return result

        try:
            result = self.run(work)
        except LookupError as exc:
            self.fail(str(exc))
        except Exception as exc:
            self.fail(f"the export failed: {type(exc).__name__}: {exc}")
        where = "standard output" if path == "-" else path
        print(f"exported {result['files']} files ({result['bytes']} bytes) of session {session_id} "
              f"from volume {result['volume']} to {where}", file=sys.stderr)
        if result["skipped"]:
            print(f"left out (fifos or devices): {', '.join(result['skipped'])}", file=sys.stderr)


class WorkspaceImportApp(_WorkspaceCommand):
    """Put the files of FILE (a tar or tar.gz; '-' reads standard input) into a session's workspace volume."""

    name = "jupyter-cma-workspace-import"
    description = __doc__
    action = "import"

    def start(self) -> None:
        import sys

        from .sandboxes.base import WorkspaceArchiveError, WorkspaceBusy

        session_id, path = self.arguments()

        async def work(tier: Tier, store: Store) -> WorkspaceTransfer:
            from .control.workspaces import import_workspace

            if path == "-":
                return await import_workspace(store, tier, session_id, sys.stdin.buffer)
            with open(path, "rb") as fh:
                return await import_workspace(store, tier, session_id, fh)

        try:
            result = self.run(work)
        except FileNotFoundError as exc:
            self.fail(f"{exc.filename}: no such file")
        except WorkspaceArchiveError as exc:
            self.fail(f"the archive was refused, nothing was written: {exc}")
        except WorkspaceBusy as exc:
            self.fail(f"the workspace was not imported: {exc}")
        except Exception as exc:
            self.fail(f"the import failed: {type(exc).__name__}: {exc}")
        print(f"imported {result['files']} files, {result['directories']} directories and {result['links']} links "
              f"({result['bytes']} bytes) into volume {result['volume']}; session {session_id}'s next container mounts it")


class _ObjectStoreCommand(_WorkspaceCommand):
    operands = ("SESSION",)
    options = "[--url s3://BUCKET/PREFIX] [--endpoint-url URL] [--data-dir DIR]"
    aliases = {**_DataDirApp.aliases, "url": "WorkspaceObjectStore.url", "endpoint-url": "WorkspaceObjectStore.endpoint_url"}

    def start(self) -> None:
        from .sandboxes.base import ObjectStoreError
        from .sandboxes.base import WorkspaceArchiveError, WorkspaceBusy

        (session_id,) = self.arguments()

        async def work(tier: Tier, store: Store) -> WorkspaceTransfer | None:
            from .control.workspaces import pull_workspace

            if self.action == "push":
                return await tier.push_workspace(session_id)
            return await pull_workspace(store, tier, session_id)

        try:
            result = self.run(work)
        except (LookupError, ObjectStoreError, WorkspaceBusy) as exc:
            self.fail(str(exc))
        except WorkspaceArchiveError as exc:
            self.fail(f"the store's object was refused, nothing was written: {exc}")
        except Exception as exc:
            self.fail(f"the {self.action} failed: {type(exc).__name__}: {exc}")
        if result is None:
            self.fail(f"the object store has no workspace for session {session_id}; push it from the host it ran on")
        self.report(session_id, result)

    def report(self, session_id: str, result: WorkspaceTransfer) -> None:
        raise NotImplementedError


class WorkspacePushApp(_ObjectStoreCommand):
    """Put a session's workspace into the object store (WorkspaceObjectStore.url), from where another host pulls it."""

    name = "jupyter-cma-workspace-push"
    description = __doc__
    action = "push"

    def report(self, session_id: str, result: WorkspaceTransfer) -> None:
        print(f"pushed {result['files']} files ({result['bytes']} bytes) of session {session_id} to {result['object']}")


class WorkspacePullApp(_ObjectStoreCommand):
    """Put the object store's copy of a session's workspace into its volume here; its next container mounts it."""

    name = "jupyter-cma-workspace-pull"
    description = __doc__
    action = "pull"

    def report(self, session_id: str, result: WorkspaceTransfer) -> None:
        print(f"pulled {result['files']} files ({result['bytes']} bytes) of session {session_id} from {result['object']} "
              f"into volume {result['volume']}; its next container mounts it")


class CleanupApp(_DataDirApp):
    """Remove the containers and volumes the container tier made (label org.jupyter-cma.managed=1) and its socket
    directories (<data_dir>/containers/*), for this server's data directory, or for every one with --all.

    A dry run by default: it prints what it would remove. --yes removes. Volumes holding sessions' files (the
    workspaces of sleeping or resumable sessions) are listed apart and removed only with --volumes.
    """

    name = "jupyter-cma-cleanup"
    description = __doc__
    yes = Bool(False, help="Remove (default: only list what would be removed).").tag(config=True)
    all_data_dirs = Bool(False, help="Every data directory's leftovers, not only this server's.").tag(config=True)
    volumes = Bool(False, help="Remove the volumes that hold sessions' files too.").tag(config=True)
    flags = {
        "yes": ({"CleanupApp": {"yes": True}}, "Remove (the default is a dry run)."),
        "all": ({"CleanupApp": {"all_data_dirs": True}}, "Clean up after every data directory, not only this server's."),
        "volumes": ({"CleanupApp": {"volumes": True}}, "Remove the volumes holding sessions' files too (sleeping sessions lose their workspace)."),
    }

    def start(self) -> None:
        import docker

        from .sandboxes.cleanup import apply_cleanup, format_plan, plan_cleanup

        data_dir = self.resolved_data_dir()
        try:
            client = docker.from_env()
            client.ping()
        except Exception as exc:
            self.fail(f"no Docker engine answers ({type(exc).__name__}); start one first")
        plan = plan_cleanup(client, data_dir, all_data_dirs=self.all_data_dirs)
        print(format_plan(plan, volumes=self.volumes, removing=self.yes))
        if plan.is_empty():
            print("\nNothing to clean up.")
            return
        if not self.yes:
            print("\nDry run: nothing was removed. Run again with --yes to remove the above"
                  + (" (the volumes holding sessions' files too)." if self.volumes else
                     "; volumes holding sessions' files are removed only with --volumes as well."))
            return
        errors = apply_cleanup(plan, volumes=self.volumes)
        for error in errors:
            print(f"error: {error}")
        if errors:
            print("\nSome items could not be removed (see above).")
            self.exit(1)
        volumes = len(plan.volumes) + (len(plan.session_volumes) if self.volumes else 0)
        kept = "" if self.volumes or not plan.session_volumes else f"; kept {len(plan.session_volumes)} volume(s) holding sessions' files (--volumes removes them)"
        print(f"\nRemoved {len(plan.containers)} container(s), {volumes} volume(s) and {len(plan.directories)} socket directory(ies){kept}.")


def main() -> None:
    CMACommand.launch_instance()


if __name__ == "__main__":
    main()
