"""`jupyter cma …`: the command line of jupyter-cma.

Subcommands: `emulator` (run the local Managed Agents API emulator) and
`demo` (the README scenario end to end against the emulator).
"""

from __future__ import annotations

from jupyter_core.application import JupyterApp

from ._version import __version__


class CMACommand(JupyterApp):
    """jupyter-cma: Claude Managed Agents sandboxes for Jupyter."""

    name = "jupyter-cma"
    version = __version__
    description = "Run Claude Managed Agents with the agent's hands on your own machines."
    subcommands = {
        "emulator": ("jupyter_cma.emulator.app.EmulatorApp", "Run the local Managed Agents API emulator."),
        "demo": ("jupyter_cma.demo.DemoApp", "Run the README scenario end to end against the emulator."),
    }

    def start(self) -> None:
        if self.subapp is None:
            print(self.description)
            print("\nSubcommands:")
            for name, (_, help_text) in self.subcommands.items():
                print(f"  jupyter cma {name:10} {help_text}")
            self.exit(0)
        super().start()


def main() -> None:
    CMACommand.launch_instance()


if __name__ == "__main__":
    main()
