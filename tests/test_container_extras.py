"""The container tier's extras: a terminal into a running sandbox, workspace export/import, `jupyter cma cleanup`.

Real server (pytest-jupyter), real emulator, real Docker engine, the real
sandbox image and the real docker CLI; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import tornado.httpclient

from jupyter_cma.sandboxes.container import DATA_DIR_LABEL, KIND_LABEL, MANAGED, SESSION_LABEL, VOLUME_PREFIX
from jupyter_cma.sandboxes.image import ImageSettings, build_sandbox_image
from jupyter_cma.sandboxes.container import HELPER_KIND, WorkspaceArchiveError, export_workspace, import_workspace
from jupyter_cma.store import Store
from tests.helpers import wait_until
from tests.test_dispatch import (  # noqa: F401  (fixtures of the server end-to-end tests)
    Harness,
    cma_emulator,
    cma_mode,
    harness,
    jp_server_config as dispatch_server_config,
    python,
    script,
)

pytestmark = pytest.mark.timeout(300)

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]|\x1b[=>]")


# --------------------------------------------------------------------------- fixtures


def remove_labelled(client: docker.DockerClient, data_dir: Path) -> None:
    """Remove what the tier (or a test) made for one data directory: containers, then volumes."""
    labels = [f"{MANAGED}=1", f"{DATA_DIR_LABEL}={data_dir.absolute()}"]
    for container in client.containers.list(all=True, filters={"label": labels}):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": labels}):
        volume.remove(force=True)


@pytest.fixture
def leftovers(docker_client, tmp_path):
    """After the test (and after the server, which this is set up before): nothing of this test's data dir stays in Docker."""
    yield
    remove_labelled(docker_client, tmp_path / "cma")


@pytest.fixture
def terminals_enabled() -> bool:
    return False


@pytest.fixture
def jp_server_config(dispatch_server_config, terminals_enabled, docker_client, leftovers):  # noqa: F811
    config = json.loads(json.dumps(dispatch_server_config))
    config["ContainerTier"] = {"pool_size": 0, "stop_timeout": 2.0}
    config["KernelTier"] = {"pool_size": 0}
    if terminals_enabled:
        # The shared configuration turns jupyter_server_terminals off because of its strict-auth mode
        # (allow_unauthenticated_access=False), whose check the terminals' third-party handlers fail. The
        # terminal tests need them: enable the extension and leave that setting at its default. Our own
        # handlers stay @authenticated + @authorized either way (the unauthenticated POST below is refused).
        config["ServerApp"]["jpserver_extensions"]["jupyter_server_terminals"] = True
        config["ServerApp"].pop("allow_unauthenticated_access")
    return config


@pytest.fixture(scope="module")
def sandbox_image(docker_client) -> str:
    """The sandbox image the tier runs (built if missing; cached and quick when up to date)."""
    return build_sandbox_image(docker_client, ImageSettings())


def bash(command: str) -> dict[str, Any]:
    return {"tool": "bash", "input": {"command": command}}


def end_turns(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type == "session.status_idle" and e.stop_reason.type == "end_turn"]


def tool_results(events: list[Any]) -> list[str]:
    return ["".join(getattr(b, "text", "") for b in e.content or []) for e in events if e.type == "user.tool_result"]


async def container_agent(h: Harness) -> str:
    return (await h.api("POST", "agents", {"name": "box", "tier": "container"}))["id"]


async def wait_serving(h: Harness, session_id: str) -> dict[str, Any]:
    def serving() -> dict[str, Any] | None:
        sandbox = h.ext.sessions.describe(session_id)
        return sandbox if sandbox and sandbox["state"] == "serving" else None

    return await wait_until(serving, 120, what=f"a container serving {session_id}")


async def wait_sleeping(h: Harness, session_id: str) -> None:
    await wait_until(lambda: h.state(session_id) == "sleeping" and session_id not in h.ext.sessions.live, 120,
                     what=f"session {session_id} asleep")


async def api_error(h: Harness, status: int, method: str, path: str, body: bytes | str | None = None, **kw: Any) -> str:
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await h.fetch("cma", "api", *path.split("/"), method=method, body=body, **kw)
    assert err.value.code == status, err.value.response.body
    message = json.loads(err.value.response.body)["message"]
    assert message
    return message


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, *, link: str = "", mode: int = 0o644,
          uid: int = 0) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid = kind, link, mode, uid, uid
    if kind == tarfile.REGTYPE and data is None:
        data = b""
    return info, data


def members(archive: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else None
            out[m.name] = (m, data)
        return out


# --------------------------------------------------------------------------- 1. terminals


async def read_until(ws: Any, pattern: re.Pattern[str], what: str) -> str:
    """Collect the terminal's stdout until it matches; the wait_for is a guard against a hang, not a timing check."""
    text = ""
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        assert raw is not None, f"the terminal closed before {what}; it printed: {text!r}"
        kind, *rest = json.loads(raw)
        if kind == "stdout":
            text += rest[0]
            clean = ANSI.sub("", text).replace("\r", "")
            if pattern.search(clean):
                return clean


@pytest.mark.parametrize("terminals_enabled", [True])
async def test_a_terminal_opens_a_shell_in_the_session_container_without_the_server_secrets(harness, jp_ws_fetch, terminals_enabled):
    h = await harness.start()
    # The server's environment holds API keys (the fixtures set them): the terminal must not carry them into the sandbox.
    assert os.environ.get("ANTHROPIC_API_KEY") and os.environ.get("ANTHROPIC_ENVIRONMENT_KEY")
    agent = await container_agent(h)
    sid = await h.session(agent, script({"sleep": 240}))  # the session stays running: its container stays up
    sandbox = await wait_serving(h, sid)

    response = await h.fetch("cma", "api", "sessions", sid, "terminal", method="POST", body="{}")
    assert response.code == 201
    answer = json.loads(response.body)
    name = answer["name"]
    assert answer["url"] == f"terminals/{name}" and answer["container"] == sandbox["container"]["name"]
    assert answer["container_id"] == sandbox["container"]["id"]
    # JupyterLab's Running panel lists it (the terminals API of jupyter_server_terminals).
    listed = json.loads((await h.fetch("api", "terminals")).body)
    assert name in [t["name"] for t in listed]

    # The docker client itself runs without the server's secrets (docker exec -e NAME could otherwise forward one).
    manager = h.serverapp.web_app.settings["terminal_manager"]
    client_env = Path(f"/proc/{manager.terminals[name].ptyproc.pid}/environ").read_bytes().split(b"\0")
    assert client_env and not [v for v in client_env if v.startswith(b"ANTHROPIC_")]

    ws = await jp_ws_fetch("terminals", "websocket", name)
    try:
        await ws.write_message(json.dumps(["stdin", "id -u; hostname; pwd; env | grep -c ANTHROPIC_\r"]))
        out = await read_until(ws, re.compile(r"^1000\n+sandbox\n+/workspace\n+\d+\n", re.M), "the command's output")
        uid, host, cwd, count = re.search(r"^(1000)\n+(sandbox)\n+(/workspace)\n+(\d+)\n", out, re.M).groups()
        assert (uid, host, cwd) == ("1000", "sandbox", "/workspace")
        assert count == "0", f"the sandbox's environment holds ANTHROPIC_ variables: {out!r}"
        # The shell is the session's own container: it sees the worker that serves the session.
        await ws.write_message(json.dumps(["stdin", "ps -eo args | grep -c '[c]ma_sandbox.worker'; echo done-$((6*7))\r"]))
        out = await read_until(ws, re.compile(r"^done-42\n", re.M), "the worker check")
        assert int(re.search(r"^(\d+)\ndone-42$", out, re.M).group(1)) >= 1, out
    finally:
        ws.close()

    # When the session's container goes (here: stopped), the terminal ends with it.
    await h.api("POST", f"sessions/{sid}/stop", {})
    await wait_until(lambda: name not in manager.terminals, 60, what="the terminal closed with its container")


@pytest.mark.parametrize("terminals_enabled", [True])
async def test_a_terminal_is_refused_for_kernel_sessions_sleeping_sessions_and_without_a_token(harness, terminals_enabled):
    h = await harness.start()
    manager = h.serverapp.web_app.settings["terminal_manager"]
    # Without a token: refused before anything happens.
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await h.fetch("cma", "api", "sessions", "sesn_x", "terminal", method="POST", body="{}", headers={"Authorization": ""})
    assert err.value.code in (401, 403)
    assert manager.terminals == {}

    # A kernel-tier session, live: 409 saying to move the agent.
    kernel_agent = await h.agent()
    sid = await h.session(kernel_agent, script(python("print('up')"), {"sleep": 120}))
    await wait_until(lambda: len(h.ext.store.cells(sid)) == 1, 90, what="the kernel session's first call")
    message = await api_error(h, 409, "POST", f"sessions/{sid}/terminal", "{}")
    assert "kernel tier has no terminal" in message and "container tier" in message and kernel_agent in message
    await h.api("POST", f"sessions/{sid}/stop", {})
    # Still refused once it rests (the stored tier says kernel).
    assert "kernel tier has no terminal" in await api_error(h, 409, "POST", f"sessions/{sid}/terminal", "{}")

    # A container session that sleeps has no container: 409.
    agent = await container_agent(h)
    sleeper = await h.session(agent, script({"say": "hello"}))
    await wait_sleeping(h, sleeper)
    message = await api_error(h, 409, "POST", f"sessions/{sleeper}/terminal", "{}")
    assert "no container is serving" in message and "sleeping" in message
    assert "no session of that id" in await api_error(h, 409, "POST", "sessions/sesn_unknown/terminal", "{}")
    assert manager.terminals == {}


async def test_a_terminal_without_terminals_on_the_server_is_a_503(harness):
    h = await harness.start()  # the shared strict configuration: jupyter_server_terminals is off
    message = await api_error(h, 503, "POST", "sessions/sesn_x/terminal", "{}")
    assert "jupyter_server_terminals" in message


# --------------------------------------------------------------------------- 2. workspace export / import


async def test_a_workspace_exported_from_one_session_arrives_in_a_new_one(harness, docker_client):
    h = await harness.start()
    agent = await container_agent(h)
    source = await h.session(agent, script(
        bash("mkdir -p src/pkg && printf 'kept\\n' > src/pkg/notes.txt && ln -s pkg/notes.txt src/link && chmod 750 src/pkg "
             "&& printf '#!/bin/sh\\necho ran\\n' > run.sh && chmod 755 run.sh && echo ok"),
        {"sleep": 240},
    ))

    async def wrote() -> bool:  # the turn sleeps on after the call: wait for its result
        return any(r.strip() == "ok" for r in tool_results(await h.events(source)))

    await wait_until(wrote, 120, what="the files written")

    # Refused while a container serves the session.
    message = await api_error(h, 409, "PUT", f"sessions/{source}/workspace", tar_of(entry("x.txt", data=b"x")))
    assert "stop it first" in message

    # The export streams while the session runs.
    response = await h.fetch("cma", "api", "sessions", source, "workspace")
    assert response.headers["Content-Type"] == "application/gzip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{source}-workspace.tar.gz"'
    archive = response.body
    got = members(archive)
    assert set(got) == {"src", "src/pkg", "src/pkg/notes.txt", "src/link", "run.sh"}, sorted(got)
    assert got["src/pkg/notes.txt"][1] == b"kept\n" and got["src/link"][0].linkname == "pkg/notes.txt"
    assert got["src/pkg"][0].mode & 0o777 == 0o750 and got["run.sh"][0].mode & 0o777 == 0o755
    assert {m.uid for m, _ in got.values()} == {1000}
    await h.api("POST", f"sessions/{source}/stop", {})

    # A new session: served once (its container comes and goes), then it sleeps; the archive goes into its volume.
    target = await h.session(agent, script({"say": "ready"}))
    await wait_sleeping(h, target)
    response = await h.fetch("cma", "api", "sessions", target, "workspace", method="PUT", body=archive)
    answer = json.loads(response.body)
    assert answer == {"session_id": target, "volume": h.ext.store.session(target)["workspace_volume"],
                      "files": 2, "directories": 2, "links": 1, "bytes": len(b"kept\n") + len(b"#!/bin/sh\necho ran\n")}
    assert h.ext.store.session(target)["status"] == "sleeping"

    # Its next turn runs in a new container on that volume and finds the files, owned by the sandbox's user.
    turns = len(end_turns(await h.events(target)))
    await h.send(target, script(bash("cat src/link; stat -c '%u:%g %a' src/pkg/notes.txt src/pkg run.sh; ./run.sh; id -u")))
    events = await h.turn_ends(target, turns=turns + 1, timeout=120)
    lines = tool_results(events)[-1].split("\n")
    assert lines[:6] == ["kept", "1000:1000 644", "1000:1000 750", "1000:1000 755", "ran", "1000"], lines
    # And the two sessions' volumes are their own.
    assert h.ext.store.session(target)["workspace_volume"] != h.ext.store.session(source)["workspace_volume"]

    # A bad archive is refused with a clear 400 and changes nothing.
    await wait_sleeping(h, target)
    before = set(members((await h.fetch("cma", "api", "sessions", target, "workspace")).body))
    message = await api_error(h, 400, "PUT", f"sessions/{target}/workspace", tar_of(entry("fine.txt", data=b"x"), entry("../escape.txt", data=b"x")))
    assert "'../escape.txt'" in message and "nothing was written" in message
    assert "not a tar" in await api_error(h, 400, "PUT", f"sessions/{target}/workspace", b"this is not an archive")
    after = set(members((await h.fetch("cma", "api", "sessions", target, "workspace")).body))
    assert before == after and "fine.txt" not in after
    assert "no container workspace" in await api_error(h, 404, "GET", "sessions/sesn_unknown/workspace")
    # A recorded volume that is gone: the export fails before its first byte, so the answer is still a clear JSON error.
    h.ext.store.transition("sesn_lost", "sleeping", "test")
    h.ext.store.update_session("sesn_lost", workspace_volume=f"{VOLUME_PREFIX}lost-{uuid.uuid4().hex[:8]}")
    assert "does not exist" in await api_error(h, 404, "GET", "sessions/sesn_lost/workspace")
    # This server has no object store: push and pull say which settings to set.
    for action in ("push", "pull"):
        message = await api_error(h, 409, "POST", f"sessions/{target}/workspace/{action}", b"")
        assert "no object store is configured" in message and "WorkspaceObjectStore.url" in message
    helpers = docker_client.containers.list(all=True, filters={"label": f"{KIND_LABEL}={HELPER_KIND}"})
    assert not [c for c in helpers if c.labels.get(SESSION_LABEL) in (source, target)], "helper containers are removed"


BAD_ARCHIVES = {
    "dot-dot": ([entry("ok.txt", data=b"1"), entry("sub/../../evil.txt", data=b"x")], "contains '..'"),
    "absolute": ([entry("/etc/evil.txt", data=b"x")], "absolute path"),
    "device": ([entry("dev-null", tarfile.CHRTYPE)], "is a device"),
    "block device": ([entry("sda", tarfile.BLKTYPE)], "is a device"),
    "fifo": ([entry("pipe", tarfile.FIFOTYPE)], "is a fifo"),
    "symlink up": ([entry("sub", tarfile.DIRTYPE, mode=0o755), entry("sub/out", tarfile.SYMTYPE, link="../../etc")], "points outside"),
    "symlink absolute": ([entry("passwd", tarfile.SYMTYPE, link="/etc/passwd")], "points outside"),
    # Each link alone looks inside; resolved through the other, the second leaves the workspace.
    "symlink chain": ([entry("s", tarfile.DIRTYPE, mode=0o755), entry("s/up", tarfile.SYMTYPE, link=".."),
                       entry("s/esc", tarfile.SYMTYPE, link="up/..")], "points outside"),
    "write through a link": ([entry("d", tarfile.SYMTYPE, link="."), entry("d/x.txt", data=b"x")], "through the symbolic link"),
    "hard link out": ([entry("h", tarfile.LNKTYPE, link="/etc/shadow")], "absolute path"),
    "hard link to nothing": ([entry("h", tarfile.LNKTYPE, link="missing.txt")], "not a file earlier"),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_a_malicious_archive_is_refused_and_nothing_is_written(case, docker_client, sandbox_image, tmp_path, leftovers):
    entries, problem = BAD_ARCHIVES[case]
    labels = {MANAGED: "1", DATA_DIR_LABEL: str((tmp_path / "cma").absolute())}
    volume = f"{VOLUME_PREFIX}test-{uuid.uuid4().hex[:12]}"
    for gz in (True, False):
        with pytest.raises(WorkspaceArchiveError, match=re.escape(problem)):
            import_workspace(docker_client, volume, sandbox_image, io.BytesIO(tar_of(*entries, gz=gz)),
                             labels=labels, volume_labels=labels)
        assert not docker_client.volumes.list(filters={"name": volume}), "no volume was made"
        assert not docker_client.containers.list(all=True, filters={"volume": volume}), "no helper was made"


def test_an_import_rewrites_ownership_and_modes_and_lands_on_top_of_the_volume(docker_client, sandbox_image, tmp_path, leftovers):
    labels = {MANAGED: "1", DATA_DIR_LABEL: str((tmp_path / "cma").absolute())}
    volume = f"{VOLUME_PREFIX}test-{uuid.uuid4().hex[:12]}"
    first = tar_of(entry("./keep.txt", data=b"old"), entry("./replace.txt", data=b"old"))
    assert import_workspace(docker_client, volume, sandbox_image, io.BytesIO(first), labels=labels, volume_labels=labels)["files"] == 2
    assert docker_client.volumes.get(volume).attrs["Labels"] == labels
    second = tar_of(
        entry(".", tarfile.DIRTYPE, mode=0o777),  # the workspace itself: its owner and mode stay
        entry("replace.txt", data=b"new", uid=0, mode=0o4755),  # root-owned and set-uid in the archive
        entry("bin", tarfile.DIRTYPE, mode=0o2775, uid=12345),
        entry("bin/tool", data=b"#!/bin/sh\n", mode=0o755),
        entry("bin/same", tarfile.LNKTYPE, link="bin/tool"),
        entry("abs-inside", tarfile.SYMTYPE, link="/workspace/bin/tool"),
        entry("rel", tarfile.SYMTYPE, link="bin/../keep.txt"),
        gz=False,
    )
    result = import_workspace(docker_client, volume, sandbox_image, io.BytesIO(second), labels=labels, volume_labels=labels)
    assert result == {"volume": volume, "files": 2, "directories": 1, "links": 3, "bytes": 3 + len(b"#!/bin/sh\n")}
    out = io.BytesIO()
    export_workspace(docker_client, volume, sandbox_image, out, labels=labels)
    got = members(out.getvalue())
    assert set(got) == {"keep.txt", "replace.txt", "bin", "bin/tool", "bin/same", "abs-inside", "rel"}
    assert got["keep.txt"][1] == b"old" and got["replace.txt"][1] == b"new"
    assert {(m.uid, m.gid) for m, _ in got.values()} == {(1000, 1000)}
    assert got["replace.txt"][0].mode & 0o7777 == 0o755 and got["bin"][0].mode & 0o7777 == 0o775
    links = {got["bin/same"][0].linkname, got["bin/tool"][0].linkname}
    assert "bin/tool" in links or "bin/same" in links  # one of the pair is stored as a hard link to the other
    assert docker_client.containers.list(all=True, filters={"volume": volume}) == []
    # The workspace root kept the image's owner and mode.
    root = docker_client.containers.run(sandbox_image, entrypoint=["stat", "-c", "%u %a", "/workspace"], remove=True,
                                        network_mode="none", volumes={volume: {"bind": "/workspace", "mode": "ro"}})
    assert root.decode().split() == ["1000", "755"]


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "jupyter_cma.cli", *args], capture_output=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=240)


def test_the_workspace_commands_move_a_workspace_through_a_file(tmp_path, docker_client, sandbox_image, leftovers):
    data_dir = tmp_path / "cma"
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    archive = tmp_path / "in.tar.gz"
    archive.write_bytes(tar_of(entry("notes.txt", data=b"moved\n"), entry("sub", tarfile.DIRTYPE, mode=0o755),
                               entry("sub/l", tarfile.SYMTYPE, link="../notes.txt")))
    # A session this host has never served: the volume is made, labelled, and recorded for it (sleeping).
    done = cli("workspace", "import", "sesn_moved", str(archive), "--data-dir", str(data_dir), env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert b"imported 1 files, 1 directories and 1 links" in done.stdout
    store = Store(data_dir / "cma.sqlite3")
    try:
        row = store.session("sesn_moved")
    finally:
        store.close()
    assert row["status"] == "sleeping" and row["workspace_volume"] == f"{VOLUME_PREFIX}sesn_moved"
    volume = docker_client.volumes.get(row["workspace_volume"])
    assert volume.attrs["Labels"][SESSION_LABEL] == "sesn_moved"
    assert volume.attrs["Labels"][DATA_DIR_LABEL] == str(data_dir.absolute())

    out = tmp_path / "out.tar.gz"
    done = cli("workspace", "export", "sesn_moved", str(out), "--data-dir", str(data_dir), env=env)
    assert done.returncode == 0, done.stderr.decode()
    got = members(out.read_bytes())
    assert got["notes.txt"][1] == b"moved\n" and got["sub/l"][0].linkname == "../notes.txt" and got["notes.txt"][0].uid == 1000
    piped = cli("workspace", "export", "sesn_moved", "-", "--data-dir", str(data_dir), env=env)
    assert members(piped.stdout)["notes.txt"][1] == b"moved\n"

    bad = cli("workspace", "import", "sesn_moved", "-", "--data-dir", str(data_dir), env=env,
              stdin=tar_of(entry("x", tarfile.SYMTYPE, link="/etc")))
    assert bad.returncode == 1 and b"points outside the workspace" in bad.stderr and b"nothing was written" in bad.stderr
    unknown = cli("workspace", "export", "sesn_other", str(out), "--data-dir", str(data_dir), env=env)
    assert unknown.returncode == 1 and b"no workspace volume" in unknown.stderr
    assert cli("workspace", "export", "x", "--data-dir", str(data_dir), env=env).returncode == 1  # usage


# --------------------------------------------------------------------------- 3. cleanup


def test_cleanup_lists_then_removes_what_the_tier_left_and_keeps_sessions_volumes_unless_asked(tmp_path, docker_client, sandbox_image, leftovers):
    mine, other = tmp_path / "cma", tmp_path / "other"
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    tag = uuid.uuid4().hex[:8]

    def labels(data_dir: Path, kind: str, session: str | None = None) -> dict[str, str]:
        out = {MANAGED: "1", KIND_LABEL: kind, DATA_DIR_LABEL: str(data_dir.absolute())}
        if session:
            out[SESSION_LABEL] = session
        return out

    def container(name: str, data_dir: Path, running: bool) -> Any:
        c = docker_client.containers.create(sandbox_image, name=name, entrypoint=["sleep", "300"], network_mode="none",
                                            labels=labels(data_dir, "sandbox"))
        if running:
            c.start()
        return c

    running = container(f"jupyter-cma-test-run-{tag}", mine, True)
    stopped = container(f"jupyter-cma-test-stop-{tag}", mine, False)
    foreign = container(f"jupyter-cma-test-other-{tag}", other, False)
    unmanaged = docker_client.containers.create(sandbox_image, name=f"not-ours-{tag}", entrypoint=["true"], network_mode="none",
                                                labels={DATA_DIR_LABEL: str(mine.absolute())})
    orphan = docker_client.volumes.create(f"{VOLUME_PREFIX}orphan-{tag}", labels=labels(mine, "workspace"))
    asleep = docker_client.volumes.create(f"{VOLUME_PREFIX}asleep-{tag}", labels=labels(mine, "workspace", "sesn_asleep"))
    ended = docker_client.volumes.create(f"{VOLUME_PREFIX}ended-{tag}", labels=labels(mine, "workspace", "sesn_ended"))
    foreign_volume = docker_client.volumes.create(f"{VOLUME_PREFIX}other-{tag}", labels=labels(other, "workspace"))
    store = Store(mine / "cma.sqlite3")
    store.transition("sesn_asleep", "sleeping", "test", tier="container")
    store.update_session("sesn_asleep", workspace_volume=asleep.name)
    store.transition("sesn_ended", "ended", "test", tier="container")
    store.update_session("sesn_ended", workspace_volume=ended.name)
    store.close()
    (mine / "containers" / "abc123").mkdir(parents=True)
    (other / "containers" / "def456").mkdir(parents=True)

    def exists() -> set[str]:
        names = {c.name for c in docker_client.containers.list(all=True, filters={"name": tag})}
        names |= {v.name for v in docker_client.volumes.list(filters={"name": tag})}
        names |= {p.name for d in (mine, other) for p in (d / "containers").iterdir()}
        return names

    everything = exists()
    assert len(everything) == 10

    try:
        # A dry run lists, removes nothing.
        dry = cli("cleanup", "--data-dir", str(mine), env=env)
        assert dry.returncode == 0, dry.stderr.decode()
        text = dry.stdout.decode()
        assert running.name in text and stopped.name in text and orphan.name in text and "abc123" in text
        assert foreign.name not in text and foreign_volume.name not in text and "def456" not in text and unmanaged.name not in text
        kept = text[text.index("Kept: volumes holding sessions' files"):]
        assert asleep.name in kept and "sesn_asleep (sleeping)" in kept and "--volumes" in kept
        assert ended.name not in kept and ended.name in text  # an ended session's volume holds no one's files
        assert "Dry run: nothing was removed" in text and "running containers serve sessions" in text
        assert exists() == everything

        # --all lists the other data directory too (a dry run: other servers' things on this machine stay).
        everywhere = cli("cleanup", "--all", "--data-dir", str(mine), env=env).stdout.decode()
        assert foreign.name in everywhere and foreign_volume.name in everywhere and "def456" in everywhere
        assert exists() == everything

        # --yes removes containers (running ones too), unheld volumes and socket directories; the sleeping session's volume stays.
        done = cli("cleanup", "--yes", "--data-dir", str(mine), env=env)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        assert "Removed 2 container(s), 2 volume(s) and 1 socket directory(ies); kept 1 volume(s)" in done.stdout.decode()
        assert exists() == everything - {running.name, stopped.name, orphan.name, ended.name, "abc123"}

        # --volumes removes it too, and the session forgets it (its next container gets a new, labelled volume).
        done = cli("cleanup", "--yes", "--volumes", "--data-dir", str(mine), env=env)
        assert done.returncode == 0 and asleep.name in done.stdout.decode()
        assert exists() == {foreign.name, unmanaged.name, foreign_volume.name, "def456"}
        store = Store(mine / "cma.sqlite3")
        assert store.session("sesn_asleep")["workspace_volume"] is None
        store.close()
        assert "Nothing to clean up" in cli("cleanup", "--data-dir", str(mine), env=env).stdout.decode()

        done = cli("cleanup", "--yes", "--volumes", "--data-dir", str(other), env=env)
        assert done.returncode == 0
        assert exists() == {unmanaged.name}
    finally:
        unmanaged.remove(force=True)
        remove_labelled(docker_client, other)
