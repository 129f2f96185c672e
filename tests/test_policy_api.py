"""The egress policy and secrets REST API through a real Jupyter server (pytest-jupyter)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tornado.httpclient

from jupyter_cma.egress.policy import Decision

SECRET_VALUE = "ghp_SuperSecretValue_0123456789abcdef"
ROTATED_VALUE = "ghp_RotatedSecretValue_9876543210fedcba"


@pytest.fixture
def egress_middleware():
    return []


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch, egress_middleware):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_ENVIRONMENT_KEY", "ANTHROPIC_ENVIRONMENT_ID", "ANTHROPIC_WEBHOOK_SIGNING_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return {
        # jupyter_server_terminals' websocket lacks the auth decorators this strict mode demands; it is not ours.
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False}, "allow_unauthenticated_access": False},
        "CMAApp": {"data_dir": str(tmp_path / "cma"), "api_base_url": "https://api.anthropic.com", "egress_middleware": egress_middleware},
        "KernelTier": {"pool_size": 0},
    }


class Client:
    """The egress API of the test server; remembers every response body it saw."""

    def __init__(self, fetch) -> None:
        self.fetch = fetch
        self.seen: list[str] = []

    async def call(self, method: str, path: str, body=None, *, raw: str | None = None, **kw):
        payload = raw if raw is not None else (None if body is None else json.dumps(body))
        try:
            response = await self.fetch("cma", "api", *path.strip("/").split("/"), method=method, body=payload, **kw)
        except tornado.httpclient.HTTPClientError as err:
            self.seen.append(err.response.body.decode() if err.response else "")
            raise
        self.seen.append(response.body.decode())
        return response.code, json.loads(response.body)

    async def ok(self, method: str, path: str, body=None, **kw):
        return (await self.call(method, path, body, **kw))[1]

    async def error(self, status: int, method: str, path: str, body=None, **kw) -> str:
        with pytest.raises(tornado.httpclient.HTTPClientError) as err:
            await self.call(method, path, body, **kw)
        assert err.value.code == status, err.value.response.body
        message = json.loads(err.value.response.body)["message"]
        assert message
        return message

    async def decide(self, url: str, method: str = "GET", **ctx) -> dict:
        return (await self.ok("POST", "egress/decide", {"url": url, "method": method, **ctx}))["decision"]


@pytest.fixture
def api(jp_fetch):
    return Client(jp_fetch)


def ext(serverapp):
    (app,) = serverapp.extension_manager.extension_apps["jupyter_cma"]
    return app


PYPI = {"name": "python packages", "scope": {"environment": True}, "presets": ["pypi"]}


async def test_policy_crud_round_trip(api):
    status, created = await api.call("POST", "egress/policies", PYPI)
    assert status == 201 and created["id"].startswith("pol_") and created["presets"] == ["pypi"] and created["warnings"] == []
    pid = created["id"]
    assert [p["id"] for p in (await api.ok("GET", "egress/policies"))["data"]] == [pid]
    fetched = await api.ok("GET", f"egress/policies/{pid}")
    assert fetched["name"] == "python packages" and fetched["scope"] == {"environment": True}
    # What GET returns can be PUT back after editing (read-only fields are ignored).
    fetched["allow"] = ["example.com"]
    updated = await api.ok("PUT", f"egress/policies/{pid}", fetched)
    assert updated["allow"] == ["example.com"] and updated["updated_at"] >= created["updated_at"]
    assert await api.ok("DELETE", f"egress/policies/{pid}") == {"id": pid, "deleted": True}
    assert "no egress policy" in await api.error(404, "GET", f"egress/policies/{pid}")
    assert (await api.ok("GET", "egress/policies"))["data"] == []


async def test_bad_policy_input_gets_a_400_that_says_what_to_fix(api):
    message = await api.error(400, "POST", "egress/policies", {"name": "x", "scope": {"environment": True}, "allow": ["*.com"]})
    assert "allow[0]" in message and "public suffix" in message
    assert "allow_all" in await api.error(400, "POST", "egress/policies", {"name": "x", "scope": {"environment": True}, "allow": ["*"]})
    assert "scope is required" in await api.error(400, "POST", "egress/policies", {"name": "x"})
    assert "userinfo" in await api.error(400, "POST", "egress/policies", {"name": "x", "scope": {"environment": True}, "allow": ["allowed.com@evil.com"]})
    assert "not valid JSON" in await api.error(400, "POST", "egress/policies", raw="{nope")
    assert "JSON object" in await api.error(400, "POST", "egress/policies", raw="[1]")
    pid = (await api.ok("POST", "egress/policies", PYPI))["id"]
    assert "already exists" in await api.error(409, "POST", "egress/policies", {**PYPI, "name": "another"})
    assert "already exists" in await api.error(409, "POST", "egress/policies", {**PYPI, "scope": {"agent_id": "agent_1"}})
    assert "public suffix" in await api.error(400, "PUT", f"egress/policies/{pid}", {**PYPI, "allow": ["*.io"]})
    assert "is not" in await api.error(400, "PUT", f"egress/policies/{pid}", {**PYPI, "id": "pol_other"})
    for method in ("GET", "PUT", "DELETE"):
        assert "no egress policy" in await api.error(404, method, "egress/policies/pol_unknown", PYPI if method == "PUT" else None)
    assert (await api.ok("GET", f"egress/policies/{pid}"))["presets"] == ["pypi"], "a refused update changes nothing"
    # Each route answers only its own methods: no creating through an id's URL, no listing through validate.
    for method, path in (("POST", f"egress/policies/{pid}"), ("GET", "egress/policies/validate"), ("GET", "egress/decide"), ("POST", "egress/secrets")):
        await api.error(405, method, path, PYPI if method == "POST" else None)
    assert len((await api.ok("GET", "egress/policies"))["data"]) == 1


async def test_validate_is_a_dry_run(api):
    good = await api.ok("POST", "egress/policies/validate", {
        "name": "gh", "scope": {"agent_id": "agent_1"}, "allow": ["API.GitHub.com."],
        "inject": [{"host": "api.github.com", "header": "Authorization", "secret": "GITHUB_TOKEN", "prefix": "Bearer "}],
    })
    assert good["valid"] is True and good["policy"]["allow"] == ["api.github.com"]
    assert any("GITHUB_TOKEN is not set" in w for w in good["warnings"])
    bad = await api.ok("POST", "egress/policies/validate", {"name": "x", "scope": {"environment": True}, "allow": ["*.com", "http://a.com"], "deny": "x"})
    assert bad["valid"] is False and len(bad["errors"]) == 3
    assert (await api.ok("GET", "egress/policies"))["data"] == []


async def test_decide_explains_the_decision_and_sees_edits_at_once(api, jp_serverapp):
    deny = await api.decide("https://pypi.org/simple/numpy/")
    assert (deny["action"], deny["rule"], deny["status"]) == ("deny", "default:no-policy", 403)
    pid = (await api.ok("POST", "egress/policies", PYPI))["id"]
    answer = await api.ok("POST", "egress/decide", {"url": "https://pypi.org/simple/numpy/", "session_id": "sesn_1"})
    assert answer["decision"]["action"] == "allow" and answer["decision"]["rule"] == f"policy:{pid}:preset:pypi:pypi.org"
    assert answer["request"] == {"method": "GET", "scheme": "https", "host": "pypi.org", "port": 443, "path": "/simple/numpy/", "websocket": False}
    assert answer["resolution"]["policies"] == [{"id": pid, "name": "python packages", "scope": {"environment": True}, "role": "decides"}]
    assert (await api.decide("https://pypi.org/legacy/", "POST"))["action"] == "deny"
    await api.ok("PUT", f"egress/policies/{pid}", {**PYPI, "presets": [], "allow": ["example.com"]})
    assert (await api.decide("https://pypi.org/simple/numpy/"))["action"] == "deny", "the very next decision sees the edit"
    assert (await api.decide("https://example.com/"))["action"] == "allow"
    # The system allows the API host only for a worker's own calls: a request with no worker behind it is the
    # policy's to decide (and so are the look-alikes).
    assert (await api.decide("https://api.anthropic.com/v1/sessions"))["action"] == "deny"
    for url in ("https://api.anthropic.com.evil.com/", "https://evilapi.anthropic.com/"):
        assert (await api.decide(url))["action"] == "deny", url
    assert (await api.decide("https://example.com:443", "CONNECT"))["action"] == "allow"
    assert (await api.decide("https://example.com:22", "CONNECT"))["action"] == "deny"
    assert (await api.decide("wss://example.com/socket"))["rule"] == f"policy:{pid}:websocket"


async def test_decide_resolves_the_session_and_its_agent(api, jp_serverapp):
    ext(jp_serverapp).store.transition("sesn_served", "claimed", "work item claimed", agent_id="agent_7", tier="kernel")
    await api.ok("POST", "egress/policies", {"name": "env", "scope": {"environment": True}, "allow": ["env.example.com"], "deny": ["banned.example.com"]})
    await api.ok("POST", "egress/policies", {"name": "agent 7", "scope": {"agent_id": "agent_7"}, "allow": ["agent.example.com", "banned.example.com"]})
    await api.ok("POST", "egress/policies", {"name": "ml", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}, "allow": ["ml.example.com"]})
    answer = await api.ok("POST", "egress/decide", {"url": "https://agent.example.com/", "session_id": "sesn_served"})
    assert answer["context"]["agent_id"] == "agent_7" and answer["decision"]["action"] == "allow"
    assert [p["name"] for p in answer["resolution"]["policies"]] == ["agent 7", "env"]
    assert (await api.decide("https://banned.example.com/", session_id="sesn_served"))["rule"].endswith(":deny:banned.example.com")
    assert (await api.decide("https://ml.example.com/", metadata={"team": "ml"}))["action"] == "allow"
    assert (await api.decide("https://ml.example.com/", session_id="sesn_served", metadata={"team": "ml"}))["action"] == "deny"
    assert (await api.decide("https://env.example.com/", agent_id="agent_8"))["action"] == "allow"


async def test_decide_refuses_ambiguous_or_bad_input(api):
    assert "userinfo" in await api.error(400, "POST", "egress/decide", {"url": "http://allowed.com@evil.com/"})
    assert "backslash" in await api.error(400, "POST", "egress/decide", {"url": "http://allowed.com\\@evil.com/"})
    assert "url is required" in await api.error(400, "POST", "egress/decide", {})
    assert "absolute" in await api.error(400, "POST", "egress/decide", {"url": "ftp://x.com/"})
    assert "port" in await api.error(400, "POST", "egress/decide", {"url": "https://x.com:99999/"})
    assert "session_id" in await api.error(400, "POST", "egress/decide", {"url": "https://x.com/", "session_id": "../x"})
    assert "metadata" in await api.error(400, "POST", "egress/decide", {"url": "https://x.com/", "metadata": {"a": 1}})
    bad_host = await api.decide("https://127.1/")
    assert (bad_host["action"], bad_host["status"], bad_host["rule"]) == ("deny", 400, "invalid:request")


async def test_every_egress_route_needs_a_token(api):
    no_token = {"headers": {"Authorization": ""}}
    for method, path, body in (
        ("GET", "egress/policies", None), ("POST", "egress/policies", PYPI), ("POST", "egress/policies/validate", PYPI),
        ("GET", "egress/policies/pol_x", None), ("PUT", "egress/policies/pol_x", PYPI), ("DELETE", "egress/policies/pol_x", None),
        ("POST", "egress/decide", {"url": "https://pypi.org/"}), ("GET", "egress/secrets", None),
        ("PUT", "egress/secrets/TOKEN", {"value": SECRET_VALUE}), ("DELETE", "egress/secrets/TOKEN", None),
    ):
        await api.error(403, method, path, body, **no_token)
    assert (await api.ok("GET", "egress/secrets"))["data"] == [] and (await api.ok("GET", "egress/policies"))["data"] == []


async def test_secrets_api_never_shows_a_value(api, jp_serverapp, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    status, created = await api.call("PUT", "egress/secrets/GITHUB_TOKEN", {"value": SECRET_VALUE})
    assert status == 201 and set(created) == {"name", "created_at", "updated_at", "fingerprint"}
    listed = (await api.ok("GET", "egress/secrets"))["data"]
    assert [s["name"] for s in listed] == ["GITHUB_TOKEN"] and listed[0]["fingerprint"] == created["fingerprint"]
    status, rotated = await api.call("PUT", "egress/secrets/GITHUB_TOKEN", {"value": ROTATED_VALUE})
    assert status == 200 and rotated["fingerprint"] != created["fingerprint"] and rotated["created_at"] == created["created_at"]
    secrets_file = tmp_path / "cma" / "secrets" / "secrets.json"
    assert secrets_file.stat().st_mode & 0o777 == 0o600

    # Use it: a policy that injects it, explained through decide (names only).
    await api.ok("POST", "egress/policies", {
        "name": "github", "scope": {"environment": True}, "allow": ["api.github.com"],
        "inject": [{"host": "api.github.com", "header": "Authorization", "secret": "GITHUB_TOKEN", "prefix": "Bearer "}],
    })
    decision = await api.decide("https://api.github.com/user")
    assert decision["injections"] == [{"header": "Authorization", "secret": "GITHUB_TOKEN", "prefix": "Bearer ", "secret_set": True}]
    assert (await api.decide("https://api.github.com.evil.com/user"))["injections"] == []
    assert ext(jp_serverapp).egress_secrets.get("GITHUB_TOKEN").reveal() == ROTATED_VALUE, "the proxy's way in"

    # Bad input, with the value in the request: refused without echoing it.
    assert "letters, digits" in await api.error(400, "PUT", "egress/secrets/bad-name", {"value": SECRET_VALUE})
    assert "one line" in await api.error(400, "PUT", "egress/secrets/OTHER", {"value": SECRET_VALUE + "\nX-Evil: 1"})
    assert "echo is not a field here; the fields are value" in await api.error(
        400, "PUT", "egress/secrets/OTHER", {"value": SECRET_VALUE, "echo": SECRET_VALUE})
    assert "not valid JSON" in await api.error(400, "PUT", "egress/secrets/OTHER", raw='{"value": "' + SECRET_VALUE)
    assert "appears twice" in await api.error(400, "PUT", "egress/secrets/OTHER", raw=f'{{"value": "x", "value": "{SECRET_VALUE}"}}')
    assert "value: input should be a valid string" in await api.error(400, "PUT", "egress/secrets/OTHER", {"value": [SECRET_VALUE]})
    assert "no secret" in await api.error(404, "DELETE", "egress/secrets/NEVER_SET")
    status_body = await api.ok("GET", "status")
    assert status_body["egress"]["secrets"] == 1 and status_body["egress"]["policies"] == 1

    # Nothing shows either value: no API response, no log line, no file of the store.
    for value in (SECRET_VALUE, ROTATED_VALUE):
        for body in api.seen:
            assert value not in body
        assert value not in caplog.text
        for path in Path(tmp_path / "cma").rglob("*"):
            if path.is_file() and path != secrets_file:
                assert value.encode() not in path.read_bytes(), path
    assert ROTATED_VALUE in secrets_file.read_text(), "the value lives in the secrets file and nowhere else"
    assert "GITHUB_TOKEN" in caplog.text, "writes are logged by name"
    assert await api.ok("DELETE", "egress/secrets/GITHUB_TOKEN") == {"name": "GITHUB_TOKEN", "deleted": True}
    assert (await api.ok("GET", "egress/secrets"))["data"] == []


async def test_a_corrupt_policy_is_listed_with_its_error_and_fails_closed(api, jp_serverapp):
    pid = (await api.ok("POST", "egress/policies", PYPI))["id"]
    store = ext(jp_serverapp).store
    store._db.execute("UPDATE egress_policies SET document = '{broken' WHERE id = ?", (pid,))
    store._db.execute("UPDATE egress_revision SET revision = revision + 1")
    (listed,) = (await api.ok("GET", "egress/policies"))["data"]
    assert listed["id"] == pid and "invalid" in listed["error"]
    decision = await api.decide("https://pypi.org/simple/")
    assert (decision["action"], decision["rule"]) == ("deny", f"error:policy:{pid}")
    assert (await api.ok("GET", "status"))["egress"]["corrupt_policies"] == [pid]
    await api.ok("PUT", f"egress/policies/{pid}", PYPI)  # fixing it by PUT works
    assert (await api.decide("https://pypi.org/simple/"))["action"] == "allow"


def deny_pypi_posts(request, decision):
    """A middleware for the tests below."""
    if request.host == "pypi.org" and request.method == "POST":
        return Decision.deny("no-uploads", "uploads are not allowed here")
    return None


@pytest.mark.parametrize("egress_middleware", [["tests.test_policy_api.deny_pypi_posts"]])
async def test_configured_middleware_is_consulted(api, egress_middleware):
    await api.ok("POST", "egress/policies", {"name": "all", "scope": {"environment": True}, "allow": [{"host": "pypi.org"}]})
    assert (await api.decide("https://pypi.org/simple/"))["action"] == "allow"
    denied = await api.decide("https://pypi.org/legacy/", "POST")
    assert (denied["rule"], denied["reason"], denied["status"]) == ("middleware:tests.test_policy_api.deny_pypi_posts:no-uploads", "uploads are not allowed here", 403)
    assert (await api.ok("GET", "status"))["egress"]["middleware"] == egress_middleware


@pytest.mark.parametrize("egress_middleware", [["tests.test_policy_api.no_such_hook"]])
async def test_middleware_that_cannot_load_fails_closed(api, egress_middleware):
    await api.ok("POST", "egress/policies", PYPI)
    decision = await api.decide("https://pypi.org/simple/")
    assert (decision["action"], decision["rule"]) == ("deny", "error:setup")
    assert (await api.decide("https://api.anthropic.com/v1"))["rule"] == "error:setup"
    status = await api.ok("GET", "status")
    assert any(e.startswith("egress_middleware:") for e in status["errors"]) and status["ready"] is False
