"""Bubblewrap isolation for kernels: what a sandboxed kernel can see, write and reach.

A kernel of the kernel tier runs as

    python -I -S launcher.py [--cgroup …] [--rlimit …] -- bwrap <namespaces and mounts> -- \
        python -I -S bridge.py --listen 127.0.0.1:3128 --unix <kernel dir>/egress.sock -- \
        python -m ipykernel_launcher -f <kernel dir>/kernel.json …

- **Nobody lives there.** A user namespace of its own maps the sandbox's only
  user, `agent` (uid/gid 1000 inside), to the server's user outside: the kernel
  runs unprivileged whatever user the server runs as (root included), with no
  capabilities (`--cap-drop ALL`), no new privileges (set-uid files do not
  work), no further user namespaces (`--disable-userns`) and a terminal
  session of its own (`--new-session`: nothing it writes can reach the
  server's terminal). Files it makes in its workspace belong to the server's
  user on the host.
- **Namespaces.** Its own network namespace (only `lo`: nothing off the machine or on the host's
  loopback is reachable, and abstract Unix sockets are per namespace), its own PID namespace (it sees
  only its own processes; everything in it dies with it), IPC and UTS namespaces. `--die-with-parent`:
  the whole sandbox is killed when the server process dies.
- **Files: an allowlist.** Nothing of the host is visible unless named here: the
  system's runtime read-only (`/usr` and the usual links into it, the dynamic
  loader's cache, the CA certificates, alternatives, time zone), a generated
  `/etc/passwd`, `/etc/group` and `/etc/hosts`, the Python installation the
  kernel runs from and its site-packages (read-only), a new `/dev` and `/proc`,
  private size-bounded tmpfs at `/tmp`, `/var/tmp`, `/dev/shm` and the home
  directory `/home/agent`, the kernel's own directory (connection file and ipc
  sockets), its workspace (read-write) and the operator's
  `extra_read_only_paths`. Hidden paths (the server's data and kernel
  directories, the Jupyter runtime directory, `KernelTier.hidden_paths`) stay
  hidden even where they lie inside one of those.
- **The workspace.** Bound at `<kernel dir>.ws/work` inside (the kernel's working directory). A
  pooled kernel starts with an empty directory there; when a session takes it, the host moves the
  session's files into that directory and renames it to the session's workspace path (a bind mount
  follows the directory, not its name), see `adopt_workspace`. The session workspaces directory is
  covered by a read-only per-kernel "links" directory whose only entry, `<session id>`, points at
  the mount: the kernel reaches its workspace under the same path as the host's file tools, and no
  other session's workspace. On the host `<kernel dir>.ws/work` becomes a symlink to the workspace,
  so the paths the kernel prints work for the file tools too.
- **Egress.** The bridge listens on 127.0.0.1:3128 inside and forwards each connection to
  `<kernel dir>/egress.sock` on the host, where the egress proxy listens for this sandbox: the socket
  a request arrives on identifies the sandbox. `HTTP(S)_PROXY`/`ALL_PROXY` point at the bridge.
- **Limits.** The launcher joins the sandbox's control groups (memory, CPU, processes, freezer; see
  `limits.py`) or sets rlimits where there are none, before it executes bubblewrap.
- **Interrupts.** The launcher ignores SIGINT (bubblewrap would die of it, taking the sandbox along);
  kernels are interrupted with an `interrupt_request` on their control channel, and the bridge
  restores the default SIGINT handler for the kernel it executes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .runtime import BRIDGE_SCRIPT

LAUNCHER_SCRIPT = Path(__file__).with_name("launcher.py")
PROXY_LISTEN = ("127.0.0.1", 3128)
PROXY_URL = f"http://{PROXY_LISTEN[0]}:{PROXY_LISTEN[1]}"
# Loopback inside the sandbox is the sandbox's own (its network namespace): a server the code
# starts there is reached directly, never through the proxy (which refuses loopback anyway).
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
EGRESS_SOCKET = "egress.sock"
IPC_DIR = "ipc"  # <kernel dir>/ipc: the kernel's sockets, the one part of the kernel directory it may write
COMPANION_SUFFIX = ".ws"  # <kernel dir>.ws: host-only plumbing of one kernel (workspace mount, links, marker, etc)
# The sandbox's one user, as in the container tier's image.
SANDBOX_USER, SANDBOX_UID, SANDBOX_HOME = "agent", 1000, "/home/agent"
_NAMESPACES = [
    "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns", "--cap-drop", "ALL",
    "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
    "--hostname", "sandbox", "--new-session", "--die-with-parent",
]
# /etc entries a Python kernel and the standard tools read; nothing else of /etc (no shadow, no host keys, …).
SYSTEM_ETC = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ssl", "/etc/ca-certificates",
    "/etc/alternatives", "/etc/localtime", "/etc/timezone", "/etc/mime.types", "/etc/nsswitch.conf",
)
# Top-level names that merged-/usr systems make links into /usr (bound as they are on older layouts).
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GENERATED_ETC = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
              f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:{SANDBOX_USER}:{SANDBOX_HOME}:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}


class CrossDevice(OSError):
    """The workspace and the kernel directory are on different file systems (a rename cannot move one into the other)."""


def probe_bubblewrap(bwrap: str, timeout: float = 10.0) -> str | None:
    """None when `bwrap` can create the sandbox kernels run in (and Python runs inside); else why not."""
    path = shutil.which(bwrap)
    if path is None:
        return f"bubblewrap ({bwrap}) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    # The same namespaces and allowlist as a kernel gets: the probe fails where a kernel would.
    argv = [path, *_NAMESPACES, *system_mounts(), *python_mounts(python_paths({}), []), "--proc", "/proc",
            "--dev", "/dev", "--", sys.executable, "-I", "-S", "-c", ""]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to start: {exc}"
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[:300] or f"exit code {result.returncode}"
        return f"bubblewrap cannot create the sandbox here (user or network namespaces not permitted?): {detail}"
    return None


def proxy_environment(ca_bundle: str | None) -> dict[str, str]:
    """Environment of a sandboxed kernel: the proxy (upper and lower case) and, when given, the CA bundle."""
    env: dict[str, str] = {}
    for name in PROXY_VARIABLES:
        env[name] = env[name.lower()] = PROXY_URL
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    if ca_bundle:
        for name in CA_VARIABLES:
            env[name] = ca_bundle
    return env


def sandbox_environment() -> dict[str, str]:
    """Who the kernel is and where it may write: its own user and home, private temp directories."""
    return {
        "HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LOGNAME": SANDBOX_USER, "TMPDIR": "/tmp",
        "XDG_CACHE_HOME": f"{SANDBOX_HOME}/.cache", "MPLCONFIGDIR": f"{SANDBOX_HOME}/.config/matplotlib",
        "IPYTHONDIR": f"{SANDBOX_HOME}/.ipython",
    }


def write_generated_etc(directory: Path) -> dict[str, Path]:
    """The sandbox's /etc/passwd, /etc/group and /etc/hosts, written into `directory` (host-only)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    files = {}
    for name, text in GENERATED_ETC.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o644)
        files[name] = directory / name
    return files


def system_mounts() -> list[str]:
    """The system's runtime, read-only: /usr, its top-level links (or directories), the /etc files it reads."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_LINKS:
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    for path in SYSTEM_ETC:
        if os.path.lexists(path):
            args += ["--ro-bind-try", path, path]  # (-try: a dangling link, say /etc/localtime, is left out)
    return args


def python_paths(env: dict[str, str]) -> list[Path]:
    """The Python the kernel runs from: its installation, its site-packages, the bridge, the kernel's PYTHONPATH.

    Not the server's other sys.path entries (a source checkout of an editable
    install, the current directory): they are no part of the kernel's
    environment, and may be the server's own files. Operators share more with
    `extra_read_only_paths`.
    """
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)), str(BRIDGE_SCRIPT.parent)]
    paths += site.getsitepackages()
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [Path(os.path.realpath(p)) for p in paths if os.path.isdir(p)]


def python_mounts(paths: Iterable[Path], hidden: list[Path]) -> list[str]:
    """Read-only binds of `paths` (outermost only), and masks for hidden paths inside them."""
    args: list[str] = []
    done: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if path == Path("/") or any(path.is_relative_to(d) for d in done):
            continue
        args += ["--ro-bind", str(path), str(path)]
        done.append(path)
    return args + _mask_args(hidden, done)


def _mask_args(hidden: Iterable[Path], bound: list[Path]) -> list[str]:
    """Mask each hidden path that lies inside a bound directory: an empty read-only tmpfs, or /dev/null for a file."""
    args: list[str] = []
    remount: list[str] = []
    masked: list[Path] = []
    for path in sorted({Path(os.path.realpath(p)) for p in hidden}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(b) for b in bound) or any(path.is_relative_to(m) for m in masked):
            continue
        if path in bound or any(b.is_relative_to(path) for b in bound):
            # A bound directory that is itself hidden, or holds one: never expose it.
            raise ValueError(f"{path} is hidden from sandboxes, but a directory they must see is or lies in it")
        if path.is_dir():
            args += ["--tmpfs", str(path)]
            remount += ["--remount-ro", str(path)]
            masked.append(path)
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    return args + remount


def bwrap_argv(
    *,
    bwrap: str,
    command: list[str],
    kernel_dir: Path,
    mount_source: Path,
    mount_point: Path,
    hidden: Iterable[Path],
    generated_etc: dict[str, Path],
    links: Path | None = None,
    workspaces_dir: Path | None = None,
    ca_bundle: str | None = None,
    python: Iterable[Path] = (),
    extra_read_only: Iterable[Path] = (),
    tmp_size: int = 512 * 1024**2,
    launcher: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """The full argv of a sandboxed kernel (see the module docstring).

    `kernel_dir` is the kernel's own directory (bound read-only but for its
    `ipc` directory: the connection file, logs and egress socket are the
    host's), `mount_source`
    the host directory bound writable at `mount_point` (the kernel's working
    directory), `links` a directory bound read-only over `workspaces_dir`.
    `python` (see `python_paths`) and `extra_read_only` directories are bound
    read-only; `hidden` paths are masked wherever they lie inside those.
    `launcher` are the launcher's options (cgroups, rlimits).
    """
    egress = kernel_dir / EGRESS_SOCKET
    hidden = [Path(os.path.realpath(p)) for p in hidden]
    real = Path(os.path.realpath(kernel_dir))
    extra = [Path(os.path.realpath(p)) for p in extra_read_only]
    for path in extra:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "an extra_read_only_paths entry does not exist", str(path))
    mounts = [*system_mounts(), "--proc", "/proc", "--dev", "/dev"]
    # The private temporary file systems first: a Python environment under /tmp is bound over them.
    for path, size in (("/tmp", tmp_size), ("/var/tmp", tmp_size // 4), ("/dev/shm", tmp_size // 4), (SANDBOX_HOME, tmp_size // 4)):
        mounts += ["--size", str(size), "--tmpfs", path]
    for name, path in generated_etc.items():
        mounts += ["--ro-bind", str(path), f"/etc/{name}"]
    mounts += python_mounts([*python, *extra], hidden)
    for path in dict.fromkeys([real, kernel_dir]):  # the connection file is passed by its real path
        mounts += ["--ro-bind", str(real), str(path), "--bind", str(real / IPC_DIR), str(path / IPC_DIR)]
    mounts += ["--bind", str(mount_source), str(mount_point)]
    if links is not None and workspaces_dir is not None:
        mounts += ["--ro-bind", str(links), str(Path(os.path.realpath(workspaces_dir)))]
    if ca_bundle:
        mounts += ["--ro-bind", ca_bundle, ca_bundle]
    # bwrap's root is a tmpfs the sandbox's user owns; the mount points it made there (/etc, /home, …) would take
    # writes without bound. Read-only once everything is mounted: only the mounts above that are writable stay so.
    mounts += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return [
        sys.executable, "-I", "-S", str(LAUNCHER_SCRIPT), *launcher, "--",
        bwrap,
        *_NAMESPACES,
        *mounts,
        "--chdir", str(mount_point),
        "--unsetenv", "JPY_PARENT_PID",  # its parent poller would see pid 1 as parent and exit at once
        "--",
        sys.executable, "-I", "-S", str(BRIDGE_SCRIPT),
        "--listen", f"{PROXY_LISTEN[0]}:{PROXY_LISTEN[1]}", "--unix", str(egress),
        "--",
        *command,
    ]


# --------------------------------------------------------------------------- the workspace


def companion_paths(companion: Path) -> tuple[Path, Path, Path]:
    """(work, links, marker) of a kernel's host-only directory `<kernel dir>.ws`."""
    return companion / "work", companion / "links", companion / "adopt.json"


def adopt_workspace(companion: Path, workspace: Path, *, link: bool) -> None:
    """Make `<companion>/work` (the empty directory bound into a pooled kernel) the session's workspace.

    Moves the entries of `workspace` into it, then renames it to `workspace`
    (replacing the now empty directory): the kernel sees the files in its
    working directory, and the workspace stays at its path, a real directory.
    `work` becomes a symlink to `workspace` (the path the kernel knows its
    working directory by works on the host too) and, with `link`,
    `links/<workspace name>` points at it (inside, `links` covers the
    workspaces directory: the workspace's own path works in the kernel).

    The marker (host-only) records the workspace while entries are in
    flight, so `release_companion` can put them back after a crash. Raises
    `CrossDevice` when a rename cannot work; nothing has moved then.
    """
    mount, links, marker = companion_paths(companion)
    if os.listdir(mount):
        raise OSError(errno.ENOTEMPTY, "the pooled kernel's workspace mount is not empty", str(mount))
    workspace.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(mount).st_dev != os.stat(workspace.parent).st_dev:
        raise CrossDevice(errno.EXDEV, "the workspace and the kernel directory are on different file systems", str(workspace))
    marker.write_text(json.dumps({"workspace": str(workspace)}))
    moved = False
    try:
        for _ in range(100):  # the file tools may create entries meanwhile: move those too
            names = os.listdir(workspace) if workspace.is_dir() and not workspace.is_symlink() else []
            for name in names:
                os.rename(workspace / name, mount / name)
                moved = True
            try:
                os.rename(mount, workspace)
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        else:
            raise OSError(errno.EBUSY, "the workspace kept changing while it was being moved", str(workspace))
    except OSError as exc:
        if mount.is_dir() and not mount.is_symlink():
            _move_back(mount, workspace)
            marker.unlink(missing_ok=True)
        if exc.errno == errno.EXDEV and not moved:
            raise CrossDevice(errno.EXDEV, "the workspace and the kernel directory are on different mounts", str(workspace)) from exc
        raise
    os.symlink(workspace, mount)
    if link:
        link_workspace(links, workspace, mount)
    marker.unlink()


def link_workspace(links: Path, workspace: Path, mount: Path) -> None:
    """`links/<workspace name>` → `mount`: inside the sandbox `links` covers the workspaces directory."""
    target = links / workspace.name
    if not os.path.lexists(target):
        os.symlink(mount, target)


def _move_back(mount: Path, workspace: Path) -> None:
    """Entries of `mount` back into `workspace` (never overwriting: a clash keeps both)."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(mount):
        target = workspace / name
        if os.path.lexists(target):
            target = workspace / f"{name}.recovered-{mount.parent.name}"
        os.rename(mount / name, target)
    os.rmdir(mount)


def release_companion(companion: Path) -> None:
    """Remove a kernel's host-only directory, first putting back a workspace whose adoption was interrupted.

    `work` is a symlink once adopted (unlinked, never followed), or the pool
    kernel's scratch directory when it never served a session (removed).
    """
    mount, _, marker = companion_paths(companion)
    try:
        workspace = Path(json.loads(marker.read_text())["workspace"])
    except (OSError, ValueError, KeyError, TypeError):
        workspace = None
    if workspace is not None and mount.is_dir() and not mount.is_symlink():
        _move_back(mount, workspace)
    shutil.rmtree(companion, ignore_errors=True)
