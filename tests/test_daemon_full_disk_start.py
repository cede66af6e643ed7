"""A full disk never stops the daemon from starting (issue #11).  Before, a
daemon started on a full disk died in its first write ("cannot rollback - no
transaction is active"): no READY, no API.  Now it starts, refuses to ACK,
says so in /metrics and the API (503 with the reason), and resumes by itself
when room returns -- also when less than the WAL's size is freed: it needs
room for the terminals' backlog, not for its WAL (docs/operations.md).

On a real small file system: a tmpfs the test mounts (root; CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, drive, make_key
from haochaping.daemon.contact import ContactCipher

from .conftest import missing


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k.split("{")[0]] = out.get(k.split("{")[0], 0) + float(v)
    return out


def fill(path: Path) -> None:
    """Write junk into ``path`` until the file system has no room left."""
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                if os.write(fd, block) < len(block):
                    break
            except OSError:
                break
        for size in (512, 64, 1):  # the last bytes, too
            try:
                while os.write(fd, block[:size]):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def free(path: Path, nbytes: int) -> None:
    size = path.stat().st_size
    os.truncate(path, max(0, size - nbytes))


def post_case(api: int, token: str) -> tuple[int, dict]:
    body = json.dumps({"case_no": "C1", "item_code": "X1", "item_name": "事项", "window_no": "W01",
                       "staff_name": "张三"}).encode()  # fmt: skip
    req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/cases", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_a_daemon_started_on_a_full_disk_refuses_acks_and_resumes_by_itself(tmp_path, mosquitto_bin):
    if os.geteuid() != 0 or not shutil.which("mount"):
        missing("root (to mount a tmpfs)", "run the suite as root; CI does")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    d = None
    hub = None
    try:
        db = small / "hall.db"
        api = free_port()
        token = "window-system-token-0001"
        cfg = write_config(tmp_path / "hcp.toml", db, [{"url": f"mqtt://127.0.0.1:{broker.port}"}],
                           api, tokens={"window-system": token})  # fmt: skip
        ContactCipher(small / "contact.key")  # made at the first start, before the disk filled
        terms = [FakeTerminal(0x5000 + i, make_key(i, 5)) for i in range(3)]
        provision(db, terms, {t.id: f"W{i + 1:02d}" for i, t in enumerate(terms)})
        junk = small / "junk"
        fill(junk)
        d = DaemonProcess(cfg, tmp_path).start()  # READY=1 on a full disk
        hub = MqttHub(broker.port)
        peers = [hub.add(t) for t in terms]
        for p in peers:
            p.hello()
        deadline = time.monotonic() + 10
        while metrics(api)["hcp_store_full"] != 1:
            assert time.monotonic() < deadline, "the full store is not reported"
            time.sleep(0.05)
        code, body = post_case(api, token)
        assert code == 503 and "full" in body["error"], (code, body)
        for p in peers:
            for _ in range(5):
                p.term.press(4)
            p.send_new()
        assert not drive(peers, 3), "ratings were acknowledged on a full disk"
        assert all(p.term.acked == 0 for p in peers)
        # a little room (far less than the WAL holds): it goes on by itself
        free(junk, 96 * 1024)
        assert drive(peers, 30, alive=d.alive), "no recovery after 96 KiB were freed"
        assert metrics(api)["hcp_store_full"] == 0
        # Room again, ratings flow until the WAL file is large; fill the disk,
        # a last backlog finds it full; then free far less than the WAL's size.
        free(junk, 6 * 1024 * 1024)
        wal_path = Path(str(db) + "-wal")
        for _ in range(40):
            for p in peers:
                for _ in range(100):
                    p.term.press(3)
                p.send_new(per_frame=11)
            assert drive(peers, 30, alive=d.alive)
            if wal_path.stat().st_size >= 768 * 1024:
                break
        wal = wal_path.stat().st_size
        assert wal >= 768 * 1024, f"the WAL grew to {wal} bytes only"
        fill(junk)
        for p in peers:
            for _ in range(50):
                p.term.press(2)
            p.send_new(per_frame=11)
        deadline = time.monotonic() + 10
        while metrics(api)["hcp_store_full"] != 1:
            assert time.monotonic() < deadline, "the full store is not reported"
            time.sleep(0.05)
        freed = 128 * 1024
        assert freed < wal // 4
        free(junk, freed)
        assert drive(peers, 60, alive=d.alive), f"no recovery after {freed} bytes (WAL {wal}) were freed"
        assert d.alive()
        c = sqlite3.connect(db)
        rows = c.execute("SELECT terminal_id, journal_id, seq FROM ratings").fetchall()
        c.close()
        sent = sum(p.term.head - 1 for p in peers)
        assert len(rows) == len(set(rows)) == sent
        assert d.stop() == 0
    finally:
        if hub is not None:
            hub.close()
        if d is not None and d.alive():
            d.kill9()
        broker.stop()
        subprocess.run(["umount", "-l", str(small)])
