"""`jupyter cma …`: the command line of jupyter-cma.

Subcommands: `emulator` (run the local Managed Agents API emulator), `demo`
(the README scenario end to end against the emulator),
`install-egress-engine` (the egress proxy's own Python environment),
`build-image` (the container sandbox image) and `cleanup` (what the container
tier left behind).
"""

from __future__ import annotations

from jupyter_core.application import JupyterApp
from traitlets import Unicode

from ._version import __version__


class CMACommand(JupyterApp):
    """jupyter-cma: Claude Managed Agents sandboxes for Jupyter."""

    name = "jupyter-cma"
    version = __version__
    description = "Run Claude Managed Agents with the agent's hands on your own machines."
    subcommands = {
        "emulator": ("jupyter_cma.emulator.app.EmulatorApp", "Run the local Managed Agents API emulator."),
        "demo": ("jupyter_cma.demo.DemoApp", "Run the README scenario end to end against the emulator."),
        "install-egress-engine": ("jupyter_cma.cli.InstallEgressEngineApp", "Install the egress proxy's engine (mitmproxy) in its own environment."),
        "build-image": ("jupyter_cma.cli.BuildImageApp", "Build the container sandbox image (offline by default; cached)."),
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


def main() -> None:
    CMACommand.launch_instance()


if __name__ == "__main__":
    main()
