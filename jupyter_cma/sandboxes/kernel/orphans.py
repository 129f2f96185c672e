"""Kernels a server left behind: found by their directories and their environment marker in /proc, and killed.

Every kernel directory holds `owner.json` (the server process that started
it) and `kernel.pid`; the kernel and everything it spawns carry
`JUPYTER_CMA_KERNEL_DIR=<its directory>` in their environment. A sandboxed
kernel dies with the server (`--die-with-parent`); besides, when a server
starts, kernels left in `kernel_dir` by a server process that no longer runs
are killed (with their children) and their directories removed
(`clean_orphans`, called by `KernelTier.start`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .. import isolation as iso
from .process import _LIVE_DIRS, ENV_MARKER, _kill_group, _remove_kernel_dirs

_KERNEL_DIR_NAME = re.compile(r"^[0-9a-f]{12}$")
_COMPANION_NAME = re.compile(r"^([0-9a-f]{12})" + re.escape(iso.COMPANION_SUFFIX) + "$")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int) -> bool:
    if Path("/proc").is_dir():
        fields = _proc_stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _marked_processes() -> dict[str, set[int]]:
    """Kernel directory → pids of this user's processes whose environment names it (kernels and their children)."""
    found: dict[str, set[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    needle = f"{ENV_MARKER}=".encode()
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if needle not in environ:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(needle):
                found.setdefault(var[len(needle):].decode(errors="replace"), set()).add(int(entry.name))
    return found


def _is_our_kernel(pid: int, directory: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [a.decode(errors="replace") for a in argv]
    return any("ipykernel_launcher" in a for a in text) and any(a.startswith(str(directory)) for a in text)


def clean_orphans(kernel_dir: Path, *, wait: float = 5.0) -> list[dict[str, Any]]:
    """Kill kernels (and their children) left in `kernel_dir` by a server process that is gone; remove their dirs.

    A directory is left over when the server process named in its owner.json
    no longer runs (same pid and start time), or it is this process but no
    live tier here holds it. Directories of another live server are kept.
    Waits at most `wait` seconds in all for the killed processes to exit.
    A sandboxed kernel's companion directory (`<dir>.ws`) goes with it, after
    a workspace whose move into the kernel was interrupted is put back.
    """
    if not kernel_dir.is_dir():
        return []
    me = os.getpid()
    leftover: list[Path] = []
    entries = sorted(kernel_dir.iterdir())
    for entry in entries:
        # A companion whose kernel directory is gone (a crash between removing the two) is left over too.
        match = _COMPANION_NAME.match(entry.name)
        if match and not (kernel_dir / match.group(1)).exists() and str(kernel_dir / match.group(1)) not in _LIVE_DIRS:
            with contextlib.suppress(OSError):
                iso.release_companion(entry)
    for directory in entries:
        if not _KERNEL_DIR_NAME.match(directory.name) or not directory.is_dir() or str(directory) in _LIVE_DIRS:
            continue
        owner: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            owner = json.loads((directory / "owner.json").read_text())
        server = owner.get("server_pid")
        if isinstance(server, int) and server != me and _alive(server) and _start_time(server) == owner.get("server_start"):
            continue  # another server that still runs owns it
        leftover.append(directory)
    if not leftover:
        return []
    marked = _marked_processes()
    victims: dict[Path, set[int]] = {}
    for directory in leftover:
        pids = set(marked.get(str(directory), set()))
        with contextlib.suppress(OSError, ValueError):
            pid = int((directory / "kernel.pid").read_text().strip())
            if _alive(pid) and _is_our_kernel(pid, directory):
                pids.add(pid)
        for pid in sorted(pids):
            _kill_group(pid)
        victims[directory] = pids
    everyone = set().union(*victims.values())
    deadline = time.monotonic() + wait
    while any(_alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.02)
    for directory in leftover:
        companion = directory.with_name(directory.name + iso.COMPANION_SUFFIX)
        _remove_kernel_dirs(directory, companion if os.path.lexists(companion) else None)
    return [{"dir": d.name, "killed": sorted(victims[d])} for d in leftover]


def kernel_processes(kernel_dir: Path) -> dict[str, set[int]]:
    """Live processes that belong to kernels under `kernel_dir` (by their environment marker)."""
    prefix = str(kernel_dir.absolute()) + os.sep
    return {d: pids for d, pids in _marked_processes().items() if d.startswith(prefix) and any(_alive(p) for p in pids)}
