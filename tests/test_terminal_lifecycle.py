"""A technician's terminal lifecycle against a running hall (issue #12): a
virtual board (the real firmware on the simulator board, booting from the
config file `hcp terminal provision` wrote) is provisioned, rates, is
replaced by another board, and retired; another is rekeyed in the middle of
a stream of presses.  Every rating whose THANKS was shown reaches the
reference receiver exactly once; frames under a retired key are refused
with a named reason and counted.

Real parts: an `hcp daemon` process on pseudo-terminals, its SQLite file,
the uplink and the provincial receiver over HTTP on loopback, the CLI.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from haochaping.daemon import keys
from haochaping.daemon.bench.harness import DaemonProcess, free_port, write_config
from haochaping.daemon.store import Store
from haochaping.daemon.uplink import runner
from haochaping.firmware import ui
from haochaping.simulator import province
from haochaping.simulator.hall.common import _http
from haochaping.simulator.hall.terminals import VirtualTerminal

from haochaping.cli import main

TOKEN = "window-system-token-0001"
WAIT_S = 20.0


def until(cond: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Wait for ``cond()`` to be truthy (polled), or fail naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Hall:
    """A running daemon, its terminals' ptys, the boards stepped in a thread."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.tmp = tmp
        self.tty = tmp / "tty"
        self.tty.mkdir()
        self.state = tmp / "boards"
        self.state.mkdir()
        self.db = tmp / "hall.db"
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.config = write_config(
            tmp / "hcp.toml", self.db, [{"url": f"serial://{self.tty}/term-*"}], self.api_port,
            tokens={"window-system": TOKEN},
            extra="\n[terminal]\nno_case_policy = 1\nthanks_ms = 300\nstatus_interval_s = 1\nreason_timeout_s = 1\n"
            + extra,
        )  # fmt: skip
        self.env = {"HCP_CONFIG": str(self.config)}
        self.daemon = DaemonProcess(self.config, tmp).start()
        self.boards: list[VirtualTerminal] = []
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.cases = 0

    def _loop(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic_ns() // 1_000_000
            for b in list(self.boards):
                try:
                    b.step(now)
                except Exception as e:  # noqa: BLE001 - a firmware crash is a finding
                    self.errors.append(f"{b.tid:08x}: {type(e).__name__}: {e}")
            time.sleep(0.005)

    def hcp(self, *args: str) -> str:
        r = CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    def board(self, config_file: Path, window: str = "") -> VirtualTerminal:
        b = VirtualTerminal.from_config(config_file, self.state, self.tty, window)
        self.boards.append(b)
        return b

    def terminal(self, tid: int) -> dict[str, Any]:
        code, body = _http(self.api + "/v1/terminals", token=TOKEN)
        assert code == 200, body
        return next((t for t in body["terminals"] if t["id"] == f"{tid:08x}"), {})

    def online(self, b: VirtualTerminal) -> None:
        until(lambda: self.terminal(b.tid).get("online"), f"terminal {b.tid:08x} online")

    def rate_case(self, b: VirtualTerminal, window: str, level: int) -> None:
        """The window's business system posts a case; the citizen presses ``level``."""
        self.cases += 1
        self.idle(b)
        b.thanks.clear()
        b.armed.clear()
        body = {"case_no": f"QD2026120200{self.cases:04d}", "item_code": "11370200MB0000000X-001",
                "item_name": "企业设立登记", "window_no": window, "staff_name": "张三", "staff_id": "S01",
                "dept_name": "市行政审批服务局", "dept_code": "370200"}  # fmt: skip
        code, res = _http(self.api + "/v1/cases", body, TOKEN)
        assert code == 201, res
        assert b.armed.wait(WAIT_S), "the ARM never reached the board"
        n = len(b.confirmed)
        b.press(5 - level)
        until(lambda: len(b.confirmed) > n, "THANKS")

    @staticmethod
    def idle(b: VirtualTerminal) -> None:
        """The board is back at rest (THANKS over): a press now is a new rating."""
        until(lambda: b.term.ev.state == ui.S_IDLE, f"terminal {b.tid:08x} idle")

    def rate_no_case(self, b: VirtualTerminal, level: int) -> bool:
        self.idle(b)
        n = len(b.confirmed)
        b.press(5 - level)
        end = time.monotonic() + 3
        while time.monotonic() < end and len(b.confirmed) == n:
            time.sleep(0.02)
        return len(b.confirmed) > n

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.api + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def stored(self) -> set[tuple[int, int, int]]:
        st = Store(self.db, readonly=True)
        try:
            return {(t, j, s) for t, j, s in st.conn.execute("SELECT terminal_id, journal_id, seq FROM ratings")}
        finally:
            st.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for b in self.boards:
            b.link.close()
        if self.daemon.alive():
            self.daemon.stop()


@pytest.fixture()
def hall(tmp_path: Path):
    h = Hall(tmp_path)
    try:
        yield h
    finally:
        h.close()


def confirmed(b: VirtualTerminal) -> set[tuple[int, int]]:
    return {(c.tid, c.seq) for c in b.confirmed}


def deliver(h: Hall) -> list[dict[str, Any]]:
    """The uplink drains the hall to a reference receiver; its records."""
    keys.init(h.tmp / "keys")
    with province.Receiver(h.tmp / "prov", pubkeys=(str(h.tmp / "keys"),)) as r:
        cfg = runner.UplinkConfig(db=str(h.db), hall_id="hall-t", keys_dir=str(h.tmp / "keys"), url=r.url,
                                  batch_size=50, max_age_s=0.0, min_free_bytes=0, seed=1)  # fmt: skip
        runner.run(cfg, until_idle=True)
        return r.store.records("hall-t")


def test_provision_rate_replace_retire_and_nothing_lost(hall: Hall) -> None:
    out = hall.hcp("terminal", "provision", "--window", "W01", "--out", str(hall.tmp / "cfg"),
                   "--labels", str(hall.tmp / "labels"), "--no-label", "--wait", "10")  # fmt: skip
    (cfg_a,) = (hall.tmp / "cfg").glob("terminal-W01-*.json")
    assert oct(cfg_a.stat().st_mode & 0o777) == "0o600"
    a = hall.board(cfg_a, "W01")
    assert f"{a.tid:08x}" in out and "已登记" in out
    assert (hall.tmp / "labels" / f"W01-{a.tid:08x}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hall.online(a)
    for level in (5, 4, 3):
        hall.rate_case(a, "W01", level)
    # The old board journals two more while the daemon is stopped; then the
    # window moves to a new board.  The old key stays valid: they still arrive.
    hall.daemon.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        assert hall.rate_no_case(a, 5) and hall.rate_no_case(a, 4)
        r = CliRunner().invoke(main, ["terminal", "replace", f"{a.tid:08x}", "--out", str(hall.tmp / "cfg2"),
                                      "--labels", str(hall.tmp / "labels"), "--wait", "0.5"],
                               env=hall.env, catch_exceptions=False)  # fmt: skip
        assert r.exit_code == 0, r.output
        assert "守护进程确认" in r.output  # it said the (stopped) daemon did not confirm yet
    finally:
        hall.daemon.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    (cfg_b,) = (hall.tmp / "cfg2").glob("terminal-W01-*.json")
    b = hall.board(cfg_b, "W01")
    assert b.tid != a.tid
    hall.online(b)
    until(lambda: confirmed(a) <= {(t, s) for t, _j, s in hall.stored()}, "the old board's journal drained")
    for level in (5, 1, 4):
        hall.rate_case(b, "W01", level)  # a case of W01 arms the new board now
    assert hall.terminal(a.tid)["window_no"] is None and hall.terminal(b.tid)["window_no"] == "W01"
    # retire the old board: its frames are refused from now on, by name
    out = hall.hcp("terminal", "retire", f"{a.tid:08x}", "--wait", "10")
    assert "已退役" in out and "运行中的守护进程已生效" in out
    before = hall.stored()
    assert hall.rate_no_case(a, 5)  # journaled on the retired board, never to be stored
    until(lambda: hall.metrics().get('hcp_frames_refused_total{reason="retired"}', 0) >= 1,
          "a frame under the retired key refused as 'retired'")  # fmt: skip
    assert hall.stored() == before
    assert not hall.errors, hall.errors
    thanked = confirmed(a) | confirmed(b)
    last_a = max(s for t, s in confirmed(a))
    thanked.discard((a.tid, last_a))  # pressed after retirement: refused, as it must be
    until(lambda: {(t, s) for t, _j, s in hall.stored()} >= thanked, "every rating stored")
    hall.daemon.stop()
    recs = deliver(hall)
    got = [(int(x["terminalId"], 16), x["seq"]) for x in recs]
    assert sorted(got) == sorted(thanked), "every rating of both boards at the receiver, once"
    assert len(got) == len(set(got)) == 3 + 2 + 3
    # the window kept its history: the old board's case ratings are W01's
    wins = {(int(x["terminalId"], 16), x["winNo"]) for x in recs if x["projectNo"]}
    assert wins == {(a.tid, "W01"), (b.tid, "W01")}
    st = Store(hall.db)
    hist = [(w["terminal_id"], w["window_no"], w["to_ms"] is None) for w in st.window_history(window_no="W01")]
    st.close()
    assert hist == [(a.tid, "W01", False), (b.tid, "W01", True)]
    listing = json.loads(hall.hcp("terminal", "list", "--all", "--json"))
    states = {t["id"]: t["state"] for t in listing}
    assert states[f"{a.tid:08x}"] == "retired"


def test_rekey_in_the_middle_of_presses_loses_and_doubles_nothing(hall: Hall) -> None:
    hall.hcp("terminal", "provision", "--window", "W02", "--out", str(hall.tmp / "cfg"), "--no-label",
             "--labels", str(hall.tmp / "labels"), "--wait", "10")  # fmt: skip
    (cfg,) = (hall.tmp / "cfg").glob("terminal-W02-*.json")
    c = hall.board(cfg, "W02")
    hall.online(c)
    rng = random.Random(7)
    stop = threading.Event()

    def citizens() -> None:
        while not stop.is_set():
            hall.rate_no_case(c, rng.choice((5, 4, 3)))
            time.sleep(rng.uniform(0.05, 0.2))

    th = threading.Thread(target=citizens, daemon=True)
    th.start()
    until(lambda: len(c.confirmed) >= 5, "some presses before the rekey")
    old_key = c.key
    out = hall.hcp("terminal", "rekey", f"{c.tid:08x}", "--out", str(hall.tmp / "cfg2"), "--wait", "10")
    assert "新密钥" in out and "运行中的守护进程已生效" in out
    (new_cfg,) = (hall.tmp / "cfg2").glob("terminal-W02-*.json")
    n_before_switch = len(c.confirmed)
    until(lambda: len(c.confirmed) >= n_before_switch + 3, "presses under the old key after the rekey")
    c.reconfigure(new_cfg)  # the technician's new config reaches the board; it restarts
    assert c.key != old_key
    n_switch = len(c.confirmed)
    until(lambda: len(c.confirmed) >= n_switch + 5, "presses under the new key")
    stop.set()
    th.join(10)
    until(lambda: {(t, s) for t, _j, s in hall.stored()} >= confirmed(c), "every rating stored")
    m = hall.metrics()
    assert m.get("hcp_terminal_events_total{kind=\"rekeyed\"}", 0) == 1
    assert m.get("hcp_frames_previous_key_total", 0) >= 3  # the old key's frames, after the rekey
    st = Store(hall.db, readonly=True)
    prev = st.conn.execute("SELECT prev_key FROM terminals WHERE id = ?", (c.tid,)).fetchone()[0]
    st.close()
    assert prev is None  # the daemon forgot the old key once the board used the new one
    assert not hall.errors, hall.errors
    hall.daemon.stop()
    recs = deliver(hall)
    got = [(int(x["terminalId"], 16), x["seq"]) for x in recs]
    assert len(got) == len(set(got)) and set(got) == confirmed(c)


def test_provision_runs_the_self_test_over_the_link(hall: Hall) -> None:
    """`hcp terminal provision --selftest`: the new board's HELLO, each LED
    and the buzzer commanded and echoed, a press on each button echoed back
    (a person at the terminal: here a thread), and no press is a rating."""
    result: dict[str, Any] = {}

    def provision() -> None:
        r = CliRunner().invoke(main, ["terminal", "provision", "--window", "W03", "--out", str(hall.tmp / "cfg"),
                                      "--labels", str(hall.tmp / "labels"), "--no-label", "--selftest",
                                      "--hello-wait", "30"], env=hall.env, catch_exceptions=False)  # fmt: skip
        result["r"] = r

    th = threading.Thread(target=provision, daemon=True)
    th.start()
    cfg = until(lambda: next((hall.tmp / "cfg").glob("terminal-W03-*.json"), None) if (hall.tmp / "cfg").exists()
                else None, "the board's config file")  # fmt: skip
    until(lambda: cfg.stat().st_size > 0 and cfg.read_text().endswith("\n"), "the config file written")
    b = hall.board(cfg, "W03")
    # the echo step: every LED glows in TEST; the person presses each button
    until(lambda: b.term.ev.state == ui.S_TEST and b.board.last_pattern == ui.P_ARMED, "the echo step", 60)
    # while the terminal is in its test, a case cannot arm it
    code, res = _http(hall.api + "/v1/cases", {"case_no": "QD20261202T1", "item_code": "11370200MB0000000X-001",
                                               "item_name": "企业设立登记", "window_no": "W03",
                                               "staff_name": "张三"}, TOKEN)  # fmt: skip
    assert code == 409 and "self-test" in res["error"], (code, res)
    for button in range(5):  # one after the other, as a person does: each press shown before the next
        b.press(button)
        until(lambda: b.board.lit[button] == 2 and b.term.buttons.stable == 0,  # noqa: B023
              f"button {button + 1}'s press shown and its release seen")  # fmt: skip
    th.join(60)
    r = result["r"]
    assert r.exit_code == 0, r.output
    assert "HELLO ✓" in r.output and "通过 passed: LED 5/5 · 蜂鸣器 buzzer ✓ · 按键 buttons 5/5" in r.output, r.output
    # what the board showed: each LED alone (the step, then its press), the buzzer once
    assert b.board.lit == [2, 2, 2, 2, 2], b.board.lit
    assert b.board.shown[ui.P_TEST_BUZZ] == 1
    assert b.term.ev.state == ui.S_IDLE  # the test ended (END)
    assert b.term.journal.writes == 0 and not b.confirmed  # no press of the test is a rating
    m = hall.metrics()
    assert m["hcp_selftest_steps_total"] == 8  # 5 LEDs, buzzer, echo, end
    assert m["hcp_selftest_echoes_total"] == 8 + 5  # and the five presses
    assert not hall.stored()
    assert not hall.errors, hall.errors


def test_a_whole_hall_from_a_csv_file_and_again(tmp_path: Path) -> None:
    """`provision --from windows.csv`: a summary, a config and a label per
    window, the MQTT terminal's broker login and ACL block written (and the
    broker reloaded); the same file again changes nothing; retire removes
    the login."""
    (tmp_path / "mosq").mkdir()
    pw, acl = tmp_path / "mosq" / "passwd", tmp_path / "mosq" / "acl"
    reloads = tmp_path / "reloads"
    h = Hall(tmp_path, extra=f'\n[broker]\npassword_file = "{pw}"\nacl_file = "{acl}"\n'
                             f'reload_command = "sh -c \'echo reload >> {reloads}\'"\n'
                             'terminal_url = "mqtt://10.0.0.2:1883"\n')  # fmt: skip
    try:
        csv_file = tmp_path / "windows.csv"
        csv_file.write_text("window,transport\nW01,serial\nW02,serial\nW03,mqtt\n", "utf-8")
        args = ["terminal", "provision", "--from", str(csv_file), "--out", str(tmp_path / "cfg"),
                "--labels", str(tmp_path / "labels"), "--wait", "10"]  # fmt: skip
        out = h.hcp(*args)
        assert "新登记 3，已存在 0，失败 0" in out, out
        cfgs = {p.name.split("-")[1]: p for p in (tmp_path / "cfg").glob("terminal-*.json")}
        assert set(cfgs) == {"W01", "W02", "W03"}
        assert len(list((tmp_path / "labels").glob("*.png"))) == 3
        mq = json.loads(cfgs["W03"].read_text())
        tid = mq["terminal_id"] if isinstance(mq["terminal_id"], int) else int(mq["terminal_id"], 16)
        assert mq["link"] == "mqtt" and mq["mqtt"]["host"] == "10.0.0.2" and mq["mqtt"]["user"] == f"{tid:08x}"
        # the broker: the terminal's hashed password and its own block, nothing for the serial ones
        assert pw.read_text().count(f"{tid:08x}:$7$") == 1 and mq["mqtt"]["password"] not in pw.read_text()
        block = acl.read_text().split(f"user {tid:08x}\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert block == [f"topic write hcp/t/{tid:08x}/up", f"topic write hcp/t/{tid:08x}/state",
                         f"topic read hcp/t/{tid:08x}/down"]  # fmt: skip
        assert reloads.read_text().count("reload") == 1
        out = h.hcp(*args)  # again: idempotent
        assert "新登记 0，已存在 3，失败 0" in out, out
        assert len(list((tmp_path / "cfg").glob("terminal-*.json"))) == 3
        listing = json.loads(h.hcp("terminal", "list", "--json"))
        assert sorted(t["window_no"] for t in listing) == ["W01", "W02", "W03"]
        assert {t["transport"] for t in listing} == {"serial", "mqtt"}
        out = h.hcp("terminal", "retire", f"{tid:08x}", "--wait", "10")
        assert "已从消息服务器删除其账号" in out
        assert f"{tid:08x}" not in pw.read_text() and f"user {tid:08x}" not in acl.read_text()
        assert reloads.read_text().count("reload") == 2
    finally:
        h.close()


def test_a_board_that_cannot_be_written_leaves_the_window_unprovisioned(hall: Hall) -> None:
    """The config goes to the board before the terminal is registered: a
    board that is not there fails the row, and the window stays free, so the
    same command again does all of it (never 'exists' for a board with no config)."""
    r = CliRunner().invoke(main, ["terminal", "provision", "--window", "W09", "--port", str(hall.tmp / "no-such-tty"),
                                  "--no-deploy", "--no-selftest", "--no-label", "--labels", str(hall.tmp / "labels")],
                           env=hall.env)  # fmt: skip
    assert r.exit_code != 0 and "写入终端失败" in r.output, r.output
    listing = json.loads(hall.hcp("terminal", "list", "--all", "--json"))
    assert all(t["window_no"] != "W09" for t in listing)
    out = hall.hcp("terminal", "provision", "--window", "W09", "--out", str(hall.tmp / "cfg"), "--no-label",
                   "--labels", str(hall.tmp / "labels"), "--wait", "10")  # fmt: skip
    assert "已登记" in out
