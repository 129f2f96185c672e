"""The server extension through a real Jupyter server (pytest-jupyter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import tornado.httpclient
from jupyter_server.utils import JupyterServerAuthWarning

API_KEY_VALUE = "sk-ant-test-secret-value-0123456789"


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY_VALUE)
    monkeypatch.delenv("ANTHROPIC_ENVIRONMENT_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_ENVIRONMENT_ID", raising=False)
    monkeypatch.delenv("ANTHROPIC_WEBHOOK_SIGNING_KEY", raising=False)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True}, "allow_unauthenticated_access": False},
        "CMAApp": {"data_dir": str(tmp_path / "cma")},
    }


async def test_status_reports_settings_by_name_and_never_values(jp_fetch, tmp_path):
    response = await jp_fetch("cma", "api", "status")
    body = json.loads(response.body)
    assert body["version"] == "0.1.0"
    assert body["mode"] == "poll"  # no webhook secret configured
    assert set(body["missing"]) == {"environment_id", "environment_key"}
    assert body["ready"] is False
    assert set(body["tiers"]) == {"container", "kernel"}
    assert API_KEY_VALUE not in response.body.decode()


async def test_status_needs_authentication(jp_fetch):
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await jp_fetch("cma", "api", "status", headers={"Authorization": ""})
    assert err.value.code == 403
    assert API_KEY_VALUE not in err.value.response.body.decode()


async def test_tiers_are_probed_in_the_background(jp_serverapp, jp_fetch):
    import asyncio

    await jp_serverapp.extension_manager.start_all_extensions()
    for _ in range(100):
        tiers = json.loads((await jp_fetch("cma", "api", "status")).body)["tiers"]
        if tiers["kernel"].get("available") is not None and tiers["container"]["available"] is not None:
            break
        await asyncio.sleep(0.1)
    assert isinstance(tiers["container"]["available"], bool)
    assert "available" in tiers["kernel"]
    # What kernels actually get, from the tier itself (not just whether bwrap exists).
    assert tiers["kernel"]["isolation"] in ("bubblewrap", "none") and tiers["kernel"]["setting"] == "auto"


async def test_no_auth_warning_with_unauthenticated_access_off(jp_serverapp):
    # pyproject turns JupyterServerAuthWarning into an error, so reaching this
    # point already proves every jupyter-cma route is authenticated; make it explicit.
    assert jp_serverapp.allow_unauthenticated_access is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", JupyterServerAuthWarning)
        from jupyter_cma.web.handlers import handlers

        (ext,) = jp_serverapp.extension_manager.extension_apps["jupyter_cma"]
        routes = [(f"/probe{i}", h, kw) for i, (_, h, kw) in enumerate(ext.handlers)]
        jp_serverapp.web_app.add_handlers(".*$", routes)


async def test_webhook_secret_file_must_be_private(jp_configurable_serverapp, tmp_path):
    secret = tmp_path / "whsec"
    secret.write_text("whsec_c2VjcmV0Cg==")
    secret.chmod(0o644)
    app = jp_configurable_serverapp(argv=[f"--CMAApp.webhook_secret_file={secret}", f"--CMAApp.data_dir={tmp_path / 'd'}"])
    cma = app.extension_manager.extension_apps["jupyter_cma"]
    (ext,) = cma
    status = ext.status()
    assert status["ready"] is False
    assert any("chmod 600" in e for e in status["errors"])
    assert "whsec_c2VjcmV0Cg==" not in json.dumps(status)


async def test_webhook_mode_when_secret_configured(jp_configurable_serverapp, tmp_path):
    secret = tmp_path / "whsec"
    secret.write_text("whsec_c2VjcmV0Cg==")
    secret.chmod(0o600)
    app = jp_configurable_serverapp(argv=[f"--CMAApp.webhook_secret_file={secret}", f"--CMAApp.data_dir={tmp_path / 'd'}"])
    (ext,) = app.extension_manager.extension_apps["jupyter_cma"]
    assert ext.status()["mode"] == "webhook"
    assert "webhook_secret" not in ext.status()["missing"]


async def test_stop_extension_is_bounded(jp_serverapp):
    await jp_serverapp.extension_manager.start_all_extensions()
    (ext,) = jp_serverapp.extension_manager.extension_apps["jupyter_cma"]
    assert len(ext.background), "background tasks should be running"
    await ext.stop_extension()
    assert not len(ext.background)


def test_extension_enabled_on_install():
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True, text=True, check=True, env={**os.environ, "NO_COLOR": "1"},
    )
    text = out.stdout + out.stderr
    assert "jupyter_cma" in text and "enabled" in text
    assert "jupyter_cma 0.1.0" in text and "OK" in text


def test_import_is_light():
    # Kernels import jupyter_cma; the server side must not come along.
    code = "import sys, jupyter_cma; print(any(m.startswith(('jupyter_server', 'tornado', 'anthropic')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
