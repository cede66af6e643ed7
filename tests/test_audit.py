"""``hcp audit verify``: names the first altered, missing or inserted rating, 100% of trials."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from haochaping.daemon import audit, chain, keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import runner

N = 120  # ratings in the log
TRIALS = 40  # per kind: 3 kinds -> 120 seeded trials


@pytest.fixture(scope="module")
def signed_db(tmp_path_factory) -> Path:
    """A hall database with N ratings, all in signed batches (spool mode)."""
    tmp = tmp_path_factory.mktemp("audit")
    keys.init(tmp / "keys")
    st = store.Store(tmp / "hall.sqlite")
    bench.fill(st, N, random.Random(11))
    st.close()
    cfg = runner.UplinkConfig(
        db=str(tmp / "hall.sqlite"), hall_id="hall-a", keys_dir=str(tmp / "keys"),
        spool_dir=str(tmp / "spool"), batch_size=25, max_age_s=0.0,
    )  # fmt: skip
    up = runner.Uplink(cfg)
    up.run(until_idle=True)
    up.close()
    return tmp


def copy_db(src: Path, dst: Path) -> sqlite3.Connection:
    s = sqlite3.connect(src / "hall.sqlite")
    d = sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.isolation_level = None
    # an attacker with the file drops the append-only triggers first
    d.execute("DROP TRIGGER IF EXISTS ratings_no_update")
    d.execute("DROP TRIGGER IF EXISTS ratings_no_delete")
    return d


def cols(conn: sqlite3.Connection) -> list[str]:
    return [r[1] for r in conn.execute("PRAGMA table_info(ratings)")]


def tamper(conn: sqlite3.Connection, kind: str, rng: random.Random) -> tuple[str, int, int]:
    """Apply one tampering; return (expected kind, rating id named, seq of the row)."""
    n = conn.execute("SELECT max(id) FROM ratings").fetchone()[0]
    k = rng.randint(1, n)
    tid, seq = conn.execute("SELECT terminal_id, seq FROM ratings WHERE id = ?", (k,)).fetchone()
    if kind == "alter":
        field = rng.choice(["level", "reason", "flags", "device_time", "received_ms", "session"])
        old = conn.execute(f"SELECT {field} FROM ratings WHERE id = ?", (k,)).fetchone()[0]
        new = (old or 0) + rng.randint(1, 3)
        if field == "level":
            new = 1 + (old % 5)  # another valid level (a 差评 turned 好评 or back)
        conn.execute(f"UPDATE ratings SET {field} = ? WHERE id = ?", (new, k))
        if rng.random() < 0.5:  # a careful attacker also recomputes this row's chain
            prev = conn.execute("SELECT chain FROM ratings WHERE id = ?", (k - 1,)).fetchone()
            row = dict(
                zip(
                    cols(conn),
                    conn.execute("SELECT * FROM ratings WHERE id=?", (k,)).fetchone(),
                    strict=True,
                )
            )
            h = chain.next_hash(bytes(prev[0]) if prev else chain.GENESIS, row)
            conn.execute("UPDATE ratings SET chain = ? WHERE id = ?", (h, k))
        return "altered", k, seq
    if kind == "delete":
        conn.execute("DELETE FROM ratings WHERE id = ?", (k,))
        return "missing", k, seq
    # insert a forged rating at position k: shift ids >= k up by one, then insert
    conn.execute("UPDATE ratings SET id = -id WHERE id >= ?", (k,))
    conn.execute("UPDATE ratings SET id = -id + 1 WHERE id < 0")
    prev = conn.execute("SELECT chain FROM ratings WHERE id = ?", (k - 1,)).fetchone()
    forged = {
        "id": k, "terminal_id": tid, "seq": 900_000 + k, "level": 5, "reason": 0, "flags": 1,
        "session": None, "case_id": None, "device_time": 0, "uptime_ms": 0, "boot": 1,
        "received_ms": 1_764_000_000_000, "assess_ms": 1_764_000_000_000,
        "time_quality": "received",
    }  # fmt: skip
    forged["chain"] = chain.next_hash(bytes(prev[0]) if prev else chain.GENESIS, forged)
    names = list(forged)
    conn.execute(
        f"INSERT INTO ratings ({', '.join(names)}) VALUES ({','.join('?' * len(names))})",
        [forged[x] for x in names],
    )
    return "inserted", k, 900_000 + k


def test_intact_log_verifies(signed_db):
    rep = audit.verify(str(signed_db / "hall.sqlite"), keys.Keyring.load(signed_db / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]
    assert rep.ratings == N and rep.signed_ratings == N and rep.batches == N // 25 + 1


@pytest.mark.parametrize("kind", ["alter", "delete", "insert"])
def test_tamper_is_named_every_time(signed_db, tmp_path, kind):
    ring = keys.Keyring.load(signed_db / "keys")
    named = 0
    for trial in range(TRIALS):
        rng = random.Random(f"{kind}-{trial}")
        db = tmp_path / f"t{trial}.sqlite"
        conn = copy_db(signed_db, db)
        want_kind, want_id, want_seq = tamper(conn, kind, rng)
        conn.close()
        rep = audit.verify(str(db), ring)
        first = rep.first
        assert first is not None, f"seed {kind}-{trial}: tampering not detected"
        assert (first.kind, first.rating_id, first.seq) == (want_kind, want_id, want_seq), (
            f"seed {kind}-{trial}: {first.describe()}"
        )
        named += 1
    assert named == TRIALS


def test_unbatched_tail_is_checked_by_the_chain(signed_db, tmp_path):
    db = tmp_path / "tail.sqlite"
    conn = copy_db(signed_db, db)
    conn.close()
    st = store.Store(db)
    bench.fill(st, 10, random.Random(2), start_seq=5000)
    st.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ratings_no_update")
    conn.execute("UPDATE ratings SET level = 1 + level % 5 WHERE id = ?", (N + 4,))
    conn.close()
    rep = audit.verify(str(db), keys.Keyring.load(signed_db / "keys"))
    assert (rep.first.kind, rep.first.rating_id) == ("chain", N + 4)


def run_hcp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haochaping", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_audit_and_batch_verify(signed_db, tmp_path):
    ok = run_hcp(
        "audit", "verify", "--db", str(signed_db / "hall.sqlite"), "--keys", str(signed_db / "keys")
    )
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    db = tmp_path / "bad.sqlite"
    conn = copy_db(signed_db, db)
    conn.execute("DELETE FROM ratings WHERE id = 17")
    conn.close()
    bad = run_hcp("audit", "verify", "--db", str(db), "--keys", str(signed_db / "keys"), "--json")
    assert bad.returncode == 1
    rep = json.loads(bad.stdout)
    assert (
        rep["ok"] is False and rep["first"]["kind"] == "missing" and rep["first"]["ratingId"] == 17
    )
    nokey = run_hcp("audit", "verify", "--db", str(db))
    assert nokey.returncode == 1 and "keyring" in nokey.stderr

    files = sorted((signed_db / "spool").glob("*.json"))
    pem = next((signed_db / "keys" / "keyring").glob("*.pem"))
    good = run_hcp("batch", "verify", str(files[0]), "--pubkey", str(pem))
    assert good.returncode == 0 and "ok: hall hall-a batch 1" in good.stdout
    forged = tmp_path / "forged.json"
    forged.write_bytes(
        files[0].read_bytes().replace(b'"satisfaction":"5"', b'"satisfaction":"4"', 1)
    )
    assert forged.read_bytes() != files[0].read_bytes()
    badb = run_hcp("batch", "verify", str(forged), "--pubkey", str(pem))
    assert badb.returncode == 1 and "signature" in badb.stderr


def test_forging_the_stored_batch_too_is_caught_by_its_signature(signed_db, tmp_path):
    db = tmp_path / "forged.sqlite"
    conn = copy_db(signed_db, db)
    row = conn.execute("SELECT level, seq FROM ratings WHERE id = 30").fetchone()
    new_level = 1 + row[0] % 5
    conn.execute("UPDATE ratings SET level = ? WHERE id = 30", (new_level,))
    seq, body = conn.execute(
        "SELECT seq, body FROM uplink_batches WHERE first_rating_id <= 30 AND last_rating_id >= 30"
    ).fetchone()
    doc = json.loads(body)
    for rec in doc["records"]:
        if rec["ratingId"] == 30:
            rec["origin"]["level"] = new_level
            rec["satisfaction"] = str(new_level)
    from haochaping.daemon.uplink import canonical

    conn.execute("UPDATE uplink_batches SET body = ? WHERE seq = ?", (canonical.dumps(doc), seq))
    conn.close()
    rep = audit.verify(str(db), keys.Keyring.load(signed_db / "keys"))
    kinds = [f.kind for f in rep.findings]
    assert not rep.ok and kinds[0] == "batch" and "signature" in rep.findings[0].detail
    assert ("chain", 30) in [(f.kind, f.rating_id) for f in rep.findings]
