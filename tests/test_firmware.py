"""Firmware core on CPython: evaluator table, buttons, journal, session, and
the shared scenarios (tests/mpy/fw_scenarios.py) that also run on MicroPython
(tests/test_firmware_mpy.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))

import fw_scenarios as sc  # noqa: E402
from haochaping.firmware import ui  # noqa: E402
from haochaping.firmware.buttons import Buttons  # noqa: E402
from haochaping.firmware.journal import (  # noqa: E402
    DATA_AT,
    REC_LEN,
    Journal,
    JournalError,
    JournalFull,
    capacity_for,
)
from haochaping.firmware.session import LINK_TABLE, LinkStateError, Session  # noqa: E402


@pytest.mark.parametrize("scenario", sc.SCENARIOS, ids=lambda f: f.__name__)
def test_scenario_cpython(scenario) -> None:
    scenario()


# ------------------------------------------------------------------ evaluator


def test_table_has_one_row_per_state_and_event() -> None:
    from haochaping.firmware.tabledoc import rows as table_rows

    assert len(ui.TABLE) % 4 == 0, "TABLE is flat: state, event, handler, mask per row"
    rows = [(s, e) for s, e, _, _ in table_rows()]
    assert len(set(rows)) == len(rows), "duplicate rows"
    # Every pair is decided explicitly (ignored presses are rows too).
    n_states, n_events = len(ui.STATE_NAMES), len(ui.EVENT_NAMES)
    assert (n_states, n_events) == (7, 8)
    assert set(rows) == {(s, e) for s in range(n_states) for e in range(n_events)}


def test_transition_not_in_table_raises_named_error(monkeypatch) -> None:
    ev = ui.Evaluator()
    table = list(ui._TABLE)
    table[ui.S_IDLE * 8 + ui.E_ARM] = None  # as if the row were missing
    monkeypatch.setattr(ui, "_TABLE", table)
    with pytest.raises(ui.TransitionError, match="ARM in IDLE"):
        ev.arm(5, 1000, 0)


def test_handler_leading_outside_its_row_raises(monkeypatch) -> None:
    ev = ui.Evaluator()
    table = list(ui.TABLE)
    i = ui._TABLE[ui.S_IDLE * 8 + ui.E_ARM]
    assert table[i : i + 2] == [ui.S_IDLE, ui.E_ARM]
    table[i + 3] = 1 << ui.S_IDLE  # the row no longer allows ARMED
    monkeypatch.setattr(ui, "TABLE", tuple(table))
    with pytest.raises(ui.TransitionError, match="may not lead to ARMED"):
        ev.arm(5, 1000, 0)
    assert ev.state == ui.S_IDLE


def test_write_comes_before_thanks() -> None:
    ev = ui.Evaluator()
    ev.arm(9, 60000, 0)
    n = ev.press(0, 10)
    acts = [ev.actions[i] for i in range(n)]
    assert acts == [ui.A_WRITE, ui.A_SHOW | (ui.P_THANKS << 8)]
    assert (ev.rec_level, ev.rec_session) == (5, 9)


def test_arm_expires_and_arm_during_thanks_is_deferred() -> None:
    ev = ui.Evaluator()
    ev.arm(1, 1000, 0)
    ev.tick(999)
    assert ev.state == ui.S_ARMED
    ev.tick(1000)
    assert ev.state == ui.S_IDLE and ev.session == 0
    ev.arm(2, 60000, 2000)
    ev.press(1, 2010)
    ev.arm(3, 60000, 2020)  # next case while THANKS shows
    assert ev.state == ui.S_THANKS
    ev.tick(2010 + ev.settings.thanks_ms)
    assert ev.state == ui.S_ARMED and ev.session == 3


def test_fault_during_armed_drops_case_with_error() -> None:
    ev = ui.Evaluator()
    ev.arm(4, 60000, 0)
    n = ev.fault(ui.FAULT_JOURNAL_FULL, 5)
    assert ev.state == ui.S_FAULT
    assert ui.A_ERROR | (ui.E_JOURNAL_FULL << 8) in ev.actions[:n] and ev.err_ref == 4
    ev.clear(ui.FAULT_JOURNAL_FULL, 6)
    assert ev.state == ui.S_IDLE


def _acts(ev, n):
    return [ev.actions[i] for i in range(n)]


def _echo(op: int, arg: int = 0) -> int:
    return ui.A_ECHO | ((op << 4 | arg) << 8)


def test_self_test_never_writes_and_returns_where_it_came_from() -> None:
    from haochaping.protocol import messages as m

    ev = ui.Evaluator()
    # From FAULT: the test runs (a full journal can still be tested), END returns to FAULT.
    ev.fault(ui.FAULT_JOURNAL_FULL, 0)
    n = ev.test(m.T_LED, 3, 10)
    assert ev.state == ui.S_TEST and ev.pressed == 3
    assert _acts(ev, n) == [ui.A_SHOW | (ui.P_TEST_LED << 8), _echo(m.T_LED, 3)]
    n = ev.press(1, 20)
    assert _acts(ev, n) == [ui.A_SHOW | (ui.P_TEST_LED << 8), _echo(m.T_PRESS, 1)]
    n = ev.test(m.T_END, 0, 30)
    assert ev.state == ui.S_FAULT
    assert _acts(ev, n) == [ui.A_SHOW | (ui.P_FAULT << 8), _echo(m.T_END, 0)]
    ev.clear(ui.FAULT_JOURNAL_FULL, 40)
    # From TECH with a case still armed: the case survives the test (and its ARM refusal).
    ev.arm(5, 60000, 100)
    ev.tech(110)
    ev.test(m.T_BUZZER, 0, 120)
    n = ev.arm(6, 60000, 130)
    assert ui.A_ERROR | (ui.E_SELF_TEST << 8) in _acts(ev, n) and ev.err_ref == 6
    ev.press(4, 140)
    ev.test(m.T_END, 0, 150)
    assert ev.state == ui.S_ARMED and ev.session == 5 and ev.ratings == 0
    # Busy: a rating in progress is not interrupted.
    ev.press(3, 160)  # 不满意 -> REASON
    n = ev.test(m.T_ECHO, 0, 170)
    assert ev.state == ui.S_REASON and _acts(ev, n) == [_echo(m.T_BUSY, 0)]
    ev.press(0, 180)
    assert ev.state == ui.S_THANKS and ev.ratings == 1
    n = ev.test(m.T_LED, 0, 190)
    assert ev.state == ui.S_THANKS and _acts(ev, n) == [_echo(m.T_BUSY, 0)]
    # The time-out: test_ms after the last TEST, not after the last press.
    ev.tick(180 + ev.settings.thanks_ms)
    assert ev.state == ui.S_IDLE
    ev.test(m.T_ECHO, 0, 10_000)
    ev.press(2, 50_000)
    assert ev.tick(10_000 + ev.settings.test_ms - 1) == 0 and ev.state == ui.S_TEST
    n = ev.tick(10_000 + ev.settings.test_ms)
    assert ev.state == ui.S_IDLE and _echo(m.T_TIMEOUT, 0) in _acts(ev, n)
    # END outside a test is answered and changes nothing.
    n = ev.test(m.T_END, 0, 70_000)
    assert ev.state == ui.S_IDLE and _echo(m.T_END, 0) in _acts(ev, n)
    assert ev.ratings == 1


def test_ticks_wrap() -> None:
    ev = ui.Evaluator()
    start = ui.TICKS_PERIOD - 100
    ev.arm(1, 1000, start)
    ev.tick((start + 500) % ui.TICKS_PERIOD)
    assert ev.state == ui.S_ARMED
    ev.tick((start + 1000) % ui.TICKS_PERIOD)
    assert ev.state == ui.S_IDLE


def test_docs_table_matches_code() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "firmware.md").read_text("utf-8")
    from haochaping.firmware.tabledoc import table_text

    for line in table_text():
        assert line in doc, f"docs/firmware.md lacks table row: {line}"


# -------------------------------------------------------------------- buttons


def test_debounce_lockout_and_chord() -> None:
    b = Buttons(debounce_ms=30, tech_hold_ms=3000)
    assert b.update(0b1, 0) == 0b1  # felt at once
    assert b.update(0b0, 5) == 0  # bounce
    assert b.update(0b1, 8) == 0
    assert b.bounces == 1  # the second edge matches the stable state
    assert b.update(0b0, 40) == 0  # real release
    assert b.update(0b1, 100) == 0b1  # next press
    assert b.update(0b10001, 200) == 0  # second button while one is held: chord
    assert not b.take_tech(3100)
    assert b.take_tech(3200)
    assert not b.take_tech(4000)  # once per hold


# -------------------------------------------------------------------- journal


def _journal(tmp_path: Path, cap: int = 8) -> Journal:
    f = open(tmp_path / "j.bin", "w+b")  # noqa: SIM115
    return Journal(f, cap, sync=lambda: None)


def test_journal_real_file_roundtrip(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert (tmp_path / "j.bin").stat().st_size == DATA_AT + 8 * REC_LEN
    j.bump_boot()
    for i in range(8):
        assert j.append(5 - i % 5, 0, 1, 7, 1764000000 + i, 1000 * i, j.boot) == i + 1
    assert j.full
    with pytest.raises(JournalFull):
        j.append(5, 0, 0, 0, 0, 0, 1)
    j.ack(3, rx_last=0x10005)
    j.append(1, 4, 0, 0, 0, 0, 1)  # seq 9 reuses slot of seq 1
    j.f.close()
    j2 = Journal(open(tmp_path / "j.bin", "r+b"), 8, sync=lambda: None)  # noqa: SIM115
    assert (j2.head, j2.tail, j2.acked, j2.rx_last, j2.boot) == (10, 4, 3, 0x10005, 1)
    assert j2.record(9) == (9, 1, 4, 0, 0, 0, 0, 1)
    assert j2.record(4) == (4, 2, 0, 1, 7, 1764000003, 3000, 1)
    assert j2.record(3) is None  # acked: not in the journal any more


def test_journal_ack_beyond_head_moves_head_past_it(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.append(5, 0, 0, 0, 0, 0, 0)
    assert j.ack(99)  # the daemon holds up to 99: never reuse those seqs
    assert j.acked == 99 and j.head == 100 and j.used == 0
    assert j.append(4, 0, 0, 0, 0, 0, 0) == 100
    j2 = Journal(j.f, 8, sync=lambda: None)
    assert (j2.acked, j2.head) == (99, 101)


def test_journal_corrupt_meta_with_records_raises(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.append(5, 0, 0, 0, 0, 0, 0)
    j.f.seek(0)
    j.f.write(bytes(64))
    j.f.flush()
    with pytest.raises(JournalError):
        Journal(j.f, 8, sync=lambda: None)


def test_capacity_per_mib() -> None:
    assert capacity_for(1 << 20) == 43688


# -------------------------------------------------------------------- session


def test_link_table_rejects_unknown_event() -> None:
    from haochaping.firmware import session as s

    assert (s.L_DOWN, s.LE_ACK) not in {(a, b) for a, b, _ in LINK_TABLE}
    sess = Session.__new__(Session)
    sess.state = s.L_DOWN
    with pytest.raises(LinkStateError):
        sess._go(s.LE_ACK)


def test_counter_exhausted_bumps_boot(tmp_path: Path) -> None:
    from haochaping.protocol import messages as m
    from haochaping.protocol.link import TERMINAL, Link

    j = _journal(tmp_path)
    boot = j.bump_boot()
    link = Link(TERMINAL, sc.TID, sc.KEY, boot)
    link._n = 0xFFFF - 1
    sess = Session(link, j)
    sess._send(m.Status())
    sess._send(m.Status())  # the epoch runs out here
    assert j.boot == boot + 1 and link.epoch == boot + 1
    assert len(sess._take()) == 2


@given(
    utc_ms=st.integers(1_500_000_000_000, 4_000_000_000_000),
    sync_up=st.integers(0, 10**10),
    later=st.integers(0, 10**10),
)
def test_clock_stamp_matches_plain_arithmetic(utc_ms: int, sync_up: int, later: int) -> None:
    from haochaping.firmware.session import Clock

    c = Clock()
    c.set(utc_ms, sync_up)
    up = sync_up + later
    c.stamp(up // 1000, up % 1000)
    assert (c.hi << 16 | c.lo) == ((up + utc_ms - sync_up) // 1000) & 0xFFFFFFFF


@given(up=st.integers(0, 2**40))
def test_terminal_uptime_halves(up: int, tmp_path_factory) -> None:
    # The record's uptime field is uptime ms mod 2**32, built from halves.
    j = Journal(open(tmp_path_factory.mktemp("u") / "j", "w+b"), 4, sync=lambda: None)  # noqa: SIM115
    up_s, up_ms = divmod(up, 1000)
    a = up_s >> 16
    lo = (up_s & 0xFFFF) * 1000 + up_ms
    j.append_w(5, 0, 0, 0, 0, 0, (a * 1000 + (lo >> 16)) & 0xFFFF, lo & 0xFFFF, 1)
    assert j.record(1)[6] == up & 0xFFFFFFFF


def test_powercut_every_write_point_and_2000_random_cpython() -> None:
    import fw_powercut

    res = fw_powercut.sweep(2000, 7)
    assert res["points"] >= 2000 + 2 * res["writes"]
    assert res["cuts"] >= res["points"] - 10


def test_sim_watchdog_fires_when_the_loop_stalls() -> None:
    from haochaping.firmware.board_sim import SimWDT, WatchdogReset

    w = SimWDT(8000)
    w.feed(0)
    w.check(8000)
    with pytest.raises(WatchdogReset):
        w.check(8001)


def test_two_months_of_uptime_never_wrap_a_ratings_time() -> None:
    """With the real EPOCH_UPTIME_S: a terminal left on for 60 days starts one
    new epoch (at 46.3 days) and a press on day 60 still carries its true time."""
    from haochaping.firmware import terminal as term

    r = sc.Rig()
    r.run(200)
    boot = r.t.journal.boot
    day = 24 * 3600 * 1000
    r.run(60 * day, 6 * 3600 * 1000)
    assert r.t.journal.boot == boot + 1
    assert r.t.up_s < (60 * day // 1000) - term.EPOCH_UPTIME_S + 7 * 3600
    r.arm(5)
    r.press(1)
    r.idle()
    r.run(200)
    rec = r.peer.stored[1]
    assert rec[7] == boot + 1 and rec[6] < 2**32
    from fw_peer import UTC0

    assert abs(rec[5] - (UTC0 + r.now) // 1000) <= 2
