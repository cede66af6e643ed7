"""Shared fixtures: real MicroPython, real tools, and the CI rule.

Under ``CI=true`` a missing Node.js, MicroPython or Mosquitto fails the test
(the run must prove the real parts); on a laptop it skips with a message that
says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPY_RUNNER = ROOT / "tests" / "mpy" / "run.mjs"
MPY_PACKAGE = (
    ROOT / "tests" / "mpy" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Lines shown at the end of the run (e.g. how many vectors passed on
# MicroPython), so CI's output proves which lanes ran.
_LANES: dict[str, str] = {}


def lane_report(what: str, value: str) -> None:
    _LANES[what] = value


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if _LANES:
        terminalreporter.section("lanes")
        for k in sorted(_LANES):
            terminalreporter.write_line(f"{k}: {_LANES[k]}")


def missing(what: str, how: str) -> None:
    """Fail under CI, skip elsewhere, saying what is missing and how to get it."""
    msg = f"{what} is missing ({how})"
    if IN_CI:
        pytest.fail(f"CI=true: {msg}", pytrace=False)
    pytest.skip(msg)


@dataclass
class MpyResult:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict]:
        """Lines of stdout that start with 'JSON ' parsed as JSON."""
        return [json.loads(line[5:]) for line in self.stdout.splitlines() if line.startswith("JSON ")]


class MicroPython:
    """Runs a script on the WebAssembly port under Node.js (tests/mpy/run.mjs)."""

    def __init__(self, node: str) -> None:
        self.node = node

    def run(
        self,
        script: str | Path,
        *args: str,
        files: dict[str, str | Path] | None = None,
        heap: int = 256 * 1024,
        out_dir: Path | None = None,
        in_dir: Path | None = None,
        timeout: float = 300,
        check: bool = True,
    ) -> MpyResult:
        cmd = [self.node, str(MPY_RUNNER), "--heap", str(heap)]
        for dest, src in (files or {}).items():
            cmd += ["--file", f"{src}:{dest}"]
        cmd += [str(script), *args]
        env = dict(os.environ)
        if out_dir is not None:
            env["HCP_MPY_OUT"] = str(out_dir)
        if in_dir is not None:
            env["HCP_MPY_IN"] = str(in_dir)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        res = MpyResult(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(
                f"MicroPython script {script} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
            )
        return res


@pytest.fixture(scope="session")
def micropython() -> MicroPython:
    node = shutil.which("node")
    if node is None:
        missing("Node.js", "the MicroPython lane runs the WebAssembly port under node")
    if not (MPY_PACKAGE / "micropython.mjs").exists():
        missing("MicroPython WebAssembly port", "run `./dev setup` or `cd tests/mpy && npm ci`")
    return MicroPython(node)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    missing("mosquitto", "apt-get install mosquitto, or run ./dev setup as root")
    raise AssertionError("unreachable")
