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
    (
        # Journal identity (protocol v2): a rating is (terminal, journal, seq),
        # and a divergent record under a held seq is kept as a fork.  SQLite
        # cannot change a UNIQUE constraint in place, so the rows move once
        # into a table whose key has the two new columns (both 0 for every
        # existing row, whose chain values are unchanged: chain.py hashes
        # journal and fork only when one of them is not 0).  The move copies
        # every column as it is; the count and the last chain value are
        # checked after it (``_check_0002``).
        "0002_journal_identity",
        """
        CREATE TABLE ratings_v2 (
            id INTEGER PRIMARY KEY,
            terminal_id INTEGER NOT NULL,
            journal_id INTEGER NOT NULL DEFAULT 0,   -- the terminal journal's id (0: before v2)
            seq INTEGER NOT NULL,
            fork INTEGER NOT NULL DEFAULT 0,         -- 0, or the fork of a divergent record
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
            UNIQUE (terminal_id, journal_id, seq, fork)
        );
        INSERT INTO ratings_v2 (id, terminal_id, journal_id, seq, fork, level, reason, flags,
            session, case_id, device_time, uptime_ms, boot, received_ms, assess_ms,
            time_quality, chain)
        SELECT id, terminal_id, 0, seq, 0, level, reason, flags, session, case_id,
            device_time, uptime_ms, boot, received_ms, assess_ms, time_quality, chain
        FROM ratings ORDER BY id;
        DROP TABLE ratings;
        ALTER TABLE ratings_v2 RENAME TO ratings;
        CREATE TRIGGER ratings_no_update BEFORE UPDATE ON ratings
            BEGIN SELECT RAISE(ABORT, 'ratings are append-only'); END;
        CREATE TRIGGER ratings_no_delete BEFORE DELETE ON ratings
            BEGIN SELECT RAISE(ABORT, 'ratings are append-only'); END;
        CREATE TABLE journals (
            terminal_id INTEGER NOT NULL,
            journal_id INTEGER NOT NULL,
            first_seen_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL,
            high_seq INTEGER NOT NULL DEFAULT 0,     -- highest seq stored of this journal
            -- after an older image of this journal came back (journal_behind): records
            -- of a boot below distrust_boot_below with seq >= distrust_seq_from may
            -- reuse a boot number, so their (boot, uptime) is not rebuilt
            distrust_boot_below INTEGER NOT NULL DEFAULT 0,
            distrust_seq_from INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (terminal_id, journal_id)
        );
        INSERT INTO journals (terminal_id, journal_id, first_seen_ms, last_seen_ms, high_seq)
        SELECT id, 0, coalesce(created_ms, 0), coalesce(last_seen_ms, created_ms, 0), high_seq
        FROM terminals WHERE high_seq > 0;
        ALTER TABLE terminals ADD COLUMN journal_id INTEGER;   -- the journal of the last HELLO
        CREATE TABLE boots_v2 (
            terminal_id INTEGER NOT NULL,
            journal_id INTEGER NOT NULL,   -- boot counts live in a journal: a new one counts again
            boot INTEGER NOT NULL,
            start_ms INTEGER NOT NULL,     -- daemon UTC ms of the terminal's uptime 0
            PRIMARY KEY (terminal_id, journal_id, boot)
        );
        INSERT INTO boots_v2 SELECT terminal_id, 0, boot, start_ms FROM boots;
        DROP TABLE boots;
        ALTER TABLE boots_v2 RENAME TO boots;
        CREATE TABLE terminal_events (
            id INTEGER PRIMARY KEY,
            terminal_id INTEGER NOT NULL,
            at_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,        -- journal_new, journal_switch, journal_behind, ...
            journal_id INTEGER,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX terminal_events_terminal ON terminal_events(terminal_id, id);
        CREATE TABLE clock_steps (
            id INTEGER PRIMARY KEY,
            at_ms INTEGER NOT NULL,    -- the daemon's wall clock just after the step
            delta_ms INTEGER NOT NULL  -- the step: new wall time - old wall time
        );
        """,
    ),
    (
        # Technician tooling (hcp terminal): a terminal is provisioned for a
        # window, may move to another board (replace), be retired (its key
        # revoked: frames under it are refused, 'retired') or rekeyed (the old
        # key is still accepted until the terminal uses the new one).  Windows
        # keep their history: which terminal served which window when.
        "0003_terminal_lifecycle",
        """
        ALTER TABLE terminals ADD COLUMN retired_ms INTEGER;      -- set: the key is revoked
        ALTER TABLE terminals ADD COLUMN prev_key BLOB;           -- the key before a rekey, until unused
        ALTER TABLE terminals ADD COLUMN rekeyed_ms INTEGER;
        ALTER TABLE terminals ADD COLUMN transport TEXT;          -- serial | mqtt, as provisioned
        CREATE TABLE terminal_windows (
            terminal_id INTEGER NOT NULL,
            window_no TEXT NOT NULL,
            from_ms INTEGER NOT NULL,
            to_ms INTEGER,              -- NULL: serves it now
            PRIMARY KEY (terminal_id, window_no, from_ms)
        );
        CREATE INDEX terminal_windows_window ON terminal_windows(window_no, from_ms);
        INSERT INTO terminal_windows (terminal_id, window_no, from_ms)
        SELECT id, window_no, coalesce(created_ms, 0) FROM terminals WHERE window_no IS NOT NULL;
        INSERT OR IGNORE INTO meta (name, value) VALUES ('terminals_version', 0);
        INSERT OR IGNORE INTO meta (name, value) VALUES ('terminals_applied', 0);
        """,
    ),
]

# Migrations that rebuild a table others reference: run with foreign keys off
# (SQLite's documented procedure), then checked with foreign_key_check.
_FK_OFF = {"0002_journal_identity"}



def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded on ``conn``; return the names applied."""
    c = conn
    c.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_ms INTEGER)")
    done = {r[0] for r in c.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        fk_off = name in _FK_OFF
        if fk_off:
            c.execute("PRAGMA foreign_keys=OFF")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                before = _ratings_state(c) if fk_off else None
                for stmt in _statements(sql):
                    c.execute(stmt)
                if before is not None and _ratings_state(c) != before:
                    raise sqlite3.IntegrityError(f"{name}: the ratings did not move unchanged")
                if fk_off and c.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise sqlite3.IntegrityError(f"{name}: foreign keys broken by the rebuild")
                c.execute(
                    "INSERT INTO migrations (name, applied_ms) VALUES (?, ?)",
                    (name, int(time.time() * 1000)),
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        finally:
            if fk_off:
                c.execute("PRAGMA foreign_keys=ON")
        applied.append(name)
    return applied


def _ratings_state(c: sqlite3.Connection) -> tuple[int, int, bytes | None]:
    """(count, last id, last chain value) of the ratings table."""
    n, last = c.execute("SELECT count(*), coalesce(max(id), 0) FROM ratings").fetchone()
    row = c.execute("SELECT chain FROM ratings ORDER BY id DESC LIMIT 1").fetchone()
    return int(n), int(last), bytes(row[0]) if row else None


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
