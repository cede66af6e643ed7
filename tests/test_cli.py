"""The `hcp` command: every command has help, is in the README, and works."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from haochaping.cli import main

from .conftest import ROOT


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, full + " ")
    return out


def test_every_command_has_help_and_is_documented() -> None:
    """Every command: --help text, a row of README's command table, and a
    line of docs/technician.md (its appendix lists every command)."""
    readme = (ROOT / "README.md").read_text("utf-8")
    table = readme.split("## The `hcp` command", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| `hcp ")]
    guide = (ROOT / "docs" / "technician.md").read_text("utf-8")
    runner = CliRunner()
    names = _commands(main)
    assert len(names) > 30
    for name, cmd in names:
        assert cmd.help or cmd.short_help, f"hcp {name} has no help text"
        res = runner.invoke(main, [*name.split(), "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert len(res.output.splitlines()) > 2, (name, res.output)
        assert any(f"`hcp {name}" in r for r in rows), f"`hcp {name}` is not in README.md's command table"
        assert f"`hcp {name}`" in guide, f"`hcp {name}` is not in docs/technician.md"


def test_selfcheck_passes() -> None:
    res = CliRunner().invoke(main, ["selfcheck", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["failed"] == 0 and out["passed"] >= 20


def test_bench_protocol_json_keys() -> None:
    res = CliRunner().invoke(main, ["bench", "protocol", "--json", "--seconds", "0.05"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"encode_per_s", "decode_per_s", "rating_frame_bytes", "drain_bytes_per_rating"}
    assert out["encode_per_s"] > 0 and out["decode_per_s"] > 0
    assert out["rating_frame_bytes"] <= 48 and out["drain_bytes_per_rating"] <= 24


def test_bench_core_json_keys() -> None:
    res = CliRunner().invoke(
        main, ["bench", "core", "--json", "--terminals", "5", "--ratings", "200", "--group", "50"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"ratings", "per_frame", "group", "receive_us", "commit_us", "acks_us",
                        "total_us"}  # fmt: skip
    assert out["ratings"] == 200 and out["receive_us"] > 0 and out["commit_us"] > 0
    res = CliRunner().invoke(main, ["bench", "core", "--per-frame", "12"])
    assert res.exit_code != 0 and "1..11" in res.output
