"""Run as a program by tests/test_sandbox_boundary.py, as root or as a normal user: what a kernel sandbox can do.

    python tests/boundary_probe.py CONFIG.json  →  one JSON object (the facts) on stdout

CONFIG names the data directory, the session's and another session's
workspace, and host paths holding canaries the sandbox must not read. The
program starts a real KernelTier (bubblewrap, the server's own settings), takes
a kernel for the session and runs PROBE in it, then reports what the sandbox
saw next to what the host saw afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

PROBE = r'''
import ctypes, errno, json, os, subprocess
def attempt(action, *args):
    try:
        action(*args)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def read(path):
    with open(path, "rb") as f:
        f.read(1)
def listing(path):
    os.listdir(path)
libc = ctypes.CDLL(None, use_errno=True)
def syscall_result(result):
    return "ok" if result == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
MS_REMOUNT, MS_BIND = 32, 4096
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
facts = {
    "uid": os.getuid(), "gid": os.getgid(), "id_u": subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip(),
    "CapEff": status["CapEff"].strip(), "CapPrm": status["CapPrm"].strip(), "CapBnd": status["CapBnd"].strip(),
    "NoNewPrivs": status["NoNewPrivs"].strip(),
    "mount_commands": {name: subprocess.run(argv, capture_output=True).returncode for name, argv in {
        "tmpfs": ["mount", "-t", "tmpfs", "none", "/tmp"],
        "remount_rw": ["mount", "-o", "remount,bind,rw", "/"],
        "remount_usr_rw": ["mount", "-o", "remount,rw", "/usr"],
        "bind": ["mount", "--bind", "/tmp", "/usr"],
    }.items()},
    "mount_syscall_tmpfs": syscall_result(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
    "mount_syscall_remount": syscall_result(libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None)),
    # (a child process: unshare(2) refuses a multi-threaded caller such as the kernel anyway)
    "unshare_user": subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode,
    "unshare_user_mount": subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode,
    "unshare_mount": subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode,
    "reads": {name: attempt(read, path) for name, path in READS.items()},
    "listings": {name: attempt(listing, path) for name, path in LISTINGS.items()},
    "write_workspace": attempt(lambda: open("made-in-sandbox.txt", "w").write("from the sandbox")),
}
# Every directory the sandbox can see, tried for a write: only its own places may take one.
writable = []
for root, dirs, files in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
    if os.access(root, os.W_OK):
        probe = os.path.join(root, ".cma-write-probe")
        if attempt(lambda: open(probe, "w").close()) == "ok":
            writable.append(root)
            os.unlink(probe)
facts["writable"] = writable
print(json.dumps(facts))
'''


TICKER = """
import threading, time, os
def tick():
    n = 0
    while True:
        n += 1
        with open("ticks.tmp", "w") as f:
            f.write(str(n))
        os.replace("ticks.tmp", "ticks")
        time.sleep(0.001)
threading.Thread(target=tick, daemon=True).start()
"""


async def frozen_facts(kernel, workspace: Path) -> dict:
    """While the host holds the sandbox frozen (as around a file tool), does anything in it run?"""
    ex = await kernel.execute(TICKER, timeout=30)
    assert ex.status == "ok", ex.outputs
    ticks = workspace / "ticks"
    while not ticks.exists():
        await asyncio.sleep(0.01)
    with kernel.frozen():
        during = [ticks.read_text()]
        for _ in range(5):
            time.sleep(0.02)  # (blocking on purpose: the freeze holds only inside this block)
            during.append(ticks.read_text())
    after = ticks.read_text()
    for _ in range(500):
        if ticks.read_text() != after:
            break
        await asyncio.sleep(0.01)
    return {"still_while_frozen": len(set(during)) == 1, "runs_after": ticks.read_text() != after}


async def main(config: dict) -> dict:
    from jupyter_cma.sandboxes.kernel import KernelTier

    data = Path(config["data_dir"])
    tier = KernelTier(pool_size=1, kernel_dir=str(data / "kernels"), data_dir=str(data))
    try:
        await tier.start()
        assert await tier.wait_pool(60), tier.pool_status()
        kernel = await tier.take_kernel(Path(config["workspace"]))
        code = f"READS = {config['reads']!r}\nLISTINGS = {config['listings']!r}\n" + PROBE
        ex = await kernel.execute(code, timeout=120)
        out = "".join(o.get("text", "") for o in ex.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
        if ex.status != "ok":
            raise RuntimeError(f"the probe failed: {ex.outputs}")
        facts = json.loads(out)
        facts["frozen"] = await frozen_facts(kernel, Path(config["workspace"]))
        facts["kernel_dir"] = str(kernel.directory)
        facts["workdir"] = kernel.workdir
        facts["limits"] = tier.limits_status()["mechanism"]
    finally:
        await tier.close()
    made = Path(config["workspace"]) / "made-in-sandbox.txt"
    facts["host_owner_of_workspace_file"] = made.stat().st_uid if made.exists() else None
    facts["server_uid"] = os.getuid()
    return facts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))))
