"""Egress policies and secrets, unit level, on real SQLite files and real secret files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import stat

import pytest

from jupyter_cma.anthropic_api import Secret
from jupyter_cma.egress.policy import (
    Decision,
    HostPattern,
    Injection,
    Policy,
    PolicyConflict,
    PolicyError,
    PolicyResolver,
    PolicyStore,
    SessionContext,
    WorkerScope,
    canonical_path,
    load_middleware,
)
from jupyter_cma.egress.secrets import SecretStore, SecretStoreError, SecretValueError
from jupyter_cma.store import Store

API = "https://api.anthropic.com"
ENV = {"environment": True}
# A container's sandbox: its worker holds a placeholder for the token of work item work_1 (session sesn_1, environment env_1).
WORKER = SessionContext("sesn_1", "agent_1", worker=WorkerScope("sesn_1", "work_1", "env_1"))
HEARTBEAT = f"{API}/v1/environments/env_1/work/work_1/heartbeat?expected_last_heartbeat=hb"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cma.sqlite3")
    yield s
    s.close()


@pytest.fixture
def policies(store):
    return PolicyStore(store)


def resolver(policies: PolicyStore, **kw) -> PolicyResolver:
    return PolicyResolver(policies, api_base_url=kw.pop("api_base_url", API), **kw)


def decide(r: PolicyResolver, url: str, method: str = "GET", ctx: SessionContext | None = None, **kw) -> Decision:
    """Decide a URL like the proxy would after parsing it (CONNECT: path None)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    path = None if method == "CONNECT" else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return r.resolve(ctx or SessionContext("sesn_1", "agent_1")).decide(method, parts.scheme, host, parts.port, path, **kw)


def allowed(r: PolicyResolver, url: str, method: str = "GET", **kw) -> bool:
    return decide(r, url, method, **kw).action == "allow"


def env_policy(policies: PolicyStore, **doc) -> str:
    return policies.create({"name": doc.pop("name", "env"), "scope": doc.pop("scope", ENV), **doc}).id


# ---------------------------------------------------------------------- host patterns


def test_exact_names_match_only_themselves(policies):
    env_policy(policies, allow=["allowed.com"])
    r = resolver(policies)
    assert allowed(r, "https://allowed.com/")
    for lookalike in ("allowed.com.evil.com", "evilallowed.com", "sub.allowed.com", "allowed.co", "allowed.com-evil.com"):
        d = decide(r, f"https://{lookalike}/")
        assert d.action == "deny" and d.rule.endswith(":not-allowed"), lookalike


def test_names_are_normalised_on_both_sides(policies):
    env_policy(policies, allow=["Allowed.COM.", "bücher.de"])
    r = resolver(policies)
    for host in ("allowed.com", "ALLOWED.com", "allowed.com.", "AlLoWeD.CoM."):
        assert allowed(r, f"https://{host}/"), host
    assert allowed(r, "https://xn--bcher-kva.de/") and allowed(r, "https://BÜCHER.de/")
    assert not allowed(r, "https://\u0430llowed.com/"), "a Cyrillic look-alike is another name"
    assert policies.list()[0].policy.allow[0].pattern.host == "allowed.com"
    assert str(policies.list()[0].policy.allow[1].pattern) == "xn--bcher-kva.de"
    # A host with two trailing dots, or one that URL parsers read as a number, is not a name at all.
    for bad in ("allowed.com..", "127.1", "0x7f.1", "allowed.com%2e"):
        d = decide(r, f"https://{bad}/")
        assert (d.action, d.status, d.rule) == ("deny", 400, "invalid:request"), bad


def test_subdomain_wildcards_never_match_the_base_or_lookalikes(policies):
    env_policy(policies, allow=["*.a.com"])
    r = resolver(policies)
    assert allowed(r, "https://b.a.com/") and allowed(r, "https://x.y.a.com/")
    for host in ("a.com", "evila.com", "a.com.evil.com", "b.a.com.evil.com", "ba.com"):
        assert not allowed(r, f"https://{host}/"), host


def test_ports_default_to_the_scheme_and_explicit_ports_are_exact(policies):
    env_policy(policies, allow=["plain.example.com", "api.example.com:8443", "10.1.2.3", "[2001:db8::1]:8080"])
    r = resolver(policies)
    assert allowed(r, "https://plain.example.com/") and allowed(r, "http://plain.example.com/")
    for url in ("https://plain.example.com:80/", "http://plain.example.com:443/", "https://plain.example.com:8443/"):
        assert not allowed(r, url), url
    for port in (22, 25, 6379):
        assert not allowed(r, f"https://plain.example.com:{port}", "CONNECT"), port
    assert allowed(r, "https://api.example.com:8443/") and allowed(r, "http://api.example.com:8443/")
    assert not allowed(r, "https://api.example.com/")
    assert allowed(r, "https://10.1.2.3/") and not allowed(r, "https://10.1.2.4/")
    assert allowed(r, "http://[2001:db8::1]:8080/") and allowed(r, "http://[2001:db8:0:0::1]:8080/")
    assert not allowed(r, "http://[2001:db8::1]/")


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("*", "allow_all"),
        ("*.*", "allow_all"),
        ("*.com", "public suffix"),
        ("*.io", "public suffix"),
        ("*.co.uk", "public suffix"),
        ("*.com.au", "public suffix"),
        ("*.co.xy", "public suffix"),  # *.<second-level>.<ccTLD>, even one not in the list
        ("*.github.io", "public suffix"),
        ("*.amazonaws.com", "public suffix"),
        ("http://allowed.com", "without a scheme"),
        ("allowed.com/path", "no path"),
        ("10.0.0.0/8", "CIDR"),
        ("user@allowed.com", "userinfo"),
        ("allowed.com@evil.com", "userinfo"),
        ("allowed.com\\@evil.com", "backslash"),
        ("allowed.com\\", "backslash"),
        (" allowed.com", "whitespace"),
        ("allowed .com", "whitespace"),
        ("allowed.com\n", "whitespace"),
        ("a.*.com", "first label"),
        ("foo*.com", "first label"),
        ("*.10.0.0.1", "IP addresses"),
        ("allowed.com:0", "between 1 and 65535"),
        ("allowed.com:65536", "between 1 and 65535"),
        ("allowed.com:http", "port"),
        ("a..com", "empty label"),
        ("-a.com", "letters, digits"),
        ("a_b.com", "letters, digits"),
        ("127.1", "ends in a number"),
        ("fe80::1%eth0", "zone"),
        ("", "non-empty"),
    ],
)
def test_unsafe_or_malformed_patterns_are_refused_with_a_reason(pattern, complaint):
    with pytest.raises(PolicyError) as err:
        HostPattern.parse(pattern)
    assert complaint in str(err.value), str(err.value)


def test_allow_all_must_be_explicit_and_deny_lists_may_block_whole_suffixes(policies):
    with pytest.raises(PolicyError, match="allow_all"):
        policies.create({"name": "open", "scope": ENV, "allow": ["*"]})
    env_policy(policies, allow_all=True, deny=["*.ru", "*.tk", "blocked.example.com"])
    r = resolver(policies)
    assert allowed(r, "https://anything.example.org/") and allowed(r, "http://x.dev/")
    assert not allowed(r, "https://anything.example.org:22", "CONNECT"), "allow_all still means the default ports only"
    assert not allowed(r, "https://yandex.ru/") and not allowed(r, "https://blocked.example.com/")
    assert decide(r, "https://x.example.org/").rule.endswith(":allow_all:*")


def test_policy_validation_lists_every_problem_and_refuses_unknown_fields(policies):
    with pytest.raises(PolicyError) as err:
        policies.create({"name": "", "scope": {"agent_id": "a/b"}, "alow": ["x.com"], "allow": ["*.com", "ok.com"], "websocket": "maybe",
                         "presets": ["conda"], "inject": [{"host": "*.github.com", "header": "Authorization", "secret": "T"}]})
    problems = err.value.problems
    assert any("unknown field" in p and "alow" in p for p in problems)
    assert any(p.startswith("allow[0]") and "public suffix" in p for p in problems)
    assert any("name is required" in p for p in problems)
    assert any(p.startswith("scope") for p in problems)
    assert any("websocket" in p for p in problems)
    assert any("unknown preset" in p for p in problems)
    assert any(p.startswith("inject[0]") and "one exact host" in p for p in problems)
    assert policies.list() == [], "nothing invalid is stored"


def test_one_policy_per_scope_and_unique_names(policies):
    env_policy(policies, name="env")
    with pytest.raises(PolicyConflict, match="environment default"):
        policies.create({"name": "env2", "scope": ENV})
    with pytest.raises(PolicyConflict, match="named 'env'"):
        policies.create({"name": "env", "scope": {"agent_id": "agent_1"}})
    policies.create({"name": "a", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}})
    policies.create({"name": "b", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}})  # metadata scopes: any number


# ---------------------------------------------------------------------- rules


def test_deny_beats_allow(policies):
    env_policy(policies, allow=["*.example.com", "x.example.com"], deny=["x.example.com"])
    r = resolver(policies)
    d = decide(r, "https://x.example.com/")
    assert d.action == "deny" and d.rule.endswith(":deny:x.example.com") and d.status == 403
    assert allowed(r, "https://y.example.com/")
    # A deny without a port covers every port.
    assert not allowed(r, "https://x.example.com:8443/")


def test_method_and_path_rules(policies):
    env_policy(policies, allow=[{"host": "pkgs.example.com", "methods": ["get", "HEAD"], "paths": ["/simple/", "/packages"]}])
    r = resolver(policies)
    assert allowed(r, "https://pkgs.example.com/simple/numpy/")
    assert allowed(r, "https://pkgs.example.com/simple/numpy/?format=json")
    assert allowed(r, "https://pkgs.example.com/packages") and allowed(r, "https://pkgs.example.com/packages/x.whl")
    assert allowed(r, "https://pkgs.example.com/simple/", "HEAD")
    assert allowed(r, "https://pkgs.example.com:443", "CONNECT"), "a tunnel is decided on host and port; its requests one by one"
    d = decide(r, "https://pkgs.example.com/simple/", "POST")
    assert d.action == "deny" and "only GET, HEAD" in d.reason
    for path in ("/admin", "/simplex", "/packagesx", "/simple/../admin", "/simple/%2e%2e/admin", "/simple/%2E%2e/admin",
                 "/simple%2f..%2fadmin", "/simple//../admin", "/simple/./x", "/simple\\..\\admin", "/simple/%zz"):
        assert not allowed(r, f"https://pkgs.example.com{path}"), path
    assert canonical_path("/simple/%7Euser/") == "/simple/~user/"
    with pytest.raises(PolicyError, match="CONNECT"):
        Policy.from_document({"name": "x", "scope": ENV, "allow": [{"host": "a.com", "methods": ["CONNECT"]}]})
    with pytest.raises(PolicyError, match=r"'\.', '\.\.'"):
        Policy.from_document({"name": "x", "scope": ENV, "allow": [{"host": "a.com", "paths": ["/a/../b"]}]})


def test_presets_expand_to_read_only_rules(policies):
    env_policy(policies, presets=["pypi", "npm", "github", "huggingface"])
    r = resolver(policies)
    for url in ("https://pypi.org/simple/numpy/", "https://files.pythonhosted.org/packages/a/b/x.whl", "https://registry.npmjs.org/left-pad",
                "https://github.com/org/repo.git/info/refs", "https://raw.githubusercontent.com/org/repo/main/README.md",
                "https://objects.githubusercontent.com/x", "https://codeload.github.com/org/repo/tar.gz/main",
                "https://huggingface.co/gpt2/resolve/main/config.json", "https://cdn-lfs.hf.co/x"):
        assert allowed(r, url), url
    assert decide(r, "https://pypi.org/simple/").rule.endswith(":preset:pypi:pypi.org")
    assert allowed(r, "https://github.com/org/repo.git/git-upload-pack", "POST"), "git fetches with POST"
    assert not allowed(r, "https://registry.npmjs.org/left-pad", "PUT"), "npm publish is not a read"
    assert not allowed(r, "https://upload.pypi.org/legacy/", "POST")
    assert not allowed(r, "https://githubusercontent.com/") and not allowed(r, "https://api.github.com/")


def test_no_preset_no_pypi(policies):
    env_policy(policies, allow=["example.com"])
    assert not allowed(resolver(policies), "https://pypi.org/simple/")


def test_injection_only_toward_the_exact_target(policies):
    env_policy(
        policies,
        allow=["*.github.com", "api.github.com:8443", "api.github.com.evil.com"],
        inject=[{"host": "API.github.com.", "header": "Authorization", "secret": "GITHUB_TOKEN", "prefix": "Bearer "}],
    )
    r = resolver(policies)
    d = decide(r, "https://api.github.com/user")
    assert d.action == "allow" and d.injections == (Injection("Authorization", "GITHUB_TOKEN", "Bearer "),)
    assert decide(r, "https://api.github.com:443", "CONNECT").injections, "the tunnel's target gets them too"
    assert decide(r, "wss://api.github.com/stream", websocket=True).action == "deny"  # websocket default deny
    for url in ("https://api.github.com.evil.com/", "https://evilapi.github.com/", "https://x.api.github.com/",
                "https://api.github.com:8443/", "http://api.github.com/"):
        d = decide(r, url)
        assert d.injections == (), url
    assert Injection("Authorization", "GITHUB_TOKEN", "Bearer ").value(Secret("tok", "t")).reveal() == "Bearer tok"
    assert "tok" not in repr(Injection("Authorization", "GITHUB_TOKEN", "Bearer ").value(Secret("tok", "t")))


def test_injection_on_http_needs_saying_so_and_framing_headers_are_refused(policies):
    env_policy(policies, allow=["plain.example.com"], inject=[{"host": "plain.example.com", "scheme": "http", "header": "X-Api-Key", "secret": "KEY"}])
    r = resolver(policies)
    assert decide(r, "http://plain.example.com/").injections == (Injection("X-Api-Key", "KEY"),)
    assert decide(r, "https://plain.example.com/").injections == ()
    for header in ("Host", "Content-Length", "Transfer-Encoding", "Connection", "Proxy-Authorization"):
        with pytest.raises(PolicyError, match="cannot be injected"):
            Policy.from_document({"name": "x", "scope": ENV, "inject": [{"host": "a.com", "header": header, "secret": "S"}]})
    for secret in ("1TOKEN", "MY-TOKEN", "", "a" * 129):
        with pytest.raises(PolicyError, match="NAME of a stored secret"):
            Policy.from_document({"name": "x", "scope": ENV, "inject": [{"host": "a.com", "header": "Authorization", "secret": secret}]})
    with pytest.raises(PolicyError, match="injected twice"):
        Policy.from_document({"name": "x", "scope": ENV, "inject": [{"host": "a.com", "header": "Authorization", "secret": "A"},
                                                                  {"host": "a.com", "header": "authorization", "secret": "B"}]})


def test_injection_toward_a_host_the_policy_does_not_allow_is_flagged(policies):
    policy = Policy.from_document({"name": "x", "scope": ENV, "inject": [{"host": "api.github.com", "header": "Authorization", "secret": "T"}]})
    assert any("not allowed by this policy" in w for w in policy.warnings())
    env_policy(policies, inject=[{"host": "api.github.com", "header": "Authorization", "secret": "T"}])
    assert decide(resolver(policies), "https://api.github.com/").action == "deny"


def test_private_services(policies):
    env_policy(policies, private_services=[
        {"name": "warehouse.internal", "target": "10.0.0.5:8080"},
        {"name": "http://db-api", "target": "db.corp.example:5000"},
        {"name": "metrics.internal:9090", "target": "[fd00::5]:9090"},
    ], deny=["blocked.internal"])
    r = resolver(policies)
    d = decide(r, "https://warehouse.internal/v1/tables")
    assert d.action == "allow" and d.private_service.target == "10.0.0.5:8080" and d.rule.endswith("private_service:warehouse.internal")
    assert decide(r, "http://warehouse.internal/").private_service is not None
    assert decide(r, "http://db-api/rows").private_service.target == "db.corp.example:5000"
    assert decide(r, "https://db-api/").action == "deny", "declared for http only"
    assert decide(r, "http://db-api:8080/").action == "deny", "the default port of its scheme only"
    assert decide(r, "http://metrics.internal:9090/").private_service.target == "[fd00::5]:9090"
    assert decide(r, "https://warehouse.internal.evil.com/").private_service is None
    for target, why in (("169.254.169.254:80", "link-local"), ("metadata.google.internal:80", "metadata"), ("0.0.0.0:80", "unspecified"),
                        ("10.0.0.5", "host:port"), ("*.corp.example:80", "host:port")):
        with pytest.raises(PolicyError, match=why):
            Policy.from_document({"name": "x", "scope": ENV, "private_services": [{"name": "svc", "target": target}]})


def test_websocket_is_denied_unless_the_policy_allows_it(policies):
    pid = env_policy(policies, allow=["ws.example.com"])
    r = resolver(policies)
    assert allowed(r, "https://ws.example.com/")
    d = decide(r, "https://ws.example.com/socket", websocket=True)
    assert d.action == "deny" and d.rule.endswith(":websocket")
    assert decide(r, "wss://ws.example.com/socket").rule.endswith(":websocket"), "a ws(s) URL is a WebSocket"
    policies.update(pid, {"name": "env", "scope": ENV, "allow": ["ws.example.com"], "websocket": "allow"})
    assert allowed(r, "wss://ws.example.com/socket") and allowed(r, "https://ws.example.com/socket", websocket=True)
    assert not allowed(r, "wss://other.example.com/socket")


# ---------------------------------------------------------------------- scopes and resolution


def test_resolution_order_session_agent_metadata_environment(policies, store):
    policies.create({"name": "env", "scope": ENV, "allow": ["env.example.com"], "deny": ["banned.example.com"]})
    policies.create({"name": "team", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}, "allow": ["team.example.com"]})
    policies.create({"name": "team-gpu", "scope": {"metadata": [{"key": "team", "equals": "ml"}, {"key": "gpu", "one_of": ["a100", "h100"]}]},
                     "allow": ["gpu.example.com"]})
    policies.create({"name": "agent", "scope": {"agent_id": "agent_1"}, "allow": ["agent.example.com", "banned.example.com"]})
    policies.create({"name": "session", "scope": {"session_id": "sesn_1"}, "allow": ["session.example.com"]})
    r = resolver(policies)

    def deciding(ctx: SessionContext) -> str | None:
        chain = r.resolve(ctx).chain
        return chain[0].policy.name if chain else None

    meta = {"team": "ml", "gpu": "h100"}
    assert deciding(SessionContext("sesn_1", "agent_1", meta)) == "session"
    assert deciding(SessionContext("sesn_2", "agent_1", meta)) == "agent"
    assert deciding(SessionContext("sesn_2", "agent_2", meta)) == "team-gpu", "more matchers = more specific"
    assert deciding(SessionContext("sesn_2", "agent_2", {"team": "ml"})) == "team"
    assert deciding(SessionContext("sesn_2", "agent_2", {})) == "env"
    assert [p.policy.name for p in r.resolve(SessionContext("sesn_1", "agent_1", meta)).chain] == ["session", "agent", "team-gpu", "team", "env"]

    # The most specific policy alone decides what is allowed (no inheritance of allows) ...
    ctx = SessionContext("sesn_1", "agent_1", meta)
    assert allowed(r, "https://session.example.com/", ctx=ctx)
    assert not allowed(r, "https://agent.example.com/", ctx=ctx) and not allowed(r, "https://env.example.com/", ctx=ctx)
    # ... and every applicable policy's deny list holds: the agent cannot lift the environment's deny.
    d = decide(r, "https://banned.example.com/", ctx=SessionContext("sesn_2", "agent_1"))
    assert d.action == "deny" and "deny:banned.example.com" in d.rule and d.policy_id == policies.list()[-1].id


def test_metadata_policies_tie_break_by_most_recent_update(policies):
    a = policies.create({"name": "a", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}, "allow": ["a.example.com"]})
    policies.create({"name": "b", "scope": {"metadata": [{"key": "team", "one_of": ["ml", "data"]}]}, "allow": ["b.example.com"]})
    r = resolver(policies)
    ctx = SessionContext("sesn_1", None, {"team": "ml"})
    assert r.resolve(ctx).deciding.policy.name == "b"
    policies.update(a.id, {"name": "a", "scope": {"metadata": [{"key": "team", "equals": "ml"}]}, "allow": ["a.example.com"]})
    assert r.resolve(ctx).deciding.policy.name == "a"


def test_metadata_matchers(policies):
    policies.create({"name": "m", "scope": {"metadata": [
        {"key": "team", "equals": "ml"},
        {"key": "stage", "one_of": ["dev", "test"]},
        {"key": "branch", "matches": "feat/[a-z-]+"},
    ]}, "allow": ["m.example.com"]})
    r = resolver(policies)

    def applies(meta: dict[str, str]) -> bool:
        return allowed(r, "https://m.example.com/", ctx=SessionContext("s", None, meta))

    assert applies({"team": "ml", "stage": "dev", "branch": "feat/egress"})
    assert not applies({"team": "ml", "stage": "prod", "branch": "feat/egress"})
    assert not applies({"team": "html", "stage": "dev", "branch": "feat/egress"})
    assert not applies({"team": "ml", "stage": "dev", "branch": "feat/egress; rm"}), "matches is a full match"
    assert not applies({"team": "ml", "stage": "dev"}), "a missing key never matches"
    assert not applies({"team": "ml", "stage": "dev", "branch": "feat/" + "a" * 300}), "over-long values never match"
    for bad in ([], [{"key": "team"}], [{"key": "team", "equals": "ml", "matches": "x"}], [{"key": "t", "matches": "("}], [{"key": "t", "one_of": []}]):
        with pytest.raises(PolicyError):
            Policy.from_document({"name": "x", "scope": {"metadata": bad}})


@pytest.mark.parametrize("regex", ["(a+)+$", "(x*)*y", "(foo|bar)+", ".*a.*a.*a.*b", "(?:a|aa)*c"])
def test_regexes_that_could_stall_decisions_are_refused(regex):
    with pytest.raises(PolicyError, match="simplify"):
        Policy.from_document({"name": "x", "scope": {"metadata": [{"key": "k", "matches": regex}]}})
    for fine in ("feat/[a-z-]+", "ml|data", ".*a.*b", "(ab){3}", "v[0-9]{1,3}"):
        Policy.from_document({"name": "x", "scope": {"metadata": [{"key": "k", "matches": fine}]}})


def test_no_policy_denies_everything_but_the_system_allowance(policies):
    r = resolver(policies)
    d = decide(r, "https://pypi.org/simple/")
    assert (d.action, d.rule, d.status) == ("deny", "default:no-policy", 403)
    assert decide(r, HEARTBEAT, "POST", ctx=WORKER).rule == "system:api-host"
    # Without a worker (the kernel tier: its worker runs in the server) the API host is a host like any other.
    assert decide(r, HEARTBEAT, "POST").rule == "default:no-policy"


def test_the_system_allowance_is_the_api_host_only_and_comes_first(policies):
    env_policy(policies, allow=["example.com"], deny=["*", "api.anthropic.com"])
    r = resolver(policies)
    for url in ("https://api.anthropic.com/v1/sessions/sesn_1", "https://API.Anthropic.com./v1/sessions/sesn_1/events?limit=1000",
                "https://api.anthropic.com:443"):
        d = decide(r, url, "CONNECT" if url.endswith(":443") else "GET", ctx=WORKER)
        assert (d.action, d.rule) == ("allow", "system:api-host"), url
    for url in ("https://api.anthropic.com.evil.com/v1/sessions/sesn_1", "https://evilapi.anthropic.com/v1/sessions/sesn_1",
                "https://x.api.anthropic.com/v1/sessions/sesn_1", "https://api.anthropic.com:8443/v1/sessions/sesn_1",
                "http://api.anthropic.com/v1/sessions/sesn_1", "https://anthropic.com/v1/sessions/sesn_1"):
        d = decide(r, url, ctx=WORKER)
        assert d.action == "deny" and d.rule != "system:api-host", url
    local = resolver(policies, api_base_url="http://127.0.0.1:39027")
    assert decide(local, "http://127.0.0.1:39027/v1/sessions/sesn_1", ctx=WORKER).rule == "system:api-host"
    assert decide(local, "http://127.0.0.1:39028/v1/sessions/sesn_1", ctx=WORKER).action == "deny"
    assert decide(local, "https://api.anthropic.com/v1/sessions/sesn_1", ctx=WORKER).action == "deny"


def test_a_worker_token_is_spent_only_on_its_own_work_item(policies):
    """The system allowance covers the calls the SDK's worker makes for its item, and nothing else on the API host."""
    r = resolver(policies)
    own = [("POST", HEARTBEAT), ("POST", f"{API}/v1/environments/env_1/work/work_1/stop"), ("GET", f"{API}/v1/sessions/sesn_1"),
           ("GET", f"{API}/v1/sessions/sesn_1/events?limit=1000&page=p2"), ("POST", f"{API}/v1/sessions/sesn_1/events"),
           ("GET", f"{API}/v1/sessions/sesn_1/events/stream"), ("CONNECT", f"{API}:443")]
    for method, url in own:
        assert decide(r, url, method, ctx=WORKER).rule == "system:api-host", (method, url)
    elsewhere = [
        ("GET", f"{API}/v1/sessions/sesn_2/events"), ("POST", f"{API}/v1/sessions/sesn_2/events"), ("POST", f"{API}/v1/sessions"),
        ("GET", f"{API}/v1/sessions"), ("POST", f"{API}/v1/sessions/sesn_1"), ("DELETE", f"{API}/v1/sessions/sesn_1"),
        ("POST", f"{API}/v1/sessions/sesn_1/archive"), ("GET", f"{API}/v1/sessions/sesn_1/resources"),
        ("GET", f"{API}/v1/environments/env_1/work/poll?block_ms=999"), ("POST", f"{API}/v1/environments/env_1/work/work_2/ack"),
        ("POST", f"{API}/v1/environments/env_1/work/work_2/heartbeat"), ("POST", f"{API}/v1/environments/env_2/work/work_1/stop"),
        ("GET", f"{API}/v1/environments/env_1/work"), ("POST", f"{API}/v1/environments"), ("POST", f"{API}/v1/agents"),
        ("GET", f"{API}/v1/agents/agent_1"), ("POST", f"{API}/v1/messages"), ("GET", f"{API}/v1/skills"),
        # Spellings that name the own session but reach another, or are not one segment: never the allowance.
        ("GET", f"{API}/v1/sessions/sesn_1/../sesn_2/events"), ("GET", f"{API}/v1/sessions/sesn_1/events/../../sesn_2"),
        ("GET", f"{API}//v1/sessions/sesn_1"), ("GET", f"{API}/v1/sessions/sesn%5F1"), ("GET", f"{API}/v1/sessions/SESN_1"),
        ("GET", f"{API}/v1/sessions/sesn_1/events/stream/x"), ("HEAD", f"{API}/v1/sessions/sesn_1"),
    ]
    for method, url in elsewhere:
        d = decide(r, url, method, ctx=WORKER)
        assert (d.action, d.rule, d.status) == ("deny", "api:outside-worker-scope", 403), (method, url)
    assert "own work item" in decide(r, f"{API}/v1/sessions", "POST", ctx=WORKER).reason
    # The base URL's path comes first (a gateway in front of the API).
    gateway = resolver(policies, api_base_url="https://gw.example.com/anthropic/")
    assert decide(gateway, "https://gw.example.com/anthropic/v1/sessions/sesn_1", ctx=WORKER).rule == "system:api-host"
    assert decide(gateway, "https://gw.example.com/v1/sessions/sesn_1", ctx=WORKER).rule == "api:outside-worker-scope"
    # An operator's policy may allow the API host (for code that brings its own key): outside the worker's calls it
    # decides like for any host, and without a worker it is the only way there.
    pid = env_policy(policies, allow=["api.anthropic.com"])
    assert decide(r, f"{API}/v1/messages", "POST", ctx=WORKER).rule == f"policy:{pid}:allow:api.anthropic.com"
    assert decide(r, f"{API}/v1/sessions/sesn_1").rule == f"policy:{pid}:allow:api.anthropic.com"


def test_a_worker_scope_learns_skills_and_memory_stores_from_its_session_only():
    scope = WorkerScope("sesn_1", "work_1", "env_1")
    skill = "/v1/skills/skill_a/versions/latest"
    memories = "/v1/memory_stores/memstore_rw/memories"
    assert not scope.permits("GET", skill) and not scope.permits("GET", memories), "nothing before the session is known"
    session = {
        "id": "sesn_1", "agent": {"skills": [{"type": "custom", "skill_id": "skill_a", "version": "latest"}, {"skill_id": "../x"}, "junk"]},
        "resources": [{"type": "memory_store", "memory_store_id": "memstore_rw", "access": "read_write"},
                      {"type": "memory_store", "memory_store_id": "memstore_ro", "access": "read_only"},
                      {"type": "file", "file_id": "file_1"}, {"type": "memory_store", "memory_store_id": "a/b"}],
    }
    learned = scope.learn(session)
    assert learned.skills == {"skill_a"} and dict(learned.memory_stores) == {"memstore_rw": True, "memstore_ro": False}
    assert learned.permits("GET", skill) and learned.permits("GET", "/v1/skills/skill_a/versions/skillver_9/content")
    assert not learned.permits("GET", "/v1/skills/skill_b/versions/1") and not learned.permits("POST", "/v1/skills")
    for method, path in (("GET", memories + "?view=full&limit=20"), ("GET", memories + "/mem_1?view=full"), ("POST", memories),
                         ("POST", memories + "/mem_1"), ("DELETE", memories + "/mem_1?expected_content_sha256=ab"),
                         ("GET", "/v1/memory_stores/memstore_ro/memories")):
        assert learned.permits(method, path), (method, path)
    for method, path in (("POST", "/v1/memory_stores/memstore_ro/memories"), ("DELETE", "/v1/memory_stores/memstore_ro/memories/m"),
                         ("GET", "/v1/memory_stores/memstore_other/memories"), ("POST", "/v1/memory_stores/memstore_rw/archive"),
                         ("GET", "/v1/memory_stores/memstore_rw")):
        assert not learned.permits(method, path), (method, path)
    # Only the answer about its own session counts; what cannot be read adds nothing.
    assert scope.learn({**session, "id": "sesn_2"}) == scope and scope.learn(["not", "a", "session"]) == scope
    assert WorkerScope.from_json(learned.to_json()) == learned
    with pytest.raises(TypeError):
        WorkerScope.from_json({"session_id": "sesn_1", "work_id": None, "environment_id": "env_1"})
    assert scope.is_session_retrieve("GET", "/v1/sessions/sesn_1") and not scope.is_session_retrieve("GET", "/v1/sessions/sesn_2")


def test_a_policy_edit_is_seen_by_the_very_next_decision(policies, tmp_path):
    pid = env_policy(policies, allow=["old.example.com"])
    r = resolver(policies)
    assert allowed(r, "https://old.example.com/") and not allowed(r, "https://new.example.com/")
    policies.update(pid, {"name": "env", "scope": ENV, "allow": ["new.example.com"]})
    assert allowed(r, "https://new.example.com/") and not allowed(r, "https://old.example.com/")
    # A write through another connection (another process) is seen too: the revision lives in the database.
    other = Store(tmp_path / "cma.sqlite3")
    PolicyStore(other).update(pid, {"name": "env", "scope": ENV, "allow": ["third.example.com"]})
    assert allowed(r, "https://third.example.com/")
    PolicyStore(other).delete(pid)
    assert decide(r, "https://third.example.com/").rule == "default:no-policy"
    other.close()


def test_every_write_bumps_the_revision(policies, store):
    before = store.egress_revision()
    pid = env_policy(policies)
    policies.update(pid, {"name": "env", "scope": ENV, "allow": ["a.com"]})
    assert not policies.delete("pol_missing")
    policies.delete(pid)
    assert store.egress_revision() == before + 3


# ---------------------------------------------------------------------- fail closed


def _corrupt(store_path, policy_id: str, document: str) -> None:
    db = sqlite3.connect(store_path)
    db.execute("UPDATE egress_policies SET document = ? WHERE id = ?", (document, policy_id))
    db.execute("UPDATE egress_revision SET revision = revision + 1")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "document",
    [
        "{not json",
        json.dumps({"name": "env", "scope": ENV, "allow": ["*.com"]}),  # a pattern refused on write
        json.dumps({"name": "env", "scope": {"agent_id": "agent_9"}, "allow": ["x.com"]}),  # disagrees with its scope key
        json.dumps(["a list"]),
    ],
)
def test_a_corrupt_stored_policy_fails_closed(policies, tmp_path, document):
    pid = env_policy(policies, allow=["pypi.org"])
    r = resolver(policies)
    assert allowed(r, "https://pypi.org/")
    _corrupt(tmp_path / "cma.sqlite3", pid, document)
    d = decide(r, "https://pypi.org/")
    assert (d.action, d.rule) == ("deny", f"error:policy:{pid}") and "corrupt" in d.reason
    assert decide(r, HEARTBEAT, "POST", ctx=WORKER).rule == "system:api-host", "the worker keeps its API"
    assert decide(r, f"{API}/v1/sessions", "POST", ctx=WORKER).rule == f"error:policy:{pid}", "and nothing more of it"
    (listed,) = policies.list()
    assert listed.to_json()["error"].startswith("stored policy is invalid")
    policies.delete(pid)
    assert decide(r, "https://pypi.org/").rule == "default:no-policy"


def test_a_corrupt_policy_of_one_agent_does_not_touch_other_agents(policies, tmp_path):
    env_policy(policies, allow=["pypi.org"])
    bad = policies.create({"name": "a1", "scope": {"agent_id": "agent_1"}, "allow": ["pypi.org"]}).id
    _corrupt(tmp_path / "cma.sqlite3", bad, "{")
    r = resolver(policies)
    assert decide(r, "https://pypi.org/", ctx=SessionContext("s", "agent_1")).rule == f"error:policy:{bad}"
    assert allowed(r, "https://pypi.org/", ctx=SessionContext("s", "agent_2"))


def test_a_store_that_cannot_be_read_fails_closed(policies, store):
    env_policy(policies, allow=["pypi.org"])
    r = resolver(policies)
    store.close()
    d = decide(r, "https://pypi.org/")
    assert (d.action, d.rule) == ("deny", "error:resolve")
    assert decide(r, HEARTBEAT, "POST", ctx=WORKER).rule == "system:api-host"


def raising_hook(request, decision):
    raise RuntimeError("boom")


def garbage_hook(request, decision):
    return "allow"


def audit_hook(request, decision):
    """Deny every POST to pypi; allow a named host the policy does not know; add a header toward another."""
    if request.host == "extra.example.com":
        return Decision.allow("extra-ok")
    if request.host == "tagged.example.com" and decision.allowed:
        return dataclasses.replace(decision, injections=(*decision.injections, Injection("X-Tag", "TAG_TOKEN")))
    return None


def test_middleware_may_allow_deny_or_modify_and_fails_closed(policies):
    env_policy(policies, allow=["pypi.org", "tagged.example.com"])
    hooks = load_middleware(["tests.test_policy.audit_hook"])
    r = resolver(policies, middleware=hooks)
    assert decide(r, "https://extra.example.com/").rule == "middleware:tests.test_policy.audit_hook:extra-ok"
    assert decide(r, "https://tagged.example.com/").injections == (Injection("X-Tag", "TAG_TOKEN"),)
    assert decide(r, "https://pypi.org/").rule.endswith(":allow:pypi.org"), "None keeps the policy's decision"
    for name in ("raising_hook", "garbage_hook"):
        r = resolver(policies, middleware=load_middleware([f"tests.test_policy:{name}"]))
        d = decide(r, "https://pypi.org/")
        assert (d.action, d.rule) == ("deny", f"error:middleware:tests.test_policy:{name}"), name
        assert decide(r, HEARTBEAT, "POST", ctx=WORKER).rule == "system:api-host"
    with pytest.raises(PolicyError, match="cannot be loaded"):
        load_middleware(["tests.test_policy.no_such_hook"])
    with pytest.raises(PolicyError, match="dotted name"):
        load_middleware(["nodots"])
    broken = resolver(policies, setup_error="egress middleware 'x' cannot be loaded")
    assert decide(broken, "https://pypi.org/").rule == "error:setup"


def test_unparseable_requests_are_refused(policies):
    env_policy(policies, allow_all=True)
    e = resolver(policies).resolve(SessionContext())
    for args in (("GET", "ftp", "a.com", 21, "/"), ("G ET", "https", "a.com", 443, "/"), ("GET", "https", "a.com", 0, "/"),
                 ("GET", "https", "a.com", 70000, "/"), ("GET", "https", "a.com@evil.com", 443, "/"), ("GET", "https", "", 443, "/"),
                 ("GET", "https", None, 443, "/")):
        d = e.decide(*args)
        assert (d.action, d.status, d.rule) == ("deny", 400, "invalid:request"), args


def test_stored_documents_round_trip_normalised(policies):
    record = policies.create({"name": " pkgs ", "scope": ENV, "presets": ["pypi", "pypi"], "allow": ["PyPI.org.", {"host": "A.com", "methods": ["get"]}],
                              "inject": [{"host": "api.github.com", "header": "Authorization", "secret": "T", "prefix": "Bearer "}],
                              "id": "ignored", "created_at": 1})
    doc = record.to_json()
    assert doc["name"] == "pkgs" and doc["presets"] == ["pypi"] and doc["allow"] == ["pypi.org", {"host": "a.com", "methods": ["GET"]}]
    assert doc["inject"] == [{"host": "api.github.com", "scheme": "https", "port": 443, "header": "Authorization", "secret": "T", "prefix": "Bearer "}]
    assert doc["id"] == record.id != "ignored"
    assert Policy.from_document({k: v for k, v in doc.items() if k not in ("id", "created_at", "updated_at")}) == record.policy


# ---------------------------------------------------------------------- secrets


def test_secrets_are_private_files_written_atomically(tmp_path):
    secrets = SecretStore(tmp_path / "secrets")
    info, created = secrets.set("GITHUB_TOKEN", "ghp_value_one\n")
    assert created and info.name == "GITHUB_TOKEN"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets" / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets" / "fingerprint.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == [".lock", "fingerprint.key", "secrets.json"], "no temporary files left"
    assert secrets.get("GITHUB_TOKEN").reveal() == "ghp_value_one", "surrounding whitespace is dropped"
    assert secrets.get("MISSING") is None
    assert "ghp_value_one" not in repr(secrets.get("GITHUB_TOKEN"))
    again = SecretStore(tmp_path / "secrets")
    assert again.get("GITHUB_TOKEN").reveal() == "ghp_value_one" and again.list() == secrets.list()


def test_secret_listing_shows_names_times_and_fingerprints_only(tmp_path):
    secrets = SecretStore(tmp_path / "secrets")
    secrets.set("B_TOKEN", "value-b")
    secrets.set("A_TOKEN", "value-a")
    listed = [s.to_json() for s in secrets.list()]
    assert [s["name"] for s in listed] == ["A_TOKEN", "B_TOKEN"]
    assert set(listed[0]) == {"name", "created_at", "updated_at", "fingerprint"}
    text = json.dumps(listed)
    assert "value-a" not in text and "value-b" not in text


def test_fingerprints_change_on_rotation_and_reveal_nothing(tmp_path):
    secrets = SecretStore(tmp_path / "secrets")
    first, _ = secrets.set("TOKEN", "value-one")
    second, created = secrets.set("TOKEN", "value-two")
    assert not created and second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert first.fingerprint != second.fingerprint
    assert secrets.set("TOKEN", "value-one")[0].fingerprint == first.fingerprint, "the same value, the same fingerprint"
    for value in ("value-one", "value-two"):
        for digest in (hashlib.sha256(value.encode()).hexdigest(), hashlib.sha1(value.encode()).hexdigest(), hashlib.md5(value.encode()).hexdigest()):
            assert digest not in first.fingerprint and digest not in second.fingerprint
    other = SecretStore(tmp_path / "other")
    assert other.set("TOKEN", "value-one")[0].fingerprint != first.fingerprint, "keyed per install: no cross-install guessing"


def test_secret_names_and_values_are_checked_without_echoing_values(tmp_path):
    secrets = SecretStore(tmp_path / "secrets")
    for name in ("1X", "A-B", "", "A B", "../x", "x" * 129):
        with pytest.raises(SecretValueError, match="letters, digits"):
            secrets.set(name, "v")
    for value in ("", "   ", "line\nbreak", "tab\tinside", "nul\x00", "ünïcode", "x" * (16 * 1024 + 1), 42):
        with pytest.raises(SecretValueError) as err:
            secrets.set("NAME", value)
        if isinstance(value, str) and len(value) > 3 and value.strip():
            assert value not in str(err.value)
    assert secrets.list() == []
    assert secrets.set("S", Secret("from-a-secret", "test"))[0].name == "S"
    assert not secrets.delete("NOPE") and secrets.delete("S") and secrets.list() == []


def test_a_readable_or_corrupt_secrets_file_is_refused(tmp_path):
    secrets = SecretStore(tmp_path / "secrets")
    secrets.set("TOKEN", "value")
    path = tmp_path / "secrets" / "secrets.json"
    path.chmod(0o644)
    with pytest.raises(SecretStoreError, match="chmod 600"):
        secrets.get("TOKEN")
    path.chmod(0o600)
    assert secrets.get("TOKEN").reveal() == "value"
    path.write_text("{broken")
    with pytest.raises(SecretStoreError, match="not a valid secrets file"):
        secrets.list()
    assert "value" not in path.read_text()
    os.chmod(tmp_path / "secrets" / "fingerprint.key", 0o640)
    with pytest.raises(SecretStoreError, match="chmod 600"):
        SecretStore(tmp_path / "secrets").fingerprint("x")
