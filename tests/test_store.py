"""The SQLite store on real files."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from jupyter_cma.store import MIGRATIONS, Store


def test_wal_mode_versioned_schema_and_private_file(tmp_path):
    store = Store(tmp_path / "cma.sqlite3")
    assert store.journal_mode == "wal"
    assert store.schema_version == len(MIGRATIONS)
    assert stat.S_IMODE((tmp_path / "cma.sqlite3").stat().st_mode) == 0o600
    store.close()


def test_reopen_keeps_data_and_does_not_remigrate(tmp_path):
    store = Store(tmp_path / "db")
    assert store.record_delivery("msg_1", "session.created", "sesn_1", "{}")
    store.close()
    again = Store(tmp_path / "db")
    assert again.schema_version == len(MIGRATIONS)
    assert not again.record_delivery("msg_1", "session.created", "sesn_1", "{}"), "a webhook-id survives a restart"
    assert [d["webhook_id"] for d in again.deliveries()] == ["msg_1"]


def test_newer_schema_is_refused_with_a_clear_error(tmp_path):
    Store(tmp_path / "db").close()
    db = sqlite3.connect(tmp_path / "db")
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this jupyter-cma understands"):
        Store(tmp_path / "db")


def test_deliveries_page_newest_first_and_prune(tmp_path):
    store = Store(tmp_path / "db")
    for i in range(5):
        store.record_delivery(f"msg_{i}", "session.status_run_started", f"sesn_{i}", "{}")
    first = store.deliveries(limit=2)
    rest = store.deliveries(limit=10, before=first[-1]["seq"])
    assert [d["webhook_id"] for d in first + rest] == [f"msg_{i}" for i in reversed(range(5))]
    assert store.prune_deliveries(older_than=first[-1]["received_at"]) == 3
    assert len(store.deliveries()) == 2


def test_sessions_upsert_keeps_known_fields(tmp_path):
    store = Store(tmp_path / "db")
    store.upsert_session("sesn_1", status="idle", environment_id="env_1", agent_id="agent_1", title="t")
    store.upsert_session("sesn_1", status="running")
    row = store.session("sesn_1")
    assert (row["status"], row["environment_id"], row["agent_id"], row["title"]) == ("running", "env_1", "agent_1", "t")
    assert [s["id"] for s in store.sessions(status="running")] == ["sesn_1"]
    assert store.sessions(status="idle") == []


def test_events_are_stored_once_in_order(tmp_path):
    store = Store(tmp_path / "db")
    for i in range(3):
        assert store.add_event("sesn_1", {"id": f"sevt_{i}", "type": "agent.message", "processed_at": f"2026-01-01T00:00:0{i}Z"})
    assert not store.add_event("sesn_1", {"id": "sevt_1", "type": "agent.message"})
    events = store.events("sesn_1")
    assert [e["id"] for e in events] == ["sevt_0", "sevt_1", "sevt_2"]
    assert [e["id"] for e in store.events("sesn_1", after_seq=events[0]["seq"])] == ["sevt_1", "sevt_2"]


def test_transitions_record_when_and_why(tmp_path):
    store = Store(tmp_path / "db")
    assert store.transition("sesn_1", "claimed", "work item claimed", work_id="work_1", tier="kernel") is None
    assert store.transition("sesn_1", "running", "sandbox ready", cold_start_ms=12.5) == "claimed"
    row = store.session("sesn_1")
    assert (row["status"], row["work_id"], row["tier"], row["cold_start_ms"], row["reason"]) == ("running", "work_1", "kernel", 12.5, "sandbox ready")
    assert [(t["from_state"], t["to_state"]) for t in store.transitions("sesn_1")] == [(None, "claimed"), ("claimed", "running")]
    with pytest.raises(ValueError):
        store.transition("sesn_1", "idle", "x", password="no")
    assert [s["id"] for s in store.sessions(statuses=["running", "idle"], tier="kernel")] == ["sesn_1"]


def test_agent_tiers_and_cells(tmp_path):
    store = Store(tmp_path / "db")
    store.set_agent("agent_1", tier="kernel", name="a")
    store.set_agent("agent_1", tier="container")
    assert (store.agent("agent_1")["tier"], store.agent("agent_1")["name"]) == ("container", "a")
    store.add_cell("sesn_1", {"cell_type": "code", "source": "1+1"})
    store.add_cell("sesn_1", {"cell_type": "markdown", "source": "x"})
    assert [c["cell_type"] for c in store.cells("sesn_1")] == ["code", "markdown"]
