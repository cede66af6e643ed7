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
        assert p.read_bytes()[:2] == b"M\x06", mod  # mpy v6
    assert not (out / "lib" / "haochaping" / "firmware" / "board_sim.mpy").exists()
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
    from haochaping.firmware.bundle import build

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
