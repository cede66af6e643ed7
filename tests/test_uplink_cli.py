"""The uplink's commands as a technician runs them: keys, province serve, uplink run/status."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import urllib.request

from haochaping.daemon import keys, store
from haochaping.daemon.bench import uplink as bench


def hcp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haochaping", *args], capture_output=True, text=True, timeout=timeout
    )


def test_keys_init_show_rotate(tmp_path):
    d = tmp_path / "k"
    p = hcp("keys", "init", "--dir", str(d))
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(d / "signing.key").st_mode) == 0o600
    info = keys.info(d)
    assert f"fingerprint: SHA256:{info.fingerprint}" in p.stdout
    assert "BEGIN PUBLIC KEY" in p.stdout and "PRIVATE" not in p.stdout
    again = hcp("keys", "init", "--dir", str(d))
    assert again.returncode == 1 and "exists" in again.stderr
    shown = json.loads(hcp("keys", "show", "--dir", str(d), "--json").stdout)
    assert shown["keyId"] == info.key_id
    rot = json.loads(hcp("keys", "rotate", "--dir", str(d), "--json").stdout)
    assert rot["retired"] == info.key_id and rot["new"]["keyId"] != info.key_id
    assert sorted(p.stem for p in (d / "keyring").glob("*.pem")) == sorted(
        [info.key_id, rot["new"]["keyId"]]
    )


def test_uplink_run_spool_and_status(tmp_path):
    keys.init(tmp_path / "k")
    st = store.Store(tmp_path / "hall.sqlite")
    bench.fill(st, 12, random.Random(1))
    st.close()
    db = str(tmp_path / "hall.sqlite")
    p = hcp("uplink", "run", "--db", db, "--hall", "hall-c", "--keys", str(tmp_path / "k"),
            "--spool", str(tmp_path / "out"), "--batch-size", "5", "--max-age", "0",
            "--until-idle")  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads(hcp("uplink", "status", "--db", db).stdout)
    assert s["batches"]["spooled"] == 3 and s["unbatchedRatings"] == 0
    both = hcp("uplink", "run", "--db", db, "--hall", "hall-c", "--keys", str(tmp_path / "k"))
    assert both.returncode == 1 and "exactly one" in both.stderr
    other = hcp("uplink", "run", "--db", db, "--hall", "hall-X", "--keys", str(tmp_path / "k"),
                "--spool", str(tmp_path / "o2"), "--until-idle")  # fmt: skip
    assert other.returncode == 1 and "belongs to hall" in other.stderr


def test_province_serve_command(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "haochaping", "province", "serve", "--listen", "127.0.0.1:0",
         "--data", str(tmp_path / "prov")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("listening on http://127.0.0.1:"), line
        base = line.split()[-1].rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/admin/stats", timeout=5) as r:
            assert json.loads(r.read()) == {"batches": 0, "records": 0, "faults": {
                "none": 0, "refuse": 0, "5xx": 0, "timeout": 0, "slow": 0,
                "close_after_commit": 0}}  # fmt: skip
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert (tmp_path / "prov" / "province.sqlite").exists()


def test_bench_uplink_small():
    p = hcp("bench", "uplink", "--ratings", "600", "--batch-size", "100", "--json", timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["delivered"] == res["received"] == 600 and res["batches"] == 6


def test_spooled_files_loaded_by_the_province(tmp_path):
    keys.init(tmp_path / "k")
    st = store.Store(tmp_path / "hall.sqlite")
    bench.fill(st, 23, random.Random(3))
    st.close()
    p = hcp("uplink", "run", "--db", str(tmp_path / "hall.sqlite"), "--hall", "hall-m",
            "--keys", str(tmp_path / "k"), "--spool", str(tmp_path / "usb"), "--batch-size", "10",
            "--max-age", "0", "--until-idle")  # fmt: skip
    assert p.returncode == 0, p.stderr
    files = [str(f) for f in sorted((tmp_path / "usb").glob("*.json"), reverse=True)]
    load = hcp("province", "load", *files, "--data", str(tmp_path / "prov"),
               "--pubkey", str(tmp_path / "k"))  # fmt: skip
    assert load.returncode == 0, load.stderr
    assert load.stdout.count("accepted") == 3
    again = hcp("province", "load", files[0], "--data", str(tmp_path / "prov"),
                "--pubkey", str(tmp_path / "k"))  # fmt: skip
    assert again.returncode == 0 and "duplicate" in again.stdout
    forged = tmp_path / "forged.json"
    forged.write_bytes(
        (tmp_path / "usb").joinpath(sorted(os.listdir(tmp_path / "usb"))[0]).read_bytes()
        .replace(b'"hallId":"hall-m"', b'"hallId":"hall-n"')
    )  # fmt: skip
    bad = hcp("province", "load", str(forged), "--data", str(tmp_path / "prov"),
              "--pubkey", str(tmp_path / "k"))  # fmt: skip
    assert bad.returncode == 1 and "signature" in bad.stderr


def test_uplink_run_stops_cleanly_on_sigterm(tmp_path):
    import signal

    keys.init(tmp_path / "k")
    store.Store(tmp_path / "hall.sqlite").close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "haochaping", "uplink", "run", "--db", str(tmp_path / "hall.sqlite"),
         "--hall", "hall-t", "--keys", str(tmp_path / "k"), "--url", "http://127.0.0.1:9/batches"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        import time

        end = time.monotonic() + 30
        while not (tmp_path / "hall.sqlite.uplink.lock").exists() and time.monotonic() < end:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_uplink_run_talks_to_systemd(tmp_path):
    import signal
    import socket

    keys.init(tmp_path / "k")
    st = store.Store(tmp_path / "hall.sqlite")
    bench.fill(st, 5, random.Random(1))
    st.close()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "haochaping", "uplink", "run", "--db", str(tmp_path / "hall.sqlite"),
         "--hall", "hall-sd", "--keys", str(tmp_path / "k"), "--spool", str(tmp_path / "out")],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        while not (
            "READY=1" in seen
            and seen.count("WATCHDOG=1") >= 2
            and any(m.startswith("STATUS=") for m in seen)
        ):
            seen += sock.recv(4096).decode().splitlines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert seen.index("READY=1") < seen.index("WATCHDOG=1")
