"""Annotations (review outcomes such as 不属实, later flags) reach the province exactly once."""

from __future__ import annotations

import json
import random
import sqlite3

from haochaping.daemon import audit, chain, keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import batch, canonical, runner
from haochaping.simulator import province


def _run(tmp, url: str) -> None:
    cfg = runner.UplinkConfig(
        db=str(tmp / "hall.sqlite"), hall_id="hall-n", keys_dir=str(tmp / "keys"), url=url,
        batch_size=50, max_age_s=0.0, seed=1,
    )  # fmt: skip
    up = runner.Uplink(cfg)
    up.run(until_idle=True)
    up.close()


def test_review_outcome_travels_once_and_is_audited(tmp_path):
    keys.init(tmp_path / "keys")
    st = store.Store(tmp_path / "hall.sqlite")
    stored = st.commit(
        [
            store.NewRating(0xB1, 1, 1, 3, 1, None, None, 0, 0, 1, 1_764_000_000_000, "received",
                            flags_found=["burst_no_case"]),
            store.NewRating(0xB1, 2, 5, 0, 1, None, None, 0, 0, 1, 1_764_000_001_000, "received"),
        ],
        1_764_000_002_000,
    )  # fmt: skip
    bad = stored[0].id
    assert bad is not None
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),)) as r:
        _run(tmp_path, r.url)
        (b1,) = r.store.bodies("hall-n")
        assert "annotations" not in json.loads(b1)  # the commit-time flag rides in the record
        assert "burst_no_case" in r.store.records("hall-n")[0]["flags"]

        # days later the 差评 is reviewed and found untrue
        review = st.annotate(bad, "review", "不属实", 1_764_300_000_000)
        _run(tmp_path, r.url)
        b2 = json.loads(r.store.bodies("hall-n")[1])
        assert b2["header"]["recordCount"] == 0 and b2["records"] == []
        assert b2["header"]["chainPrev"] == json.loads(b1)["records"][-1]["chain"]
        assert [(a["annotationId"], a["ratingId"], a["value"]) for a in b2["annotations"]] == [
            (review, bad, "不属实")
        ]
        # the next batch carries new ratings and a later flag on an old one, nothing twice
        st.annotate(2, "flag", "repeated", 1_764_300_001_000)
        bench.fill(st, 3, random.Random(1), start_seq=10, with_cases=False)
        _run(tmp_path, r.url)
        b3 = json.loads(r.store.bodies("hall-n")[2])
        assert b3["header"]["recordCount"] == 3
        assert [a["value"] for a in b3["annotations"]] == ["repeated"]
        assert [a["value"] for a in r.store.annotations("hall-n")] == ["不属实", "repeated"]
        ring = keys.Keyring.load(tmp_path / "keys")
        prev = batch.GENESIS_HASH
        for body in r.store.bodies("hall-n"):
            v = batch.verify(body, ring)
            assert v.header["prevBatchHash"] == prev
            prev = v.hash
    conn = sqlite3.connect(tmp_path / "hall.sqlite")
    taken = conn.execute("SELECT annotation_id, sent FROM uplink_annotations ORDER BY 1").fetchall()
    total = conn.execute("SELECT count(*) FROM annotations").fetchone()[0]
    conn.close()
    assert len(taken) == total and [s for _, s in taken].count(1) == 2
    st.close()
    ring = keys.Keyring.load(tmp_path / "keys")
    assert audit.verify(str(tmp_path / "hall.sqlite"), ring).ok
    # deleting the review outcome locally is caught by the signed batch
    conn = sqlite3.connect(tmp_path / "hall.sqlite", isolation_level=None)
    conn.execute("DELETE FROM annotations WHERE id = ?", (review,))
    conn.close()
    rep = audit.verify(str(tmp_path / "hall.sqlite"), ring)
    assert (rep.first.kind, rep.first.rating_id) == ("annotation", bad)
    assert "不属实" in rep.first.detail and "missing" in rep.first.detail


def test_province_refuses_an_annotation_on_an_unknown_rating(tmp_path):
    keys.init(tmp_path / "k")
    key = keys.load_private(tmp_path / "k")
    row = {
        "id": 1, "terminal_id": 5, "seq": 1, "level": 4, "reason": 0, "flags": 1,
        "session": None, "case_id": None, "device_time": 0, "uptime_ms": 0, "boot": 1,
        "received_ms": 1_764_000_000_000, "assess_ms": 1_764_000_000_000,
        "time_quality": "received",
    }  # fmt: skip
    row["chain"] = chain.next_hash(chain.GENESIS, row)
    ann = {"id": 9, "rating_id": 7, "terminal_id": 5, "seq": 7, "kind": "review",
           "value": "不属实", "created_ms": 1}  # fmt: skip
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "k"),)) as r:
        b = batch.build(
            hall_id="hall-x", seq=1, prev_hash=batch.GENESIS_HASH, chain_prev=chain.GENESIS,
            rows=[row], cases={}, flags={}, key=key, now_ms=1, cfg=batch.RecordConfig(),
            annotations=[ann],
        )  # fmt: skip
        try:
            r.store.accept(b.body, 1)
        except province.Reject as e:
            assert (e.status, e.code) == (422, "annotation")
        else:
            raise AssertionError("an annotation on an unknown rating was accepted")
        assert r.store.stats() == {"batches": 0, "records": 0}
        # an empty batch (no records, no annotations) is refused by verification
        doc = json.loads(b.body)
        doc["records"], doc["header"]["recordCount"] = [], 0
        del doc["annotations"]
        try:
            r.store.accept(canonical.dumps(doc), 1)
        except province.Reject as e:
            assert e.code == "empty"
        else:
            raise AssertionError("an empty batch was accepted")
