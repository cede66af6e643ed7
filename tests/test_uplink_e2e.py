"""End to end: daemon store -> uplink process -> reference receiver over real HTTP.

Every rating arrives exactly once, signatures verify and both chains are
unbroken, through receiver faults and kill -9 of the uplink during delivery.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from haochaping.daemon import audit, keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import batch, runner
from haochaping.simulator import province

ROUNDS = 24
FAULTS = ("refuse", "5xx", "timeout", "close_after_commit", "slow", "none")
DEADLINE_S = 60.0


def wait_for(cond, what: str, timeout: float = DEADLINE_S, every: float = 0.01) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def set_faults(url: str, **plan) -> None:
    req = urllib.request.Request(
        url.replace("/batches", "/admin/faults"), data=json.dumps(plan).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def start_uplink(db: Path, kd: Path, url: str, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "haochaping", "uplink", "run", "--db", str(db),
         "--hall", "hall-e2e", "--keys", str(kd), "--url", url, "--batch-size", "40",
         "--max-age", "0.05", "--connect-timeout", "0.5", "--timeout", "0.3",
         "--backoff-base", "0.02", "--backoff-cap", "0.2", "--seed", str(seed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def check_receiver_against_store(r: province.Receiver, db: Path, kd: Path) -> None:
    ring = keys.Keyring.load(kd)
    bodies = r.store.bodies("hall-e2e")
    prev_hash, prev_chain, ids = batch.GENESIS_HASH, None, []
    for i, body in enumerate(bodies, 1):
        v = batch.verify(body, ring)  # schema, signature, in-batch chain, rules
        assert v.header["batchSeq"] == i and v.header["prevBatchHash"] == prev_hash
        assert prev_chain is None or v.header["chainPrev"] == prev_chain
        prev_hash, prev_chain = v.hash, v.chain_end
        ids += [rec["ratingId"] for rec in v.records]
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT id, terminal_id, seq, chain FROM ratings ORDER BY id").fetchall()
    conn.close()
    assert ids == [row["id"] for row in rows]  # each rating exactly once, in order
    assert prev_chain == bytes(rows[-1]["chain"]).hex()  # the local chain, unbroken
    recs = r.store.records("hall-e2e")
    assert sorted((x["terminalId"], x["seq"]) for x in recs) == sorted(
        (f"{row['terminal_id']:08x}", row["seq"]) for row in rows
    )
    rep = audit.verify(str(db), ring)
    assert rep.ok and rep.signed_ratings == len(rows), [f.describe() for f in rep.findings]
    # what arrived is byte for byte what was signed and stored before the first send,
    # and the province's answer is recorded for every batch
    conn = sqlite3.connect(db)
    out = conn.execute("SELECT body, ack, state FROM uplink_batches ORDER BY seq").fetchall()
    conn.close()
    assert [bytes(b) for b, _, _ in out] == bodies
    assert all(state == "acked" for _, _, state in out)
    assert all(json.loads(ack)["status"] in ("accepted", "duplicate") for _, ack, _ in out)


@pytest.mark.slow
def test_exactly_once_under_faults_and_kill9(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    rng = random.Random(20261125)
    total = kills = 0
    reviews: dict[int, tuple[int, str]] = {}
    with province.Receiver(tmp_path / "prov", pubkeys=(str(kd),)) as r:
        proc = None
        try:
            for rnd in range(ROUNDS):
                mode = FAULTS[rnd % len(FAULTS)]
                # the round's first batch request gets the fault, later ones with p = 0.35
                set_faults(r.url, mode=mode, rate=0.35, count=1, seed=rnd, delay=0.5)
                n = rng.randint(40, 250)
                bench.fill(st, n, rng, start_seq=total + 1, group=rng.choice((1, 7, 50)))
                total += n
                for _ in range(rng.randint(0, 3)):  # review outcomes on earlier ratings
                    rid = rng.randint(1, total)
                    value = rng.choice(("不属实", "属实"))
                    reviews[st.annotate(rid, "review", value, bench.BASE_MS + rnd)] = (rid, value)
                if proc is None:
                    proc = start_uplink(db, kd, r.url, rnd)
                # kill -9 once delivery of this round is under way (a random amount in)
                before = r.store.stats()["records"]
                target = before + rng.randint(0, total - before)
                wait_for(
                    lambda t=target, p=proc: (
                        r.store.stats()["records"] >= t or p.poll() is not None
                    ),
                    f"round {rnd}: {target} records",
                )
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                if rng.random() < 0.8:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    proc = None
            set_faults(r.url, mode="none")
            if proc is None:
                proc = start_uplink(db, kd, r.url, 999)
            wait_for(lambda: r.store.stats()["records"] >= total, "all records")
            wait_for(
                lambda: len(r.store.annotations("hall-e2e")) >= len(reviews), "all annotations"
            )
            # the uplink has recorded every acknowledgement (no batch left pending)
            wait_for(lambda: runner.status(str(db))["batches"]["pending"] == 0, "all acks")
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        st.close()
        stats = r.store.stats()
        assert stats["records"] == total, f"seed 20261125: {stats} vs {total}"
        injected = r.faults.injected
        assert all(injected[m] >= 1 for m in FAULTS if m != "none"), injected
        check_receiver_against_store(r, db, kd)
        # every review outcome arrived exactly once (the receiver's key is the annotation id)
        got = {
            a["annotationId"]: (a["ratingId"], a["value"])
            for a in r.store.annotations("hall-e2e")
            if a["kind"] == "review"
        }
        assert got == reviews and len(reviews) >= 10
        assert runner.status(str(db))["batches"]["acked"] == stats["batches"]
    assert kills >= 15


def test_bad_rating_without_reason_and_clock_behind_arrive_accepted(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    service_ms = 1_764_050_000_000
    cid = st.add_case(dict(bench.case_fields(1), service_ms=service_ms), None, service_ms)
    st.commit(
        [
            store.NewRating(
                0xA1, 1, 1, 0, 1, 5, cid, 1_764_049_000, 10, 1, service_ms - 90_000, "synced"
            ),
            store.NewRating(0xA1, 2, 2, 0, 0, None, None, 0, 20, 1, service_ms + 5_000, "received"),
            store.NewRating(
                0xA1, 3, 4, 0, 1, 6, cid, 1_764_050_001, 30, 1, service_ms + 1_000, "synced"
            ),
        ],
        service_ms + 10_000,
    )
    st.close()
    with province.Receiver(tmp_path / "prov", pubkeys=(str(kd),)) as r:
        cfg = runner.UplinkConfig(
            db=str(db), hall_id="hall-e2e", keys_dir=str(kd), url=r.url, max_age_s=0.0
        )
        up = runner.Uplink(cfg)
        up.run(until_idle=True)
        up.close()
        recs = {x["seq"]: x for x in r.store.records("hall-e2e")}
    assert set(recs) == {1, 2, 3}
    # 差评, no reason, terminal clock 90 s behind the case's service time
    assert recs[1]["satisfaction"] == "1" and recs[1]["writingEvaluation"]
    assert recs[1]["assessTime"] == recs[1]["serviceTime"] == batch.format_time(service_ms)
    assert {"clock_clamped", "default_reason"} <= set(recs[1]["flags"])
    # 差评 with no reason and no case: forwarded as such, never guessed
    assert recs[2]["projectNo"] is None and recs[2]["writingEvaluation"]
    assert recs[3]["evalDetail"] == "" and "clock_clamped" not in recs[3]["flags"]


def test_outage_keeps_everything_and_catches_up_oldest_first(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    probe = province.Receiver(tmp_path / "prov")  # reserve a port, then go down
    port = probe.port
    probe.server.server_close()
    probe.store.close()
    url = f"http://127.0.0.1:{port}/batches"
    cfg = runner.UplinkConfig(
        db=str(db), hall_id="hall-o", keys_dir=str(kd), url=url, batch_size=50,
        max_age_s=0.0, backoff_base_s=0.01, backoff_cap_s=0.05, seed=1,
    )  # fmt: skip
    stop = threading.Event()
    up = runner.Uplink(cfg, stop=stop)
    t = threading.Thread(target=up.run)
    t.start()
    try:
        bench.fill(st, 7, random.Random(1))  # cut at once (max age 0) into one small batch
        wait_for(lambda: runner.status(str(db))["batches"]["pending"] == 1, "first batch")
        bench.fill(st, 520, random.Random(2), start_seq=100)
        wait_for(lambda: runner.status(str(db))["unbatchedRatings"] < 50, "full batches cut")
        s = runner.status(str(db))
        assert s["batches"] == {"pending": 11, "acked": 0, "spooled": 0}  # 1 + 10 full
        assert s["pendingRatings"] == 507 and s["lastError"]
        with province.Receiver(tmp_path / "prov", port=port, pubkeys=(str(kd),)) as r:
            wait_for(lambda: r.store.stats()["records"] == 527, "catch-up")
            wait_for(lambda: runner.status(str(db))["batches"]["pending"] == 0, "acks")
            seqs = [json.loads(b)["header"]["batchSeq"] for b in r.store.bodies("hall-o")]
            assert seqs == list(range(1, 13))
    finally:
        stop.set()
        t.join()
        up.close()
        st.close()


def test_rejected_batch_raises_alarm_and_is_kept(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    bench.fill(st, 5, random.Random(1))
    st.close()
    with province.Receiver(tmp_path / "prov") as r:  # the hall's key is not registered yet
        cfg = runner.UplinkConfig(
            db=str(db), hall_id="hall-r", keys_dir=str(kd), url=r.url, max_age_s=0.0,
            backoff_base_s=0.01, backoff_cap_s=0.05, min_free_bytes=1 << 62,
            max_outbox_bytes=1, seed=1,
        )  # fmt: skip
        up = runner.Uplink(cfg)
        up.step()
        assert up.step() is False
        s = runner.status(str(db))
        assert "batch_rejected" in s["alarms"] and "HTTP 403" in s["lastError"]
        assert set(up.check_alarms(time.time() + 60)) == {
            "batch_rejected",
            "disk_low",
            "outbox_large",
        }
        for p in (kd / "keyring").glob("*.pem"):
            (tmp_path / "prov" / "keys" / p.name).write_bytes(p.read_bytes())
        up.next_try = 0
        assert up.step() is True
        s = runner.status(str(db))
        assert s["batches"]["acked"] == 1 and "batch_rejected" not in s["alarms"]
        up.close()


def test_spool_mode_writes_verifiable_files(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    bench.fill(st, 45, random.Random(4))
    st.close()
    cfg = runner.UplinkConfig(
        db=str(db), hall_id="hall-s", keys_dir=str(kd), spool_dir=str(tmp_path / "out"),
        batch_size=20, max_age_s=0.0,
    )  # fmt: skip
    up = runner.Uplink(cfg)
    up.run(until_idle=True)
    up.close()
    files = sorted((tmp_path / "out").glob("*.json"))
    assert [f.name.split("-")[2] for f in files] == ["000000000001", "000000000002", "000000000003"]
    ring = keys.Keyring.load(kd)
    assert [batch.verify(f.read_bytes(), ring).header["recordCount"] for f in files] == [20, 20, 5]
    assert runner.status(str(db))["batches"]["spooled"] == 3
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]


def test_broken_local_chain_is_never_signed_but_earlier_batches_go(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    bench.fill(st, 30, random.Random(6))
    st.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER ratings_no_update")
    conn.execute(
        "UPDATE ratings SET level = 1 + level % 5 WHERE id = 25"
    )  # tampered before batching
    conn.close()
    with province.Receiver(tmp_path / "prov", pubkeys=(str(kd),)) as r:
        cfg = runner.UplinkConfig(
            db=str(db), hall_id="hall-b", keys_dir=str(kd), url=r.url, batch_size=10,
            max_age_s=0.0, seed=1,
        )  # fmt: skip
        up = runner.Uplink(cfg)
        for _ in range(6):
            up.step()
        s = runner.status(str(db))
        assert "chain_broken" in s["alarms"]
        assert s["batches"]["acked"] == 2 and s["lastBatchedRatingId"] == 20
        assert r.store.stats()["records"] == 20
        up.close()
    rep = audit.verify(str(db), keys.Keyring.load(kd))
    assert (rep.first.kind, rep.first.rating_id) == ("chain", 25)


def test_full_disk_while_cutting_raises_alarm_and_recovers(tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    bench.fill(st, 300, random.Random(8))
    st.close()
    cfg = runner.UplinkConfig(
        db=str(db), hall_id="hall-f", keys_dir=str(kd), spool_dir=str(tmp_path / "out"),
        batch_size=300, max_age_s=0.0, seed=1,
    )  # fmt: skip
    up = runner.Uplink(cfg)
    pages = up.conn.execute("PRAGMA page_count").fetchone()[0]
    up.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    up.step()
    assert "db_error" in up.alarms and runner.status(str(db))["batches"]["spooled"] == 0
    up.conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
    up.next_cut = 0
    up.run(until_idle=True)
    assert runner.status(str(db))["batches"]["spooled"] == 1 and "db_error" not in up.alarms
    up.close()


@pytest.mark.slow
def test_outage_of_days_on_a_virtual_clock(tmp_path):
    """Three days without the province: every rating kept, retries capped, then a
    catch-up that sends the batches oldest first, back to back."""
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    probe = province.Receiver(tmp_path / "prov")  # reserve a port; the province is down
    port = probe.port
    probe.server.server_close()
    probe.store.close()
    now = [bench.BASE_MS / 1000]
    cfg = runner.UplinkConfig(
        db=str(db), hall_id="hall-d", keys_dir=str(kd), url=f"http://127.0.0.1:{port}/batches",
        batch_size=200, seed=7,
    )  # fmt: skip
    up = runner.Uplink(cfg, clock=lambda: now[0])
    rng = random.Random(7)
    hours, total, attempts = 72, 0, 0
    prev_pending = 0
    for _hour in range(hours):
        st.commit(  # an hour of presses, stamped with the virtual time
            [
                store.NewRating(0x77, total + i + 1, rng.randint(1, 5), 0, 1, None, None, 0, 0,
                                1, int(now[0] * 1000), "received")
                for i in range(60)
            ],
            int(now[0] * 1000),
        )  # fmt: skip
        total += 60
        end = now[0] + 3600
        while now[0] < end:
            up.step()
            attempts += 1
            now[0] = min(end, max(now[0] + 1, up.next_try))
        pending_now = runner.status(str(db))["batches"]["pending"]
        assert pending_now >= prev_pending  # nothing is ever dropped
        prev_pending = pending_now
    s = runner.status(str(db))
    assert s["batches"]["acked"] == 0 and s["pendingRatings"] + s["unbatchedRatings"] == total
    assert s["unbatchedRatings"] < 200  # the rest waits in full, signed batches
    # equal jitter at the cap: at least cap/2 between attempts, so retries stay bounded
    assert attempts <= hours * 3600 / (cfg.backoff_cap_s / 2) + hours * 2 + 20, attempts
    pending = s["batches"]["pending"]
    with province.Receiver(tmp_path / "prov", port=port, pubkeys=(str(kd),)) as r:
        now[0] = max(now[0], up.next_try)
        steps = 0
        while runner.status(str(db))["batches"]["pending"]:
            assert up.step(), "no progress in a catch-up step"
            steps += 1
        assert steps <= pending  # no waiting between successes: full speed
        seqs = [json.loads(b)["header"]["batchSeq"] for b in r.store.bodies("hall-d")]
        assert seqs == list(range(1, pending + 1))
        up.cut_ready(now[0] + 10)  # the remainder, cut by age
        up.run(until_idle=True)
        assert r.store.stats()["records"] == total == 72 * 60
    up.close()
    st.close()
