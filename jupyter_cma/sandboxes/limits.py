"""Resource limits of kernel sandboxes: control groups where the host offers them, rlimits otherwise.

Each sandboxed kernel gets a control group of its own (`<the server's group>/
jupyter-cma-kernels/<kernel id>`, in every v1 hierarchy it needs, or in the v2
unified one) before bubblewrap starts: the launcher (`launcher.py`) joins it,
so the sandbox and everything it starts are counted there. Per group:

- memory: a hard limit with no swap on top (v1 `memory.limit_in_bytes` +
  `memory.memsw.limit_in_bytes`, v2 `memory.max` + `memory.swap.max`); past
  it the kernel is OOM-killed, and the group's `oom_kill` counter says so;
- CPU: a quota of `cpus` CPUs per period (v1 `cpu.cfs_quota_us`, v2
  `cpu.max`); a busy sandbox is throttled, `nr_throttled` counts it;
- processes: `pids.max`; a fork past it fails (EAGAIN), `pids.events` counts it;
- freezing (v1 `freezer.state`, v2 `cgroup.freeze`): every process of the
  sandbox stopped while the host works on its files (see `SandboxFreezer`).

Where no group can be made (no cgroup file system the server may write to; on
v2, a server cgroup that cannot hand memory, pids and cpu to children), the
fallback is rlimits set by the launcher: RLIMIT_DATA for memory (per process)
and RLIMIT_NPROC for processes (counted per sandbox: each runs in a user
namespace of its own; not enforced when the server runs as root, which the
kernel exempts), no CPU quota, and freezing by stopping each process with
SIGSTOP. `CgroupHost.describe()` says which of these are in force.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sizes import memory_bytes

log = logging.getLogger(__name__)

GROUP_NAME = "jupyter-cma-kernels"  # the parent of every sandbox's group, under the server's own
CPU_PERIOD_US = 100_000
FREEZE_TIMEOUT = 5.0  # seconds a sandbox may take to freeze before the host gives up on touching its files
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use: CPUs (a quota), memory in bytes (hard, no swap), processes."""

    cpus: float
    memory: int
    pids: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Limits:
        """From an instance size `{cpus, memory: '4g', pids}` (ContainerTier/KernelTier.instance_sizes)."""
        return cls(cpus=float(spec["cpus"]), memory=memory_bytes(spec["memory"]), pids=int(spec["pids"]))

    def describe(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "memory_text": human_bytes(self.memory), "pids": self.pids}


def human_bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value} B"


@dataclass
class Counters:
    """How often a sandbox ran into its limits so far (compare two readings to see what one call hit)."""

    oom_kills: int = 0
    pids_refused: int = 0
    cpu_throttled: int = 0


# --------------------------------------------------------------------------- the host's control groups


def _read_int_field(path: Path, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file (`key value` lines); 0 when absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root within the hierarchy, fs type, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            found.append((fields[4].replace("\\040", " "), fields[3], tail[0], set(tail[2].split(","))))
    return found


def _own_groups() -> dict[str, str]:
    """Controller (or "" for the v2 unified hierarchy) → this process's group path, from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                groups[name] = path
    return groups


def _under(mount: str, root: str, own: str) -> Path:
    relative = os.path.relpath(own, root) if own.startswith(root) else own.lstrip("/")
    return Path(mount) / ("" if relative == "." else relative)


class CgroupHost:
    """Where this server may make control groups for its sandboxes: v1 (a directory per controller) or v2."""

    def __init__(self, version: int, bases: dict[str, Path]) -> None:
        self.version = version
        self.bases = bases  # v1: controller → our parent group; v2: {"": our parent group}

    @classmethod
    def detect(cls, parent: str = "") -> tuple[CgroupHost | None, str | None]:
        """The host's cgroups as this server may use them, or (None, why not).

        `parent`: a v2 group to make the sandboxes' groups under (one without
        processes of its own, delegated to this server); default: the
        server's own group.
        """
        mounts, own = _mounts(), _own_groups()
        v1 = {}
        for controller in V1_CONTROLLERS:
            for point, root, kind, options in mounts:
                if kind == "cgroup" and controller in options and controller in own:
                    v1[controller] = _under(point, root, own[controller]) / GROUP_NAME
                    break
        if len(v1) == len(V1_CONTROLLERS):
            problem = _make_v1_parents(v1)
            if problem is None:
                return cls(1, v1), None
            return None, problem
        unified = next(((p, r) for p, r, kind, _ in mounts if kind == "cgroup2"), None)
        if unified is None or "" not in own:
            missing = sorted(set(V1_CONTROLLERS) - set(v1))
            return None, f"no cgroup file system offers {', '.join(missing)} to this server"
        base = Path(parent) if parent else _under(unified[0], unified[1], own[""])
        problem = _delegate_v2(base, V2_CONTROLLERS)
        if problem is None:
            problem = _delegate_v2(base / GROUP_NAME, V2_CONTROLLERS, make=True)
        if problem is not None:
            return None, problem
        return cls(2, {"": base / GROUP_NAME}), None

    def create(self, name: str, limits: Limits) -> SandboxCgroup:
        """A new group (in every hierarchy) for one sandbox, with `limits` in force. Raises OSError."""
        paths = {controller: base / name for controller, base in self.bases.items()}
        made: list[Path] = []
        try:
            for path in paths.values():
                path.mkdir(mode=0o755)
                made.append(path)
            group = SandboxCgroup(self.version, paths)
            group.apply(limits)
            return group
        except OSError:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise

    def describe(self) -> dict[str, Any]:
        return {"cgroups": f"v{self.version}", "groups": sorted({str(p) for p in self.bases.values()})}

    def remove_groups(self, names: list[str]) -> None:
        """Remove the groups of sandboxes a crashed server left (by name: the kernel directories it left).

        Only those: another server on this host makes its sandboxes' groups here too.
        """
        for name in names:
            SandboxCgroup(self.version, {c: base / name for c, base in self.bases.items() if (base / name).is_dir()}).remove()


def _make_v1_parents(bases: dict[str, Path]) -> str | None:
    for controller, base in bases.items():
        try:
            base.mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            return f"cannot make cgroup {base} ({controller}): {exc.strerror}"
        if not os.access(base / "cgroup.procs", os.W_OK):
            return f"cannot write to cgroup {base} ({controller})"
    # Children inherit these only when they are set on the parent (v1 cpusets start empty).
    memory = bases["memory"] / "memory.use_hierarchy"
    with contextlib.suppress(OSError):
        if memory.read_text().strip() == "0":
            memory.write_text("1")
    return None


def _delegate_v2(group: Path, controllers: tuple[str, ...], *, make: bool = False) -> str | None:
    """Let `group`'s children use `controllers` (v2 subtree_control); None when they can."""
    try:
        if make:
            group.mkdir(mode=0o755, exist_ok=True)
        enabled = set((group / "cgroup.subtree_control").read_text().split())
        missing = [c for c in controllers if c not in enabled]
        if missing:
            available = set((group / "cgroup.controllers").read_text().split())
            if not set(missing) <= available:
                return f"cgroup v2 group {group} does not offer {', '.join(sorted(set(missing) - available))}"
            (group / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
    except OSError as exc:
        hint = (" (it holds processes of its own: set KernelTier.cgroup_parent to a group delegated to this "
                "server that holds none)") if exc.errno == errno.EBUSY else ""
        return f"cannot hand {', '.join(controllers)} to the children of cgroup v2 group {group}: {exc.strerror}{hint}"
    return None


# --------------------------------------------------------------------------- one sandbox's group


class SandboxCgroup:
    """One sandbox's control group(s): its limits, counters and freezer."""

    def __init__(self, version: int, paths: dict[str, Path]) -> None:
        self.version = version
        self.paths = paths

    def _path(self, controller: str) -> Path:
        return self.paths[controller if self.version == 1 else ""]

    @property
    def procs_files(self) -> list[str]:
        """Where the launcher writes its pid to join (each v1 hierarchy, or the v2 group)."""
        return [str(p / "cgroup.procs") for p in self.paths.values()]

    def apply(self, limits: Limits) -> None:
        """Put `limits` in force (also on a group that already runs a sandbox). Raises OSError."""
        if self.version == 1:
            memory = self._path("memory")
            swap = memory / "memory.memsw.limit_in_bytes"  # present only where swap is accounted
            current = int((memory / "memory.limit_in_bytes").read_text())
            # memsw may never be below the memory limit: raise it first when growing, after when shrinking.
            order = ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"] if limits.memory > current else \
                ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            for name in order:
                if name == "memory.limit_in_bytes" or swap.exists():
                    (memory / name).write_text(str(limits.memory))
            (self._path("cpu") / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self._path("cpu") / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * CPU_PERIOD_US)))
            (self._path("pids") / "pids.max").write_text(str(limits.pids))
        else:
            group = self._path("")
            (group / "memory.max").write_text(str(limits.memory))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting on this host
                (group / "memory.swap.max").write_text("0")
            (group / "cpu.max").write_text(f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            (group / "pids.max").write_text(str(limits.pids))

    def counters(self) -> Counters:
        if self.version == 1:
            memory = self._path("memory")
            oom = _read_int_field(memory / "memory.oom_control", "oom_kill")
        else:
            oom = _read_int_field(self._path("") / "memory.events", "oom_kill")
        return Counters(
            oom_kills=oom,
            pids_refused=_read_int_field(self._path("pids") / "pids.events", "max"),
            cpu_throttled=_read_int_field(self._path("cpu") / "cpu.stat", "nr_throttled"),
        )

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths.values():
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
        return found

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (every process stopped, none can start) or thaw the group; waits until it is so. Raises OSError."""
        if self.version == 1:
            state = self._path("freezer") / "freezer.state"
            state.write_text("FROZEN" if frozen else "THAWED")
            want = "FROZEN" if frozen else "THAWED"
            read = lambda: state.read_text().strip() == want  # noqa: E731
        else:
            group = self._path("")
            (group / "cgroup.freeze").write_text("1" if frozen else "0")
            read = lambda: _read_int_field(group / "cgroup.events", "frozen") == int(frozen)  # noqa: E731
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while not read():
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "the sandbox did not freeze in time")
            time.sleep(0.0005)

    def remove(self) -> None:
        """Remove the group once its processes are gone (killing any that are left)."""
        for _ in range(100):
            left = self.pids()
            if not left:
                break
            with contextlib.suppress(OSError):
                self.set_frozen(False)  # a frozen process cannot die
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for path in self.paths.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last exits are still being accounted


# --------------------------------------------------------------------------- freezing without a cgroup


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                found |= {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
    return found


def _descendants(root: int) -> set[int]:
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        for child in _children(pid) - seen:
            seen.add(child)
            todo.append(child)
    return seen


def _stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        return raw[raw.rindex(")") + 2] in "TtZX"
    return True  # gone


def stop_tree(root: int) -> set[int]:
    """SIGSTOP every descendant of `root` (the sandbox: bubblewrap's children), until none runs or forks.

    A stopped process can neither fork nor wake another, so scanning again
    until a scan finds nothing new running leaves the whole tree stopped.
    """
    stopped: set[int] = set()
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while True:
        running = {p for p in _descendants(root) if p not in stopped or not _stopped(p)}
        if not running:
            return stopped
        if time.monotonic() > deadline:
            continue_tree(stopped)
            raise OSError(errno.ETIMEDOUT, "the sandbox's processes did not all stop in time")
        for pid in running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        time.sleep(0.0005)


def continue_tree(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(cgroup: SandboxCgroup | None, root_pid: int | None) -> Iterator[None]:
    """Nothing in the sandbox runs inside this block: its cgroup frozen, or (no cgroup) its processes stopped.

    Raises OSError (nothing is left frozen) when the sandbox cannot be frozen.
    """
    if cgroup is not None:
        cgroup.set_frozen(True)
        try:
            yield
        finally:
            cgroup.set_frozen(False)
        return
    if root_pid is None:
        raise OSError(errno.ESRCH, "the sandbox has no process to stop")
    stopped = stop_tree(root_pid)
    try:
        yield
    finally:
        continue_tree(stopped)
