"""The hall with real processes: `hcp demo` and `hcp sim --terminals N`.

Real parts: the daemon, the uplink and the provincial receiver run as their
own processes (``python -m haochaping ...``); terminals run firmware/ on
CPython behind real pseudo-terminals (the daemon's pyserial transport opens
them) or a real Mosquitto broker; cases come in over the daemon's HTTP API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from haochaping.simulator import hall

from haochaping.cli import main

KEYS = {"pressed", "journaled", "stored", "forwarded", "acknowledged", "lost", "duplicates",
        "signatures_verified", "bad_ratings", "alerts", "seconds"}  # fmt: skip


def test_demo_json_serial_every_rating_once() -> None:
    r = CliRunner().invoke(
        main, ["demo", "--json", "--no-mqtt", "--terminals", "2", "--cases", "3"]
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert set(s) == KEYS
    assert s["pressed"] >= 4  # a citizen may walk away, most rate
    assert s["journaled"] == s["stored"] == s["forwarded"] == s["acknowledged"] == s["pressed"]
    assert s["lost"] == 0 and s["duplicates"] == 0
    assert s["signatures_verified"] is True
    assert s["alerts"] == s["bad_ratings"]


def test_hall_serial_and_mqtt_with_case_binding(mosquitto_bin: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = hall.HallOptions(terminals=1, mqtt_terminals=2, cases=3, seed=5, mosquitto=mosquitto_bin,
                            state_dir=str(tmp_path / "hall"), keep=True)  # fmt: skip
    s, d, ok = hall.run(opts)
    assert ok, (s, d)
    assert d["terminals"] == {"serial": 1, "mqtt": 2}
    assert d["wrong_binding"] == 0 and d["errors"] == []
    assert {w["transport"] for w in d["windows"].values()} == {"serial", "mqtt"}
    assert s["acknowledged"] == s["pressed"] > 0
    # Every part left its evidence where the README says.
    assert (tmp_path / "hall" / "hall.sqlite").exists()
    assert (tmp_path / "hall" / "province" / "province.sqlite").exists()


def test_sim_command_runs_a_hall_over_mqtt(mosquitto_bin: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "PATH",
        str(Path(mosquitto_bin).parent) + ":" + os.environ["PATH"],
    )
    r = CliRunner().invoke(
        main, ["sim", "--terminals", "2", "--transport", "mqtt", "--cases", "2", "--json"]
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["lost"] == 0 and s["acknowledged"] == s["pressed"] > 0


def test_runtime_micropython_terminal_end_to_end(micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One terminal runs firmware/ on real MicroPython (wasm under Node.js),
    its serial framing included, through the daemon and uplink to the receiver."""
    opts = hall.HallOptions(terminals=2, cases=3, seed=3, runtime="micropython",
                            state_dir=str(tmp_path / "hall"), keep=True)  # fmt: skip
    s, d, ok = hall.run(opts)
    assert ok, (s, d)
    assert d["micropython"] and d["micropython"][0].startswith("micropython 1.")
    mpy_windows = [w for w, v in d["windows"].items() if v["transport"] == "serial/micropython"]
    assert mpy_windows == ["W01"]
    assert d["windows"]["W01"]["ratings"] >= 2  # rated on MicroPython, verified at the receiver
    assert s["acknowledged"] == s["pressed"]


@pytest.mark.slow
def test_chaos_kill_9_daemon_uplink_receiver_still_exactly_once(
    mosquitto_bin: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the daemon, the uplink or the receiver, or a terminal's power
    cut, every few seconds: every pressed rating still arrives once."""
    opts = hall.HallOptions(terminals=2, mqtt_terminals=1, cases=6, seed=8, chaos=True,
                            mosquitto=mosquitto_bin, state_dir=str(tmp_path / "h"), keep=True)  # fmt: skip
    s, d, ok = hall.run(opts)
    # This seed's first two events: a terminal's power cut, then kill -9 of the daemon.
    assert d["chaos"][0].startswith("power cut W0")
    assert "kill -9 daemon" in d["chaos"]
    assert ok, (s, d)
    assert s["lost"] == 0 and s["duplicates"] == 0 and s["acknowledged"] == s["pressed"] > 0
