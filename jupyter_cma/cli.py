"""`jupyter cma …`: the command line of jupyter-cma.

Subcommands: `emulator` (run the local Managed Agents API emulator), `demo`
(the README scenario end to end against the emulator) and
`install-egress-engine` (the egress proxy's own Python environment).
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


def main() -> None:
    CMACommand.launch_instance()


if __name__ == "__main__":
    main()
