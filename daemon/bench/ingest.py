"""``hcp bench ingest``: how fast the daemon drains a backlog, beside a bare baseline.

MQTT: a broker of our own (Debian's mosquitto) gets both sessions (the
daemon's and a bare paho subscriber's) made persistent beforehand; the test
peers then publish every terminal's HELLO and ratings (QoS 1) and wait for
the broker's PUBACKs, so the whole backlog is queued before either reader
connects.  The baseline connects and only counts the messages; then the
daemon (a real ``hcp daemon`` process) starts and the clock runs from its
READY=1 until every peer holds an ACK for its last rating, i.e. committed
and acknowledged.

Serial: one pty per terminal.  A pty holds only a few KiB, so the backlog
cannot be queued beforehand: writer threads push as fast as the reader
takes (they are far faster than any reader).  The baseline is a bare
pyserial reader per port that splits the stream into frames (COBS + CRC,
protocol.serial.Decoder: the serial counterpart of the MQTT framing paho
does for the MQTT baseline) and counts them.

``ratio`` = ours / baseline.  Nothing here asserts a figure; docs/benchmarks.md
records them with the machine and the command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, PtyPeer, make_key
from haochaping.protocol import mqtt as topics

DAEMON_CLIENT_ID = "hcp-daemon-bench"
BASELINE_CLIENT_ID = "hcp-bench-baseline"
TIMEOUT_S = 600


class BenchError(Exception):
    pass


def _mosquitto() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise BenchError("mosquitto not found (apt-get install mosquitto)")


def _persistent_session(port: int, client_id: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.up_filter(), qos=1)
    c.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    c.loop_start()
    if not done.wait(10):
        raise BenchError(f"could not make the {client_id} session")
    c.disconnect()
    c.loop_stop()


def _baseline_mqtt(port: int, messages: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    n = 0
    done = threading.Event()

    def on_message(c: Any, u: Any, m: Any) -> None:
        nonlocal n
        n += 1
        if n >= messages:
            done.set()

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=BASELINE_CLIENT_ID, protocol=mqtt.MQTTv5
    )
    c.on_message = on_message
    c.max_inflight_messages_set(200)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    c.loop_start()
    if not done.wait(TIMEOUT_S):
        raise BenchError(f"baseline got {n} of {messages} messages")
    t1 = time.perf_counter()
    c.disconnect()
    c.loop_stop()
    return t1 - t0


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _wait_acked(terms: list[FakeTerminal], proc: DaemonProcess) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while any(t.acked < t.head - 1 for t in terms):
        if not proc.alive():
            raise BenchError("the daemon exited:\n" + proc.output()[-2000:])
        if time.monotonic() > deadline:
            raise BenchError(f"not every rating was acknowledged in {TIMEOUT_S} s")
        time.sleep(0.002)


def _check_args(terminals: int, ratings: int, per_frame: int) -> None:
    if terminals < 1 or ratings < terminals:
        raise BenchError("need at least one terminal and one rating per terminal")
    if not 1 <= per_frame <= 11:
        raise BenchError("--per-frame is 1..11")


def _backlog(t: FakeTerminal, k: int, per_frame: int) -> list[bytes]:
    """``k`` ratings pressed on ``t``, then its HELLO and their frames."""
    for i in range(k):
        t.press(5 - i % 5, reason=1)
    return [t.hello()] + t.send_new(per_frame)


def run(transport: str, terminals: int, ratings: int, per_frame: int = 1) -> dict[str, Any]:
    _check_args(terminals, ratings, per_frame)
    with tempfile.TemporaryDirectory(prefix="hcp-bench-") as tmp:
        work = Path(tmp)
        if transport == "mqtt":
            return _run_mqtt(work, terminals, ratings, per_frame)
        if transport == "serial":
            return _run_serial(work, terminals, ratings, per_frame)
        raise BenchError("transport is mqtt or serial")


def _result(
    transport: str, terminals: int, ratings: int, ours_s: float, base_s: float
) -> dict[str, Any]:
    ours = ratings / ours_s
    base = ratings / base_s
    return {
        "transport": transport,
        "terminals": terminals,
        "ratings": ratings,
        "seconds": round(ours_s, 3),
        "ratings_per_s": round(ours, 1),
        "baseline_per_s": round(base, 1),
        "ratio": round(ours / base, 3),
    }


def _run_mqtt(work: Path, n_terms: int, n_ratings: int, per_frame: int) -> dict[str, Any]:
    broker = Mosquitto(_mosquitto(), work / "broker").start()
    try:
        terms = [FakeTerminal(0x7000 + i, make_key(i, 7)) for i in range(n_terms)]
        db = work / "hall.db"
        provision(db, terms)
        cfg = write_config(work / "hcp.toml", db,
                           [{"url": f"mqtt://127.0.0.1:{broker.port}", "client_id": DAEMON_CLIENT_ID}],
                           free_port())  # fmt: skip
        _persistent_session(broker.port, DAEMON_CLIENT_ID)
        _persistent_session(broker.port, BASELINE_CLIENT_ID)
        hub = MqttHub(broker.port, client_id="hcp-bench-peers")
        try:
            infos = []
            messages = 0
            for t, k in zip(terms, _split(n_ratings, n_terms), strict=True):
                hub.add(t)
                frames = _backlog(t, k, per_frame)
                messages += len(frames)
                infos += hub.publish(t.id, frames)
            for info in infos:
                info.wait_for_publish(60)
            base_s = _baseline_mqtt(broker.port, messages)
            d = DaemonProcess(cfg, work)
            d.start(wait=False)
            assert d.notify is not None
            d.notify.wait_for("READY", "1", timeout=60)
            t0 = time.perf_counter()
            _wait_acked(terms, d)
            ours_s = time.perf_counter() - t0
            d.stop()
        finally:
            hub.close()
        _check(db, n_ratings)
        return _result("mqtt", n_terms, n_ratings, ours_s, base_s)
    finally:
        broker.stop()


def _check(db: Path, n: int) -> None:
    import sqlite3

    c = sqlite3.connect(db)
    got = c.execute(
        "SELECT count(*), count(DISTINCT terminal_id || ':' || seq) FROM ratings"
    ).fetchone()
    c.close()
    if got != (n, n):
        raise BenchError(f"stored {got} ratings, expected {n} once each")


def _wait_ports(d: DaemonProcess, n: int) -> None:
    import json
    import urllib.request

    cfg = d.config.read_text()
    port = int(cfg.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if (
                line.startswith('hcp_transport_up{transport="serial')
                and float(line.rsplit(" ", 1)[1]) >= n
            ):
                return
        time.sleep(0.05)
    raise BenchError("the daemon did not open every port: " + json.dumps(text[-300:]))


def _run_serial(work: Path, n_terms: int, n_ratings: int, per_frame: int) -> dict[str, Any]:
    import serial as pyserial
    from haochaping.protocol import serial as wire

    ports = work / "ports"
    ports.mkdir()

    def make() -> tuple[list[FakeTerminal], list[PtyPeer], list[bytes]]:
        terms = [FakeTerminal(0x7000 + i, make_key(i, 7)) for i in range(n_terms)]
        peers = [PtyPeer(t, ports) for t in terms]
        blobs = []
        for t, k in zip(terms, _split(n_ratings, n_terms), strict=True):
            blobs.append(b"".join(wire.encode(f) for f in _backlog(t, k, per_frame)))
        return terms, peers, blobs

    def pump(peers: list[PtyPeer], blobs: list[bytes]) -> list[threading.Thread]:
        ths = [
            threading.Thread(target=p.write_raw, args=(b,), daemon=True)
            for p, b in zip(peers, blobs, strict=True)
        ]
        for th in ths:
            th.start()
        return ths

    # baseline: bare readers counting delimiters
    terms, peers, blobs = make()
    want = [b.count(b"\x00") for b in blobs]
    counts = [0] * n_terms
    done = threading.Event()
    left = [n_terms]
    lock = threading.Lock()

    opened = threading.Barrier(n_terms + 1)

    def reader(i: int, path: str) -> None:
        s = pyserial.Serial(path, 115200, timeout=0.05)
        dec = wire.Decoder()
        opened.wait()
        while counts[i] < want[i]:
            # the same framing the daemon's reader does (COBS + CRC), nothing more
            data = s.read(max(1, min(s.in_waiting, 4096)))
            dec.receive_data(data)
            while True:
                try:
                    if dec.next_event() is None:
                        break
                    counts[i] += 1
                except Exception:  # noqa: BLE001 - counted like the daemon would refuse it
                    pass
        s.close()
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    rs = [
        threading.Thread(target=reader, args=(i, p.path), daemon=True) for i, p in enumerate(peers)
    ]
    for r in rs:
        r.start()
    opened.wait()
    t0 = time.perf_counter()
    pump(peers, blobs)
    if not done.wait(TIMEOUT_S):
        raise BenchError("baseline did not read every frame")
    base_s = time.perf_counter() - t0
    for p in peers:
        p.close()
        os.unlink(p.path)

    # ours
    terms, peers, blobs = make()
    db = work / "hall.db"
    provision(db, terms)
    cfg = write_config(work / "hcp.toml", db, [{"url": f"serial://{ports}/term-*"}], free_port())
    d = DaemonProcess(cfg, work)
    d.start(wait=False)
    assert d.notify is not None
    d.notify.wait_for("READY", "1", timeout=60)
    # the port scan (every service.TICK_S) opens every port; start the clock
    # when the writers start
    _wait_ports(d, n_terms)
    t0 = time.perf_counter()
    pump(peers, blobs)
    try:
        _wait_acked(terms, d)
        ours_s = time.perf_counter() - t0
    finally:
        d.stop()
        for p in peers:
            p.close()
    _check(db, n_ratings)
    return _result("serial", n_terms, n_ratings, ours_s, base_s)


def core_costs(terminals: int = 50, ratings: int = 20000, per_frame: int = 1,
               group: int = 2000) -> dict[str, Any]:  # fmt: skip
    """``hcp bench core``: µs a rating spent in the core and the store alone,
    with no transport, on a real SQLite file (synchronous=FULL): what the
    serial and MQTT figures above are made of.  Frames of ``terminals`` fake
    terminals, interleaved as a broker delivers them, in groups of ``group``
    (the daemon's group commit): ``core.receive``, ``Store.commit`` (chain,
    inserts, one fsync a group) and ``core.committed`` (the ACKs)."""
    from haochaping.daemon.core import Core
    from haochaping.daemon.store import Store

    _check_args(terminals, ratings, per_frame)
    with tempfile.TemporaryDirectory(prefix="hcp-bench-") as tmp:
        terms = [FakeTerminal(0x7000 + i, make_key(i, 7)) for i in range(terminals)]
        db = Path(tmp) / "hall.db"
        provision(db, terms)
        queues = [
            _backlog(t, k, per_frame)
            for t, k in zip(terms, _split(ratings, terminals), strict=True)
        ]
        frames = [
            (f"mqtt:{t.id:08x}", q[i])
            for i in range(max(len(q) for q in queues))
            for t, q in zip(terms, queues, strict=True)
            if i < len(q)
        ]
        st = Store(db)
        core = Core(st.start_terminals())
        t_receive = t_commit = t_acks = 0.0
        now = 1_764_000_000_000
        for g in range(0, len(frames), group):
            t0 = time.perf_counter()
            rows = []
            for src, data in frames[g : g + group]:
                out = core.receive(src, data, now)
                if out.refused:
                    raise BenchError(f"the core refused a frame: {out.refused}")
                rows.extend(out.store)
            upd = core.take_updates()
            t1 = time.perf_counter()
            stored = st.commit(rows, now, upd)
            t2 = time.perf_counter()
            core.committed(stored, now)
            t3 = time.perf_counter()
            t_receive, t_commit, t_acks = t_receive + t1 - t0, t_commit + t2 - t1, t_acks + t3 - t2
            now += 1000
        st.close()
        _check(db, ratings)
    us = 1e6 / ratings
    return {
        "ratings": ratings,
        "per_frame": per_frame,
        "group": group,
        "receive_us": round(t_receive * us, 2),
        "commit_us": round(t_commit * us, 2),
        "acks_us": round(t_acks * us, 2),
        "total_us": round((t_receive + t_commit + t_acks) * us, 2),
    }
