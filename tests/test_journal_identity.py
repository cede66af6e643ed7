"""Issue #11's defects, reproduced with the real firmware (Terminal on the
simulator board, a real journal file) against the real daemon Core and
Store, and fixed: a wiped journal, a replaced board, a restored journal
image, and an authenticated HELLO with tail 0.

The invariant every test checks: each rating whose THANKS was shown is in
SQLite exactly once, with the values the terminal wrote, and no ACK frees a
record the store does not hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from haochaping.daemon import core as coremod
from haochaping.daemon.store import Store
from haochaping.firmware import ui
from haochaping.firmware.board_sim import SimBoard
from haochaping.firmware.terminal import Terminal
from haochaping.protocol import auth, frame, messages

TID = 0x0C0FFEE1
KEY = bytes(range(32, 64))
T0 = 1_795_600_000_000


class Hall:
    """One terminal on the real firmware, the daemon's real core and store,
    wired frame by frame (the daemon shell's order: receive, ONE commit, ACKs)."""

    def __init__(self, tmp: Path, journal: str = "t.journal", legacy: bool = False) -> None:
        self.tmp = tmp
        # legacy: the store as it was before journal identity -- a record whose
        # (terminal, seq) is held is a duplicate, whatever its journal or content
        self.legacy = legacy
        self.store = Store(tmp / "hall.sqlite")
        self.store.add_terminal(TID, KEY, "W01", 0)
        self.core = coremod.Core(self.store.start_terminals(), config=[(messages.C_NO_CASE_POLICY, 1)])
        self.now = 1000
        self.thanked: list[tuple[int, tuple[int, ...]]] = []  # (journal id, record)
        self.refused: list[str] = []
        self.boot(journal)

    def boot(self, journal: str, name: str = "sim") -> None:
        self.path = str(self.tmp / journal)
        self.board = SimBoard(self.path, name=name)
        self.t = Terminal(self.board, TID, auth.Key(KEY), capacity=16)
        self.t.ev.settings.no_case_policy = ui.RECORD
        self.t.ev.settings.min_interval_ms = 0

    def step(self, ms: int = 10) -> None:
        self.now += ms
        before = self.board.shown[ui.P_THANKS]
        self.t.step(self.now)
        if self.board.shown[ui.P_THANKS] != before:
            self.thanked.append((self.t.journal.id, self.t.journal.record(self.t.last_seq)))
        for _ in range(8):
            up = self.board.transport.take_up()
            if not up:
                return
            group = []
            for fr in up:
                out = self.core.receive("pty", fr, T0 + self.now, bound=True)
                if out.refused:
                    self.refused.append(out.refused)
                for _tid, d in out.send:
                    self.board.transport.deliver(d)
                group.extend(out.store)
            stored = self.commit(group)
            for _tid, d in self.core.committed(stored, T0 + self.now):
                self.check_ack(d)
                self.board.transport.deliver(d)
            self.t.step(self.now)

    def commit(self, group: list) -> list:
        if not self.legacy:
            return self.store.commit(group, T0 + self.now, self.core.take_updates())
        from haochaping.daemon.store import Stored

        seen = {s for (s,) in self.store.conn.execute("SELECT seq FROM ratings")}
        new, out = [], []
        for r in group:
            if r.seq in seen:
                out.append(Stored(r, None))
            else:
                seen.add(r.seq)
                new.append(r)
                out.append(None)
        done = iter(self.store.commit(new, T0 + self.now, self.core.take_updates()))
        return [x if x is not None else next(done) for x in out]

    def check_ack(self, d: bytes) -> None:
        """No ACK may cover a record the terminal holds that SQLite does not."""
        f = frame.unseal(auth.Key(KEY), d)
        if self.legacy or not isinstance(f.msg, messages.Ack) or f.msg.journal != self.t.journal.id:
            return
        j = self.t.journal
        for seq in range(j.acked + 1, min(f.msg.seq, j.head - 1) + 1):
            rec = j.record(seq)
            if rec is not None:
                assert self.held(j.id, rec), f"ACK {f.msg.seq} would free unstored seq {seq}"

    def held(self, journal: int, rec: tuple[int, ...]) -> int:
        seq, level, reason, flags, session, t, up, boot = rec
        return int(self.store.conn.execute(
            "SELECT count(*) FROM ratings WHERE terminal_id = ? AND journal_id = ? AND seq = ?"
            " AND level = ? AND reason = ? AND flags = ? AND coalesce(session, 0) = ?"
            " AND device_time = ? AND uptime_ms = ? AND boot = ?",
            (TID, journal, seq, level, reason, flags, session, t, up, boot),
        ).fetchone()[0])  # fmt: skip

    def run(self, ms: int) -> None:
        end = self.now + ms
        while self.now < end:
            self.step(10)

    def press(self, button: int) -> None:
        self.board.mask |= 1 << button
        self.run(80)
        self.board.mask &= ~(1 << button)
        self.run(20)

    def rate(self, level: int, reason_button: int | None = None) -> None:
        self.press(5 - level)
        if reason_button is not None:
            self.press(reason_button)
        for _ in range(400):
            if self.t.ev.state == ui.S_IDLE:
                return
            self.step(50)
        raise AssertionError("the terminal did not come back to IDLE")

    def drain(self) -> None:
        for _ in range(600):
            if self.t.journal.used == 0 and self.t.session.state == 2:
                return
            self.step(50)
        raise AssertionError(f"journal not drained: {self.t.journal.used} left")

    def assert_every_thanks_stored_once(self) -> None:
        for jid, rec in self.thanked:
            assert self.held(jid, rec) == 1, (jid, rec)
        assert self.store.count("ratings") == len(self.thanked)
        assert self.store.verify_chain() is None


def wipe_scenario(h: Hall) -> None:
    h.run(300)
    for _ in range(3):
        h.rate(5)
    h.drain()
    old = h.t.journal.id
    # factory reset: the flash is erased, the board boots with a new journal
    Path(h.path).unlink()
    h.boot("t.journal")
    assert h.t.journal.id != old and h.t.journal.boot == 1
    h.rate(1, reason_button=2)  # 非常不满意, pressed before the link is back
    for _ in range(3):
        h.rate(5)
    h.drain()


def test_a_wiped_journal_loses_no_rating(tmp_path: Path) -> None:
    h = Hall(tmp_path)
    wipe_scenario(h)
    h.assert_every_thanks_stored_once()
    assert h.store.count("alerts") == 1
    assert "replay" in h.refused and h.core.counters["replay_hints"] >= 1
    assert h.t.link.epoch > 1  # moved above the daemon's replay guard
    kinds = [e["kind"] for e in h.store.terminal_events(TID)]
    assert kinds == ["journal_new", "journal_new"]
    (row,) = [r for r in h.store.terminals() if r["id"] == TID]
    assert row["last_event"]["kind"] == "journal_new" and row["journals"] == 2
    assert "previous journal" in row["last_event"]["detail"]


def test_a_board_replaced_with_the_same_id_and_key_loses_no_rating(tmp_path: Path) -> None:
    h = Hall(tmp_path)
    h.run(300)
    h.rate(4)
    h.rate(5)
    h.drain()
    h.board.transport.connected = False  # the old board's link fails, then the board
    h.rate(2, reason_button=0)  # journaled on the old board, never sent
    h.boot("replacement.journal", name="rp2-picow")
    h.rate(1, reason_button=1)
    h.rate(3)
    h.drain()
    lost_with_the_old_board = h.thanked.pop(2)
    assert h.held(*lost_with_the_old_board) == 0
    h.assert_every_thanks_stored_once()
    assert h.store.conn.execute(
        "SELECT count(DISTINCT journal_id) FROM ratings").fetchone()[0] == 2


def restore_scenario(h: Hall) -> int:
    h.run(300)
    h.rate(5)
    h.rate(4)
    h.board.transport.connected = False  # the link is down: these stay in the journal
    h.run(100)
    h.rate(3)
    h.rate(2, reason_button=3)
    shutil.copy(h.path, h.tmp / "backup.journal")  # the technician's image
    h.board.transport.connected = True
    h.drain()
    for _ in range(3):
        h.rate(5)  # seqs 5..7: stored, acknowledged, freed
    h.drain()
    held_before = h.store.count("ratings")
    # the old image goes back on the board: seqs 3..4 again, head 5
    shutil.copy(h.tmp / "backup.journal", h.path)
    h.boot("t.journal")
    h.rate(1, reason_button=4)  # a new press under seq 5, which the daemon holds
    h.rate(5)  # and seq 6
    h.drain()
    return held_before


def test_a_restored_journal_image_loses_no_rating_and_counts_none_twice(tmp_path: Path) -> None:
    h = Hall(tmp_path)
    held_before = restore_scenario(h)
    h.assert_every_thanks_stored_once()
    assert h.store.count("ratings") == held_before + 2
    forks = h.store.conn.execute("SELECT seq FROM ratings WHERE fork != 0 ORDER BY id").fetchall()
    assert forks == [(5,), (6,)]
    kinds = [e["kind"] for e in h.store.terminal_events(TID)]
    assert "journal_behind" in kinds
    # the terminal's status (GET /v1/terminals) names what happened last
    (row,) = [r for r in h.store.terminals() if r["id"] == TID]
    assert row["last_event"]["kind"] == kinds[-1] and row["journals"] == 1


def test_an_authenticated_hello_with_tail_0_is_refused_and_the_hall_goes_on(tmp_path: Path) -> None:
    h = Hall(tmp_path)
    h.run(300)
    body = (bytes([2, messages.Hello.TYPE]) + TID.to_bytes(4, "big") + (0x7000_0001).to_bytes(4, "big")
            + bytes.fromhex("000100" "00" "0001" "01") + (5).to_bytes(4, "big")
            + bytes(12) + bytes.fromhex("0010" "00000000" "00"))  # fmt: skip
    bad = body + auth.Key(KEY).tag(body)
    out = h.core.receive("pty", bad, T0 + h.now, bound=True)  # v1 raised MessageError here
    assert out.refused == "malformed_hello" and h.core.counters["refused_malformed_hello"] == 1
    h.rate(5)
    h.drain()
    h.assert_every_thanks_stored_once()


def test_the_checks_find_the_behaviour_before_journal_identity(tmp_path: Path) -> None:
    """With the store deduplicating on (terminal, seq) as it did, the same
    scenarios lose the ratings pressed after the wipe and after the restore."""
    import pytest

    for name, scenario in (("wipe", wipe_scenario), ("restore", restore_scenario)):
        (tmp_path / name).mkdir()
        h = Hall(tmp_path / name, legacy=True)
        scenario(h)
        with pytest.raises(AssertionError):
            h.assert_every_thanks_stored_once()
        missing = [rec for jid, rec in h.thanked if not h.held(jid, rec)]
        assert missing, name
