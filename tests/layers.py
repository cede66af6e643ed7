"""Check the import layers (pyproject.toml ``[tool.importlinter]``).

The installed namespace maps folders (``protocol/`` is ``haochaping.protocol``,
see pyproject.toml), which an import graph read from the source tree cannot
see; so this stages the namespace as it is installed (a copy of the .py files
under ``haochaping/``) and runs lint-imports on the copy.

    .venv/bin/python tests/layers.py        # ./dev test runs this

Exit status: lint-imports's (0 when every contract is kept).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("protocol", "firmware", "daemon", "simulator")


def stage(dst: Path, root: Path = ROOT) -> Path:
    """Copy the namespace's Python files into ``dst/haochaping``; return ``dst``."""
    pkg = dst / "haochaping"
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    shutil.copytree(root / "haochaping", pkg, ignore=ignore)
    for part in PARTS:
        shutil.copytree(root / part, pkg / part, ignore=ignore)
    return dst


def lint(staged: Path, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(staged))
    return subprocess.run(
        [str(exe), "--no-cache", str(config)],
        cwd=staged, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hcp-layers-") as tmp:
        res = lint(stage(Path(tmp)))
    out = res.stdout[res.stdout.find("Contracts") :] if "Contracts" in res.stdout else res.stdout
    sys.stdout.write(out)
    sys.stderr.write(res.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
