"""A JupyterLab server with jupyter-cma as a subprocess, started the way `jupyter cma lab` starts one.

The server runs under a non-root base URL (`/cma-test/`), as it does behind JupyterHub (`/user/<name>/`), so
every browser test also proves the extension builds its URLs from the server's base URL. Its configuration,
runtime and workspace directories are temporary; the data directories are left alone so the extension
installed in the virtualenv (`<prefix>/share/jupyter/labextensions`) is found as a user's JupyterLab finds it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from jupyter_cma.demo import stop_process

#: The base URL every test server is served under: not "/", to prove the extension works under a prefix.
BASE_URL = "/cma-test/"

#: JupyterLab's "get notified about official Jupyter news?" toast covers the screenshots' bottom right.
PAGE_CONFIG = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabServer:
    """A running JupyterLab server, its token, and its directories."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    root_dir: Path
    cma_data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        """The server's base URL, e.g. http://127.0.0.1:8888/cma-test/."""
        return f"http://127.0.0.1:{self.port}{BASE_URL}"

    def lab_url(self, path: str = "lab") -> str:
        """A page of the server, logging in with the token (the server sets its login cookie and drops it)."""
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.token}"

    def http(self) -> httpx.Client:
        """A client of the server authenticated with its token (no XSRF check for token requests)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=60)

    def api(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Call `{base_url}cma/api/<path>` and return its JSON; fail with the server's message on a non-2xx."""
        with self.http() as http:
            r = http.request(method, f"cma/api/{path}", json=body, params=params or None)
        if r.status_code >= 400:
            raise AssertionError(f"{method} cma/api/{path} -> {r.status_code}: {r.text}")
        return r.json() if r.content else None

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for a failure message."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_lab_server(work: Path, *, port: int | None = None, env: dict[str, str] | None = None,
                     cma_args: list[str] | None = None, timeout: float = 90.0) -> LabServer:
    """Start `python -m jupyterlab` in `work` (its config, runtime, workspaces, root and cma data dirs) and
    wait until both Jupyter's and jupyter-cma's REST APIs answer."""
    port = port or free_port()
    token = secrets.token_hex(16)
    config_dir, runtime_dir, workspaces, root_dir, cma_data = (work / d for d in ("config", "runtime", "workspaces", "root", "cma"))
    for d in (config_dir / "labconfig", runtime_dir, workspaces, root_dir, cma_data):
        d.mkdir(parents=True, exist_ok=True)
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(PAGE_CONFIG))
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    server_env.update({"JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(runtime_dir), **(env or {})})
    log_path = work / "server.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.base_url={BASE_URL}", f"--ServerApp.root_dir={root_dir}",
           f"--LabApp.workspaces_dir={workspaces}",
           # window.jupyterapp: the tests run JupyterLab commands by id where the UI path is not what they test.
           "--LabApp.expose_app_in_browser=True", f"--CMAApp.data_dir={cma_data}",
           *(["--allow-root"] if os.geteuid() == 0 else []), *(cma_args or [])]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=server_env, stdout=log, stderr=subprocess.STDOUT, cwd=root_dir)
    server = LabServer(proc=proc, port=port, token=token, root_dir=root_dir, cma_data_dir=cma_data, log_path=log_path)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with server.http() as http:
                if http.get("api/status").status_code == 200 and http.get("cma/api/status").status_code == 200:
                    return server
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    stop_lab_server(server)
    raise RuntimeError(f"JupyterLab did not answer on {server.url} within {timeout}s ({last}):\n{server.log_tail()}")


def stop_lab_server(server: LabServer) -> None:
    """Stop the server (SIGTERM, as Ctrl-C's confirmation would block), then remove the containers and volumes
    its container tier made, as `jupyter cma lab` does when it stops."""
    stop_process(server.proc, 30.0)
    if server.cma_data_dir.exists():
        subprocess.run([sys.executable, "-m", "jupyter_cma", "cleanup", "--yes", "--volumes", f"--data-dir={server.cma_data_dir}"],
                       capture_output=True, timeout=120)
