"""The egress log: records, filters, paging, retention, JSON-lines export, live feed, REST."""

from __future__ import annotations

import json
import time

import pytest
import tornado.httpclient

from jupyter_cma.egress.log import EgressLog, clean_path
from jupyter_cma.store import Store


@pytest.fixture
def egress(tmp_path):
    return EgressLog(Store(tmp_path / "db"))


def test_paths_lose_queries_and_fragments():
    assert clean_path("/simple/pkg/?token=s3cret#frag") == "/simple/pkg/"
    assert clean_path("https://h.example/a/b?x=1") == "/a/b"
    assert clean_path(None) is None
    assert len(clean_path("/" + "a" * 5000)) == 2048


def test_a_record_is_stored_whole_and_normalised(egress):
    row = egress.record(method="get", scheme="HTTPS", host="PyPI.org", port=443, path="/simple/?q=secret",
                        session_id="sesn_1", agent_id="agent_1", status=200, bytes_up=120, bytes_down=4096,
                        duration_ms=12.5, decision="allowed", rule="preset:pypi")
    (stored,) = egress.query()
    assert stored == row
    assert (stored["method"], stored["scheme"], stored["host"], stored["path"]) == ("GET", "https", "pypi.org", "/simple/")
    assert "secret" not in json.dumps(stored)
    with pytest.raises(ValueError, match="decision must be one of"):
        egress.record(method="GET", scheme="http", host="x", decision="maybe")


def test_filters_paging_and_retention(egress):
    now = time.time()
    for i in range(6):
        egress.record(method="GET", scheme="https", host="a.example" if i % 2 else "b.example", decision="denied" if i % 3 == 0 else "allowed",
                      session_id=f"sesn_{i % 2}", at=now - (5 - i) * 86400)
    assert [r["host"] for r in egress.query(host="a.example")] == ["a.example"] * 3
    assert {r["decision"] for r in egress.query(decision="denied")} == {"denied"}
    assert len(egress.query(session_id="sesn_1")) == 3
    assert len(egress.query(since=now - 2.5 * 86400)) == 3
    first = egress.query(limit=4)
    rest = egress.query(limit=4, before=first[-1]["id"])
    assert [r["id"] for r in first + rest] == sorted((r["id"] for r in first + rest), reverse=True) and len(first + rest) == 6
    assert egress.prune(retention_days=2.5) == 3
    assert len(egress.query()) == 3


def test_jsonl_export_streams_every_record(egress):
    for i in range(1203):
        egress.record(method="GET", scheme="http", host="h.example", decision="allowed", at=float(i))
    lines = list(egress.export_jsonl(page=500))
    assert len(lines) == 1203 and all(line.endswith("\n") for line in lines)
    assert [json.loads(line)["at"] for line in lines[:2]] == [1202.0, 1201.0]


def test_new_records_reach_the_live_channel_once_stored(egress):
    batches = []
    egress.on_rows = lambda rows: batches.append([(r["id"], r["host"], r["decision"], r["rule"]) for r in rows])
    (row,) = egress.record_many([{"method": "CONNECT", "scheme": "https", "host": "evil.example", "port": 443, "decision": "denied",
                                   "rule": "deny:*.example"}])
    assert batches == [[(row["id"], "evil.example", "denied", "deny:*.example")]]
    assert egress.query(limit=1)[0]["id"] == row["id"], "stored before it was announced"
    egress.on_rows = lambda rows: 1 / 0  # a failing listener loses nothing
    assert egress.record(method="GET", scheme="https", host="x.example", decision="allowed")["id"] == row["id"] + 1


@pytest.fixture
def jp_server_config(tmp_path, monkeypatch):
    for var in ("ANTHROPIC_ENVIRONMENT_KEY", "ANTHROPIC_ENVIRONMENT_ID", "ANTHROPIC_WEBHOOK_SIGNING_KEY"):
        monkeypatch.delenv(var, raising=False)
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_cma": True, "jupyter_server_terminals": False}, "allow_unauthenticated_access": False},
        "CMAApp": {"data_dir": str(tmp_path / "cma")},
    }


async def test_rest_endpoint_filters_pages_exports_and_needs_a_token(jp_serverapp, jp_fetch):
    (ext,) = jp_serverapp.extension_manager.extension_apps["jupyter_cma"]
    for i in range(3):
        ext.egress_log.record(method="GET", scheme="https", host="pypi.org", decision="allowed", session_id="sesn_a", path=f"/p{i}?k=v")
    ext.egress_log.record(method="GET", scheme="https", host="evil.example", decision="denied", session_id="sesn_b", rule="default:no-policy")
    page = json.loads((await jp_fetch("cma", "api", "egress", "log", params={"limit": "2"})).body)
    assert [r["host"] for r in page["data"]] == ["evil.example", "pypi.org"]
    rest = json.loads((await jp_fetch("cma", "api", "egress", "log", params={"limit": "2", "before": str(page["next_before"])})).body)
    assert len(rest["data"]) == 2
    denied = json.loads((await jp_fetch("cma", "api", "egress", "log", params={"decision": "denied"})).body)["data"]
    assert [r["session_id"] for r in denied] == ["sesn_b"]
    export = await jp_fetch("cma", "api", "egress", "log", params={"format": "jsonl", "session_id": "sesn_a"})
    assert export.headers["Content-Type"].startswith("application/x-ndjson")
    lines = export.body.decode().splitlines()
    assert len(lines) == 3 and all("?" not in json.loads(line)["path"] for line in lines)
    for bad in ({"decision": "maybe"}, {"session_id": "../x"}, {"since": "yesterday"}, {"format": "xml"}, {"limit": "0"}):
        with pytest.raises(tornado.httpclient.HTTPClientError) as err:
            await jp_fetch("cma", "api", "egress", "log", params=bad)
        assert err.value.code == 400 and json.loads(err.value.response.body)["message"]
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await jp_fetch("cma", "api", "egress", "log", headers={"Authorization": ""})
    assert err.value.code == 403
