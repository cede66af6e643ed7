"""The import layers of ARCHITECTURE.md hold, and an arrow the wrong way fails
with a message that names it (tests/layers.py stages the namespace)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import layers


def _staged(tmp_path: Path) -> Path:
    return layers.stage(tmp_path / "stage")


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    res = layers.lint(_staged(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        # protocol imports nothing of ours
        ("protocol/crc.py", "import haochaping.daemon.store", "haochaping.protocol.crc -> haochaping.daemon.store"),
        # firmware imports only protocol (daemon and firmware are independent)
        ("firmware/journal.py", "import haochaping.daemon.core", "haochaping.firmware.journal -> haochaping.daemon.core"),
        # daemon imports only protocol (never the simulator above it)
        ("daemon/core.py", "import haochaping.simulator.province", "haochaping.daemon.core -> haochaping.simulator.province"),
        # the simulator never imports the CLI
        ("simulator/tui.py", "import haochaping.cli", "haochaping.simulator.tui -> haochaping.cli"),
        # board code stays MicroPython: nothing from PyPI
        ("firmware/ui.py", "import click", "haochaping.firmware.ui -> click"),
        # no circles: the interface importing its implementation (the message
        # names the package and the import that would break the circle)
        ("daemon/transport.py", "import haochaping.daemon.transport_serial",
         "No cycles are allowed in haochaping.daemon"),
    ],
)
def test_a_wrong_way_import_fails_and_is_named(
    tmp_path: Path, module: str, line: str, named: str
) -> None:
    staged = _staged(tmp_path)
    target = staged / "haochaping" / module
    target.write_text(target.read_text("utf-8") + f"\n{line}  # the wrong way, on purpose\n", "utf-8")
    res = layers.lint(staged)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout
    assert named in res.stdout, res.stdout


def test_mypy_sees_the_types_across_the_namespace(tmp_path: Path) -> None:
    """On the staged namespace mypy resolves ``haochaping.protocol`` from the
    daemon (read from the source tree, every such import was a missing module,
    so Any): a wrong use of a protocol type is found and named at its source path."""
    staged = _staged(tmp_path)
    res = layers.mypy(staged)
    assert res.returncode == 0, res.stdout + res.stderr
    target = staged / "haochaping" / "daemon" / "core.py"
    target.write_text(target.read_text("utf-8") + "\n_probe: int = messages.RECORD_LEN + 'x'  # wrong\n", "utf-8")
    res = layers.mypy(staged)
    assert res.returncode != 0
    assert "daemon/core.py:" in res.stdout and "Unsupported operand types" in res.stdout, res.stdout
