"""The kernel sandbox's boundary, attacked from inside, with the server run as root and as a normal user.

Each run is a real server-side KernelTier in a process of its own (tests/boundary_probe.py), as root
(how `make demo` and CI run it) and as the unprivileged user `nobody`, against real bubblewrap. The
probe in the sandbox tries mounts of every kind, reads of the host's secrets, of the server's files and
of another session's workspace, and a write into every directory it can see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_kernel_tier import require_bwrap

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def host() -> Iterator[dict[str, Path]]:
    """A server's files in a directory any user can reach, and canaries in the host's private places."""
    require_bwrap()
    base = Path(tempfile.mkdtemp(prefix="cma-boundary-"))
    base.chmod(0o755)
    tag = uuid.uuid4().hex[:8]
    data = base / "cma"
    paths = {
        "base": base, "data": data, "workspace": data / "workspaces" / "sesn_mine",
        "other_workspace": data / "workspaces" / "sesn_other", "notebooks": base / "notebooks",
        "root_canary": Path(f"/root/.cma-canary-{tag}"), "home_canary": Path(f"/home/cma-canary-{tag}"),
    }
    for key in ("workspace", "other_workspace", "notebooks"):
        paths[key].mkdir(parents=True)
    (data / "secrets").mkdir()
    (data / "cma.sqlite3").write_text("the database")
    (data / "secrets" / "secrets.json").write_text('{"token": "s3cret"}')
    (paths["other_workspace"] / "private.txt").write_text("another session's file")
    (paths["notebooks"] / "analysis.ipynb").write_text("{}")  # the Jupyter server's root directory
    (base / "webhook-secret").write_text("whsec_outside_the_data_dir")  # a *_file secret kept elsewhere
    (base / "webhook-secret").chmod(0o600)
    paths["root_canary"].write_text("root's private file")
    paths["home_canary"].mkdir()
    (paths["home_canary"] / "notes.txt").write_text("a user's notebook data")
    try:
        yield paths
    finally:
        paths["root_canary"].unlink(missing_ok=True)
        shutil.rmtree(paths["home_canary"], ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def probe(host: dict[str, Path], *, as_nobody: bool) -> dict:
    """Run tests/boundary_probe.py (a KernelTier and the probe in one of its sandboxes) as root or as nobody."""
    base, data = host["base"], host["data"]
    config = {
        "data_dir": str(data), "workspace": str(host["workspace"]),
        "reads": {
            "root_canary": str(host["root_canary"]), "home_canary": str(host["home_canary"] / "notes.txt"),
            "shadow": "/etc/shadow", "database": str(data / "cma.sqlite3"),
            "secrets": str(data / "secrets" / "secrets.json"), "secret_file": str(base / "webhook-secret"),
            "other_workspace": str(host["other_workspace"] / "private.txt"),
            "server_root_dir": str(host["notebooks"] / "analysis.ipynb"),
            "docker_socket": "/var/run/docker.sock", "machine_id": "/etc/machine-id",
        },
        "listings": {"root": "/root/.cma-missing", "home_canary": str(host["home_canary"]), "docker": "/var/lib/docker",
                     "server_root_dir": str(host["notebooks"]), "other_workspace": str(host["other_workspace"]),
                     "secrets_dir": str(data / "secrets")},
    }
    (base / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "HOME": str(base / "home")}
    argv = [sys.executable, str(REPO / "tests" / "boundary_probe.py"), str(base / "config.json")]
    if as_nobody:
        for path in (base, host["home_canary"]):
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)
        os.chown(base / "webhook-secret", NOBODY, NOBODY)
        # The system's Python with this environment's packages: the test environment's own interpreter may live
        # where only root can reach it (a Python built under /root), which no normal user's server would run from.
        env["PYTHONPATH"] = os.pathsep.join([sysconfig.get_paths()["purelib"], str(REPO)])
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, *argv[1:]]
        reach = subprocess.run([*argv[:5], "-c", "import jupyter_cma.sandboxes.kernel"], env=env,
                               capture_output=True, text=True)
        assert reach.returncode == 0, (
            f"the checkout and its .venv must be readable by other users for this test (run as uid {NOBODY}): {reach.stderr}")
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("server_user", ["root", "nobody"])
def test_a_kernel_sandbox_sees_an_allowlist_as_an_unprivileged_user(host, server_user):
    if server_user == "root" and os.geteuid() != 0:
        pytest.skip("the root case needs a test run as root (CI runs as root)")
    facts = probe(host, as_nobody=server_user == "nobody")
    assert facts["server_uid"] == (0 if server_user == "root" else NOBODY)

    # Nobody lives there: an unprivileged user with no capabilities, whatever user the server runs as.
    assert facts["uid"] == facts["gid"] == 1000 and facts["id_u"] == "1000"
    assert facts["CapEff"] == facts["CapPrm"] == facts["CapBnd"] == "0000000000000000"
    assert facts["NoNewPrivs"] == "1"
    # No mount of any kind, and no namespace to make one in.
    assert all(code != 0 for code in facts["mount_commands"].values()), facts["mount_commands"]
    assert facts["mount_syscall_tmpfs"] == facts["mount_syscall_remount"] == "EPERM"
    assert facts["unshare_user"] != 0 and facts["unshare_user_mount"] != 0 and facts["unshare_mount"] != 0

    # Nothing of the host's private places, the server's files or other sessions is readable.
    assert set(facts["reads"].values()) == {"ENOENT"}, facts["reads"]
    assert set(facts["listings"].values()) == {"ENOENT"}, facts["listings"]

    # Writable: the workspace, the kernel's own ipc sockets and private in-memory directories, nothing else.
    own = [facts["workdir"], facts["kernel_dir"] + "/ipc", "/tmp", "/var/tmp", "/dev/shm", "/home/agent"]
    stray = [d for d in facts["writable"] if not any(d == o or d.startswith(o + "/") for o in own)]
    assert stray == [], stray
    assert facts["workdir"] in facts["writable"] and "/tmp" in facts["writable"]
    assert facts["write_workspace"] == "ok"
    # ... and what it writes there belongs to the server's user on the host.
    assert facts["host_owner_of_workspace_file"] == facts["server_uid"]
    assert (host["workspace"] / "made-in-sandbox.txt").read_text() == "from the sandbox"

    # The host is as it was.
    assert (host["data"] / "cma.sqlite3").read_text() == "the database"
    assert sorted(os.listdir(host["other_workspace"])) == ["private.txt"]
    # Frozen by the host (as around every file tool): nothing in the sandbox runs until it is thawed; by the
    # cgroup freezer as root, by stopping each process as a user who cannot make groups.
    assert facts["frozen"] == {"still_while_frozen": True, "runs_after": True}
    # Limits: control groups as root (this host offers v1 or v2); rlimits for a user who cannot make groups.
    assert facts["limits"] == "rlimits" if server_user == "nobody" else facts["limits"] in ("v1", "v2")
