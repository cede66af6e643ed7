"""daemon/store.py on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from haochaping.daemon import chain
from haochaping.daemon.contact import ContactCipher, ContactKeyError
from haochaping.daemon.schema import MIGRATIONS
from haochaping.daemon.store import NewRating, Store, StoreError, StoreFull
from hypothesis import given
from hypothesis import strategies as st

KEY = bytes(range(32))


def rating(tid: int, seq: int, level: int = 5, flags_found: list[str] | None = None) -> NewRating:
    return NewRating(tid, seq, level, 1 if level <= 2 else 0, 0, None, None, 0, seq * 10, 1,
                     1_000 + seq, "received", flags_found or [])  # fmt: skip


def test_pragmas_and_migrations(tmp_path):
    s = Store(tmp_path / "h.db")
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s.migrations() == [m[0] for m in MIGRATIONS]
    s.close()
    s2 = Store(tmp_path / "h.db")
    assert s2.migrate() == []  # nothing applied twice
    cols = {r[1] for r in s2.conn.execute("PRAGMA table_info(ratings)")}
    assert {"id", "terminal_id", "seq", "level", "reason", "flags", "session", "case_id",
            "device_time", "uptime_ms", "boot", "received_ms", "assess_ms", "time_quality",
            "chain"} <= cols  # fmt: skip


def test_group_commit_dedupes_chains_and_alerts(tmp_path):
    s = Store(tmp_path / "h.db")
    s.add_terminal(7, KEY, "W1", 0)
    res = s.commit(
        [rating(7, 1), rating(7, 2, level=1, flags_found=["too_fast"]), rating(7, 1)], 5000
    )
    assert [r.id for r in res] == [1, 2, None]
    res = s.commit([rating(7, 2, level=1), rating(7, 3)], 6000)  # an identical resend of seq 2
    assert [r.id for r in res] == [None, 3]
    assert s.count("ratings") == 3
    assert s.count("alerts") == 1
    ann = s.conn.execute("SELECT rating_id, kind, value FROM annotations").fetchall()
    assert ann == [(2, "flag", "too_fast")]
    assert s.verify_chain() is None
    # the chain is chain.py's, in id order, from GENESIS
    rows = s.conn.execute(
        "SELECT {}, chain FROM ratings ORDER BY id".format(", ".join(chain.FIELDS))
    ).fetchall()
    prev = chain.GENESIS
    for row in rows:
        prev = chain.next_hash(prev, dict(zip(chain.FIELDS, row[:-1], strict=True)))
        assert prev == row[-1]
    # a reopened store continues the chain
    s.close()
    s = Store(tmp_path / "h.db")
    assert [r.id for r in s.commit([rating(7, 4)], 7000)] == [4]
    assert s.verify_chain() is None


def test_a_duplicate_in_a_group_falls_back_row_by_row(tmp_path):
    """The fast path (one executemany) and the row-by-row path after a
    duplicate give the same ids, chain, annotations and alerts."""
    s = Store(tmp_path / "h.db")
    s.commit([rating(7, 3)], 1)
    group = [rating(7, 1, level=2, flags_found=["a"]), rating(7, 2), rating(7, 3),
             rating(7, 4, level=1, flags_found=["b", "c"])]  # fmt: skip
    res = s.commit(group, 2)
    assert [r.id for r in res] == [2, 3, None, 4]
    assert s.conn.execute("SELECT rating_id, value FROM annotations ORDER BY id").fetchall() == [
        (2, "a"), (4, "b"), (4, "c")]  # fmt: skip
    assert [r[0] for r in s.conn.execute("SELECT rating_id FROM alerts ORDER BY id")] == [2, 4]
    assert s.verify_chain() is None
    # the next group takes the fast path and goes on from id 4's chain value
    assert [r.id for r in s.commit([rating(7, 5), rating(7, 6)], 3)] == [5, 6]
    assert s.verify_chain() is None


def test_staged_group_is_not_durable_until_finish(tmp_path):
    s = Store(tmp_path / "h.db")
    other = Store(tmp_path / "h.db", readonly=True)
    s.begin()
    staged = s.stage([rating(1, 1)], 1)
    assert other.count("ratings") == 0  # written, not committed
    assert [r.id for r in s.finish(staged)] == [1]
    assert other.count("ratings") == 1


@given(
    st.tuples(*[st.integers(0, 2**63 - 1)] * 6, st.none() | st.integers(0, 2**32 - 1),
              *[st.integers(0, 2**63 - 1)] * 4, *[st.integers(0, 2**32 - 1)] * 2),  # fmt: skip
    st.binary(min_size=32, max_size=32),
)
def test_chain_fast_path_is_the_canonical_form(values, prev):
    assert chain.next_hash_values(prev, values) == chain.next_hash(
        prev, dict(zip(chain.FIELDS, values, strict=True))
    )


def test_ratings_are_append_only(tmp_path):
    s = Store(tmp_path / "h.db")
    s.commit([rating(1, 1)], 1)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        s.conn.execute("UPDATE ratings SET level = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        s.conn.execute("DELETE FROM ratings")


def test_tampering_is_found(tmp_path):
    s = Store(tmp_path / "h.db")
    s.commit([rating(1, i) for i in range(1, 6)], 1)
    s.conn.execute("DROP TRIGGER ratings_no_update")
    s.conn.execute("UPDATE ratings SET level = 1 WHERE id = 3")
    assert s.verify_chain() == 3


def test_disk_full_commits_nothing_and_recovers(tmp_path):
    s = Store(tmp_path / "h.db")
    s.add_terminal(1, KEY, None, 0)
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count={pages + 2}")
    n = 0
    with pytest.raises(StoreFull):
        for _i in range(200):
            s.commit([rating(1, n + j + 1) for j in range(50)], 1)
            n += 50
    stored = s.count("ratings")
    assert stored == n  # the failing group left nothing behind
    s.conn.execute("PRAGMA max_page_count=1000000")
    res = s.commit([rating(1, n + 1)], 2)
    assert res[0].id == n + 1  # ids and chain continue without a hole
    assert s.verify_chain() is None


def test_start_terminals_bumps_down_epoch(tmp_path):
    s = Store(tmp_path / "h.db")
    s.add_terminal(9, KEY, "W9", 0)
    a = s.start_terminals()[9].down_epoch
    b = s.start_terminals()[9].down_epoch
    assert b == a + 1
    assert "key" not in s.terminals()[0]


def test_contact_cipher(tmp_path):
    p = tmp_path / "contact.key"
    c = ContactCipher(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    blob = c.encrypt("13800000000", "CASE-1")
    assert b"13800000000" not in blob
    assert ContactCipher(p).decrypt(blob, "CASE-1") == "13800000000"
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):
        c.decrypt(blob, "CASE-2")  # bound to its case
    os.chmod(p, 0o644)
    with pytest.raises(ContactKeyError, match="0600"):
        ContactCipher(p)


def test_review_outcome_is_an_annotation(tmp_path):
    s = Store(tmp_path / "h.db")
    (r,) = s.commit([rating(3, 1, level=1)], 1)
    assert r.id is not None
    a = s.annotate(r.id, "review", "不属实", 2)
    row = s.conn.execute(
        "SELECT rating_id, kind, value FROM annotations WHERE id = ?", (a,)
    ).fetchone()
    assert row == (r.id, "review", "不属实")
    assert s.conn.execute("SELECT level FROM ratings WHERE id = ?", (r.id,)).fetchone() == (1,)
    assert s.verify_chain() is None  # the rating itself is untouched
    with pytest.raises(StoreError):
        s.annotate(r.id, "edit", "x", 3)


def test_a_divergent_record_under_a_held_seq_is_a_fork(tmp_path):
    """(terminal, journal, seq) held with other content: stored beside it as a
    fork and flagged; the same divergent record again is a duplicate of the
    fork; the same seq in another journal is simply new."""
    from haochaping.daemon.store import FORK_FLAG, fork_of

    s = Store(tmp_path / "h.db")
    (a,) = s.commit([rating(7, 1, level=5)], 1)
    other = rating(7, 1, level=1)
    (b,) = s.commit([other], 2)
    assert b.id == 2 and b.fork == fork_of(other) != 0
    assert s.conn.execute("SELECT value FROM annotations WHERE rating_id = 2").fetchall() == [
        (FORK_FLAG,)]  # fmt: skip
    (c,) = s.commit([rating(7, 1, level=1)], 3)
    assert c.id is None and c.fork == b.fork
    (d,) = s.commit([rating(7, 1, level=5)], 4)
    assert d.id is None and d.fork == 0
    elsewhere = rating(7, 1, level=5)
    elsewhere.journal_id = 0xABCD
    (e,) = s.commit([elsewhere], 5)
    assert e.id == 3 and e.fork == 0
    assert s.conn.execute("SELECT journal_id, seq, fork FROM ratings ORDER BY id").fetchall() == [
        (0, 1, 0), (0, 1, b.fork), (0xABCD, 1, 0)]  # fmt: skip
    assert s.verify_chain() is None


def test_migration_0002_moves_every_rating_unchanged(tmp_path):
    """A v1 store (migration 0001 only) with ratings, annotations and alerts:
    0002 keeps every row, id and chain value, and the chain still verifies."""
    from haochaping.daemon import schema

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    saved = schema.MIGRATIONS
    schema.MIGRATIONS = saved[:1]
    try:
        schema.migrate(conn)
    finally:
        schema.MIGRATIONS = saved
    conn.execute("INSERT INTO terminals (id, key, window_no, high_seq) VALUES (7, ?, 'W1', 3)", (KEY,))
    prev = chain.GENESIS
    old_fields = chain.FIELDS[:-2]
    for i in range(1, 4):
        row = dict(id=i, terminal_id=7, seq=i, level=i, reason=0, flags=1, session=None,
                   device_time=0, uptime_ms=i, boot=1, received_ms=1000 + i)  # fmt: skip
        prev = chain.next_hash(prev, dict(row, journal_id=0, fork=0))
        conn.execute(
            "INSERT INTO ratings ({}, assess_ms, time_quality, chain) VALUES ({})".format(
                ", ".join(old_fields), ", ".join("?" * (len(old_fields) + 3))
            ),
            [row[f] for f in old_fields] + [row["received_ms"], "received", prev],
        )
    conn.execute("INSERT INTO annotations (rating_id, kind, value, created_ms) VALUES (2, 'review', '不属实', 5)")
    conn.execute("INSERT INTO alerts (rating_id, created_ms) VALUES (1, 5)")
    before = conn.execute("SELECT id, terminal_id, seq, chain FROM ratings ORDER BY id").fetchall()
    conn.close()
    s = Store(db)
    assert "0002_journal_identity" in s.migrations()
    after = s.conn.execute(
        "SELECT id, terminal_id, seq, chain, journal_id, fork FROM ratings ORDER BY id"
    ).fetchall()
    assert [r[:4] for r in after] == before and all(r[4:] == (0, 0) for r in after)
    assert s.verify_chain() is None
    assert s.count("annotations") == 1 and s.count("alerts") == 1
    assert s.start_terminals()[7].journals == {0: 3}
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        s.conn.execute("DELETE FROM ratings")
    # the chain goes on across the migration
    assert [r.id for r in s.commit([rating(7, 4)], 9)] == [4]
    assert s.verify_chain() is None
