"""Bubblewrap isolation for kernels: what a sandboxed kernel can see, write and reach.

A kernel of the kernel tier runs as

    sh -c 'trap "" INT; exec "$@"' sh bwrap <namespaces and mounts> -- \
        python -I -S bridge.py --listen 127.0.0.1:3128 --unix <kernel dir>/egress.sock -- \
        python -m ipykernel_launcher -f <kernel dir>/kernel.json …

- **Namespaces.** Its own network namespace (only `lo`: nothing off the machine or on the host's
  loopback is reachable, and abstract Unix sockets are per namespace), its own PID namespace (it sees
  only its own processes; everything in it dies with it) and IPC namespace. `--die-with-parent`: the
  whole sandbox is killed when the server process dies.
- **Files.** The host is visible READ-ONLY (`--ro-bind / /`), with a new `/dev`, a new `/proc` and a
  private `/tmp`. Hidden paths (the kernel directory root, the server's data directory, `/run` with
  its sockets, …) are replaced by empty read-only tmpfs mounts (files by `/dev/null`). Writable: the
  kernel's own directory (connection file and ipc sockets) and its workspace mount, nothing else.
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
- **Interrupts.** jupyter_client interrupts a kernel with SIGINT to its process group. bwrap dies
  of SIGINT (taking the sandbox with it), so it starts with SIGINT ignored (the `trap`); the bridge
  restores the default for the kernel it executes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .runtime import BRIDGE_SCRIPT

PROXY_LISTEN = ("127.0.0.1", 3128)
PROXY_URL = f"http://{PROXY_LISTEN[0]}:{PROXY_LISTEN[1]}"
# Loopback inside the sandbox is the sandbox's own (its network namespace): a server the code
# starts there is reached directly, never through the proxy (which refuses loopback anyway).
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
EGRESS_SOCKET = "egress.sock"
COMPANION_SUFFIX = ".ws"  # <kernel dir>.ws: host-only plumbing of one kernel (workspace mount, links, marker)
# SIGINT ignored for bwrap (and its reaper); an ignored signal stays ignored across exec.
_IGNORE_SIGINT = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh"]
_NAMESPACES = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
_BASE_MOUNTS = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]


class CrossDevice(OSError):
    """The workspace and the kernel directory are on different file systems (a rename cannot move one into the other)."""


def probe_bubblewrap(bwrap: str, timeout: float = 10.0) -> str | None:
    """None when `bwrap` can create the sandbox kernels run in (and Python runs inside); else why not."""
    path = shutil.which(bwrap)
    if path is None:
        return f"bubblewrap ({bwrap}) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    # The same re-binds as a kernel gets, so a Python installed under /tmp (a venv in a checkout there) probes right.
    rebinds = _rebind_args([Path("/tmp")], [], python_paths(dict(os.environ)))
    argv = [path, *_NAMESPACES, *_BASE_MOUNTS, *rebinds, "--", sys.executable, "-I", "-S", "-c", ""]
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


def _mask_args(hidden: Iterable[Path]) -> tuple[list[str], list[str], list[Path]]:
    """bwrap arguments hiding `hidden` (outermost first, nested ones skipped), those remounting them read-only, the masked directories."""
    args: list[str] = []
    remount: list[str] = []
    done: list[Path] = []
    for path in sorted({Path(os.path.realpath(p)) for p in hidden}, key=lambda p: len(p.parts)):
        if path == Path("/") or any(path.is_relative_to(d) for d in done):
            continue
        if path.is_dir():
            args += ["--tmpfs", str(path)]
            remount += ["--remount-ro", str(path)]
            done.append(path)
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    return args, remount, done


def python_paths(env: dict[str, str]) -> list[Path]:
    """Directories the sandboxed Python needs: its installation, the bridge, this process's sys.path, PYTHONPATH."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)), str(BRIDGE_SCRIPT.parent)]
    paths += [p for p in sys.path if p]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [Path(os.path.realpath(p)) for p in paths]


def _rebind_args(masked: list[Path], hidden: list[Path], needed: Iterable[Path]) -> list[str]:
    """Read-only binds bringing back the `needed` directories that a mask (or the private /tmp) covers.

    Never a mask's root itself, nor a directory holding a hidden path.
    """
    args: list[str] = []
    done: list[Path] = []
    for path in sorted(set(needed), key=lambda p: len(p.parts)):
        if path in masked or not any(path.is_relative_to(m) for m in masked) or not path.is_dir():
            continue
        if any(path.is_relative_to(d) for d in done) or any(h.is_relative_to(path) for h in hidden):
            continue
        args += ["--ro-bind", str(path), str(path)]
        done.append(path)
    return args


def bwrap_argv(
    *,
    bwrap: str,
    command: list[str],
    kernel_dir: Path,
    mount_source: Path,
    mount_point: Path,
    hidden: Iterable[Path],
    links: Path | None = None,
    workspaces_dir: Path | None = None,
    ca_bundle: str | None = None,
    read_only_files: Iterable[Path] = (),
    needed: Iterable[Path] = (),
) -> list[str]:
    """The full argv of a sandboxed kernel (see the module docstring).

    `kernel_dir` is the kernel's own directory (bound writable), `mount_source`
    the host directory bound writable at `mount_point` (the kernel's working
    directory), `links` a directory bound read-only over `workspaces_dir`.
    `read_only_files` (inside `kernel_dir`) are bound read-only over themselves;
    `needed` directories (Python's, see `python_paths`) stay readable even
    under /tmp or a hidden path.
    """
    egress = kernel_dir / EGRESS_SOCKET
    hidden = [Path(os.path.realpath(p)) for p in hidden]
    masks, remount, masked = _mask_args(hidden)
    binds = _rebind_args([Path("/tmp"), *masked], hidden, needed)
    real = Path(os.path.realpath(kernel_dir))
    for path in dict.fromkeys([real, kernel_dir]):  # the connection file is passed by its real path
        binds += ["--bind", str(real), str(path)]
    for path in read_only_files:
        binds += ["--ro-bind", str(path), str(path)]
    binds += ["--bind", str(mount_source), str(mount_point)]
    if links is not None and workspaces_dir is not None:
        covered = Path(os.path.realpath(workspaces_dir))
        # (bwrap can make the mount point in a mask, not in the read-only host)
        if covered.is_dir() or any(covered.is_relative_to(m) for m in (Path("/tmp"), *masked)):
            binds += ["--ro-bind", str(links), str(covered)]
    if ca_bundle:
        binds += ["--ro-bind", ca_bundle, ca_bundle]  # readable even when it lives under a hidden path
    net = Path("/sys/class/net")
    if net.is_dir():
        # A bind of the host's /sys lists the host's interfaces; the sandbox's namespace has only lo.
        masks += ["--tmpfs", str(net), "--symlink", "../../devices/virtual/net/lo", str(net / "lo")]
        remount += ["--remount-ro", str(net)]
    return [
        *_IGNORE_SIGINT,
        bwrap,
        *_NAMESPACES,
        *_BASE_MOUNTS,
        *masks,
        *binds,
        *remount,
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
