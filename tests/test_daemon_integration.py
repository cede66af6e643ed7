"""The daemon as a real process with a real Mosquitto and real ptys."""

from __future__ import annotations

import random
import sqlite3
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


def stored(db) -> list[tuple[int, int]]:
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT terminal_id, seq FROM ratings ORDER BY id").fetchall()
    finally:
        c.close()


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


@pytest.fixture
def hall(tmp_path, mosquitto_bin):
    """A broker, a daemon config with MQTT + a serial glob, and cleanup."""
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    ports = tmp_path / "ports"
    ports.mkdir()
    db = tmp_path / "hall.db"
    api = free_port()
    cfg = write_config(
        tmp_path / "hcp.toml", db,
        [{"url": f"mqtt://127.0.0.1:{broker.port}"}, {"url": f"serial://{ports}/term-*"}],
        api,
    )  # fmt: skip
    state = {"broker": broker, "ports": ports, "db": db, "cfg": cfg, "api": api, "tmp": tmp_path,
             "closers": []}  # fmt: skip
    yield state
    for c in reversed(state["closers"]):
        c()
    broker.stop()


@pytest.mark.slow
def test_fifty_terminals_mixed_exactly_once(hall):
    rnd = random.Random(50)
    terms = [FakeTerminal(0x1000 + i, make_key(i), boot=1) for i in range(56)]
    provision(hall["db"], terms)
    d = DaemonProcess(hall["cfg"], hall["tmp"]).start()
    hall["closers"].append(d.stop)
    hub = MqttHub(hall["broker"].port)
    hall["closers"].append(hub.close)
    peers = []
    for i, t in enumerate(terms):
        if i % 2:
            peers.append(hub.add(t))
        else:
            p = PtyPeer(t, hall["ports"])
            hall["closers"].append(p.close)
            peers.append(p)
    sent = 0
    for p in peers:
        p.hello()
    for _round in range(4):
        for p in peers:
            for _ in range(rnd.randint(1, 6)):
                p.term.press(rnd.randint(1, 5), reason=rnd.randint(1, 9))
                sent += 1
            p.send_new(per_frame=rnd.choice([1, 3, 11]))
    assert drive(peers, 60), "not every rating was acknowledged"
    assert all(not p.errors for p in peers), [p.errors for p in peers if p.errors]
    rows = stored(hall["db"])
    assert len(rows) == sent == len(set(rows))
    for p in peers:
        assert p.term.acked == p.term.head - 1
    m = metrics(hall["api"])
    assert m["hcp_ratings_stored_total"] == sent
    assert m["hcp_inbox_dropped_total"] == 0 and m["hcp_store_full"] == 0
    broker_port = hall["broker"].port
    assert m[f'hcp_transport_up{{transport="mqtt://127.0.0.1:{broker_port}"}}'] == 1
    assert d.stop() == 0


def test_serial_burst_is_not_dropped(hall):
    """300 frames in one write, so several frames per read: every one is
    taken without a resend."""
    t = FakeTerminal(0x1F00, make_key(77))
    provision(hall["db"], [t])
    d = DaemonProcess(hall["cfg"], hall["tmp"]).start()
    hall["closers"].append(d.stop)
    p = PtyPeer(t, hall["ports"])
    hall["closers"].append(p.close)
    for _ in range(300):
        t.press(4)
    import time

    deadline = time.monotonic() + 10
    while not any(
        k.startswith('hcp_transport_up{transport="serial') and v == 1
        for k, v in metrics(hall["api"]).items()
    ):
        assert time.monotonic() < deadline, "the port was never opened"
        time.sleep(0.05)  # polling /metrics until the port scan opened the port
    from haochaping.protocol import serial as wire

    p.write_raw(b"".join(wire.encode(f) for f in [t.hello()] + t.send_new(per_frame=1)))
    assert drive([p], 20, ack_timeout_s=30), "a resend was needed"
    m = metrics(hall["api"])
    assert not any(k.startswith("hcp_frames_refused_total") and v for k, v in m.items())
    assert len(stored(hall["db"])) == 300
