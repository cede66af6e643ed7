"""`hcp firmware build` / `deploy`, the config file, and the board adapters'
shared feedback logic with fake pins (the only parts that cannot run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from haochaping.firmware import board_common, config, ui

from haochaping.cli import main


def test_build_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = CliRunner().invoke(main, ["firmware", "build", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "bytes" in r.output
    m = json.loads((out / "manifest.json").read_text())
    for mod in (
        "ui",
        "journal",
        "session",
        "terminal",
        "buttons",
        "mqtt",
        "links",
        "board_esp32",
        "board_rp2",
    ):
        p = out / "lib" / "haochaping" / "firmware" / f"{mod}.mpy"
        data = p.read_bytes()
        assert data[:2] == b"M\x06", mod  # mpy v6
        assert f"haochaping/firmware/{mod}.py".encode() in data  # board path embedded
        assert str(Path.cwd()).encode() not in data and b"/work/" not in data
    for host_only in ("board_sim", "tabledoc"):
        assert not (out / "lib" / "haochaping" / "firmware" / f"{host_only}.mpy").exists()
    assert (out / "main.py").exists() and (out / "boot.py").exists()
    tmpl = (out / "config.template.json").read_text()
    assert "REPLACE_WITH" in tmpl
    assert m["total_bytes"] == sum(m["files"].values())
    assert str(m["total_bytes"]) in r.output


def test_deploy_without_a_board_says_so(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["firmware", "deploy", "--port", str(tmp_path / "ttyNONE")])
    assert r.exit_code == 1
    assert "does not exist" in r.output


def test_bundle_runs_on_micropython(micropython, tmp_path: Path) -> None:
    """The compiled bundle (not the sources) imports and runs a press."""
    from haochaping.firmware_bundle import build

    out = tmp_path / "b"
    build(out)
    files = {}
    for p in (out / "lib").rglob("*.mpy"):
        files["/mpylib/" + str(p.relative_to(out / "lib"))] = p
    script = tmp_path / "s.py"
    script.write_text(
        "import sys\nsys.path.insert(0, '/mpylib')\n"
        "from haochaping.firmware import ui, journal\n"
        "assert ui.__file__.endswith('.mpy'), ui.__file__\n"
        "e = ui.Evaluator(); e.arm(3, 1000, 0); e.press(1, 5)\n"
        "j = journal.Journal(open('/j.bin', 'w+b'), 4)\n"
        'print(\'JSON {"level": %d, "seq": %d}\' % (e.rec_level, j.append(e.rec_level, 0, 0, 3, 0, 0, 1)))\n'
    )
    (res,) = micropython.run(script, files=files).json_lines()
    assert res == {"level": 4, "seq": 1}


def test_config_parse_and_errors() -> None:
    good = {"terminal_id": "00c0ffee", "key": "ab" * 32, "link": "serial"}
    cfg = config.parse(json.dumps(good))
    assert cfg["terminal_id"] == 0x00C0FFEE and cfg["key"] == b"\xab" * 32
    assert cfg["capacity"] == 2000
    for bad in (
        {**good, "key": "zz" * 32},
        {**good, "terminal_id": "xyz"},
        {**good, "link": "carrier-pigeon"},
        {**good, "link": "mqtt"},
    ):
        with pytest.raises(config.ConfigError) as e:
            config.parse(json.dumps(bad))
        assert "ab" * 4 not in str(e.value)  # never echoes the key
    with pytest.raises(config.ConfigError):
        config.parse(config.template())  # placeholders are not a config


class FakePin:
    def __init__(self) -> None:
        self.v = 0

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self.v = v
        return self.v


class FakePWM:
    def __init__(self) -> None:
        self.hz = 0
        self.duty = 0
        self.tones: list[int] = []

    def freq(self, hz: int) -> None:
        self.hz = hz

    def duty_u16(self, d: int) -> None:
        if d and not self.duty:
            self.tones.append(self.hz)
        self.duty = d


def test_feedback_patterns_with_fake_pins() -> None:
    leds = [FakePin() for _ in range(5)]
    buz = FakePWM()
    fb = board_common.Feedback(leds, buz)
    fb.show(ui.P_ARMED, 0, 0)
    assert [p.v for p in leds] == [1] * 5
    fb.show(ui.P_THANKS, 2, 100)
    assert [p.v for p in leds] == [0, 0, 1, 0, 0]
    for t in range(100, 1000, 10):
        fb.tick(t)
    assert buz.tones == [board_common.BEEP_HZ] * 2 and buz.duty == 0  # double beep, then quiet
    fb.show(ui.P_FAULT, 0, 2000)
    states = set()
    for t in range(2000, 3000, 10):
        fb.tick(t)
        states.add(leds[0].v)
    assert states == {0, 1}  # blinking
    assert board_common.LOW_HZ in buz.tones
    # Self-test: one LED alone and silent; the buzzer with every LED off.
    fb.show(ui.P_TEST_LED, 3, 4000)
    tones = len(buz.tones)
    for t in range(4000, 5000, 10):
        fb.tick(t)
    assert [p.v for p in leds] == [0, 0, 0, 1, 0] and len(buz.tones) == tones
    fb.show(ui.P_TEST_BUZZ, 0, 5000)
    for t in range(5000, 6000, 10):
        fb.tick(t)
    assert [p.v for p in leds] == [0] * 5
    assert buz.tones[tones:] == [board_common.BEEP_HZ] * 3 and buz.duty == 0


class FakeMachine:
    """Just enough of MicroPython's ``machine`` (GPIO, PWM, UART, WDT) to run
    the ESP32 and RP2 adapters here; the pins are the only fake."""

    class Pin:
        IN, OUT, PULL_UP, IRQ_FALLING, IRQ_RISING = 0, 1, 2, 4, 8
        all: dict[int, FakeMachine.Pin] = {}

        def __init__(self, n: int, mode: int = 0, pull: int | None = None, value: int = 1) -> None:
            self.n, self.v, self.handler = n, value if mode == 1 else 1, None
            FakeMachine.Pin.all[n] = self

        def value(self, v: int | None = None) -> int:
            if v is not None:
                self.v = v
            return self.v

        def irq(self, handler, trigger: int) -> None:
            self.handler = handler

    class PWM(FakePWM):
        def __init__(self, pin, freq: int = 0, duty_u16: int = 0) -> None:
            super().__init__()

    class UART:
        def __init__(self, uid: int, **kw) -> None:
            self.uid, self.kw, self.out = uid, kw, bytearray()

        def read(self, n: int) -> None:
            return None

        def write(self, b: bytes) -> int:
            self.out += b
            return len(b)

    class WDT:
        def __init__(self, timeout: int) -> None:
            self.timeout, self.feeds = timeout, 0

        def feed(self) -> None:
            self.feeds += 1

    @staticmethod
    def reset_cause() -> int:
        return 1


@pytest.mark.parametrize("board", ["esp32s3", "rp2"])
def test_board_adapters_with_fake_machine(board: str, tmp_path: Path, monkeypatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "machine", FakeMachine)
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(
        "haochaping.firmware.board_esp32" if board == "esp32s3" else "haochaping.firmware.board_rp2"
    )
    monkeypatch.setattr(mod, "JOURNAL", str(tmp_path / "journal.bin"))
    cfg = config.parse(json.dumps({"terminal_id": "00c0ffee", "key": "11" * 32, "board": board}))
    b = mod.Board(cfg)
    from haochaping.firmware.terminal import Terminal

    t = Terminal(
        b,
        cfg["terminal_id"],
        __import__("haochaping.protocol.auth").protocol.auth.Key(cfg["key"]),
        16,
    )
    t.ev.settings.no_case_policy = ui.RECORD
    pins = (mod.PINS_S3 if board == "esp32s3" else mod.PINS)["buttons"]
    now = 0
    for step in range(40):
        now += 10
        FakeMachine.Pin.all[pins[0]].v = 0 if 5 <= step < 10 else 1  # active-low press
        t.step(now)
        b.tick(now)
        b.feed()
    assert t.journal.used == 1 and t.journal.record(1)[1] == 5
    assert b.wdt.feeds == 40 and b.wdt.timeout <= 8388
    uart = b.transport.port
    assert uart.out.endswith(b"\x00") and len(uart.out) > 30  # HELLO + RATING on the wire
    assert (uart.uid, uart.kw["tx"].n) == ((1, 12) if board == "esp32s3" else (0, 0))
