"""Bad input against the running daemon: each refused or reported, counted in
/metrics, and the other terminals keep being served meanwhile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, PtyPeer, drive, make_key
from haochaping.protocol import messages, serial


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def ports_open(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith('hcp_transport_up{transport="serial'))


def serial_bytes(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("hcp_serial_bytes_received_total"))


def wait_until(port: int, pred, timeout: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(port)
        if pred(m):
            return m
        assert time.monotonic() < deadline, "timed out waiting on /metrics"
        time.sleep(0.05)


def refused(m: dict[str, float], reason: str) -> float:
    return m.get(f'hcp_frames_refused_total{{reason="{reason}"}}', 0)


def wait_metric(port: int, reason: str, at_least: float, timeout: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(port)
        if refused(m, reason) >= at_least or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


@pytest.mark.slow
def test_bad_input_refused_counted_others_served(tmp_path, mosquitto_bin):
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    ports = tmp_path / "ports"
    ports.mkdir()
    db = tmp_path / "hall.db"
    api = free_port()
    cfg = write_config(tmp_path / "hcp.toml", db,
                       [{"url": f"mqtt://127.0.0.1:{broker.port}"}, {"url": f"serial://{ports}/term-*"}],
                       api)  # fmt: skip
    good_m, good_s, victim = (FakeTerminal(0x3000 + i, make_key(i, 3)) for i in range(3))
    provision(db, [good_m, good_s, victim])
    d = DaemonProcess(cfg, tmp_path).start()
    hub = MqttHub(broker.port)
    pm, pv = hub.add(good_m), hub.add(victim)
    ps = PtyPeer(good_s, ports)
    extra: list[PtyPeer] = []
    try:
        for p in (pm, ps, pv):
            p.hello()

        def others_still_served() -> None:
            for p in (pm, ps):
                p.term.press(5)
                p.send_new()
            assert drive([pm, ps], 20), "a good terminal was held up"

        others_still_served()

        # forged tag
        f = bytearray(victim.link.send(messages.Rating(1, 5)))
        f[-1] ^= 0x55
        hub.publish(victim.id, [bytes(f)])
        assert refused(wait_metric(api, "auth", 1), "auth") >= 1
        others_still_served()

        # replayed frame: a genuine frame, sent twice
        pv.hello()
        victim.press(4)
        fr = victim.send_new()
        hub.publish(victim.id, fr + fr)
        assert refused(wait_metric(api, "replay", 1), "replay") >= 1
        assert drive([pv], 10)
        others_still_served()

        # unknown terminal (not provisioned), refused and recorded
        stranger = FakeTerminal(0x0BAD0BAD, make_key(99, 3))
        hub.publish(stranger.id, [stranger.hello()])
        assert refused(wait_metric(api, "unknown_terminal", 1), "unknown_terminal") >= 1
        others_still_served()

        # oversize frame over MQTT, and an over-long run on serial
        hub.publish(victim.id, [b"\x01" * 1000])
        assert refused(wait_metric(api, "too_long", 1), "too_long") >= 1
        ps.write_raw(b"\x07" * (serial.MAX_WIRE + 50) + b"\x00")
        assert refused(wait_metric(api, "too_long", 2), "too_long") >= 2
        others_still_served()

        # garbage on a serial line, then a good frame on the same line
        ps.write_raw(
            os.urandom(64).replace(b"\x00", b"\x01") + b"\x00" + b"\x05\x01\x02\x03\x04\x00"
        )
        m = wait_metric(api, "framing", 1)
        assert refused(m, "framing") + refused(m, "checksum") >= 1
        others_still_served()

        # a terminal that disconnects mid-frame
        cut = FakeTerminal(0x3000 + 9, make_key(9, 3))
        from haochaping.daemon.bench.harness import provision as _prov

        _prov(db, [cut])
        pc = PtyPeer(cut, ports)
        extra.append(pc)
        wire = serial.encode(cut.hello())
        wait_until(api, lambda m: ports_open(m) == 2)  # the port scan opened the new port
        before = serial_bytes(metrics(api))
        pc.write_raw(wire[: len(wire) // 2])
        wait_until(
            api, lambda m: serial_bytes(m) >= before + len(wire) // 2
        )  # ... and read half a frame
        pc.close()
        os.unlink(pc.path)
        assert refused(wait_metric(api, "partial_frame", 1), "partial_frame") >= 1
        others_still_served()

        # everything refused is in the refusals table; nothing of it was stored
        import sqlite3

        c = sqlite3.connect(db)
        reasons = {r for (r,) in c.execute("SELECT reason FROM refusals")}
        unknown = c.execute(
            "SELECT terminal_id FROM refusals WHERE reason='unknown_terminal'"
        ).fetchall()
        c.close()
        assert {"auth", "replay", "unknown_terminal", "too_long", "partial_frame"} <= reasons
        assert unknown == [(0x0BAD0BAD,)]
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        ps.close()
        broker.stop()


@pytest.mark.parametrize(
    "body, key, reason",
    [
        ("[store\npath=1", "(file)", "not valid TOML"),
        ("[store]\npath = 5\n", "store.path", "must be str"),
        ('[store]\npath = "x.db"\n[api]\nlisten = "nowhere"\n', "api.listen", "HOST:PORT"),
        (
            '[store]\npath = "x.db"\n[[transports]]\nurl = "tcp://x"\n',
            "transports[0].url",
            "scheme",
        ),
        ('[store]\npath = "x.db"\nflavour = 1\n', "store.flavour", "unknown key"),
        ('[api]\nlisten = "127.0.0.1:1"\n', "store", "is required"),
        (
            '[store]\npath = "x.db"\n[terminal]\narm_timeout_s = 0\n',
            "terminal.arm_timeout_s",
            "1..65535",
        ),
    ],
)
def test_malformed_config_names_file_key_reason(tmp_path, body, key, reason):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    r = subprocess.run([sys.executable, "-m", "haochaping.cli", "daemon", "--config", str(p)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1
    assert str(p) in r.stderr and key in r.stderr and reason in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("medium", ["tmpfs", "page_limit"])
def test_disk_full_stops_acks_keeps_data(tmp_path, mosquitto_bin, medium):
    """A real 1 MiB tmpfs (needs root), and SQLite's max_page_count (the
    size cap of docs/operations.md) as the stand-in anywhere."""
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    small = tmp_path / "small"
    small.mkdir()
    mounted = False
    if medium == "tmpfs":
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]
            ).returncode
            == 0
        )
        assert mounted, "mount -t tmpfs failed"
    db = small / "hall.db"
    api = free_port()
    cfg = write_config(tmp_path / "hcp.toml", db, [{"url": f"mqtt://127.0.0.1:{broker.port}"}], api)
    if not mounted:
        cfg.write_text(cfg.read_text().replace("[store]\n", "[store]\nmax_size_mb = 1\n", 1))
    terms = [FakeTerminal(0x4000 + i, make_key(i, 4)) for i in range(4)]
    provision(db, terms)
    d = DaemonProcess(cfg, tmp_path).start()
    hub = MqttHub(broker.port)
    peers = [hub.add(t) for t in terms]
    try:
        for p in peers:
            p.hello()
        sent = 0
        full = False
        for _ in range(60):  # ~ 60 x 4 x 100 ratings: far more than 1 MiB holds
            for p in peers:
                for _ in range(100):
                    p.term.press(3)
                    sent += 1
                p.send_new(per_frame=11)
            time.sleep(0.1)
            m = metrics(api)
            if m["hcp_store_full"] == 1:
                full = True
                break
        assert full, "the store never reported full"
        m = metrics(api)
        assert m["hcp_commit_failures_total"] >= 1
        # nothing acknowledged beyond what is stored
        import sqlite3

        c = sqlite3.connect(db)
        have = set(c.execute("SELECT terminal_id, seq FROM ratings").fetchall())
        c.close()
        for p in peers:
            with p.lock:
                acked = p.term.acked
            assert all((p.term.id, s) in have for s in range(1, acked + 1))
        assert len(have) < sent
        # room again: the journals drain, every rating stored exactly once
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        else:
            d.stop()
            cfg.write_text(cfg.read_text().replace("max_size_mb = 1\n", "max_size_mb = 64\n"))
            d.start()
        assert drive(peers, 60, alive=d.alive)
        c = sqlite3.connect(db)
        rows = c.execute("SELECT terminal_id, seq FROM ratings").fetchall()
        c.close()
        assert len(rows) == len(set(rows)) == sent
        assert metrics(api)["hcp_store_full"] == 0
        assert "STORE FULL" in d.output() or not mounted
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        broker.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(small)])
