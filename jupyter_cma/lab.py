"""`jupyter cma lab`: JupyterLab with jupyter-cma on the built-in emulator — offline, no key, nothing to set up.

    jupyter cma lab                 # JupyterLab in the current directory (open examples/ and run them)
    jupyter cma lab --root-dir=examples --port=8890 --no-browser

It starts the emulator (in place of Anthropic's API, with its demo brain) and then JupyterLab, with
jupyter-cma configured for the emulator's environment, the emulator's webhooks pointed at the server, and
the credentials in the server's environment only (never in a notebook). Everything it made — the
emulator's state, the server's data directory and the sandboxes' containers and volumes — goes away when
JupyterLab stops (Ctrl-C). To use a real account instead, run `jupyter lab` with the settings of
docs/settings.md: the notebooks stay the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from traitlets import Bool, Integer, Unicode
from traitlets.config import Application

from .demo import _free_port, _remove_sandboxes, stop_process


class LabApp(Application):
    """Run JupyterLab with jupyter-cma against the built-in emulator."""

    name = "jupyter-cma-lab"
    description = "JupyterLab with jupyter-cma on the built-in emulator: offline, no API key (Ctrl-C stops both)."

    port = Integer(0, help="The port JupyterLab listens on, on 127.0.0.1 (default: a free one).").tag(config=True)
    root_dir = Unicode("", help="The directory JupyterLab serves (default: the current one).").tag(config=True)
    open_browser = Bool(True, help="Open JupyterLab in a browser (default true).").tag(config=True)

    aliases = {"port": "LabApp.port", "root-dir": "LabApp.root_dir"}
    flags = {"no-browser": ({"LabApp": {"open_browser": False}}, "Do not open a browser.")}

    def start(self) -> None:
        if importlib.util.find_spec("jupyterlab") is None:
            print("JupyterLab is not installed: pip install 'jupyter_cma[examples]' (or jupyterlab)", file=sys.stderr)
            self.exit(2)
        # Stopped by a signal, it still stops JupyterLab and the emulator and removes what they made (finally).
        signal.signal(signal.SIGTERM, _exit_on_signal)
        port = self.port or _free_port()
        work = tempfile.mkdtemp(prefix="cma-lab-")
        emulator = subprocess.Popen(
            [sys.executable, "-m", "jupyter_cma", "emulator", "--webhook-url", f"http://127.0.0.1:{port}/cma/webhooks"],
            stdout=subprocess.PIPE, text=True,
        )
        lab: subprocess.Popen[bytes] | None = None
        try:
            assert emulator.stdout is not None
            info = json.loads(emulator.stdout.readline())
            env = {**os.environ, "ANTHROPIC_API_KEY": info["api_key"], "ANTHROPIC_ENVIRONMENT_KEY": info["environment_key"],
                   "ANTHROPIC_WEBHOOK_SIGNING_KEY": info["webhook_secret"]}
            print(f"emulator  {info['base_url']}  environment {info['environment_id']} (offline: no API key is used)")
            lab = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", f"--port={port}", "--ip=127.0.0.1",
                 f"--ServerApp.root_dir={os.path.abspath(self.root_dir or os.getcwd())}",
                 *(["--no-browser"] if not self.open_browser else []),
                 *(["--allow-root"] if os.geteuid() == 0 else []),
                 f"--CMAApp.data_dir={os.path.join(work, 'cma')}", f"--CMAApp.api_base_url={info['base_url']}",
                 f"--CMAApp.environment_id={info['environment_id']}"],
                env=env,
            )
            self.exit(lab.wait())
        except KeyboardInterrupt:
            pass
        finally:
            for proc in (lab, emulator):
                stop_process(proc, 20.0)
            _remove_sandboxes(os.path.join(work, "cma"))
            shutil.rmtree(work, ignore_errors=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
