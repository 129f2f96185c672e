"""SQLite persistence: the only module that writes SQL.

One database file under the data directory, in WAL mode so readers (REST
handlers, widgets) never block the writer (webhooks, dispatch). The schema is
versioned with `PRAGMA user_version`; each entry of `MIGRATIONS` moves it up
by one and runs in its own transaction, so an interrupted upgrade leaves the
database at the last complete version.

Calls are synchronous and short (single-row writes, indexed reads); on the
server's event loop they cost well under a millisecond each, which is cheaper
than hopping to a thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    # 1: webhook deliveries, sessions, session events.
    """
    CREATE TABLE webhook_deliveries (
        webhook_id   TEXT PRIMARY KEY,
        received_at  REAL NOT NULL,
        event_type   TEXT NOT NULL,
        object_id    TEXT,
        body         TEXT NOT NULL
    );
    CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

    CREATE TABLE sessions (
        id              TEXT PRIMARY KEY,
        environment_id  TEXT,
        agent_id        TEXT,
        status          TEXT NOT NULL,
        title           TEXT,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX sessions_status ON sessions (status, updated_at);

    CREATE TABLE session_events (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id    TEXT NOT NULL,
        event_id      TEXT NOT NULL,
        type          TEXT NOT NULL,
        processed_at  TEXT,
        body          TEXT NOT NULL,
        UNIQUE (session_id, event_id)
    );
    CREATE INDEX session_events_session ON session_events (session_id, seq);
    """,
    # 2: session lifecycle (tier, work item, reasons, transitions), agent tiers, recorded cells.
    """
    ALTER TABLE sessions ADD COLUMN tier TEXT;
    ALTER TABLE sessions ADD COLUMN work_id TEXT;
    ALTER TABLE sessions ADD COLUMN reason TEXT;
    ALTER TABLE sessions ADD COLUMN cold_start_ms REAL;

    CREATE TABLE session_transitions (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL,
        at          REAL NOT NULL,
        from_state  TEXT,
        to_state    TEXT NOT NULL,
        reason      TEXT
    );
    CREATE INDEX session_transitions_session ON session_transitions (session_id, seq);

    CREATE TABLE agents (
        id          TEXT PRIMARY KEY,
        tier        TEXT NOT NULL,
        name        TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );

    CREATE TABLE session_cells (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL,
        cell        TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE INDEX session_cells_session ON session_cells (session_id, seq);
    """,
    # 3: egress policies (one per environment/agent/session scope key; any number of
    # metadata-matched ones, whose scope_key is NULL) and a revision bumped by every
    # policy write, so resolution can cache until something changed.
    """
    CREATE TABLE egress_policies (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        scope_key   TEXT UNIQUE,
        document    TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );

    CREATE TABLE egress_revision (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        revision  INTEGER NOT NULL
    );
    INSERT INTO egress_revision (id, revision) VALUES (1, 0);
    """,
    # 4: the egress log: one row per request a sandbox made and the decision taken on it.
    """
    CREATE TABLE egress_log (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at           REAL NOT NULL,
        session_id   TEXT,
        agent_id     TEXT,
        method       TEXT NOT NULL,
        scheme       TEXT NOT NULL,
        host         TEXT NOT NULL,
        port         INTEGER,
        path         TEXT,
        status       INTEGER,
        bytes_up     INTEGER NOT NULL DEFAULT 0,
        bytes_down   INTEGER NOT NULL DEFAULT 0,
        duration_ms  REAL,
        decision     TEXT NOT NULL,
        rule         TEXT
    );
    CREATE INDEX egress_log_at ON egress_log (at);
    CREATE INDEX egress_log_session ON egress_log (session_id, id);
    CREATE INDEX egress_log_host ON egress_log (host, id);
    """,
    # 5: a session's metadata (JSON), which egress policies may match on.
    """
    ALTER TABLE sessions ADD COLUMN metadata TEXT;
    """,
    # 6: the container tier: a session's workspace volume (a pooled container's volume is adopted, so the
    # name is not derived from the session id), and an agent's instance size
    """
    ALTER TABLE sessions ADD COLUMN workspace_volume TEXT;
    ALTER TABLE agents ADD COLUMN size TEXT;
    """,
    # 7: workspaces in an object store: the version (ETag) of the session's object the volume here holds,
    # and the last push or pull (JSON: object, at, error), shown with the session.
    """
    ALTER TABLE sessions ADD COLUMN workspace_etag TEXT;
    ALTER TABLE sessions ADD COLUMN workspace_sync TEXT;
    """,
    # 8: the notebook tools an agent was given (JSON: tool name → the kernel that defines it, its notebook and
    # the definition the agent has upstream), so a session's call reaches that kernel.
    """
    ALTER TABLE agents ADD COLUMN notebook_tools TEXT;
    """,
    # 9: built-in tools. An agent's enabled built-ins (JSON: family → its settings); mail in and out, each message
    # with the session it belongs to (threads: a reply's In-Reply-To/References name an earlier Message-ID) and
    # refused mail with its reason; notebook edits made by agents, each with the checkpoint taken before it.
    """
    ALTER TABLE agents ADD COLUMN builtins TEXT;
    CREATE TABLE mail_messages (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        at           REAL NOT NULL,
        direction    TEXT NOT NULL,          -- 'in' or 'out'
        status       TEXT NOT NULL,          -- in: 'accepted' or 'refused', out: 'sent' or 'failed'
        reason       TEXT,                   -- why it was refused or failed
        session_id   TEXT,
        agent_id     TEXT,
        message_id   TEXT,                   -- the RFC 5322 Message-ID, with its angle brackets
        in_reply_to  TEXT,
        refs         TEXT,                   -- JSON list of Message-IDs (References)
        sender       TEXT,
        recipients   TEXT,                   -- JSON list
        subject      TEXT,
        body         TEXT,                   -- the text part, capped
        size         INTEGER
    );
    CREATE INDEX mail_messages_session ON mail_messages (session_id, id);
    CREATE INDEX mail_messages_message_id ON mail_messages (message_id);
    CREATE TABLE notebook_edits (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at            REAL NOT NULL,
        session_id    TEXT NOT NULL,
        agent_id      TEXT,
        path          TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,        -- the contents manager's checkpoint taken just before the edit
        summary       TEXT NOT NULL,        -- JSON: what the edit did (operation, cell indexes)
        undone_at     REAL
    );
    CREATE INDEX notebook_edits_session ON notebook_edits (session_id, id);
    CREATE INDEX notebook_edits_path ON notebook_edits (path, id);
    """,
]


EGRESS_COLUMNS = (
    "at", "session_id", "agent_id", "method", "scheme", "host", "port", "path",
    "status", "bytes_up", "bytes_down", "duration_ms", "decision", "rule",
)


class Conflict(ValueError):
    """A write that would break a uniqueness rule; `field` names the column."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is already taken")
        self.field = field


class Store:
    """The extension's database. Open one per server process."""

    # Called after each committed `transition` with {id, state, from_state, tier, agent_id, at}: the live channel's
    # session.state. It must not block (it runs inside the caller's transition); one that raises is logged.
    on_transition: Callable[[dict[str, Any]], None] | None = None

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each
        # migration and each multi-statement write is exactly one transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.path.chmod(0o600)
        self.migrate()

    @classmethod
    def read_only(cls, path: str | Path) -> Store:
        """A second, read-only view of an existing database (the egress engine reads policies with it).

        It never migrates: the server that owns the file does. A database of
        another schema version is refused, so the reader never misreads it.
        """
        self = cls.__new__(cls)
        self.path = Path(path)
        self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")
        if self.schema_version != len(MIGRATIONS):
            version = self.schema_version
            self._db.close()
            raise RuntimeError(f"{self.path} has schema version {version}; this jupyter-cma reads version {len(MIGRATIONS)}")
        return self

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ schema

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this jupyter-cma understands "
                f"({len(MIGRATIONS)}); upgrade jupyter-cma or point data_dir elsewhere"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(script):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # ------------------------------------------------------------------ webhook deliveries

    def record_delivery(self, webhook_id: str, event_type: str, object_id: str | None, body: str) -> bool:
        """Record a delivery once. False means this webhook-id was seen before (a retry or replay)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, received_at, event_type, object_id, body) VALUES (?, ?, ?, ?, ?)",
            (webhook_id, time.time(), event_type, object_id, body),
        )
        return cur.rowcount == 1

    def deliveries(self, *, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first. Each row has a `seq` (unique, increasing); pass the last row's as `before` for the next page."""
        rows = self._db.execute(
            "SELECT rowid AS seq, webhook_id, received_at, event_type, object_id, body FROM webhook_deliveries "
            "WHERE rowid < ? ORDER BY rowid DESC LIMIT ?",
            (before if before is not None else 2**63 - 1, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ the egress log

    def log_egress(self, row: dict[str, Any]) -> int:
        """Append one egress record (keys: EGRESS_COLUMNS); returns its id."""
        unknown = set(row) - set(EGRESS_COLUMNS)
        if unknown:
            raise ValueError(f"unknown egress log fields {sorted(unknown)}")
        cols = [c for c in EGRESS_COLUMNS if c in row]
        cur = self._db.execute(
            f"INSERT INTO egress_log ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            tuple(row[c] for c in cols),
        )
        return int(cur.lastrowid or 0)

    def log_egress_many(self, rows: list[dict[str, Any]]) -> list[int]:
        """Append egress records in one transaction; returns their ids."""
        ids = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                ids.append(self.log_egress(row))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return ids

    def egress_log(
        self,
        *,
        session_id: str | None = None,
        agent_id: str | None = None,
        host: str | None = None,
        decision: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Egress records, newest first; pass the last row's `id` as `before` for the next page.

        With `after` (a row's id): the rows after it, oldest first, so a live view catches up from the last row it has.
        """
        clauses, params = ["id < ?"], [before if before is not None else 2**63 - 1]
        if after is not None:
            clauses.append("id > ?")
            params.append(after)
        for column, value in (("session_id", session_id), ("agent_id", agent_id), ("host", host), ("decision", decision)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("at < ?")
            params.append(until)
        rows = self._db.execute(
            f"SELECT * FROM egress_log WHERE {' AND '.join(clauses)} ORDER BY id {'ASC' if after is not None else 'DESC'} LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def prune_egress(self, older_than: float) -> int:
        """Delete egress records made before `older_than` (a Unix time); returns how many."""
        return self._db.execute("DELETE FROM egress_log WHERE at < ?", (older_than,)).rowcount

    def prune_deliveries(self, older_than: float) -> int:
        """Delete deliveries received before `older_than` (a Unix time); returns how many.

        A webhook-id older than the signature tolerance (±5 min) cannot be
        replayed anyway, so pruning after days loses no protection.
        """
        return self._db.execute("DELETE FROM webhook_deliveries WHERE received_at < ?", (older_than,)).rowcount

    # ------------------------------------------------------------------ sessions

    def upsert_session(self, session_id: str, *, status: str, environment_id: str | None = None, agent_id: str | None = None, title: str | None = None) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO sessions (id, environment_id, agent_id, status, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status=excluded.status, updated_at=excluded.updated_at, "
            "environment_id=COALESCE(excluded.environment_id, sessions.environment_id), "
            "agent_id=COALESCE(excluded.agent_id, sessions.agent_id), title=COALESCE(excluded.title, sessions.title)",
            (session_id, environment_id, agent_id, status, title, now, now),
        )

    def transition(self, session_id: str, to_state: str, reason: str, **fields: Any) -> str | None:
        """Move a session to `to_state`, recording when and why; returns the state it left.

        `fields` may set tier, work_id, environment_id, agent_id, cold_start_ms.
        The session row is created on its first transition.
        """
        allowed = {"tier", "work_id", "environment_id", "agent_id", "cold_start_ms"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown session fields {sorted(unknown)}")
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT status, tier, agent_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
            from_state = row["status"] if row else None
            if row is None:
                self._db.execute(
                    "INSERT INTO sessions (id, status, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (session_id, to_state, now, now),
                )
            sets = ", ".join(f"{k} = ?" for k in fields)
            self._db.execute(
                f"UPDATE sessions SET status = ?, reason = ?, updated_at = ?{', ' + sets if sets else ''} WHERE id = ?",
                (to_state, reason, now, *fields.values(), session_id),
            )
            self._db.execute(
                "INSERT INTO session_transitions (session_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
                (session_id, now, from_state, to_state, reason),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if self.on_transition is not None:
            # After the commit: whoever hears of it (the live channel) can read the new state back at once.
            change = {
                "id": session_id, "state": to_state, "from_state": from_state,
                "tier": fields.get("tier", row["tier"] if row else None),
                "agent_id": fields.get("agent_id", row["agent_id"] if row else None), "at": now,
            }
            try:
                self.on_transition(change)
            except Exception:  # the state changed; a listener's failure must not look like the transition's
                log.exception("jupyter-cma: a listener of session %s's transition failed", session_id)
        return from_state

    def forget_session(self, session_id: str) -> None:
        """Remove a session this server only just recorded (nothing ran: an import that failed), with its transitions."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM session_transitions WHERE session_id = ?", (session_id,))
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def update_session(self, session_id: str, **fields: Any) -> None:
        """Set measured or descriptive fields (no state change, so no transition row)."""
        allowed = {"cold_start_ms", "title", "metadata", "workspace_volume", "workspace_etag", "workspace_sync"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"update_session sets only {sorted(allowed)}")
        if "metadata" in fields:
            fields["metadata"] = json.dumps(fields["metadata"] or {}, sort_keys=True)
        if fields.get("workspace_sync") is not None:
            fields["workspace_sync"] = json.dumps(fields["workspace_sync"], sort_keys=True)
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(f"UPDATE sessions SET {sets} WHERE id = ?", (*fields.values(), session_id))

    def transitions(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT at, from_state, to_state, reason FROM session_transitions WHERE session_id = ? ORDER BY seq",
            (session_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    def session(self, session_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session_row(row) if row else None

    def sessions(
        self,
        *,
        status: str | None = None,
        statuses: list[str] | None = None,
        agent_id: str | None = None,
        tier: str | None = None,
        limit: int = 100,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        """Sessions, most recently updated first; pass the last row's `updated_at` as `before` for the next page."""
        wanted = list(statuses or []) + ([status] if status else [])
        clauses, params = ["updated_at < ?"], [before if before is not None else float("inf")]
        if wanted:
            clauses.append(f"status IN ({','.join('?' * len(wanted))})")
            params += wanted
        if agent_id:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        if tier:
            clauses.append("tier = ?")
            params.append(tier)
        rows = self._db.execute(
            f"SELECT * FROM sessions WHERE {' AND '.join(clauses)} ORDER BY updated_at DESC LIMIT ?", (*params, limit)
        )
        return [_session_row(r) for r in rows.fetchall()]

    # ------------------------------------------------------------------ agents (the tier of each)

    def set_agent(self, agent_id: str, *, tier: str, name: str | None = None, size: str | None = None) -> None:
        """Store an agent's tier (and its name and container instance size, when given; else kept)."""
        now = time.time()
        self._db.execute(
            "INSERT INTO agents (id, tier, name, size, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET tier = excluded.tier, name = COALESCE(excluded.name, agents.name), "
            "size = COALESCE(excluded.size, agents.size), updated_at = excluded.updated_at",
            (agent_id, tier, name, size, now, now),
        )

    def agent(self, agent_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
        return _agent_row(row) if row else None

    def agents(self) -> list[dict[str, Any]]:
        return [_agent_row(r) for r in self._db.execute("SELECT * FROM agents ORDER BY created_at DESC").fetchall()]

    def set_agent_notebook_tools(self, agent_id: str, tools: dict[str, dict[str, Any]]) -> None:
        """Replace the notebook tools of a stored agent: tool name → {"kernel_id", "notebook", "definition"}."""
        self._db.execute("UPDATE agents SET notebook_tools = ?, updated_at = ? WHERE id = ?",
                         (json.dumps(tools) if tools else None, time.time(), agent_id))

    def agents_with_notebook_tool(self, kernel_id: str, name: str) -> list[dict[str, Any]]:
        """The stored agents given tool `name` of kernel `kernel_id`."""
        rows = self._db.execute("SELECT * FROM agents WHERE notebook_tools IS NOT NULL").fetchall()
        return [a for a in map(_agent_row, rows) if (a["notebook_tools"].get(name) or {}).get("kernel_id") == kernel_id]

    def set_agent_builtins(self, agent_id: str, builtins: dict[str, dict[str, Any]]) -> None:
        """Replace the built-in tools enabled for a stored agent: family name → its settings (JSON-able)."""
        self._db.execute("UPDATE agents SET builtins = ?, updated_at = ? WHERE id = ?",
                         (json.dumps(builtins) if builtins else None, time.time(), agent_id))

    # ------------------------------------------------------------------ mail (the email built-ins)

    def add_mail(self, *, direction: str, status: str, reason: str | None = None, session_id: str | None = None,
                 agent_id: str | None = None, message_id: str | None = None, in_reply_to: str | None = None,
                 refs: list[str] | None = None, sender: str | None = None, recipients: list[str] | None = None,
                 subject: str | None = None, body: str | None = None, size: int | None = None) -> int:
        """Record one message in or out (or one refused); its row id."""
        cursor = self._db.execute(
            "INSERT INTO mail_messages (at, direction, status, reason, session_id, agent_id, message_id, in_reply_to, refs, "
            "sender, recipients, subject, body, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), direction, status, reason, session_id, agent_id, message_id, in_reply_to,
             json.dumps(refs or []), sender, json.dumps(recipients or []), subject, body, size),
        )
        return int(cursor.lastrowid or 0)

    def mail(self, mail_id: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM mail_messages WHERE id = ?", (mail_id,)).fetchone()
        return _mail_row(row) if row else None

    def session_mail(self, session_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """A session's messages in and out, newest first."""
        rows = self._db.execute("SELECT * FROM mail_messages WHERE session_id = ? ORDER BY id DESC LIMIT ?",
                                (session_id, limit)).fetchall()
        return [_mail_row(r) for r in rows]

    def mail_thread_session(self, message_ids: list[str], *, agent_id: str | None = None,
                            participant: str | None = None) -> str | None:
        """The session of the newest message received or sent whose Message-ID is one of `message_ids` (a reply's thread).

        With `agent_id`, only that agent's mail counts. With `participant` (an address), only a session that address
        took part in: it sent mail the session accepted, or the session sent mail to it. Refused and failed mail never
        counts.
        """
        if not message_ids:
            return None
        marks = ",".join("?" * len(message_ids))
        sql = (f"SELECT m.session_id FROM mail_messages m WHERE m.message_id IN ({marks}) AND m.session_id IS NOT NULL "
               "AND m.status IN ('accepted', 'sent')")
        params: list[Any] = list(message_ids)
        if agent_id is not None:
            sql += " AND (m.agent_id = ? OR m.agent_id IS NULL)"
            params.append(agent_id)
        if participant is not None:
            sql += (" AND EXISTS (SELECT 1 FROM mail_messages p WHERE p.session_id = m.session_id AND ("
                    "(p.direction = 'in' AND p.status = 'accepted' AND lower(p.sender) = lower(?)) OR "
                    "(p.direction = 'out' AND p.status = 'sent' AND EXISTS "
                    "(SELECT 1 FROM json_each(p.recipients) r WHERE lower(r.value) = lower(?)))))")
            params += [participant, participant]
        row = self._db.execute(sql + " ORDER BY m.id DESC LIMIT 1", params).fetchone()
        return row[0] if row else None

    def mail_sessions_started(self, sender: str, since: float) -> int:
        """How many sessions mail from `sender` started since `since` (a Unix time): accepted mail first in its session."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM mail_messages m WHERE m.direction = 'in' AND m.status = 'accepted' AND m.at >= ? "
            "AND lower(m.sender) = lower(?) AND m.session_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM mail_messages e WHERE e.session_id = m.session_id AND e.id < m.id)", (since, sender)).fetchone()
        return int(row[0])

    def prune_mail(self, older_than: float) -> int:
        """Delete mail records made before `older_than` (a Unix time); returns how many."""
        return self._db.execute("DELETE FROM mail_messages WHERE at < ?", (older_than,)).rowcount

    def recent_mail(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Every message in and out (refused ones too), newest first: the operator's mail log."""
        rows = self._db.execute("SELECT * FROM mail_messages ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_mail_row(r) for r in rows]

    # ------------------------------------------------------------------ notebook edits (the notebook built-ins)

    def add_notebook_edit(self, *, session_id: str, agent_id: str | None, path: str, checkpoint_id: str,
                          summary: dict[str, Any]) -> int:
        """Record an agent's edit of a notebook and the checkpoint taken before it; its row id."""
        cursor = self._db.execute(
            "INSERT INTO notebook_edits (at, session_id, agent_id, path, checkpoint_id, summary) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), session_id, agent_id, path, checkpoint_id, json.dumps(summary)),
        )
        return int(cursor.lastrowid or 0)

    def notebook_edit(self, edit_id: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM notebook_edits WHERE id = ?", (edit_id,)).fetchone()
        return _edit_row(row) if row else None

    def notebook_edits(self, *, session_id: str | None = None, path: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Agents' notebook edits, newest first; of one session or one notebook when given."""
        where, args = [], []
        if session_id is not None:
            where.append("session_id = ?")
            args.append(session_id)
        if path is not None:
            where.append("path = ?")
            args.append(path)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._db.execute(f"SELECT * FROM notebook_edits {clause}ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_edit_row(r) for r in rows]

    def mark_notebook_edit_undone(self, edit_id: int) -> None:
        self._db.execute("UPDATE notebook_edits SET undone_at = ? WHERE id = ?", (time.time(), edit_id))

    # ------------------------------------------------------------------ recorded cells (notebook export)

    def add_cell(self, session_id: str, cell: dict[str, Any]) -> None:
        """Record one executed tool call as an nbformat cell (a dict), in execution order."""
        self._db.execute(
            "INSERT INTO session_cells (session_id, cell, created_at) VALUES (?, ?, ?)",
            (session_id, json.dumps(cell), time.time()),
        )

    def cells(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT cell FROM session_cells WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
        return [json.loads(r["cell"]) for r in rows]

    # ------------------------------------------------------------------ egress policies

    def egress_revision(self) -> int:
        """Bumped by every policy write (in the same transaction): a cheap "did anything change?"."""
        return int(self._db.execute("SELECT revision FROM egress_revision WHERE id = 1").fetchone()[0])

    def egress_policies(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, name, scope_key, document, created_at, updated_at FROM egress_policies ORDER BY created_at, id")
        return [dict(r) for r in rows.fetchall()]

    def egress_policy(self, policy_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, name, scope_key, document, created_at, updated_at FROM egress_policies WHERE id = ?", (policy_id,)
        ).fetchone()
        return dict(row) if row else None

    def insert_egress_policy(self, policy_id: str, *, name: str, scope_key: str | None, document: str) -> None:
        """Add a policy; Conflict("name") or Conflict("scope_key") if another one has it."""
        now = time.time()
        self._policy_write(
            "INSERT INTO egress_policies (id, name, scope_key, document, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (policy_id, name, scope_key, document, now, now),
        )

    def update_egress_policy(self, policy_id: str, *, name: str, scope_key: str | None, document: str) -> bool:
        """Replace a policy's document; False if there is no such policy."""
        return self._policy_write(
            "UPDATE egress_policies SET name = ?, scope_key = ?, document = ?, updated_at = ? WHERE id = ?",
            (name, scope_key, document, time.time(), policy_id),
        ) == 1

    def delete_egress_policy(self, policy_id: str) -> bool:
        return self._policy_write("DELETE FROM egress_policies WHERE id = ?", (policy_id,)) == 1

    def _policy_write(self, sql: str, params: tuple[Any, ...]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            count = self._db.execute(sql, params).rowcount
            if count:
                self._db.execute("UPDATE egress_revision SET revision = revision + 1 WHERE id = 1")
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._db.execute("ROLLBACK")
            message = str(exc)
            if "egress_policies.name" in message:
                raise Conflict("name") from None
            if "egress_policies.scope_key" in message:
                raise Conflict("scope_key") from None
            raise
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return int(count)

    # ------------------------------------------------------------------ session events

    def add_event(self, session_id: str, event: dict[str, Any]) -> bool:
        """Store one session event once (by its id). False if it was already stored."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO session_events (session_id, event_id, type, processed_at, body) VALUES (?, ?, ?, ?, ?)",
            (session_id, event["id"], event["type"], event.get("processed_at"), json.dumps(event)),
        )
        return cur.rowcount == 1

    def events(self, session_id: str, *, after_seq: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """Events in the order they were stored; `seq` is the cursor for the next page."""
        rows = self._db.execute(
            "SELECT seq, body FROM session_events WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session_id, after_seq, limit),
        ).fetchall()
        return [{"seq": r["seq"], **json.loads(r["body"])} for r in rows]


def _session_row(row: sqlite3.Row) -> dict[str, Any]:
    session = dict(row)
    try:
        session["metadata"] = json.loads(session.get("metadata") or "{}")
    except ValueError:
        session["metadata"] = {}
    try:
        session["workspace_sync"] = json.loads(session["workspace_sync"]) if session.get("workspace_sync") else None
    except ValueError:
        session["workspace_sync"] = None
    return session


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _agent_row(row: sqlite3.Row) -> dict[str, Any]:
    agent = dict(row)
    try:
        tools = json.loads(agent.get("notebook_tools") or "{}")
    except ValueError:
        tools = {}
    agent["notebook_tools"] = tools if isinstance(tools, dict) else {}
    agent["builtins"] = _json_dict(agent.get("builtins"))
    return agent


def _json_dict(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _json_list(text: str | None) -> list[Any]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _mail_row(row: sqlite3.Row) -> dict[str, Any]:
    mail = dict(row)
    mail["refs"] = _json_list(mail.get("refs"))
    mail["recipients"] = _json_list(mail.get("recipients"))
    return mail


def _edit_row(row: sqlite3.Row) -> dict[str, Any]:
    edit = dict(row)
    edit["summary"] = _json_dict(edit.get("summary"))
    return edit
