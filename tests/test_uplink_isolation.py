"""Nothing one case can do jams the uplink (issue #11): a record the province
refuses for good is held (visible, alarmed) and every good rating behind it
is delivered; the chain and the audit stay whole; a person releases or
dismisses what is held.  Before, the batch holding a refused case was retried
every 2 s for ever and every good rating after it waited behind it."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
from haochaping.daemon import audit, keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import delivery, runner
from haochaping.daemon.uplink.outbox import Outbox
from haochaping.simulator import province

BAD = "11370200MB0000000X-BAD"


def hall(tmp: Path, n: int = 30, bad: tuple[int, ...] = (7,)) -> str:
    """A hall of ``n`` ratings; those of ids ``bad`` are bound to a case whose
    item code the province's list lacks."""
    keys.init(tmp / "keys")
    db = str(tmp / "hall.sqlite")
    st = store.Store(db)
    bench.fill(st, n, random.Random(5), group=10)
    for rid in bad:
        cid = st.conn.execute("SELECT case_id FROM ratings WHERE id = ?", (rid,)).fetchone()[0]
        assert cid is not None, f"rating {rid} has no case: pick another id"
        st.conn.execute("UPDATE cases SET item_code = ? WHERE id = ?", (BAD, cid))
    st.close()
    return db


def cfg(db: str, tmp: Path, url: str, **kw) -> runner.UplinkConfig:
    return runner.UplinkConfig(
        db=db, hall_id="hall-i", keys_dir=str(tmp / "keys"), url=url, batch_size=10, max_age_s=0.0,
        backoff_base_s=0.01, backoff_cap_s=0.05, min_free_bytes=0, seed=3, **kw,
    )  # fmt: skip


def ids_at(recv: province.Receiver) -> set[int]:
    return {r["ratingId"] for r in recv.store.records("hall-i")}


def test_a_refused_case_is_held_and_every_good_rating_behind_it_arrives(tmp_path: Path) -> None:
    db = hall(tmp_path, bad=(8, 23))
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),),
                           refuse_task_codes=(BAD,)) as r:  # fmt: skip
        up = runner.Uplink(cfg(db, tmp_path, r.url))
        up.run(until_idle=True)
        assert ids_at(r) == set(range(1, 31)) - {8, 23}
        assert [w["ratingId"] for w in r.store.withheld("hall-i")] == [8, 23]
        st = runner.status(db)
        assert st["held"]["held"] == 2 and st["pendingRatings"] == 0
        assert {h["ratingId"] for h in st["heldRatings"]} == {8, 23}
        assert "task_refused" in st["heldRatings"][0]["reason"]
        assert st["rejectedBatches"] >= 2
        assert "records_held" in up.check_alarms(1e12)
        up.close()
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]
    # the province adds the code to its list; a person releases one, dismisses the other
    assert runner.act(db, [8], "release", "item list fixed (ticket 42)") == [8]
    assert runner.act(db, [23], "dismiss", "case entered wrongly, not an evaluation") == [23]
    assert runner.act(db, [5], "release", "") == []  # not held: nothing to do
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),)) as r:
        up = runner.Uplink(cfg(db, tmp_path, r.url))
        up.run(until_idle=True)
        up.check_alarms(1e12)
        assert ids_at(r) == set(range(1, 31)) - {23}
        filled = {w["ratingId"]: w["filledBy"] for w in r.store.withheld("hall-i")}
        assert filled[8] is not None and filled[23] is None
        assert "records_held" not in up.check_alarms(2e12)
        up.close()
    st = runner.status(db)
    assert st["held"] == {"held": 0, "released": 0, "dismissed": 1, "sent": 1}
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]


def test_the_old_policy_let_one_case_hold_back_everything(tmp_path: Path, monkeypatch) -> None:
    """The same hall with isolation switched off (as before): the good ratings
    behind the refused one never arrive."""
    db = hall(tmp_path, bad=(8,))
    monkeypatch.setattr(Outbox, "isolate", lambda *a, **k: None)
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),),
                           refuse_task_codes=(BAD,)) as r:  # fmt: skip
        up = runner.Uplink(cfg(db, tmp_path, r.url))
        for _ in range(50):
            up.step()
            up.next_try = 0.0
        assert max(ids_at(r), default=0) < 8 and runner.status(db)["pendingRatings"] >= 20
        up.close()


class PickySink:
    """A province that refuses any batch holding rating ``bad`` without
    saying which record (the refusal names nothing): the uplink must find it."""

    state = "acked"

    def __init__(self, recv: province.Store, bad: int) -> None:
        self.recv, self.bad, self.seen = recv, bad, 0

    def deliver(self, batch_id: str, body: bytes) -> str:
        self.seen += 1
        doc = json.loads(body)
        if any(x["ratingId"] == self.bad for x in doc["records"] + doc.get("late", [])):
            raise delivery.Rejected(422, json.dumps({"code": "rule", "error": "one of the records is wrong"}))
        return json.dumps(self.recv.accept(body, 1))

    def close(self) -> None:
        pass


def test_a_refusal_that_names_no_record_is_cut_in_halves_until_it_does(tmp_path: Path) -> None:
    db = hall(tmp_path, n=40, bad=())
    recv = province.Store(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),))
    sink = PickySink(recv, 13)
    up = runner.Uplink(cfg(db, tmp_path, "http://unused.invalid/", ), sink=sink)
    up.run(until_idle=True)
    got = {r["ratingId"] for r in recv.records("hall-i")}
    assert got == set(range(1, 41)) - {13}
    assert [h["rating_id"] for h in runner.held(db)] == [13]
    assert sink.seen < 20  # halving: a handful of refusals, not one per record
    recv.close()
    up.close()
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]


def test_a_row_the_uplink_cannot_build_is_held_and_the_uplink_keeps_running(tmp_path: Path) -> None:
    """A case stored before the API checked its fields (service_ms text, or
    beyond year 9999) made `hcp uplink run` exit at once on every start; one
    with a name longer than the national item was refused by the province."""
    db = hall(tmp_path, n=20, bad=())
    c = sqlite3.connect(db)
    for rid, col, bad in ((4, "service_ms", "'yesterday'"), (10, "service_ms", str(300_000_000_000_000)),
                          (16, "item_name", "'" + "x" * 201 + "'")):  # fmt: skip
        cid = c.execute("SELECT case_id FROM ratings WHERE id = ?", (rid,)).fetchone()[0]
        c.execute(f"UPDATE cases SET {col} = {bad} WHERE id = ?", (cid,))
    c.commit()
    c.close()
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),)) as r:
        n = runner.run(cfg(db, tmp_path, r.url), until_idle=True)
        assert n == 17
        assert ids_at(r) == set(range(1, 21)) - {4, 10, 16}
    held = {h["rating_id"]: h for h in runner.held(db)}
    assert set(held) == {4, 10, 16} and all(h["reason"] == "unbuildable" for h in held.values())
    assert "records_held" in runner.status(db)["alarms"]  # raised when it was found
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok


@pytest.mark.parametrize("status, body", [(403, '{"code": "key", "error": "unknown signing key"}'),
                                          (409, '{"code": "order", "error": "expected batch 2"}')])
def test_a_refusal_that_blames_no_record_is_retried_not_cut(tmp_path: Path, status, body) -> None:
    db = hall(tmp_path, n=10, bad=())
    ob = Outbox(runner.connect(db), "hall-i")
    assert ob.isolate(1, status, body, 1) is None


def test_a_crash_in_the_middle_of_the_search_resumes_it(tmp_path: Path) -> None:
    """The uplink process dies after every turn: the halving plan is in the
    database, so each new process carries on where the last one stopped."""
    db = hall(tmp_path, n=40, bad=())
    recv = province.Store(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),))
    sink = PickySink(recv, 27)
    for _turn in range(200):
        up = runner.Uplink(cfg(db, tmp_path, "http://unused.invalid/"), sink=sink)
        up.step()
        up.close()
        if len(recv.records("hall-i")) == 39:
            break
    assert {r["ratingId"] for r in recv.records("hall-i")} == set(range(1, 41)) - {27}
    assert [h["rating_id"] for h in runner.held(db)] == [27]
    assert sink.seen < 20
    recv.close()
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]


def test_a_released_rating_refused_again_is_held_again(tmp_path: Path) -> None:
    db = hall(tmp_path, n=20, bad=(8,))
    with province.Receiver(tmp_path / "prov", pubkeys=(str(tmp_path / "keys"),),
                           refuse_task_codes=(BAD,)) as r:  # fmt: skip
        up = runner.Uplink(cfg(db, tmp_path, r.url))
        up.run(until_idle=True)
        assert runner.act(db, [8], "release", "too early: the list is not fixed yet") == [8]
        up.run(until_idle=True)
        held = runner.held(db)
        assert [(h["rating_id"], h["state"]) for h in held] == [(8, "held")]
        assert "late[0]" in held[0]["detail"]
        assert ids_at(r) == set(range(1, 21)) - {8}
        assert "records_held" in up.check_alarms(1e12)
        up.close()
    rep = audit.verify(db, keys.Keyring.load(tmp_path / "keys"))
    assert rep.ok, [f.describe() for f in rep.findings]
