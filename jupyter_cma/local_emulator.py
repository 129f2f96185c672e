"""The local emulator a server owns: `jupyter cma emulator` as a loopback subprocess (`POST cma/api/setup/emulator`).

`LocalEmulator.start()` runs the built-in emulator on 127.0.0.1 (a free port, the demo brain) and reads the
one JSON line it prints: its URL, environment id, API key and environment key. The app then points itself at
it (`CMAApp.use_local_emulator`). The process lives in a session of its own (a terminal's Ctrl-C goes to the
Jupyter server, which asks before it stops, not to the emulator), gets none of the server's environment but
what Python needs (so no credential of the server's), and writes its log into a temporary directory of its
own (mode 0700). `stop()`, called by the app's `stop_extension`, ends it (SIGTERM, then SIGKILL after the
timeout) and removes that directory. The emulator keeps its state in memory: it goes with the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .anthropic_api import Secret

_log = logging.getLogger(__name__)

# Passed to the emulator; nothing else of the server's environment (it may hold API keys).
EMULATOR_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "PYTHONPATH")
SOURCE = "local emulator"  # where the emulator's credentials come from, as `Secret.source` shows it


class EmulatorStartError(RuntimeError):
    """The emulator did not start; the message says why and where to look."""


@dataclass(frozen=True)
class EmulatorInfo:
    """What the emulator's JSON line says, the credentials held as `Secret`s."""

    base_url: str
    environment_id: str
    api_key: Secret
    environment_key: Secret


class LocalEmulator:
    """One emulator process, started once and stopped once."""

    def __init__(self, *, start_timeout: float = 30.0, args: tuple[str, ...] = (),
                 log: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> None:
        self.start_timeout = start_timeout
        self.log = log or _log  # the server's own log, where its user looks
        self.args = args  # extra `jupyter cma emulator` arguments (e.g. --model-delay 0.2)
        self.info: EmulatorInfo | None = None
        self.workdir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self.info is not None

    @property
    def url(self) -> str | None:
        return self.info.base_url if self.info is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> EmulatorInfo:
        """Start the emulator and wait for its JSON line; EmulatorStartError (after cleaning up) if it does not come."""
        if self._proc is not None:
            raise RuntimeError("a LocalEmulator starts once")
        self.workdir = Path(tempfile.mkdtemp(prefix="cma-emulator-"))  # 0700
        env = {k: os.environ[k] for k in EMULATOR_ENV_KEEP if k in os.environ}
        logfile = self.workdir / "emulator.log"
        try:
            with open(logfile, "wb") as stderr:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "jupyter_cma", "emulator", "--host", "127.0.0.1", "--port", "0", *self.args,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=str(self.workdir),
                    start_new_session=True,
                )
            assert self._proc.stdout is not None
            try:
                line = await asyncio.wait_for(self._proc.stdout.readline(), self.start_timeout)
            except asyncio.TimeoutError:
                raise EmulatorStartError(f"the local emulator did not answer within {self.start_timeout:.0f} s") from None
            if not line:
                raise EmulatorStartError("the local emulator exited as it started")
            try:
                doc = json.loads(line)
                self.info = EmulatorInfo(base_url=str(doc["base_url"]), environment_id=str(doc["environment_id"]),
                                         api_key=Secret(str(doc["api_key"]), SOURCE),
                                         environment_key=Secret(str(doc["environment_key"]), SOURCE))
            except (ValueError, KeyError, TypeError):
                raise EmulatorStartError("the local emulator's first line was not the JSON it prints") from None
        except BaseException as exc:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            if isinstance(exc, (EmulatorStartError, OSError)):
                # Its log stays out of the HTTP answer (it is the emulator's, not the user's); the server's log has it.
                self.log.error("jupyter-cma: the local emulator did not start: %s\n%s", exc, tail)
            await self.stop(5.0)
            if isinstance(exc, OSError):
                raise EmulatorStartError(f"the local emulator could not be started: {exc}") from None
            raise
        self.log.info("jupyter-cma: local emulator serving %s (pid %s)", self.info.base_url, self._proc.pid)
        return self.info

    async def stop(self, timeout: float = 10.0) -> None:
        """End the process (SIGTERM, SIGKILL after `timeout` s) and remove its directory; safe to call again."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), timeout)
            except ProcessLookupError:
                pass
            except asyncio.TimeoutError:
                self.log.warning("jupyter-cma: the local emulator did not stop within %.0f s; killing it", timeout)
                proc.kill()
                await proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
