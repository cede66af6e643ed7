"""daemon/core.py: sans-IO ingest, driven by the fake terminal."""

from __future__ import annotations

import pytest
from haochaping.daemon.bench.peers import FakeTerminal
from haochaping.daemon.core import HUMAN_MIN_MS, ArmError, Core, Session
from haochaping.daemon.store import Store
from haochaping.protocol import messages, serial
from haochaping.protocol.auth import Key
from haochaping.protocol.frame import seal

KEYS = {1: bytes([1]) * 32, 2: bytes([2]) * 32}


def make(tmp_path, **kw):
    store = Store(tmp_path / "h.db")
    for tid, k in KEYS.items():
        store.add_terminal(tid, k, f"W{tid}", 0)
    return store, Core(store.start_terminals(), **kw)


def pump(core, store, term, frames, now):
    """Feed frames, commit what they ask, deliver every down frame; return refusals."""
    refused = []
    for fr in frames:
        out = core.receive("mqtt", fr, now)
        if out.refused:
            refused.append(out.refused)
        for _tid, d in out.send:
            term.receive(d)
        stored = store.commit(out.store, now, core.take_updates())
        for _tid, d in core.committed(stored, now):
            term.receive(d)
    return refused


def test_hello_rating_ack_exactly_once(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    assert pump(core, store, t, [t.hello()], 1_000) == []
    assert isinstance(t.received[0], messages.Time) and isinstance(t.received[1], messages.Ack)
    for lvl in (5, 4, 1):
        t.press(lvl, reason=3)
    t2 = FakeTerminal(1, KEYS[1], boot=2)  # the same journal, as it was before the ACKs
    t2.journal, t2.head = dict(t.journal), t.head
    pump(core, store, t, t.send_new(per_frame=2), 2_000)
    assert t.acked == 3 and t.done
    # the terminal never saw the ACKs: after a reboot it resends everything; stored once
    pump(core, store, t2, t2.resend(), 3_000)
    assert store.count("ratings") == 3 and t2.acked == 3
    assert core.counters["ratings_duplicate"] == 3
    assert store.count("alerts") == 1


def test_ack_is_contiguous(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    pump(core, store, t, [t.hello()], 0)
    for _ in range(5):
        t.press(5)
    frames = t.send_new()
    pump(core, store, t, [frames[0], frames[2], frames[3]], 10)  # seq 2 lost
    assert t.ack_log[-1] == 1
    # an old frame is a replay now (its counter is below the last accepted)
    assert pump(core, store, t, [frames[1]], 20) == ["replay"]
    # the terminal's ACK time-out: it resends from the oldest unacknowledged
    pump(core, store, t, t.resend(per_frame=1)[:2], 30)  # HELLO + seq 2
    # after a HELLO only records received after it count: 3 and 4 are held,
    # but the terminal may hold other records under those seqs now
    assert t.ack_log[-1] == 2
    pump(core, store, t, t.resend(), 40)
    assert t.acked == 5 and store.count("ratings") == 5


def test_refusals_change_nothing(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    h = t.hello()
    assert pump(core, store, t, [h], 0) == []
    assert pump(core, store, t, [h], 0) == ["replay"]
    forged = bytearray(t.hello())
    forged[-1] ^= 1
    assert pump(core, store, t, [bytes(forged)], 0) == ["auth"]
    stranger = FakeTerminal(99, bytes(32))
    assert pump(core, store, t, [stranger.hello()], 0) == ["unknown_terminal"]
    assert pump(core, store, t, [b"\x01" * 300], 0) == ["too_long"]
    assert pump(core, store, t, [b"\x01\x02"], 0) == ["framing"]
    # a frame sealed with terminal 1's key but naming terminal 2
    wrong = seal(Key(KEYS[1]), messages.Rating(1), 2, 5 << 16 | 1)
    assert pump(core, store, t, [wrong], 0) == ["auth"]
    for name in ("replay", "auth", "unknown_terminal", "too_long", "framing"):
        assert core.counters["refused_" + name] >= 1
    # after all that, terminal 1 still works
    t.press(4)
    assert pump(core, store, t, t.send_new(), 1) == []
    assert t.acked == 1


def test_serial_source_is_bound_to_one_terminal(tmp_path):
    store, core = make(tmp_path)
    a, b = FakeTerminal(1, KEYS[1]), FakeTerminal(2, KEYS[2])
    assert core.receive("/dev/x", a.hello(), 0, bound=True).refused is None
    assert core.receive("/dev/x", b.hello(), 0, bound=True).refused == "wrong_source"
    core.drop_source("/dev/x")
    assert core.receive("/dev/x", b.hello(), 0, bound=True).refused is None


def test_arm_binds_and_flags(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    with pytest.raises(ArmError, match="offline"):
        core.arm("W1", 1, "C1", 77, 0)
    with pytest.raises(ArmError, match="no terminal"):
        core.arm("W9", 1, "C1", 77, 0)
    t.uptime_ms = 5_000
    pump(core, store, t, [t.hello()], 100_000)
    assert store.add_case({"case_no": "C1"}, None, 0) == 1
    s, frames = core.arm("W1", 1, "C1", 77, 100_000)
    for _tid, d in frames:
        t.receive(d)
    assert t.session == 77
    t.uptime_ms = 5_000 + HUMAN_MIN_MS // 2  # pressed faster than a human
    t.press(1, reason=2)
    t.press(5, session=77)  # a second press on the same case
    pump(core, store, t, t.send_new(), 100_500)
    rows = store.conn.execute(
        "SELECT seq, case_id, session, time_quality FROM ratings ORDER BY seq"
    ).fetchall()
    assert rows == [(1, 1, 77, "synced"), (2, 1, 77, "synced")]
    flags = store.conn.execute("SELECT rating_id, value FROM annotations ORDER BY id").fetchall()
    assert (1, "too_fast") in flags and (2, "repeated") in flags


def test_time_rebuilt_from_hello(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    t.uptime_ms = 1_000
    t.press(5)  # before any TIME: unsynced, uptime 1 s
    t.uptime_ms = 61_000
    # daemon sees HELLO at 1_000_000 ms with uptime 61 s: boot at 939_000
    pump(core, store, t, t.resend(), 1_000_000)
    row = store.conn.execute("SELECT assess_ms, time_quality, device_time FROM ratings").fetchone()
    assert row == (940_000, "rebuilt", 0)


def test_burst_no_case_and_a_replaced_board(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    pump(core, store, t, [t.hello()], 0)
    for _ in range(5):
        t.press(5)
    pump(core, store, t, t.send_new(), 10)
    vals = [v for (v,) in store.conn.execute("SELECT value FROM annotations")]
    assert vals.count("burst_no_case") == 2  # the 4th and 5th within a minute
    # a replacement board with the same id and key: a new journal, seqs from 1
    t2 = FakeTerminal(1, KEYS[1], boot=9, journal=2)
    t2.press(5)
    t2.press(1)
    pump(core, store, t2, t2.resend(), 20)
    assert store.count("ratings") == 7 and t2.acked == 2 and t2.done
    assert store.conn.execute(
        "SELECT journal_id, seq FROM ratings WHERE id > 5 ORDER BY id").fetchall() == [(2, 1), (2, 2)]
    ev = store.terminal_events(1)
    assert [e["kind"] for e in ev] == ["journal_new", "journal_new"]
    assert ev[1]["journal_id"] == 2 and "previous journal 00000001" in ev[1]["detail"]
    assert core.counters["event_journal_new"] == 2


def test_drift_sends_time(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    pump(core, store, t, [t.hello()], 100_000)
    t.clock_offset_ms += 30_000  # the terminal's clock runs 30 s ahead
    t.uptime_ms = 200_000
    t.press(5)
    n = sum(isinstance(m, messages.Time) for m in t.received)
    pump(core, store, t, t.send_new(), 300_000)
    assert sum(isinstance(m, messages.Time) for m in t.received) == n + 1
    assert core.counters["time_drift"] == 1


def test_serial_decoder_pairs_with_core(tmp_path):
    store, core = make(tmp_path)
    t = FakeTerminal(1, KEYS[1])
    dec = serial.Decoder()
    dec.receive_data(b"\x13\x37garbage\x00" + serial.encode(t.hello()))
    got = []
    while True:
        try:
            fr = dec.next_event()
        except Exception as e:  # noqa: BLE001
            got.append(type(e).__name__)
            continue
        if fr is None:
            break
        got.append(core.receive("/dev/x", fr, 0, bound=True).kind)
    assert got[-1] == "HELLO" and len(got) == 2


def test_sessions_survive_restart(tmp_path):
    store, core = make(tmp_path)
    for i in range(3):
        store.add_case({"case_no": f"C{i}"}, None, 0)
    sess = Session(5, 3, "W1", 1, 0, 120_000)
    core2 = Core(store.start_terminals(), sessions=[sess])
    t = FakeTerminal(1, KEYS[1])
    pump(core2, store, t, [t.hello()], 0)
    t.press(4, session=5)
    pump(core2, store, t, t.send_new(), 10)
    assert store.conn.execute("SELECT case_id FROM ratings").fetchone()[0] == 3


def test_old_sessions_are_pruned(tmp_path):
    from haochaping.daemon import core as core_mod

    store, core = make(tmp_path)
    week = core_mod.SESSION_KEEP_MS
    core.sessions = {i: Session(i, 1, "W1", 1, 0, 1) for i in range(1, 4)}
    core.sessions[9] = Session(9, 1, "W1", 1, week, week + 1)
    core.prune_sessions(week + 10)
    assert sorted(core.sessions) == [9]
