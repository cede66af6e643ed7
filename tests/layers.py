"""Check the import layers (pyproject.toml ``[tool.importlinter]``) and the
types (``[tool.mypy]``) on the namespace as it is installed.

The installed namespace maps folders (``protocol/`` is ``haochaping.protocol``,
see pyproject.toml), which a tool reading the source tree cannot see (mypy
would take ``daemon/`` for a package of its own, and every
``haochaping.daemon`` import for a missing module); so this stages the
namespace as it is installed (a copy of the .py files under
``haochaping/``) and runs lint-imports or mypy on the copy.  mypy's paths
are mapped back to the source tree.

    .venv/bin/python tests/layers.py        # ./dev test runs this
    .venv/bin/python tests/layers.py mypy   # and this

Exit status: the tool's (0 when every contract is kept, no type error).
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


# The CPython-only packages mypy checks; the board code (protocol, firmware)
# is followed for its types, its own errors silenced in pyproject.toml.
MYPY_PACKAGES = ("haochaping.cli", "haochaping.daemon", "haochaping.simulator",
                 "haochaping.firmware_bundle")  # fmt: skip


def mypy(staged: Path, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mypy")
    args = [str(exe), "--config-file", str(config), "--cache-dir", str(ROOT / ".mypy_cache" / "staged")]
    for p in MYPY_PACKAGES:
        args += ["-p", p]
    res = subprocess.run(args, cwd=staged, capture_output=True, text=True, check=False)
    out = res.stdout
    for part in PARTS:  # haochaping/daemon/x.py:3: ... -> daemon/x.py:3: ...
        out = out.replace(f"haochaping/{part}/", f"{part}/")
    return subprocess.CompletedProcess(res.args, res.returncode, out, res.stderr)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "layers"
    if what not in ("layers", "mypy"):
        sys.stderr.write("usage: tests/layers.py [layers|mypy]\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="hcp-layers-") as tmp:
        staged = stage(Path(tmp))
        if what == "mypy":
            res = mypy(staged)
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            return res.returncode
        res = lint(staged)
    out = res.stdout[res.stdout.find("Contracts") :] if "Contracts" in res.stdout else res.stdout
    sys.stdout.write(out)
    sys.stderr.write(res.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
