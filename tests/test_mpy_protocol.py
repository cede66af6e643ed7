"""MicroPython lane: the protocol on real MicroPython (WebAssembly port).

The same vectors as CPython, plus a few hundred random messages generated here
whose exact bytes MicroPython must reproduce, plus seeded garbage.
"""

from __future__ import annotations

import json
from pathlib import Path

from haochaping.protocol import auth, fields, frame, serial
from haochaping.protocol import messages as m
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ROOT, MicroPython, lane_report
from .test_protocol_codec import any_message

SCRIPT = ROOT / "tests" / "mpy" / "proto_lane.py"


def _cases(n: int) -> list[tuple[m.Message, int, int]]:
    out: list[tuple[m.Message, int, int]] = []

    @settings(max_examples=n, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(any_message, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    def collect(msg: m.Message, tid: int, counter: int) -> None:
        out.append((msg, tid, counter))

    collect()
    return out


def test_protocol_on_micropython(micropython: MicroPython, tmp_path: Path) -> None:
    key = bytes(range(100, 132))
    k = auth.Key(key)
    cases = []
    for msg, tid, counter in _cases(300):
        f = frame.seal(k, msg, tid, counter)
        cases.append({
            "type": msg.NAME, "terminal_id": tid, "counter": counter,
            "fields": fields.to_dict(msg), "frame": f.hex(), "wire": serial.encode(f).hex(),
        })
    good = serial.encode(frame.seal(k, m.Rating(seq=3, level=2, reason=1, boot=1), 0xABCDEF01, 77))
    doc = {"key": key.hex(), "cases": cases, "fuzz_seed": 424242, "fuzz_count": 20000,
           "good_wire": good.hex()}
    cases_file = tmp_path / "cases.json"
    # Raw UTF-8: MicroPython's json does not join \u surrogate pairs.
    cases_file.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")

    res = micropython.run(
        SCRIPT,
        files={"/vectors.json": ROOT / "protocol" / "vectors.json", "/cases.json": cases_file},
        heap=4 * 1024 * 1024,
    )
    (out,) = res.json_lines()
    assert out["implementation"] == "micropython"
    total = len(json.loads((ROOT / "protocol" / "vectors.json").read_text("utf-8"))["valid"]) + len(
        json.loads((ROOT / "protocol" / "vectors.json").read_text("utf-8"))["invalid"]
    )
    assert out["vectors_failed"] == []
    assert out["vectors_passed"] == total
    assert out["round_trips"] == len(cases) and len(cases) >= 200
    assert out["round_trip_failures"] == []
    assert out["fuzz_inputs"] == 20000
    assert out["fuzz_other_exceptions"] == 0
    assert out["fuzz_missed_good_frames"] == 0
    lane_report("micropython vectors passed", f"{out['vectors_passed']}/{total}")
    lane_report("micropython byte-identical round trips", str(out["round_trips"]))
    lane_report("micropython garbage inputs (only ProtocolError)", str(out["fuzz_inputs"]))


def test_a_failing_micropython_script_fails_the_runner(micropython: MicroPython, tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("import sys\nprint('before')\nraise ValueError('boom')\n")
    res = micropython.run(script, check=False)
    assert res.returncode == 1
    assert "before" in res.stdout and "ValueError" in res.stderr


def test_micropython_sees_the_board_layout(micropython: MicroPython, tmp_path: Path) -> None:
    script = tmp_path / "layout.py"
    script.write_text(
        "import sys, os\n"
        "import haochaping.protocol.frame as f\n"
        "print('JSON {\"impl\": \"%s\", \"max\": %d, \"lib\": %d}' % "
        "(sys.implementation.name, f.MAX_FRAME, len(os.listdir('/lib/haochaping/protocol'))))\n"
    )
    (out,) = micropython.run(script).json_lines()
    assert out["impl"] == "micropython" and out["max"] == frame.MAX_FRAME
    assert out["lib"] >= len(list((ROOT / "protocol").glob("*.py")))
