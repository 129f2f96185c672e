"""Setup, said plainly: `GET cma/api/setup` and `POST cma/api/setup/emulator` through a real server, and the checks.

The server tests run a real Jupyter server (pytest-jupyter) with no configuration at all; `POST setup/emulator`
starts the real emulator as the server's own process, and a session created through the REST API then runs on
the kernel tier. The checks' logic is tested from constructed inputs (docker missing, image missing, bubblewrap
missing, engine not installed, …).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import tornado.httpclient

from jupyter_cma.client.signing import authorization
from jupyter_cma.setup import CHECK_IDS, CredentialSource, SetupInput, setup_checks
from tests.helpers import wait_until

ENV_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_ENVIRONMENT_KEY", "ANTHROPIC_ENVIRONMENT_ID", "ANTHROPIC_WEBHOOK_SIGNING_KEY",
            "ANTHROPIC_BASE_URL")


# ---------------------------------------------------------------------- the checks, from constructed inputs


def by_id(facts: SetupInput) -> dict[str, Any]:
    return {c.id: c for c in setup_checks(facts)}


WORKING = SetupInput(mode="poll", docker=True, image="jupyter-cma-sandbox:0.1.0", image_id="sha256:abc", kernel=True,
                     isolation="bubblewrap", egress_engine="running", default_tier="container")


def test_a_working_machine_passes_every_check_and_webhook_secret_is_only_checked_in_webhook_mode():
    checks = setup_checks(WORKING)
    assert [c.id for c in checks] == [i for i in CHECK_IDS if i != "webhook_secret"]
    assert all(c.ok and c.problem is None and c.fix is None and c.command is None for c in checks)
    webhook = by_id(SetupInput(mode="webhook", missing=frozenset({"webhook_secret"})))["webhook_secret"]
    assert not webhook.ok and webhook.severity == "error"
    assert "ANTHROPIC_WEBHOOK_SIGNING_KEY" in webhook.fix and 'c.CMAApp.mode = "poll"' in webhook.fix
    assert "/cma/webhooks" in webhook.fix


def test_missing_credentials_are_errors_naming_where_to_put_them():
    facts = SetupInput(missing=frozenset({"environment_id", "environment_key", "api_key"}),
                       sources={"api_key": CredentialSource("MY_KEY_VAR", "api_key_file"),
                                "environment_key": CredentialSource("ANTHROPIC_ENVIRONMENT_KEY", "environment_key_file",
                                                                    file="/etc/cma/envkey")})
    checks = by_id(facts)
    for name in ("environment_id", "environment_key", "api_key"):
        assert not checks[name].ok and checks[name].severity == "error", name
        assert checks[name].problem and checks[name].fix and checks[name].docs.startswith("docs/"), name
    assert checks["environment_id"].command == "export ANTHROPIC_ENVIRONMENT_ID=env_…"
    assert checks["api_key"].command == "export MY_KEY_VAR=sk-ant-api…", "the configured variable's name, not the default"
    assert "$MY_KEY_VAR" in checks["api_key"].problem and "c.CMAApp.api_key_file" in checks["api_key"].fix
    # A file named by a setting but refused: the fix is its mode, and the settings check says why.
    assert checks["environment_key"].command == "chmod 600 /etc/cma/envkey"
    assert "/etc/cma/envkey" in checks["environment_key"].problem


def test_docker_missing_is_a_warning_while_the_kernel_tier_works_and_an_error_when_nothing_else_can_serve():
    reason = "no Docker engine answers: DockerException; start one"
    kernel_works = by_id(SetupInput(docker=False, docker_reason=reason, kernel=True, isolation="bubblewrap"))
    docker = kernel_works["docker"]
    assert not docker.ok and docker.severity == "warning"
    assert docker.problem == ("No Docker engine answers (DockerException), so the container tier cannot run: sessions run on "
                              "the kernel tier instead."), "the probe's reason, without what the check says anyway"
    other = by_id(SetupInput(docker=False, docker_reason="permission denied on /var/run/docker.sock", kernel=True))["docker"]
    assert "(permission denied on /var/run/docker.sock)" in other.problem
    assert docker.command == "sudo systemctl start docker" and docker.docs == "docs/container-tier.md"
    # Without Docker the image cannot be looked for: said so, with the command for when Docker runs.
    image = kernel_works["sandbox_image"]
    assert not image.ok and image.severity == "warning" and image.command == "jupyter cma build-image"
    assert "until a Docker engine answers" in image.problem
    # Its own error then only repeats that Docker does not answer: not shown.
    image_error = "DockerException: Error while fetching server API version"
    assert "fetching" not in by_id(SetupInput(docker=False, image_error=image_error))["sandbox_image"].problem
    nothing_else = by_id(SetupInput(docker=False, kernel=False, isolation="none", isolation_reason="bwrap is not installed"))
    assert nothing_else["docker"].severity == "error" and "no sandbox tier" in nothing_else["docker"].problem
    wanted = by_id(SetupInput(docker=False, kernel=True, isolation="bubblewrap", default_tier="container"))
    assert wanted["docker"].severity == "error"
    probing = by_id(SetupInput(docker=None))["docker"]
    assert not probing.ok and "not been checked yet" in probing.problem and probing.command is None


def test_a_missing_or_broken_image_names_the_build_command():
    missing = by_id(SetupInput(docker=True, image="jupyter-cma-sandbox:0.1.0", image_error="image not found; auto_build is off",
                               default_tier="container"))["sandbox_image"]
    assert not missing.ok and missing.severity == "error", "container sessions are the default here: they cannot start"
    assert "jupyter-cma-sandbox:0.1.0" in missing.problem and "auto_build is off" in missing.problem
    assert missing.command == "jupyter cma build-image" and missing.docs == "docs/container-tier.md#the-sandbox-image"
    building = by_id(SetupInput(docker=True, image="t:1", default_tier="kernel"))["sandbox_image"]
    assert not building.ok and building.severity == "warning" and "being looked for or built" in building.problem


def test_bubblewrap_missing_refuses_kernel_sessions_and_says_how_to_install_it():
    error = "kernels are refused: kernels run isolated or not at all, but they cannot be isolated here (bwrap: not found)"
    check = by_id(SetupInput(kernel=False, isolation="none", isolation_reason="bwrap: not found", isolation_error=error,
                             docker=False))["bubblewrap"]
    assert not check.ok and check.severity == "error" and check.command == "sudo apt-get install bubblewrap"
    assert "bwrap: not found" in check.problem and check.docs == "docs/kernel-tier.md#isolation"
    # With the container tier as the default, kernel sessions missing is a warning.
    assert by_id(SetupInput(kernel=False, isolation="none", docker=True, default_tier="container"))["bubblewrap"].severity == "warning"
    # Isolation turned off by the operator: kernels run, unisolated — worth a warning.
    off = by_id(SetupInput(kernel=True, isolation="none", isolation_setting="none"))["bubblewrap"]
    assert not off.ok and off.severity == "warning" and 'isolation = "none"' in off.problem


def test_an_engine_not_installed_is_a_warning_for_kernels_and_an_error_for_containers():
    kernel = by_id(SetupInput(egress_engine="not installed", default_tier="kernel"))["egress_engine"]
    assert not kernel.ok and kernel.severity == "warning"
    assert kernel.command == "jupyter cma install-egress-engine" and "no network access" in kernel.problem
    assert kernel.docs == "docs/egress-proxy.md#the-engine"
    assert by_id(SetupInput(egress_engine="not installed", default_tier="container"))["egress_engine"].severity == "error"
    stopped = by_id(SetupInput(egress_engine="stopped", egress_error="the egress engine did not start: boom; retrying"))["egress_engine"]
    assert not stopped.ok and "did not start: boom" in stopped.problem


def test_setting_errors_are_one_check_listing_each():
    check = by_id(SetupInput(errors=("egress_middleware: cannot import x.y", "webhook_secret: not whsec_ form")))["settings"]
    assert not check.ok and check.severity == "error" and check.problem.startswith("2 settings cannot be used")
    assert "egress_middleware" in check.problem and "webhook_secret" in check.problem and check.docs == "docs/settings.md"


def test_the_input_is_read_from_the_status_document():
    status = {
        "mode": "webhook", "ready": False, "missing": ["api_key"], "errors": ["x: y"], "default_tier": "kernel",
        "tiers": {"container": {"available": False, "reason": "no engine", "image": "img:1", "image_id": None, "image_error": None},
                  "kernel": {"available": True, "isolation": "bubblewrap", "setting": "auto", "reason": None, "error": None}},
        "egress": {"proxy": {"engine": "not installed", "error": "missing"}},
    }
    facts = SetupInput.from_status(status, base_url="/user/ada/")
    assert facts == SetupInput(mode="webhook", missing=frozenset({"api_key"}), errors=("x: y",), default_tier="kernel", docker=False,
                               docker_reason="no engine", image="img:1", kernel=True, isolation="bubblewrap",
                               egress_engine="not installed", egress_error="missing", base_url="/user/ada/")
    assert "/user/ada/cma/webhooks" in by_id(SetupInput(mode="webhook", missing=frozenset({"webhook_secret"}),
                                                        base_url="/user/ada/"))["webhook_secret"].fix


# ---------------------------------------------------------------------- through a real server


@pytest.fixture
def cma_environment_id():
    return ""  # no configuration at all


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch, cma_environment_id):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    cma: dict[str, Any] = {"data_dir": str(tmp_path / "cma"), "idle_release_seconds": 1.0}
    if cma_environment_id:
        cma["environment_id"] = cma_environment_id
    return {
        # jupyter_server_terminals' websocket lacks the auth decorators this strict mode demands; it is not ours.
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False},
                      "allow_unauthenticated_access": False},
        "CMAApp": cma,
        "KernelTier": {"pool_size": 1},
        "ContainerTier": {"pool_size": 0},
    }


@asynccontextmanager
async def started(serverapp: Any) -> AsyncIterator[Any]:
    """The server's extension, started (pytest-jupyter starts the server, not its extensions); its CMAApp."""
    await serverapp.extension_manager.start_all_extensions()
    (ext,) = serverapp.extension_manager.extension_apps["jupyter_cma"]
    yield ext


async def api(fetch: Any, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
    response = await fetch("cma", "api", *path.split("/"), method=method,
                           body=None if body is None and method == "GET" else json.dumps(body or {}), **kw)
    return json.loads(response.body)


async def refused(fetch: Any, status: int, method: str, path: str, **kw: Any) -> str:
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await api(fetch, method, path, **kw)
    assert err.value.code == status, err.value.response.body if err.value.response else err.value
    return err.value.response.body.decode()


async def test_a_server_with_no_configuration_lists_what_is_missing_and_how_to_fix_it(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        doc = await api(jp_fetch, "GET", "setup")
        assert doc["ready"] is False and doc["mode"] == "poll"
        assert doc["emulator"] == {"running": False, "owned": False, "url": None}
        assert doc["can_start_emulator"] is True
        checks = {c["id"]: c for c in doc["checks"]}
        assert list(checks) == [i for i in CHECK_IDS if i != "webhook_secret"], "poll mode: no signing secret needed"
        for name, variable in (("environment_id", "ANTHROPIC_ENVIRONMENT_ID"), ("environment_key", "ANTHROPIC_ENVIRONMENT_KEY"),
                               ("api_key", "ANTHROPIC_API_KEY")):
            check = checks[name]
            assert check["ok"] is False and check["severity"] == "error", check
            assert check["problem"] and variable in check["command"] and check["docs"].startswith("docs/settings.md"), check
            assert set(check) == {"id", "ok", "severity", "title", "problem", "fix", "command", "docs"}
        # What the machine has is checked as the status sees it (not as this test guesses it).
        status = await api(jp_fetch, "GET", "status")
        assert checks["egress_engine"]["ok"] is (status["egress"]["proxy"]["engine"] == "running")
        assert set(status["missing"]) == {"environment_id", "environment_key", "api_key"}
        assert ext.local_emulator is None


async def test_unauthenticated_requests_get_403_and_start_nothing(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        for method, path in (("GET", "setup"), ("POST", "setup/emulator")):
            body = await refused(jp_fetch, 403, method, path, headers={"Authorization": ""})
            assert "checks" not in body and "sk-ant" not in body
        assert ext.local_emulator is None and not ext.environment_id


async def test_a_notebook_kernel_cannot_start_the_emulator(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        manager = jp_serverapp.kernel_manager
        kernel_id = await manager.start_kernel()
        try:
            key = manager.get_kernel(kernel_id).session.key
            path = f"{jp_serverapp.base_url}cma/api/setup/emulator"
            signed = {"Authorization": authorization(key, kernel_id, "POST", path, b"")}
            # The signature is good (the kernel reads the setup), but reconfiguring the server is not a kernel's to do.
            assert (await api(jp_fetch, "GET", "setup", headers={"Authorization": authorization(
                key, kernel_id, "GET", f"{jp_serverapp.base_url}cma/api/setup", b"")}))["ready"] is False
            with pytest.raises(tornado.httpclient.HTTPClientError) as err:
                await jp_fetch("cma", "api", "setup", "emulator", method="POST", body=b"", headers=signed)
            assert err.value.code == 403 and "a kernel cannot reconfigure" in json.loads(err.value.response.body)["message"]
            assert ext.local_emulator is None and not ext.environment_id
        finally:
            await manager.shutdown_kernel(kernel_id)


async def session_finished(fetch: Any, session_id: str) -> list[dict[str, Any]] | None:
    events = (await api(fetch, "GET", f"sessions/{session_id}/events", params={"limit": "1000"}))["data"]
    ended = [e for e in events if e["type"] == "session.status_idle" and e["stop_reason"]["type"] == "end_turn"]
    return events if ended else None


async def test_the_local_emulator_makes_the_server_ready_and_sessions_run_on_the_kernel_tier(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        assert (await api(jp_fetch, "GET", "status"))["api_base_url"] == "https://api.anthropic.com"
        doc = await api(jp_fetch, "POST", "setup/emulator")
        emulator = ext.local_emulator
        assert emulator is not None and emulator.running
        info = emulator.info
        assert doc["emulator"] == {"running": True, "owned": True, "url": info.base_url}
        assert info.base_url.startswith("http://127.0.0.1:")
        checks = {c["id"]: c for c in doc["checks"]}
        assert all(checks[n]["ok"] for n in ("environment_id", "environment_key", "api_key", "settings")), checks
        assert doc["ready"] is True and doc["mode"] == "poll" and doc["can_start_emulator"] is True
        # Names only: neither of the emulator's credentials is in any answer.
        secrets = (info.api_key.reveal(), info.environment_key.reveal())
        status = await api(jp_fetch, "GET", "status")
        for text in (json.dumps(doc), json.dumps(status), json.dumps(await api(jp_fetch, "GET", "setup"))):
            assert not any(s in text for s in secrets)
        assert status["api_base_url"] == info.base_url and status["environment_id"] == info.environment_id
        assert status["dispatch"] is not None
        # The worker's own API calls are allowed toward the emulator now, and nowhere else.
        assert str(ext.egress_resolver.system) == info.base_url
        if ext.egress_proxy.available:
            assert ext.egress_proxy.running and ext.egress_proxy.api_base_url == info.base_url

        # Idempotent: a second start answers the same running emulator.
        again = await api(jp_fetch, "POST", "setup/emulator")
        assert again["emulator"] == doc["emulator"] and ext.local_emulator is emulator

        # Sessions really run: an agent and a session made through the REST API, served on the kernel tier.
        agent = await api(jp_fetch, "POST", "agents", {"name": "setup", "tier": "kernel"})
        script = {"cma_script": [{"tool": "python", "input": {"code": "print(6 * 7)"}}, {"say": "done: {result}"}]}
        session = await api(jp_fetch, "POST", "sessions", {"agent_id": agent["id"], "message": json.dumps(script)})
        events = await wait_until(lambda: session_finished(jp_fetch, session["id"]), 90, interval=0.2,
                                  what="the session's turn to end")
        results = ["".join(b["text"] for b in e["content"] if b["type"] == "text") for e in events if e["type"] == "user.custom_tool_result"]
        assert results == ["42\n"]
        row = await api(jp_fetch, "GET", f"sessions/{session['id']}")
        assert row["tier"] == "kernel" and row["cold_start_ms"] is not None

        # Stopped with the server: the process ends and its directory goes.
        pid, workdir = emulator.pid, emulator.workdir
        assert workdir is not None and workdir.is_dir()
        await ext.stop_extension()
        assert not emulator.running and not workdir.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("cma_environment_id", ["env_0123elsewhere"])
async def test_a_server_configured_for_another_api_refuses_the_emulator_with_409(jp_serverapp, jp_fetch, cma_environment_id):
    async with started(jp_serverapp) as ext:
        doc = await api(jp_fetch, "GET", "setup")
        assert doc["can_start_emulator"] is False
        assert {c["id"]: c["ok"] for c in doc["checks"]}["environment_id"] is True
        message = json.loads(await refused(jp_fetch, 409, "POST", "setup/emulator"))["message"]
        assert "env_0123elsewhere" in message and "environment_id" in message
        assert ext.local_emulator is None and ext.environment_id == "env_0123elsewhere"
        assert (await api(jp_fetch, "GET", "status"))["api_base_url"] == "https://api.anthropic.com"


async def test_an_owned_emulator_that_died_is_replaced_by_a_new_one(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        first = await api(jp_fetch, "POST", "setup/emulator")
        dead = ext.local_emulator
        os.kill(dead.pid, signal.SIGKILL)  # the emulator this test had the server start
        await wait_until(lambda: not dead.running, 30, what="the emulator to be gone")
        doc = await api(jp_fetch, "GET", "setup")
        assert doc["emulator"] == {"running": False, "owned": True, "url": first["emulator"]["url"]}
        assert doc["can_start_emulator"] is True, "ours, and dead: starting again replaces it"
        old_poll = ext._emulator_poll
        again = await api(jp_fetch, "POST", "setup/emulator")
        assert ext.local_emulator is not dead and again["emulator"]["running"] is True
        assert again["emulator"]["url"] != first["emulator"]["url"] and again["ready"] is True
        assert old_poll.done() and not ext._emulator_poll.done(), "the old poll loop ended; the new one polls"
        assert dead.workdir is None, "the dead one's directory went"
        # The control plane reaches the new emulator.
        agent = await api(jp_fetch, "POST", "agents", {"name": "after", "tier": "kernel"})
        assert agent["id"] in {a["id"] for a in (await api(jp_fetch, "GET", "agents"))["data"]}


async def test_starting_the_emulator_tells_the_live_views_to_refetch_the_setup(jp_serverapp, jp_fetch):
    async with started(jp_serverapp) as ext:
        view = ext.live.subscribe()
        try:
            await api(jp_fetch, "POST", "setup/emulator")
            kinds = [m["kind"] for m in json.loads(view.take(1 << 20) or "[]")]
            assert kinds.count("status.changed") == 1, kinds
        finally:
            ext.live.unsubscribe(view)
            await ext.stop_extension()
