"""Kernel isolation with real kernels under real bubblewrap (and the real emulator where a session is needed).

Nothing here connects anywhere but loopback and Unix sockets, except the one
attempt to reach 1.1.1.1 from inside a sandbox, which must fail at once
(asserted by its errno, not its time). Without a working bwrap these tests
are skipped locally and fail in CI (`CI=true`).
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_cma.sandboxes.base import ClaimedItem, EgressHook
from jupyter_cma.sandboxes.isolation import CA_VARIABLES, EGRESS_SOCKET, PROXY_URL
from jupyter_cma.sandboxes.kernel import Kernel, KernelStartError, KernelTier, clean_orphans, kernel_processes
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    Harness,
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config,
)
from tests.test_dispatch import python as script_python
from tests.test_dispatch import script as script_message
from tests.test_kernel_tier import Session, host_pid_of, pid_alive, py, require_bwrap, results, text

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def bwrap() -> None:
    require_bwrap()


async def run(kernel: Kernel, code: str) -> Any:
    """Run `code` in the kernel; the value of its last expression (a Python literal)."""
    ex = await kernel.execute(code, timeout=60)
    assert ex.status == "ok", ex.outputs
    results = [o for o in ex.outputs if o["output_type"] == "execute_result"]
    return ast.literal_eval(results[-1]["data"]["text/plain"]) if results else None


ATTEMPT = '''
import errno, os
def attempt(action, *args):
    """What happens: "ok", or the errno name of the OSError it raises."""
    try:
        action(*args)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def write(path):
    with open(path, "w") as f:
        f.write("from the sandbox")
def read(path):
    with open(path) as f:
        f.read()
'''


class HttpRecorder:
    """A minimal HTTP server on a Unix socket (what the egress proxy will be): records request lines, answers 200."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self, path: str | Path) -> HttpRecorder:
        self.server = await asyncio.start_unix_server(self._handle, path=str(path))
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().rstrip("\r\n")
        self.lines.append(line)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if line.startswith("CONNECT "):
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        else:
            body = f"answered by {self.label}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


FETCH = '''
import urllib.request, urllib.error
def fetch(url):
    """(status, body) of a GET through the environment's proxy settings; (None, error) when there is no answer."""
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return None, str(exc)
'''


# --------------------------------------------------------------------------- network


async def test_the_kernel_has_no_network_but_its_own_loopback(bwrap, tmp_path):
    # A server on the host's loopback: the sandbox's 127.0.0.1 is another one, where nothing listens.
    connections: list[Any] = []
    host_server = await asyncio.start_server(lambda r, w: connections.append(w), "127.0.0.1", 0)
    host_port = host_server.sockets[0].getsockname()[1]
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"))
    try:
        await tier.start()
        assert tier.effective_isolation == "bubblewrap"
        kernel = await tier.take_kernel()
        assert kernel.isolation == "bubblewrap"
        facts = await run(kernel, ATTEMPT + f'''
import socket
def connect(host, port):
    socket.create_connection((host, port), timeout=5).close()
{{
    "internet": attempt(connect, "1.1.1.1", 80),
    "host_loopback": attempt(connect, "127.0.0.1", {host_port}),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "sys_visible": os.path.exists("/sys"),
}}''')
    finally:
        await tier.close()
        host_server.close()
    assert facts["internet"] == "ENETUNREACH"  # fails at once: no route exists in the namespace
    assert facts["host_loopback"] == "ECONNREFUSED" and connections == []
    assert facts["interfaces"] == ["lo"]  # the namespace's own devices (netlink), not a file
    assert facts["sys_visible"] is False  # not on the allowlist: nothing of the host's devices or cgroups


# --------------------------------------------------------------------------- files


def data_dir_layout(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A server data directory: database, secrets, this session's and another session's workspace."""
    data = tmp_path / "cma"
    mine, other = data / "workspaces" / "sesn_mine", data / "workspaces" / "sesn_other"
    for directory in (mine, other, data / "secrets"):
        directory.mkdir(parents=True)
    (data / "cma.sqlite3").write_text("the database")
    (data / "secrets" / "key").write_text("s3cret")
    (other / "private.txt").write_text("another session's file")
    (mine / "input.txt").write_text("from the host")
    return data, data / "kernels", mine, other


async def test_the_kernel_writes_its_workspace_only_and_sees_no_other(bwrap, tmp_path):
    data, kernel_dir, mine, other = data_dir_layout(tmp_path)
    marker = f"sandbox-only-{uuid.uuid4().hex}"
    tier = KernelTier(pool_size=1, kernel_dir=str(kernel_dir), data_dir=str(data))
    try:
        await tier.start()
        assert await tier.wait_pool(60)
        (pooled,) = tier.pooled
        kernel = await tier.take_kernel(mine)
        assert kernel is pooled  # the warm kernel got the session's workspace
        facts = await run(kernel, ATTEMPT + f'''
mine, other, data = {str(mine)!r}, {str(other)!r}, {str(data)!r}
{{
    "read_other_workspace": attempt(read, other + "/private.txt"),
    "read_database": attempt(read, data + "/cma.sqlite3"),
    "read_secret": attempt(read, data + "/secrets/key"),
    "cwd_files": sorted(os.listdir(".")),
    "input": open("input.txt").read(),
    "write_relative": attempt(write, "relative.txt"),
    "write_by_workspace_path": attempt(write, mine + "/absolute.txt"),
    "write_tmp": attempt(write, "/tmp/{marker}"),
    "write_etc": attempt(write, "/etc/{marker}"),
    "write_usr": attempt(write, {os.path.dirname(sys.executable)!r} + "/{marker}"),
    "write_database": attempt(write, data + "/cma.sqlite3"),
    "write_data_dir": attempt(write, data + "/{marker}"),
    "write_kernel_dir": attempt(write, {str(kernel_dir)!r} + "/{marker}"),
    "write_owner_file": attempt(write, {str(kernel.directory / "owner.json")!r}),
    "write_other_workspace": attempt(write, other + "/private.txt"),
    "make_other_workspace": attempt(os.makedirs, other + "/new"),
    "workspaces_visible": sorted(os.listdir(data + "/workspaces")),
    "run_visible": os.path.exists("/run"),
}}''')
        # The path the kernel calls its working directory leads to the workspace on the host too.
        cwd = await run(kernel, "import os\nos.getcwd()")
        assert Path(cwd).resolve() == mine.resolve()
    finally:
        await tier.close()

    assert facts["cwd_files"] == ["input.txt"] and facts["input"] == "from the host"
    assert facts["write_relative"] == facts["write_by_workspace_path"] == facts["write_tmp"] == "ok"
    for name in ("write_etc", "write_usr", "write_owner_file", "make_other_workspace"):
        assert facts[name] == "EROFS", name
    # The data directory lies under /tmp here, which the sandbox has a private tmpfs of: a write there lands in
    # that tmpfs, never on the host (checked below); the server's own files are not even visible.
    # Other sessions' workspaces and the server's data are not even visible.
    assert facts["write_other_workspace"] == facts["read_other_workspace"] == "ENOENT"
    assert facts["read_database"] == facts["read_secret"] == "ENOENT"
    assert facts["workspaces_visible"] == ["sesn_mine"]
    assert facts["run_visible"] is False

    # On the host: the workspace got the files and stays a real directory; nothing else changed.
    assert not mine.is_symlink() and sorted(p.name for p in mine.iterdir()) == ["absolute.txt", "input.txt", "relative.txt"]
    assert (mine / "relative.txt").read_text() == "from the sandbox"
    assert (other / "private.txt").read_text() == "another session's file" and sorted(os.listdir(other)) == ["private.txt"]
    assert (data / "cma.sqlite3").read_text() == "the database"
    assert sorted(os.listdir(data)) == ["cma.sqlite3", "kernels", "secrets", "workspaces"]
    assert not Path("/tmp", marker).exists() and not Path("/etc", marker).exists()
    assert list(kernel_dir.iterdir()) == []  # kernel directories and their companions are gone


async def test_the_workspace_persists_across_pooled_kernels(bwrap, tmp_path):
    data, kernel_dir, mine, _ = data_dir_layout(tmp_path)
    tier = KernelTier(pool_size=1, kernel_dir=str(kernel_dir), data_dir=str(data))
    try:
        await tier.start()
        for round_ in range(3):
            assert await tier.wait_pool(60)
            kernel = await tier.take_kernel(mine)
            seen = await run(kernel, f"import os\nopen('round-{round_}.txt', 'w').write('x')\nsorted(os.listdir('.'))")
            assert seen == sorted(["input.txt", *(f"round-{i}.txt" for i in range(round_ + 1))])
            await tier.release_kernel(kernel)  # (a session sleeping: the kernel goes, the workspace stays)
            assert not mine.is_symlink() and (mine / f"round-{round_}.txt").exists()
    finally:
        await tier.close()
    assert sorted(os.listdir(mine)) == ["input.txt", "round-0.txt", "round-1.txt", "round-2.txt"]


async def test_a_workspace_on_another_file_system_gets_a_kernel_with_it_bound(bwrap, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to put a workspace on")
    workspace = shm / f"cma-test-{uuid.uuid4().hex[:8]}"
    workspace.mkdir()
    (workspace / "there.txt").write_text("on tmpfs")
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"))
    try:
        await tier.start()
        assert await tier.wait_pool(60)
        (pooled,) = tier.pooled
        kernel = await tier.take_kernel(workspace)
        assert kernel is not pooled and tier.pooled == [pooled]  # the pool kernel could not take it, and stays
        assert kernel.workspace == workspace
        seen = await run(kernel, "import os\nopen('made.txt', 'w').write('y')\nsorted(os.listdir('.'))")
        assert seen == ["made.txt", "there.txt"]
    finally:
        await tier.close()
        files = sorted(os.listdir(workspace))
        import shutil

        shutil.rmtree(workspace)
    assert files == ["made.txt", "there.txt"]


async def test_an_interrupted_workspace_move_is_put_back_on_start(tmp_path):
    """A server that died while moving a workspace into a pooled kernel: the next start puts the files back."""
    kernel_dir, workspace = tmp_path / "kernels", tmp_path / "workspaces" / "sesn_x"
    workspace.mkdir(parents=True)
    (workspace / "not-yet-moved.txt").write_text("a")
    directory = kernel_dir / "0123456789ab"
    directory.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (directory / "owner.json").write_text(json.dumps({"server_pid": gone.pid, "server_start": "0"}))
    companion = kernel_dir / "0123456789ab.ws"
    (companion / "work").mkdir(parents=True)
    (companion / "work" / "moved.txt").write_text("b")
    (companion / "adopt.json").write_text(json.dumps({"workspace": str(workspace)}))
    (cleaned,) = clean_orphans(kernel_dir)
    assert cleaned == {"dir": "0123456789ab", "killed": []}
    assert sorted(os.listdir(workspace)) == ["moved.txt", "not-yet-moved.txt"]
    assert list(kernel_dir.iterdir()) == []


async def test_extra_read_only_paths_are_shared_read_only_with_hidden_paths_masked(bwrap, tmp_path):
    """An operator shares a dataset directory: readable, never writable, and a hidden path inside stays hidden."""
    datasets = tmp_path / "datasets"
    (datasets / "private").mkdir(parents=True)
    (datasets / "iris.csv").write_text("sepal,petal\n")
    (datasets / "private" / "key.txt").write_text("not for sandboxes")
    (tmp_path / "next-door.txt").write_text("not shared")
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"), extra_read_only_paths=[str(datasets)],
                      hidden_paths=[str(datasets / "private")])
    try:
        await tier.start()
        kernel = await tier.take_kernel()
        facts = await run(kernel, ATTEMPT + f'''
{{
    "read": open({str(datasets / "iris.csv")!r}).read(),
    "write": attempt(write, {str(datasets / "new.csv")!r}),
    "overwrite": attempt(write, {str(datasets / "iris.csv")!r}),
    "hidden": sorted(os.listdir({str(datasets / "private")!r})),
    "next_door": attempt(read, {str(tmp_path / "next-door.txt")!r}),
}}''')
    finally:
        await tier.close()
    assert facts == {"read": "sepal,petal\n", "write": "EROFS", "overwrite": "EROFS", "hidden": [], "next_door": "ENOENT"}
    assert sorted(os.listdir(datasets)) == ["iris.csv", "private"]

    missing = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "k2"), extra_read_only_paths=[str(tmp_path / "nowhere")])
    try:
        await missing.start()
        with pytest.raises(KernelStartError, match="extra_read_only_paths entry does not exist"):
            await missing.take_kernel()
    finally:
        await missing.close()


async def test_pythons_own_directories_stay_readable_under_tmp(bwrap, tmp_path, monkeypatch):
    """/tmp is private in the sandbox: a PYTHONPATH entry (or a venv) under it is bound back, read-only."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "cma_isolation_probe.py").write_text("VALUE = 'imported from the host'\n")
    (tmp_path / "neighbour.txt").write_text("not for the sandbox")
    monkeypatch.setenv("PYTHONPATH", str(library))
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"))
    try:
        await tier.start()
        kernel = await tier.take_kernel()
        facts = await run(kernel, ATTEMPT + f'''
import cma_isolation_probe
(cma_isolation_probe.VALUE, attempt(write, {str(library / "new.py")!r}), attempt(read, {str(tmp_path / "neighbour.txt")!r}))''')
    finally:
        await tier.close()
    assert facts == ("imported from the host", "EROFS", "ENOENT")


# --------------------------------------------------------------------------- egress bridge


async def test_the_proxy_port_leads_to_the_sandboxs_own_unix_socket(bwrap, tmp_path):
    tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"))
    recorders: list[HttpRecorder] = []
    try:
        await tier.start()
        a, b = await tier.take_kernel(), await tier.take_kernel()
        assert a.egress_socket == a.directory / EGRESS_SOCKET != b.egress_socket
        for kernel in (a, b):
            await run(kernel, FETCH + "None")
        env = await run(a, "import os\n{k: v for k, v in os.environ.items() if 'proxy' in k.lower() or k in %r}" % (CA_VARIABLES,))
        assert env == {
            **{name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")},
            "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
            **{k: os.environ[k] for k in CA_VARIABLES if k in os.environ},  # without a ca_bundle none is set (only inherited)
        }

        # No proxy listening yet: an immediate, explicit answer.
        status, body = await run(a, "fetch('http://example.test/')")
        assert status == 502 and "no egress proxy is listening for this sandbox" in body

        recorder_a, recorder_b = HttpRecorder("a"), HttpRecorder("b")
        recorders += [recorder_a, recorder_b]
        await recorder_a.start(a.egress_socket)
        await recorder_b.start(b.egress_socket)
        assert await run(a, "fetch('http://sandbox-a.test/path?q=1')") == (200, "answered by a")
        assert await run(b, "fetch('http://sandbox-b.test/other')") == (200, "answered by b")
        https_status, https_error = await run(a, "fetch('https://sandbox-a.test/')")
        assert https_status is None and "403" in https_error  # HTTPS goes as CONNECT, to the same socket

        # Loopback inside the sandbox is its own, reached directly (NO_PROXY), never through the proxy.
        local = await run(a, FETCH + '''
import http.server, threading
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"local")
    def log_message(self, *args):
        pass
local_server = http.server.HTTPServer(("127.0.0.1", 0), Hello)
threading.Thread(target=local_server.serve_forever, daemon=True).start()
fetch(f"http://127.0.0.1:{local_server.server_address[1]}/")''')
        assert local == (200, "local")

        # Sandbox a cannot reach sandbox b's socket: that path does not exist in its view.
        other = await run(a, ATTEMPT + f'''
import socket
def connect_unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
attempt(connect_unix, {str(b.egress_socket)!r})''')
        assert other == "ENOENT"
    finally:
        await tier.close()
        for recorder in recorders:
            recorder.close()
    # Which socket a request arrived on says which sandbox sent it.
    assert recorder_a.lines == ["GET http://sandbox-a.test/path?q=1 HTTP/1.1", "CONNECT sandbox-a.test:443 HTTP/1.0"]
    assert recorder_b.lines == ["GET http://sandbox-b.test/other HTTP/1.1"]


async def test_a_ca_bundle_is_readable_and_named_in_the_environment(bwrap, tmp_path):
    data = tmp_path / "cma"
    ca = data / "egress" / "ca.pem"  # under the data directory, which the kernel does not see otherwise
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    tier = KernelTier(pool_size=0, kernel_dir=str(data / "kernels"), data_dir=str(data), ca_bundle=str(ca))
    try:
        await tier.start()
        kernel = await tier.take_kernel()
        env, content = await run(kernel, "import os\n({k: os.environ.get(k) for k in %r}, open(%r).read())" % (CA_VARIABLES, str(ca)))
    finally:
        await tier.close()
    assert env == {name: str(ca) for name in CA_VARIABLES}
    assert content == ca.read_text()


async def test_egress_hook_learns_which_session_a_socket_serves(bwrap, emulator, tmp_path):
    """A stand-in proxy started by egress_hook: requests from the session's python calls arrive tagged by socket."""
    data = tmp_path / "cma"
    events: list[tuple[str, str, str, str]] = []
    proxies: dict[str, HttpRecorder] = {}

    class Hook(EgressHook):
        async def attach(self, sandbox_id: str, socket_path: str, *, session_id: str, **_: object) -> None:
            events.append(("attach", session_id, sandbox_id, socket_path))
            proxies[socket_path] = await HttpRecorder(session_id).start(socket_path)

        async def detach(self, sandbox_id: str, socket_path: str, *, session_id: str) -> None:
            events.append(("detach", session_id, sandbox_id, socket_path))
            proxies[socket_path].close()

    tier = KernelTier(pool_size=1, kernel_dir=str(data / "kernels"), data_dir=str(data), egress_hook=Hook())
    await tier.start()
    session = Session(emulator, tier)
    try:
        await session.create(py(FETCH + "print(fetch('http://api.example.test/v1'))"))
        sandbox = tier.create(await session.claim(), data / "workspaces" / session.id)
        assert sandbox.status()["isolation"] == "bubblewrap"
        events_seen, _ = await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()
    (result,) = results(events_seen)
    assert not result.is_error and text(result) == f"(200, 'answered by {session.id}')\n"
    (attach, detach) = events
    assert attach[0] == "attach" and detach[0] == "detach" and attach[1:] == detach[1:]
    assert attach[1] == session.id and attach[3] == str(data / "kernels" / attach[2] / EGRESS_SOCKET)
    (proxy,) = proxies.values()
    assert proxy.lines == ["GET http://api.example.test/v1 HTTP/1.1"]


# --------------------------------------------------------------------------- settings


async def test_require_isolation_refuses_kernels_when_bubblewrap_is_unavailable(emulator, tmp_path):
    tier = KernelTier(pool_size=1, kernel_dir=str(tmp_path / "kernels"), bwrap=str(tmp_path / "no-such-bwrap"), require_isolation=True)
    await tier.start()
    session = Session(emulator, tier)
    try:
        status = tier.isolation_status()
        assert status["isolation"] == "none" and status["required"] is True
        assert "require_isolation" in status["error"] and "not installed" in status["error"]
        with pytest.raises(KernelStartError, match="kernels are refused: KernelTier.require_isolation is set"):
            await tier.take_kernel()
        assert tier.pool_status()["starting"] == 0 and tier.pooled == []  # nothing started unisolated

        # What the agent sees: its python call fails with the reason.
        await session.create(py("print('never runs')"))
        sandbox = tier.create(await session.claim(), tmp_path / "ws")
        events, _ = await session.serve_turn(sandbox)
    finally:
        await tier.close()
        await session.close()
    (result,) = results(events)
    assert result.is_error and text(result).startswith("could not start a Python kernel: kernels are refused")
    assert list((tmp_path / "kernels").iterdir()) == []


async def test_required_isolation_cannot_be_switched_off(tmp_path):
    for settings in ({"isolation": "none", "require_isolation": True}, {"isolation": "bubblewrap", "bwrap": str(tmp_path / "missing")}):
        tier = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "kernels"), **settings)
        try:
            await tier.start()
            with pytest.raises(KernelStartError, match="kernels are refused"):
                await tier.take_kernel()
        finally:
            await tier.close()


async def test_isolation_none_runs_plain_kernels_and_the_fallback_is_refused(tmp_path, caplog):
    """Unisolated kernels only when the operator says so; a machine without bubblewrap gets none (fail closed)."""
    item = ClaimedItem(work_id="work_x", environment_id="env_x", session_id="sesn_x")
    forced = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "k1"), isolation="none")
    caplog.set_level(logging.WARNING)
    missing = KernelTier(pool_size=0, kernel_dir=str(tmp_path / "k2"), bwrap=str(tmp_path / "no-such-bwrap"))
    try:
        await forced.start()
        assert forced.effective_isolation == "none" and forced.isolation_status()["error"] is None
        assert forced.create(item, tmp_path / "ws").status()["isolation"] == "none"
        kernel = await forced.take_kernel()
        assert kernel.isolation == "none" and kernel.egress_socket is None
        assert await run(kernel, "import os\n[k for k in os.environ if 'proxy' in k.lower()]") == []

        await missing.start()
        assert "no-such-bwrap" in missing.isolation_status()["error"]
        with pytest.raises(KernelStartError, match="kernels are refused: kernels run isolated or not at all"):
            await missing.take_kernel()
    finally:
        await forced.close()
        await missing.close()
    assert "kernels run WITHOUT isolation (KernelTier.isolation is 'none')" in caplog.text
    assert forced.isolation_status()["reason"] == "KernelTier.isolation is 'none'"


# --------------------------------------------------------------------------- orphans


async def test_marker_cleanup_kills_a_sandbox_whose_server_is_gone(bwrap, tmp_path):
    """The environment marker finds every process of a sandboxed kernel (host pids), PID namespace or not."""
    kernel_dir = tmp_path / "kernels"
    tier = KernelTier(pool_size=0, kernel_dir=str(kernel_dir))
    try:
        await tier.start()
        kernel = await tier.take_kernel()
        # A child in a session of its own: not in the kernel's process group.
        await run(kernel, "import subprocess\nsubprocess.Popen(['sleep', '300'], start_new_session=True).pid")

        def sleeping() -> int | None:  # Popen returns before the child has executed `sleep`
            try:
                return host_pid_of(kernel_dir, kernel.directory, "sleep")
            except AssertionError:
                return None

        sleeper = await wait_until(sleeping, 10, what="the sleep process to start")
        marked = kernel_processes(kernel_dir)[str(kernel.directory)]
        assert kernel.pid in marked and sleeper in marked and all(pid_alive(p) for p in marked)
        # Its server is gone (owner.json names a process that exited) while the sandbox lives on:
        # a server started meanwhile must clean it up.
        gone = subprocess.Popen(["true"])
        gone.wait()
        (kernel.directory / "owner.json").write_text(json.dumps({"server_pid": gone.pid, "server_start": "0"}))
        out = subprocess.run(
            [sys.executable, "-c", "import json, sys\nfrom pathlib import Path\nfrom jupyter_cma.sandboxes.kernel import clean_orphans\n"
             "print(json.dumps(clean_orphans(Path(sys.argv[1]))))", str(kernel_dir)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        (cleaned,) = json.loads(out.stdout)
        assert cleaned["dir"] == kernel.id and sleeper in cleaned["killed"] and kernel.pid in cleaned["killed"]
        await wait_until(lambda: not any(pid_alive(p) for p in marked), 10, what="the sandbox's processes to exit")
        assert not kernel.directory.exists() and list(kernel_dir.iterdir()) == []
    finally:
        await tier.close()


# --------------------------------------------------------------------------- through the server


async def test_sessions_served_by_the_server_run_sandboxed(bwrap, harness, jp_http_port, tmp_path):
    h: Harness = await harness.start()
    tier = h.ext.sandbox_tiers["kernel"]
    assert tier.effective_isolation == "bubblewrap"
    data = Path(h.ext.data_dir)
    probe = ATTEMPT + f'''
import socket, json
def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
print(json.dumps({{
    "data_dir": sorted(os.listdir({str(data)!r})),
    "egress": sorted(os.listdir({str(data / "egress")!r})),
    "database": attempt(read, {str(data / "cma.sqlite3")!r}),
    "jupyter_server": attempt(connect, {jp_http_port}),
}}))'''
    agent = await h.agent()
    sid = await h.session(agent, script_message(script_python(probe), {"sleep": 2}, {"say": "done"}))

    async def live_sandbox() -> dict[str, Any] | None:
        try:
            row = await h.api("GET", f"sessions/{sid}")
        except HTTPClientError:  # 404 until the session is claimed here
            return None
        return row.get("sandbox") if row.get("sandbox") and row["sandbox"].get("kernel") else None

    sandbox = await wait_until(live_sandbox, 60, what="the session's sandbox")
    assert sandbox["isolation"] == "bubblewrap"
    assert sandbox["egress_socket"] == str(data / "kernels" / sandbox["kernel"]["id"] / EGRESS_SOCKET)
    events = await h.turn_ends(sid)
    (report,) = [e for e in events if e.type == "user.custom_tool_result"]
    facts = json.loads("".join(b.text for b in report.content))
    # Only the mount points of its own directories, and of the CA bundle: the proxy's CA key stays hidden.
    assert facts["data_dir"] == ["egress", "kernels", "workspaces"]
    assert facts["egress"] == ["ca-bundle.pem"] and (data / "egress" / "mitmproxy" / "mitmproxy-ca.pem").exists()
    assert facts["database"] == "ENOENT" and facts["jupyter_server"] == "ECONNREFUSED"
    assert (data / "cma.sqlite3").exists()


def test_the_probe_works_for_a_python_installed_under_tmp(tmp_path):
    """Kernels get a private /tmp; a server whose venv lives under /tmp must still probe (and run) isolated."""
    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    repo = Path(__file__).resolve().parents[1]
    code = "from jupyter_cma.sandboxes.isolation import probe_bubblewrap; print(probe_bubblewrap('bwrap'))"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert out.stdout.strip() == "None", out.stdout
