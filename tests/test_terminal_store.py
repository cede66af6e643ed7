"""The terminal lifecycle in the store and the core (issue #12): provision,
replace, retire, rekey; the window history; the version a running daemon
takes up; the previous key accepted until the new one is used."""

from __future__ import annotations

from pathlib import Path

import pytest
from haochaping.daemon.bench.peers import FakeTerminal
from haochaping.daemon.core import Core
from haochaping.daemon.store import Store, TerminalError

from .test_daemon_core import pump

K1, K2, K3 = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32


def test_a_window_has_one_active_terminal_and_keeps_its_history(tmp_path) -> None:
    st = Store(tmp_path / "h.db")
    v0 = st.terminals_version()[0]
    st.add_terminal(1, K1, "W01", 1000)
    with pytest.raises(TerminalError, match="window W01 is served by terminal 00000001"):
        st.add_terminal(2, K2, "W01", 1100)
    assert st.replace_terminal(1, 2, K2, 2000) == "W01"
    assert st.terminal_for_window("W01") == 2
    with pytest.raises(TerminalError, match="exists already"):
        st.replace_terminal(2, 1, K3, 2100)
    assert st.retire_terminal(1, 3000) is None  # it no longer had a window
    with pytest.raises(TerminalError, match="retired already"):
        st.retire_terminal(1, 3100)
    with pytest.raises(TerminalError, match="never used again"):
        st.add_terminal(1, K1, None, 3200)
    hist = [(h["terminal_id"], h["window_no"], h["from_ms"], h["to_ms"]) for h in st.window_history(window_no="W01")]
    assert hist == [(1, "W01", 1000, 2000), (2, "W01", 2000, None)]
    assert st.terminals_version()[0] == v0 + 3  # add, replace, retire: each bumps it once
    assert set(st.start_terminals()) == {2} and st.retired_ids() == {1}
    st.close()


def test_a_retired_terminal_is_refused_by_name(tmp_path) -> None:
    st = Store(tmp_path / "h.db")
    st.add_terminal(1, K1, "W01", 0)
    core = Core(st.start_terminals())
    t = FakeTerminal(1, K1)
    assert pump(core, st, t, [t.hello()], 1000) == []
    st.retire_terminal(1, 2000)
    core.update_terminals(st.start_terminals(False), sorted(st.retired_ids()))
    t.press(5)
    assert pump(core, st, t, t.send_new(), 3000) == ["retired"]
    assert core.counters["refused_retired"] == 1 and st.count("ratings") == 0
    st.close()


def test_rekey_accepts_the_old_key_until_the_new_one_is_used(tmp_path) -> None:
    st = Store(tmp_path / "h.db")
    st.add_terminal(1, K1, "W01", 0)
    core = Core(st.start_terminals())
    old = FakeTerminal(1, K1)
    assert pump(core, st, old, [old.hello()], 1000) == []
    st.rekey_terminal(1, K2, 2000)
    with pytest.raises(TerminalError, match="current one"):
        st.rekey_terminal(1, K2, 2100)
    core.update_terminals(st.start_terminals(False))
    # the board still holds the old key: its ratings are taken, its ACKs come
    # under the key it uses (so it can free its journal)
    old.press(5)
    old.press(4)
    assert pump(core, st, old, old.send_new(), 3000) == []
    assert st.count("ratings") == 2 and old.acked == 2 and core.counters["frames_previous_key"] >= 1
    # the new config reaches the board: the same journal, the new key
    new = FakeTerminal(1, K2, boot=2)
    new.journal, new.head, new.acked = dict(old.journal), old.head, old.acked
    new.sent_upto = old.acked
    new.press(3)
    assert pump(core, st, new, [new.hello(), *new.send_new()], 4000) == []
    assert st.count("ratings") == 3 and new.acked == 3
    assert st.conn.execute("SELECT prev_key FROM terminals WHERE id = 1").fetchone()[0] is None
    assert [e["kind"] for e in st.terminal_events(1)][-1] == "rekeyed"
    # from now on the old key is refused
    old.press(5)
    assert pump(core, st, old, old.send_new(), 5000) == ["auth"]
    # a daemon started after the switch knows only the new key
    core2 = Core(st.start_terminals())
    assert core2.peers[1].prev_key is None
    st.close()


def test_a_second_rekey_before_the_first_is_used_keeps_the_key_the_board_holds(tmp_path) -> None:
    st = Store(tmp_path / "h.db")
    st.add_terminal(1, K1, "W01", 0)
    st.rekey_terminal(1, K2, 1000)
    st.rekey_terminal(1, K3, 2000)  # K2 never reached the board
    core = Core(st.start_terminals())
    t = FakeTerminal(1, K1)
    assert pump(core, st, t, [t.hello()], 3000) == []  # still the old key the board holds
    st.close()


def test_broker_section_of_the_config(tmp_path: Path) -> None:
    from haochaping.daemon import config as config_mod

    base = '[store]\npath = "hall.db"\ncontact_key = "contact.key"\n'
    f = tmp_path / "hcp.toml"
    f.write_text(base + '[broker]\npassword_file = "pw"\nacl_file = "acl"\nterminal_url = "mqtt://10.0.0.2:1883"\n')
    b = config_mod.load(f).broker
    assert b is not None and b.password_file == str(tmp_path / "pw") and b.acl_file == str(tmp_path / "acl")
    for bad, says in (('password_file = "pw"\n', "broker.acl_file"),
                      ('password_file = "pw"\nacl_file = "acl"\nterminal_url = "http://x"\n', "broker.terminal_url"),
                      ('password_file = "pw"\nacl_file = "acl"\npasword = 1\n', "broker.pasword")):  # fmt: skip
        f.write_text(base + "[broker]\n" + bad)
        with pytest.raises(config_mod.ConfigError, match=says):
            config_mod.load(f)
    f.write_text(base)
    assert config_mod.load(f).broker is None
