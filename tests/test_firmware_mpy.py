"""The firmware core on real MicroPython (WebAssembly port): the same
scenarios as tests/test_firmware.py, the power-cut sweep and the memory
measurement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))

MPY = Path(__file__).resolve().parent / "mpy"
FILES = {
    f"/lib/{n}.py": MPY / f"{n}.py" for n in ("fw_peer", "fw_scenarios", "fw_powercut", "fw_memory")
}

pytestmark = pytest.mark.micropython


def run_lane(micropython, *args: str) -> list[dict]:
    res = micropython.run(MPY / "fw_lane.py", *args, files=FILES)
    return res.json_lines()


def test_scenarios_on_micropython(micropython) -> None:
    from fw_scenarios import SCENARIOS  # type: ignore[import-not-found]

    lines = run_lane(micropython, "scenarios")
    assert [d["scenario"] for d in lines] == [f.__name__ for f in SCENARIOS]
    assert all(d["ok"] for d in lines)
