"""The hall's durable store: one SQLite file, append-only ratings, hash chain.

What it is for: every rating the daemon acknowledges is in this file first.
``commit`` writes a whole group of ratings (from many terminals) in one
transaction with ``synchronous=FULL`` in WAL mode, so a commit that returned
survives a crash or a power cut, and durability costs one fsync per group,
not per rating.

What it must never do: UPDATE or DELETE a row of ``ratings``; store a
terminal key or an applicant's contact where a log could print it (keys live
only in ``terminals.key``; contacts only AES-GCM encrypted in
``cases.contact_enc``); swallow a disk-full error (``StoreFull`` goes to the
caller, which stops acknowledging: the terminals keep the ratings in their
journals and resend).

The schema (schema.py) is the shared contract of common.md (ratings, cases,
annotations; the uplink reads them) plus the daemon's own tables, changed only
by named migrations.  Contacts are encrypted by contact.py.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils
from haochaping.daemon import chain, schema

SQLITE_FULL = 13
BUSY_TIMEOUT_MS = 5000
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
FILE_MODE = 0o600  # the store holds every terminal's key: private, whatever the umask


class StoreError(Exception):
    """The store cannot do what was asked (and nothing was written)."""


class StoreFull(StoreError):
    """The disk (or the configured size limit) is full: nothing was committed."""


class TerminalError(StoreError):
    """A terminal operation that cannot be done as asked (the message says why)."""


_RATING_COLS = (
    "id",
    "terminal_id",
    "journal_id",
    "seq",
    "fork",
    "level",
    "reason",
    "flags",
    "session",
    "case_id",
    "device_time",
    "uptime_ms",
    "boot",
    "received_ms",
    "assess_ms",
    "time_quality",
    "chain",
)
_INSERT_RATING = (
    "INSERT INTO ratings ({}) VALUES ({}) ON CONFLICT(terminal_id, journal_id, seq, fork) DO NOTHING".format(
        ", ".join(_RATING_COLS),
        ", ".join("?" * len(_RATING_COLS)),
    )
)

_TERMINAL_UPDATABLE = (
    "window_no",
    "firmware",
    "board",
    "last_seen_ms",
    "journal_used",
    "journal_capacity",
    "clock_offset_ms",
    "rx_counter",
    "down_epoch",
    "high_seq",
    "alarms",
    "journal_id",
    "prev_key",  # cleared by the core once the terminal uses its new key (rekey)
)
# The columns of a record's content: a second record under the same
# (terminal, journal, seq) with other content is a fork, not a duplicate.
_CONTENT = ("level", "reason", "flags", "session", "device_time", "uptime_ms", "boot")
FORK_FLAG = "journal_fork"


@dataclass(slots=True)
class NewRating:
    """A rating the core wants stored, with what goes beside it if it is new."""

    terminal_id: int
    seq: int
    level: int
    reason: int
    flags: int
    session: int | None
    case_id: int | None
    device_time: int
    uptime_ms: int
    boot: int
    assess_ms: int
    time_quality: str
    flags_found: list[str] = field(default_factory=list)  # annotation values (kind 'flag')
    journal_id: int = 0  # the terminal journal's id (protocol v2)

    def content(self) -> tuple[Any, ...]:
        return (self.level, self.reason, self.flags, self.session, self.device_time,
                self.uptime_ms, self.boot)  # fmt: skip


def fork_of(r: NewRating) -> int:
    """The fork id of a record that diverges from the stored one under its seq
    (SPEC.md section 5, "Journals"): the first 4 bytes of SHA-256 of its 20
    wire bytes, 1 if they are 0."""
    rec = struct.pack(">IBBIIIH", r.seq, r.level | (r.reason << 3), r.flags, r.session or 0,
                      r.device_time, r.uptime_ms, r.boot)  # fmt: skip
    v = int.from_bytes(hashlib.sha256(rec).digest()[:4], "big")
    return v or 1


@dataclass(slots=True)
class Stored:
    """What ``commit`` did with one NewRating: ``id`` is None for a duplicate;
    ``fork`` is not 0 when it was stored as a fork of a divergent record."""

    rating: NewRating
    id: int | None
    fork: int = 0


@dataclass
class Updates:
    """Terminal state that goes into the next commit, beside its ratings."""

    terminals: dict[int, dict[str, Any]] = field(default_factory=dict)
    boots: list[tuple[int, int, int, int]] = field(default_factory=list)
    # boots: (terminal, journal, boot, start ms)
    journals: list[tuple[int, int, int]] = field(default_factory=list)  # (terminal, journal, ms) seen
    distrust: list[tuple[int, int, int, int]] = field(default_factory=list)
    # distrust: (terminal, journal, boot below, seq from): an older journal image came back
    events: list[tuple[int, int, str, int | None, str]] = field(default_factory=list)
    # events: (terminal, at ms, kind, journal, detail) -> terminal_events
    clock_steps: list[tuple[int, int]] = field(default_factory=list)  # (at ms, delta ms)

    def __bool__(self) -> bool:
        return bool(self.terminals or self.boots or self.journals or self.events
                    or self.clock_steps or self.distrust)  # fmt: skip

    def merge_after(self, newer: Updates) -> None:
        """Fold in what was gathered after this (a failed commit is retried)."""
        for tid, d in newer.terminals.items():
            self.terminals.setdefault(tid, {}).update(d)
        self.boots += newer.boots
        self.journals += newer.journals
        self.distrust += newer.distrust
        self.events += newer.events
        self.clock_steps += newer.clock_steps


@dataclass(slots=True)
class Staged:
    """A group written inside an open transaction, not yet committed."""

    stored: list[Stored]
    last_id: int
    last_chain: bytes


@dataclass(slots=True)
class TerminalRecord:
    id: int
    key: bytes = field(repr=False)
    window_no: str | None
    rx_counter: int
    down_epoch: int
    boots: dict[tuple[int, int], int]  # (journal, boot) -> daemon ms at uptime 0
    journal_id: int | None = None  # the journal of the last HELLO
    journals: dict[int, int] = field(default_factory=dict)  # journal id -> highest seq stored
    distrust: dict[int, tuple[int, int]] = field(default_factory=dict)  # journal -> (boot below, seq from)
    epoch_saved: bool = True  # False: down_epoch is new but not yet durable (a full disk at start)
    prev_key: bytes | None = field(default=None, repr=False)  # the key before a rekey, until unused


def _is_full(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code == SQLITE_FULL:
        return True
    return "database or disk is full" in str(e)


def _rating_row(rid: int, prev: bytes, r: NewRating, now_ms: int, fork: int = 0) -> tuple[Any, ...]:
    """The _INSERT_RATING values of ``r`` as row ``rid`` after chain value ``prev``."""
    h = chain.next_hash_values(
        prev,
        (rid, r.terminal_id, r.seq, r.level, r.reason, r.flags, r.session, r.device_time,
         r.uptime_ms, r.boot, now_ms, r.journal_id, fork),
    )  # fmt: skip
    return (rid, r.terminal_id, r.journal_id, r.seq, fork, r.level, r.reason, r.flags, r.session,
            r.case_id, r.device_time, r.uptime_ms, r.boot, now_ms, r.assess_ms, r.time_quality,
            h)  # fmt: skip


def _store_error(e: sqlite3.Error, what: str) -> StoreError:
    if _is_full(e):
        return StoreFull("the database is full (disk or size limit): nothing committed")
    return StoreError(f"{what}: {e}")


class Store:
    """One SQLite file.  Use from one thread at a time: the daemon's writers
    take turns under its write lock (service.py)."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_pages: int | None = None, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        if not readonly:
            _create_private(self.path)
        target = f"file:{self.path}?mode=ro" if readonly else str(self.path)
        self.conn = sqlite3.connect(
            target, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
            uri=readonly,
        )  # fmt: skip
        self.db = sqlite_utils.Database(self.conn)
        self._last_id: int = 0
        self._last_chain: bytes = chain.GENESIS
        self.start_full = False  # the disk was full when this store started
        if readonly:
            return
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        # After a checkpoint the WAL is cut back to this size, so the space a
        # burst of writes took returns to the file system (docs/operations.md).
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if max_pages is not None:
            # The stand-in for a small disk in tests and a hard size cap in
            # production (docs/operations.md): past it, writes fail SQLITE_FULL.
            self.conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
        self.migrate()
        row = self.conn.execute("SELECT id, chain FROM ratings ORDER BY id DESC LIMIT 1").fetchone()
        if row:
            self._last_id, self._last_chain = int(row[0]), bytes(row[1])

    # ------------------------------------------------------------ schema

    def migrate(self) -> list[str]:
        """Apply every migration not yet recorded; return the names applied."""
        return schema.migrate(self.conn)

    def migrations(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM migrations ORDER BY rowid")]

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ meta

    def next_daemon_start(self) -> int:
        """Count this daemon start (durably) and return the count."""
        with self._tx():
            self.conn.execute(
                "INSERT INTO meta (name, value) VALUES ('starts', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )
            return int(
                self.conn.execute("SELECT value FROM meta WHERE name='starts'").fetchone()[0]
            )

    # ------------------------------------------------------------ terminals

    # Every change of the terminals table bumps meta 'terminals_version' in the
    # same transaction; a running daemon polls it every tick and loads the
    # terminals again (no restart, no SIGHUP), then records the version it
    # applied in 'terminals_applied' (``hcp terminal`` waits for that).

    def _bump_terminals(self) -> int:
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES ('terminals_version', 1)"
            " ON CONFLICT(name) DO UPDATE SET value = value + 1"
        )
        return int(self.conn.execute(
            "SELECT value FROM meta WHERE name = 'terminals_version'").fetchone()[0])  # fmt: skip

    def terminals_version(self) -> tuple[int, int]:
        """(version of the terminals table, version the running daemon applied)."""
        v = dict(self.conn.execute(
            "SELECT name, value FROM meta WHERE name IN ('terminals_version', 'terminals_applied')"))  # fmt: skip
        return int(v.get("terminals_version") or 0), int(v.get("terminals_applied") or 0)

    def set_terminals_applied(self, version: int) -> None:
        with self._tx():
            self.conn.execute(
                "INSERT INTO meta (name, value) VALUES ('terminals_applied', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value", (version,))  # fmt: skip

    def _window_to(self, terminal_id: int, window_no: str | None, now_ms: int) -> None:
        """Terminal ``terminal_id`` serves ``window_no`` (None: no window) from now."""
        c = self.conn
        row = c.execute("SELECT window_no FROM terminals WHERE id = ?", (terminal_id,)).fetchone()
        if row is not None and row[0] == window_no:
            return
        c.execute("UPDATE terminal_windows SET to_ms = ? WHERE terminal_id = ? AND to_ms IS NULL",
                  (now_ms, terminal_id))  # fmt: skip
        c.execute("UPDATE terminals SET window_no = ? WHERE id = ?", (window_no, terminal_id))
        if window_no is not None:
            c.execute("INSERT OR IGNORE INTO terminal_windows (terminal_id, window_no, from_ms)"
                      " VALUES (?, ?, ?)", (terminal_id, window_no, now_ms))  # fmt: skip

    def add_terminal(
        self, terminal_id: int, key: bytes, window_no: str | None, now_ms: int,
        transport: str | None = None,
    ) -> None:  # fmt: skip
        """Insert or update a terminal's key and window (``hcp daemon add-terminal``).
        A window another active terminal serves is refused (TerminalError)."""
        if len(key) != 32:
            raise StoreError("a terminal key is 32 bytes")
        with self._tx():
            if window_no is not None:
                other = self.terminal_for_window(window_no)
                if other is not None and other != terminal_id:
                    raise TerminalError(f"window {window_no} is served by terminal {other:08x}"
                                        " (hcp terminal replace, or retire it first)")  # fmt: skip
            row = self.conn.execute("SELECT retired_ms FROM terminals WHERE id = ?", (terminal_id,)).fetchone()
            if row is not None and row[0] is not None:
                raise TerminalError(f"terminal {terminal_id:08x} is retired: its id is never used again")
            self.conn.execute(
                "INSERT INTO terminals (id, key, created_ms, transport) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET key = excluded.key,"
                " transport = coalesce(excluded.transport, transport)",
                (terminal_id, key, now_ms, transport),
            )  # fmt: skip
            self._window_to(terminal_id, window_no, now_ms)
            self._bump_terminals()

    def terminal_for_window(self, window_no: str) -> int | None:
        """The active terminal serving ``window_no``, if any."""
        row = self.conn.execute(
            "SELECT id FROM terminals WHERE window_no = ? AND retired_ms IS NULL AND enabled = 1",
            (window_no,),
        ).fetchone()
        return None if row is None else int(row[0])

    def terminal_exists(self, terminal_id: int) -> bool:
        return self.conn.execute("SELECT 1 FROM terminals WHERE id = ?", (terminal_id,)).fetchone() is not None

    def replace_terminal(self, old_id: int, new_id: int, new_key: bytes, now_ms: int,
                         transport: str | None = None) -> str | None:  # fmt: skip
        """The window of ``old_id`` moves to a new terminal ``new_id`` (a new
        board).  The old terminal keeps its key (its journal may still drain)
        until it is retired; its ratings stay what they were.  Returns the window."""
        if len(new_key) != 32:
            raise StoreError("a terminal key is 32 bytes")
        with self._tx():
            row = self.conn.execute(
                "SELECT window_no, retired_ms, transport FROM terminals WHERE id = ?", (old_id,)
            ).fetchone()
            if row is None:
                raise TerminalError(f"no terminal {old_id:08x}")
            if self.terminal_exists(new_id):
                raise TerminalError(f"terminal {new_id:08x} exists already")
            window = row[0]
            self._window_to(old_id, None, now_ms)
            self.conn.execute("INSERT INTO terminals (id, key, created_ms, transport) VALUES (?, ?, ?, ?)",
                              (new_id, new_key, now_ms, transport or row[2]))  # fmt: skip
            self._window_to(new_id, window, now_ms)
            self._bump_terminals()
            return str(window) if window is not None else None

    def retire_terminal(self, terminal_id: int, now_ms: int) -> str | None:
        """Revoke the terminal's key at once (frames under it are refused,
        'retired'); its window closes.  Its ratings stay.  Returns the window
        it served."""
        with self._tx():
            row = self.conn.execute(
                "SELECT window_no, retired_ms FROM terminals WHERE id = ?", (terminal_id,)
            ).fetchone()
            if row is None:
                raise TerminalError(f"no terminal {terminal_id:08x}")
            if row[1] is not None:
                raise TerminalError(f"terminal {terminal_id:08x} is retired already")
            self._window_to(terminal_id, None, now_ms)
            self.conn.execute("UPDATE terminals SET retired_ms = ?, enabled = 0, prev_key = NULL"
                              " WHERE id = ?", (now_ms, terminal_id))  # fmt: skip
            self._bump_terminals()
            return str(row[0]) if row[0] is not None else None

    def rekey_terminal(self, terminal_id: int, new_key: bytes, now_ms: int) -> None:
        """A new key for the terminal.  The old one stays accepted until the
        terminal sends a frame under the new one (then the daemon forgets it),
        so nothing journaled or in flight under the old key is lost."""
        if len(new_key) != 32:
            raise StoreError("a terminal key is 32 bytes")
        with self._tx():
            row = self.conn.execute(
                "SELECT key, retired_ms, prev_key FROM terminals WHERE id = ?", (terminal_id,)
            ).fetchone()
            if row is None:
                raise TerminalError(f"no terminal {terminal_id:08x}")
            if row[1] is not None:
                raise TerminalError(f"terminal {terminal_id:08x} is retired")
            if bytes(row[0]) == new_key:
                raise TerminalError("the new key is the current one")
            # a rekey before the last one was taken up keeps the key the board
            # still holds (the oldest one in use), not the never-used middle one
            prev = bytes(row[2]) if row[2] is not None else bytes(row[0])
            self.conn.execute("UPDATE terminals SET key = ?, prev_key = ?, rekeyed_ms = ? WHERE id = ?",
                              (new_key, prev, now_ms, terminal_id))  # fmt: skip
            self._bump_terminals()

    def retired_ids(self) -> set[int]:
        return {int(r[0]) for r in self.conn.execute("SELECT id FROM terminals WHERE retired_ms IS NOT NULL")}

    def window_history(self, terminal_id: int | None = None, window_no: str | None = None) -> list[dict[str, Any]]:
        """Which terminal served which window, and when (oldest first)."""
        q, args = "SELECT terminal_id, window_no, from_ms, to_ms FROM terminal_windows WHERE 1", list[Any]()
        if terminal_id is not None:
            q += " AND terminal_id = ?"
            args.append(terminal_id)
        if window_no is not None:
            q += " AND window_no = ?"
            args.append(window_no)
        return [{"terminal_id": t, "window_no": w, "from_ms": f, "to_ms": to}
                for t, w, f, to in self.conn.execute(q + " ORDER BY from_ms, terminal_id", args)]  # fmt: skip

    def start_terminals(self, new_epoch: bool = True) -> dict[int, TerminalRecord]:
        """Load every enabled terminal and start a new down epoch for each
        (durably, before any frame of the new epoch is sent).  On a full disk
        the new epoch is kept in memory (``epoch_saved`` False) and the core
        writes it with the first commit that succeeds: a daemon must start,
        refuse to acknowledge and say why, rather than not start at all.
        ``new_epoch`` False: load only (a running daemon taking up a change of
        the terminals keeps its down links and their counters)."""
        saved = True
        try:
            if new_epoch:
                with self._tx():
                    self.conn.execute(
                        "UPDATE terminals SET down_epoch = down_epoch + 1 WHERE enabled = 1"
                    )
        except StoreFull:
            saved = False
            self.start_full = True
        boots: dict[int, dict[tuple[int, int], int]] = {}
        for tid, jid, boot, start in self.conn.execute(
            "SELECT terminal_id, journal_id, boot, start_ms FROM boots"
        ):
            boots.setdefault(tid, {})[(jid, boot)] = start
        journals: dict[int, dict[int, int]] = {}
        distrust: dict[int, dict[int, tuple[int, int]]] = {}
        for tid, jid, high, below, seq_from in self.conn.execute(
            "SELECT terminal_id, journal_id, high_seq, distrust_boot_below, distrust_seq_from"
            " FROM journals"
        ):
            journals.setdefault(tid, {})[jid] = high
            if below:
                distrust.setdefault(tid, {})[jid] = (below, seq_from)
        out = {}
        for tid, key, window, rx, epoch, jid, prev in self.conn.execute(
            "SELECT id, key, window_no, rx_counter, down_epoch, journal_id, prev_key FROM terminals"
            " WHERE enabled = 1 AND retired_ms IS NULL"
        ):
            out[tid] = TerminalRecord(tid, bytes(key), window, rx, epoch if saved else epoch + 1,
                                      boots.get(tid, {}), jid, journals.get(tid, {}),
                                      distrust.get(tid, {}), saved,
                                      bytes(prev) if prev is not None else None)  # fmt: skip
        return out

    def checkpoint(self, mode: str = "TRUNCATE") -> bool:
        """Move the WAL into the database (TRUNCATE: and give its space back
        to the file system; PASSIVE: never wait); False if not all of it could
        be moved (a reader, no room)."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise StoreError("checkpoint mode is PASSIVE, FULL, RESTART or TRUNCATE")
        try:
            row = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return False
        return bool(row is not None and row[0] == 0)

    def terminals(self) -> list[dict[str, Any]]:
        """Terminal health rows, without keys."""
        cols = ["id", "window_no", "firmware", "board", "last_seen_ms", "journal_used",
                "journal_capacity", "clock_offset_ms", "alarms", "journal_id"]  # fmt: skip
        rows = self.conn.execute(
            "SELECT {}, (SELECT high_seq FROM journals j WHERE j.terminal_id = t.id"
            " AND j.journal_id = t.journal_id), (SELECT count(*) FROM journals j"
            " WHERE j.terminal_id = t.id) FROM terminals t ORDER BY id".format(
                ", ".join("t." + c for c in cols)
            )
        ).fetchall()
        last: dict[int, dict[str, Any]] = {}
        for e in self.conn.execute(
            "SELECT e.terminal_id, e.at_ms, e.kind, e.journal_id, e.detail FROM terminal_events e"
            " JOIN (SELECT terminal_id, max(id) AS id FROM terminal_events GROUP BY terminal_id) m"
            " ON m.id = e.id"
        ):
            last[e[0]] = {"at_ms": e[1], "kind": e[2], "journal_id": f"{e[3]:08x}", "detail": e[4]}
        out = []
        for r in rows:
            d = dict(zip(cols, r[: len(cols)], strict=True))
            d["high_seq"] = r[len(cols)] or 0
            d["journals"] = r[len(cols) + 1]
            d["last_event"] = last.get(d["id"])  # a new journal, an older image, ...
            out.append(d)
        return out

    def clock_steps(self, limit: int = 16) -> list[tuple[int, int]]:
        """The daemon's last wall-clock steps, oldest first: (at ms, delta ms)."""
        rows = self.conn.execute(
            "SELECT at_ms, delta_ms FROM clock_steps ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(int(a), int(d)) for a, d in reversed(rows)]

    def terminal_events(
        self, terminal_id: int | None = None, since_id: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Terminal events (a new journal, a journal behind the store, ...), oldest first."""
        q = "SELECT id, terminal_id, at_ms, kind, journal_id, detail FROM terminal_events WHERE id > ?"
        args: list[Any] = [since_id]
        if terminal_id is not None:
            q += " AND terminal_id = ?"
            args.append(terminal_id)
        names = ("id", "terminal_id", "at_ms", "kind", "journal_id", "detail")
        rows = self.conn.execute(q + " ORDER BY id LIMIT ?", [*args, limit]).fetchall()
        return [dict(zip(names, r, strict=True)) for r in rows]

    # ------------------------------------------------------------ cases, sessions

    def add_case(self, case: dict[str, Any], contact_enc: bytes | None, now_ms: int) -> int:
        cols = ["case_no", "item_code", "item_name", "handle_item", "dept_code", "dept_name",
                "area_code", "window_no", "window_name", "staff_id", "staff_name", "service_ms",
                "service_number"]  # fmt: skip
        vals = [case.get(c) for c in cols] + [contact_enc, now_ms]
        with self._tx():
            cur = self.conn.execute(
                "INSERT INTO cases ({}, contact_enc, created_ms) VALUES ({})".format(
                    ", ".join(cols), ", ".join("?" * (len(cols) + 2))
                ),
                vals,
            )
            return int(cur.lastrowid or 0)

    def add_session(self, token: int, case_id: int, window_no: str, terminal_id: int,
                    armed_ms: int, expires_ms: int) -> None:  # fmt: skip
        with self._tx():
            self.conn.execute(
                "INSERT INTO sessions (id, case_id, window_no, terminal_id, armed_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token, case_id, window_no, terminal_id, armed_ms, expires_ms),
            )

    def cancel_session(self, token: int, now_ms: int) -> bool:
        with self._tx():
            cur = self.conn.execute(
                "UPDATE sessions SET cancelled_ms = ? WHERE id = ? AND cancelled_ms IS NULL",
                (now_ms, token),
            )
            return cur.rowcount == 1

    def sessions_since(
        self, since_ms: int
    ) -> list[tuple[int, int, str, int, int, int, int | None]]:
        return self.conn.execute(
            "SELECT id, case_id, window_no, terminal_id, armed_ms, expires_ms, cancelled_ms "
            "FROM sessions WHERE armed_ms >= ?",
            (since_ms,),
        ).fetchall()

    def case(self, case_id: int) -> dict[str, Any] | None:
        rows = list(self.db["cases"].rows_where("id = ?", [case_id]))
        return rows[0] if rows else None

    # ------------------------------------------------------------ ratings

    def commit(
        self,
        ratings: Sequence[NewRating],
        now_ms: int,
        updates: Updates | None = None,
        refusals: Iterable[tuple[int, str, int | None, str]] = (),
    ) -> list[Stored]:
        """Store a group of ratings (and terminal state) in ONE transaction.

        Each rating is new (gets the next id and chain value, its annotations
        and, for level <= 2, an alert) or a duplicate of a stored
        (terminal_id, seq) (id None, nothing written).  On any error nothing
        is written; StoreFull for a full disk.  ``begin`` + ``stage`` +
        ``finish``, which the daemon calls apart (see service.py).
        """
        self.begin()
        return self.finish(self.stage(ratings, now_ms, updates, refusals))

    def begin(self) -> None:
        """Open a group's write transaction (BEGIN IMMEDIATE: waits up to
        BUSY_TIMEOUT_MS for another writer, such as the uplink)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _store_error(e, "commit failed") from e

    def stage(
        self,
        ratings: Sequence[NewRating],
        now_ms: int,
        updates: Updates | None = None,
        refusals: Iterable[tuple[int, str, int | None, str]] = (),
    ) -> Staged:
        """Write a group inside the transaction ``begin`` opened.  Nothing is
        durable (and nothing may be acknowledged) before ``finish``.  On an
        error the transaction is rolled back and StoreFull/StoreError raised."""
        try:
            staged = self._write_ratings(ratings, now_ms)
            c = self.conn
            u = updates or Updates()
            for tid, upd in u.terminals.items():
                keys = [k for k in upd if k in _TERMINAL_UPDATABLE]
                if keys:
                    c.execute(
                        "UPDATE terminals SET {} WHERE id = ?".format(
                            ", ".join(f"{k} = ?" for k in keys)
                        ),
                        [upd[k] for k in keys] + [tid],
                    )
            c.executemany(
                "INSERT INTO boots (terminal_id, journal_id, boot, start_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET start_ms = excluded.start_ms",
                u.boots,
            )
            highs: dict[tuple[int, int], int] = {}
            for st in staged.stored:
                if st.id is not None:
                    k = (st.rating.terminal_id, st.rating.journal_id)
                    highs[k] = max(highs.get(k, 0), st.rating.seq)
            seen = [(tid, jid, ms, 0) for tid, jid, ms in u.journals]
            seen += [(tid, jid, now_ms, high) for (tid, jid), high in highs.items()]
            c.executemany(
                "INSERT INTO journals (terminal_id, journal_id, first_seen_ms, last_seen_ms, high_seq)"
                " VALUES (?1, ?2, ?3, ?3, ?4) ON CONFLICT DO UPDATE SET"
                " last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),"
                " high_seq = max(high_seq, excluded.high_seq)",
                seen,
            )
            c.executemany(
                "UPDATE journals SET distrust_boot_below = ?3, distrust_seq_from = ?4"
                " WHERE terminal_id = ?1 AND journal_id = ?2",
                u.distrust,
            )
            c.executemany(
                "INSERT INTO terminal_events (terminal_id, at_ms, kind, journal_id, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                u.events,
            )
            c.executemany("INSERT INTO clock_steps (at_ms, delta_ms) VALUES (?, ?)", u.clock_steps)
            c.executemany(
                "INSERT INTO refusals (at_ms, source, terminal_id, reason) VALUES (?, ?, ?, ?)",
                refusals,
            )
            return staged
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error):
                raise _store_error(e, "commit failed") from e
            raise

    def finish(self, staged: Staged) -> list[Stored]:
        """COMMIT the staged group (the fsync): once this returns, it is durable."""
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise _store_error(e, "commit failed") from e
        self._last_id, self._last_chain = staged.last_id, staged.last_chain
        return staged.stored

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _write_ratings(self, ratings: Sequence[NewRating], now_ms: int) -> Staged:
        c = self.conn
        last_id, last_chain = self._last_id, self._last_chain
        rows = []
        for r in ratings:
            last_id += 1
            row = _rating_row(last_id, last_chain, r, now_ms)
            last_chain = row[-1]
            rows.append(row)
        if not rows:
            return Staged([], last_id, last_chain)
        # Fast path: every rating is new (the usual case), one executemany.
        # A duplicate (a resend) shifts the ids and chain values after it, so
        # the group is undone to the savepoint and written row by row.
        c.execute("SAVEPOINT grp")
        if c.executemany(_INSERT_RATING, rows).rowcount == len(rows):
            c.execute("RELEASE grp")
            stored = [Stored(r, row[0]) for r, row in zip(ratings, rows, strict=True)]
        else:
            c.execute("ROLLBACK TO grp")
            c.execute("RELEASE grp")
            stored, last_id, last_chain = self._write_one_by_one(ratings, now_ms)
        c.executemany(
            "INSERT INTO annotations (rating_id, kind, value, created_ms) VALUES (?, 'flag', ?, ?)",
            [(s.id, v, now_ms) for s in stored if s.id is not None for v in s.rating.flags_found],
        )
        c.executemany(
            "INSERT INTO alerts (rating_id, created_ms) VALUES (?, ?)",
            [(s.id, now_ms) for s in stored if s.id is not None and s.rating.level <= 2],
        )
        return Staged(stored, last_id, last_chain)

    def _write_one_by_one(
        self, ratings: Sequence[NewRating], now_ms: int
    ) -> tuple[list[Stored], int, bytes]:
        """Row by row: a record already held with the same content is a
        duplicate; with other content (a restored journal image wrote a new
        rating under a held seq) it is stored as a fork and flagged."""
        c = self.conn
        out: list[Stored] = []
        last_id, last_chain = self._last_id, self._last_chain
        for r in ratings:
            rid = last_id + 1
            row = _rating_row(rid, last_chain, r, now_ms)
            if c.execute(_INSERT_RATING, row).rowcount == 1:
                last_id, last_chain = rid, row[-1]
                out.append(Stored(r, rid))
                continue
            held = c.execute(
                "SELECT {} FROM ratings WHERE terminal_id = ? AND journal_id = ? AND seq = ?"
                " AND fork = 0".format(", ".join(_CONTENT)),
                (r.terminal_id, r.journal_id, r.seq),
            ).fetchone()
            if held is None or tuple(held) == r.content():
                out.append(Stored(r, None))
                continue
            fork = fork_of(r)
            row = _rating_row(rid, last_chain, r, now_ms, fork)
            if c.execute(_INSERT_RATING, row).rowcount != 1:
                out.append(Stored(r, None, fork))  # this fork is held already
                continue
            if FORK_FLAG not in r.flags_found:
                r.flags_found.append(FORK_FLAG)
            last_id, last_chain = rid, row[-1]
            out.append(Stored(r, rid, fork))
        return out, last_id, last_chain

    def annotate(self, rating_id: int, kind: str, value: str, now_ms: int) -> int:
        if kind not in ("review", "flag"):
            raise StoreError("annotation kind is 'review' or 'flag'")
        with self._tx():
            cur = self.conn.execute(
                "INSERT INTO annotations (rating_id, kind, value, created_ms) VALUES (?, ?, ?, ?)",
                (rating_id, kind, value, now_ms),
            )
            return int(cur.lastrowid or 0)

    def annotate_once(self, rating_id: int, kind: str, value: str, now_ms: int) -> tuple[int, bool]:
        """``annotate``, idempotent: the same (rating, kind, value) again is the
        row recorded before.  Returns (annotation id, whether it is new)."""
        if kind not in ("review", "flag"):
            raise StoreError("annotation kind is 'review' or 'flag'")
        with self._tx():
            row = self.conn.execute(
                "SELECT id FROM annotations WHERE rating_id = ? AND kind = ? AND value = ?"
                " ORDER BY id LIMIT 1",
                (rating_id, kind, value),
            ).fetchone()
            if row is not None:
                return int(row[0]), False
            cur = self.conn.execute(
                "INSERT INTO annotations (rating_id, kind, value, created_ms) VALUES (?, ?, ?, ?)",
                (rating_id, kind, value, now_ms),
            )
            return int(cur.lastrowid or 0), True

    def verify_chain(self) -> int | None:
        """The id of the first rating whose chain value is wrong, or None."""
        prev = chain.GENESIS
        cols = ", ".join(chain.FIELDS)
        for row in self.conn.execute(f"SELECT {cols}, chain FROM ratings ORDER BY id"):
            d = dict(zip(chain.FIELDS, row[:-1], strict=True))
            h = chain.next_hash(prev, d)
            if h != bytes(row[-1]):
                return int(d["id"])
            prev = h
        return None

    def ratings(self, since_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT r.id, r.terminal_id, r.seq, r.level, r.reason, r.flags, r.session, r.case_id, "
                "r.assess_ms, r.time_quality, r.received_ms, c.case_no, c.window_no, c.staff_name "
                "FROM ratings r LEFT JOIN cases c ON c.id = r.case_id WHERE r.id > ? ORDER BY r.id LIMIT ?",
                [since_id, limit],
            )
        )

    def alerts(self, since_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """差评 alerts with what the callback needs (no contact)."""
        return list(
            self.db.query(
                "SELECT a.id, a.rating_id, a.created_ms, r.terminal_id, r.level, r.reason, r.assess_ms, "
                "r.case_id, c.case_no, c.item_name, c.window_no, c.window_name, c.staff_id, c.staff_name, "
                "t.window_no AS terminal_window "
                "FROM alerts a JOIN ratings r ON r.id = a.rating_id "
                "LEFT JOIN cases c ON c.id = r.case_id LEFT JOIN terminals t ON t.id = r.terminal_id "
                "WHERE a.id > ? ORDER BY a.id LIMIT ?",
                [since_id, limit],
            )
        )

    def alerts_for(self, rating_ids: list[int]) -> list[dict[str, Any]]:
        """Alert rows for these ratings, with the case and its encrypted contact."""
        if not rating_ids:
            return []
        return list(
            self.db.query(
                "SELECT a.id, a.rating_id, r.terminal_id, r.level, r.reason, r.assess_ms, r.case_id, "
                "c.case_no, c.item_code, c.item_name, c.dept_name, c.window_no, c.window_name, c.staff_id, "
                "c.staff_name, c.service_ms, c.contact_enc, t.window_no AS terminal_window "
                "FROM alerts a JOIN ratings r ON r.id = a.rating_id "
                "LEFT JOIN cases c ON c.id = r.case_id LEFT JOIN terminals t ON t.id = r.terminal_id "
                "WHERE a.rating_id IN ({}) ORDER BY a.id".format(", ".join("?" * len(rating_ids))),
                list(rating_ids),
            )
        )

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0])

    # ------------------------------------------------------------ helpers

    def _tx(self) -> _Tx:
        return _Tx(self.conn)


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _store_error(e, "cannot begin a transaction") from e

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                # SQLite may have rolled back already (a full disk during COMMIT)
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if _is_full(e):
                    raise StoreFull("the database is full (disk or size limit)") from e
                raise
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(ev, sqlite3.Error) and _is_full(ev):
            raise StoreFull("the database is full (disk or size limit)") from ev


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite gives its WAL
    and SHM files the database file's mode).  An existing file keeps the mode
    its operator gave it (0640 to the service's group, say)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    except OSError:
        return  # SQLite will say what is wrong with the path
    try:
        os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask took away
    finally:
        os.close(fd)


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise StoreError("bad table name")
    return name
