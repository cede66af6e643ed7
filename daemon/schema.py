"""The hall store's schema: named migrations, applied in order, each once.

The tables are the shared contract of the daemon and the uplink (ratings,
cases, annotations; the uplink's own tables live in daemon/uplink/outbox.py)
plus the daemon's own.  A migration once shipped never changes: a change is
a new name at the end of MIGRATIONS.  ``ratings`` is append-only (triggers
refuse UPDATE and DELETE): a migration may add tables, columns with
defaults and indexes beside it, never rewrite its rows.
"""

from __future__ import annotations

import sqlite3
import time

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE terminals (
            id INTEGER PRIMARY KEY,            -- u32 terminal id
            key BLOB NOT NULL,                 -- 32-byte HMAC key; never logged
            window_no TEXT,
            firmware TEXT,
            board TEXT,
            last_seen_ms INTEGER,
            journal_used INTEGER,
            journal_capacity INTEGER,
            clock_offset_ms INTEGER,
            rx_counter INTEGER NOT NULL DEFAULT 0,   -- last up counter accepted
            down_epoch INTEGER NOT NULL DEFAULT 0,   -- last daemon->terminal epoch used
            high_seq INTEGER NOT NULL DEFAULT 0,     -- highest rating seq stored
            alarms INTEGER NOT NULL DEFAULT 0,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_ms INTEGER
        );
        CREATE UNIQUE INDEX terminals_window ON terminals(window_no) WHERE window_no IS NOT NULL;
        CREATE TABLE boots (
            terminal_id INTEGER NOT NULL,
            boot INTEGER NOT NULL,
            start_ms INTEGER NOT NULL,         -- daemon UTC ms of the terminal's uptime 0
            PRIMARY KEY (terminal_id, boot)
        );
        CREATE TABLE cases (
            id INTEGER PRIMARY KEY,
            case_no TEXT NOT NULL,
            item_code TEXT,
            item_name TEXT,
            handle_item TEXT,
            dept_code TEXT,
            dept_name TEXT,
            area_code TEXT,
            window_no TEXT,
            window_name TEXT,
            staff_id TEXT,
            staff_name TEXT,
            service_ms INTEGER,
            service_number TEXT,
            contact_enc BLOB,
            created_ms INTEGER
        );
        CREATE INDEX cases_case_no ON cases(case_no);
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,            -- the ARM token (u32, never 0)
            case_id INTEGER NOT NULL REFERENCES cases(id),
            window_no TEXT,
            terminal_id INTEGER,
            armed_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            cancelled_ms INTEGER
        );
        CREATE TABLE ratings (
            id INTEGER PRIMARY KEY,
            terminal_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            level INTEGER NOT NULL,
            reason INTEGER NOT NULL,
            flags INTEGER NOT NULL,
            session INTEGER,
            case_id INTEGER REFERENCES cases(id),
            device_time INTEGER NOT NULL,
            uptime_ms INTEGER NOT NULL,
            boot INTEGER NOT NULL,
            received_ms INTEGER NOT NULL,
            assess_ms INTEGER NOT NULL,
            time_quality TEXT NOT NULL,
            chain BLOB NOT NULL,
            UNIQUE (terminal_id, seq)
        );
        CREATE TRIGGER ratings_no_update BEFORE UPDATE ON ratings
            BEGIN SELECT RAISE(ABORT, 'ratings are append-only'); END;
        CREATE TRIGGER ratings_no_delete BEFORE DELETE ON ratings
            BEGIN SELECT RAISE(ABORT, 'ratings are append-only'); END;
        CREATE TABLE annotations (
            id INTEGER PRIMARY KEY,
            rating_id INTEGER NOT NULL REFERENCES ratings(id),
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            created_ms INTEGER NOT NULL
        );
        CREATE INDEX annotations_rating ON annotations(rating_id);
        CREATE TABLE alerts (
            id INTEGER PRIMARY KEY,
            rating_id INTEGER NOT NULL UNIQUE REFERENCES ratings(id),
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE refusals (
            id INTEGER PRIMARY KEY,
            at_ms INTEGER NOT NULL,
            source TEXT NOT NULL,
            terminal_id INTEGER,
            reason TEXT NOT NULL
        );
        CREATE TABLE meta (
            name TEXT PRIMARY KEY,
            value INTEGER
        );
        """,
    ),
]



def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded on ``conn``; return the names applied."""
    c = conn
    c.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_ms INTEGER)")
    done = {r[0] for r in c.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        c.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(sql):
                c.execute(stmt)
            c.execute(
                "INSERT INTO migrations (name, applied_ms) VALUES (?, ?)",
                (name, int(time.time() * 1000)),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    out, buf = [], ""
    for line in sql.splitlines():
        line = line.split("--", 1)[0]
        if not line.strip():
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
