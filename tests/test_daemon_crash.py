"""kill -9 the daemon at random moments during ingest: rounds go on until 20
kills landed while ratings of their round were still unacknowledged.

After each restart every rating the test peers sent is stored exactly once,
and no peer ever got an ACK for a rating that is not in the database (a peer
frees its journal on ACK, so such a rating could never come again).
"""

from __future__ import annotations

import random
import sqlite3
import time

import pytest
from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, PtyPeer, drive, make_key

SEED = 20261126
ROUNDS = 20  # kills that land while ratings of their round are unacknowledged
MAX_ROUNDS = 40


@pytest.mark.slow
def test_kill9_during_ingest(tmp_path, mosquitto_bin):
    rnd = random.Random(SEED)
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    ports = tmp_path / "ports"
    ports.mkdir()
    db = tmp_path / "hall.db"
    cfg = write_config(
        tmp_path / "hcp.toml", db,
        [{"url": f"mqtt://127.0.0.1:{broker.port}"}, {"url": f"serial://{ports}/term-*"}],
        free_port(),
    )  # fmt: skip
    terms = [FakeTerminal(0x2000 + i, make_key(i, SEED), boot=1) for i in range(12)]
    provision(db, terms)
    d = DaemonProcess(cfg, tmp_path)
    hub = MqttHub(broker.port)
    peers = [hub.add(t) if i % 3 else PtyPeer(t, ports) for i, t in enumerate(terms)]
    sent = 0
    mid_ingest = mid_commit = 0
    try:
        d.start()
        for p in peers:
            p.hello()
        for rnd_no in range(MAX_ROUNDS):
            if mid_ingest >= ROUNDS:
                break
            # a burst of presses in flight...
            base = sum(p.term.acked for p in peers)
            n = 0
            for p in peers:
                for _ in range(rnd.randint(20, 120)):
                    p.term.press(rnd.randint(1, 5), reason=rnd.randint(1, 7))
                    n += 1
            sent += n
            target = base + int(n * rnd.uniform(0.05, 0.8))
            for p in peers:
                p.send_new(per_frame=rnd.choice([1, 1, 4, 11]))
            # ...and the daemon dies at a random moment while it ingests them:
            # once a seeded random share of this round's ratings is acknowledged
            deadline = time.monotonic() + 20
            while sum(p.term.acked for p in peers) < target and time.monotonic() < deadline:
                time.sleep(0.0005)
            d.kill9()
            if sum(p.term.acked for p in peers) < base + n:
                mid_ingest += 1  # killed with ratings of this round not yet acknowledged
            c = sqlite3.connect(db)
            have = set(c.execute("SELECT terminal_id, seq FROM ratings").fetchall())
            c.close()
            if len(have) < sent:
                mid_commit += 1  # ... and some not even stored
            for p in peers:
                with p.lock:
                    acked = max(p.term.ack_log, default=0)
                missing = [s for s in range(1, acked + 1) if (p.term.id, s) not in have]
                assert not missing, f"round {rnd_no}: {p.term.id:08x} got ACK {acked} but seqs {missing[:5]} are not stored"  # fmt: skip
            d.start()
            assert drive(peers, 60, ack_timeout_s=1.0, alive=d.alive), (
                f"round {rnd_no}: not everything acknowledged"
            )
            c = sqlite3.connect(db)
            rows = c.execute("SELECT terminal_id, seq FROM ratings").fetchall()
            c.close()
            assert len(rows) == len(set(rows)) == sent, f"round {rnd_no}"
            assert all(not p.errors for p in peers), [p.errors for p in peers if p.errors]
        assert d.stop() == 0
        assert mid_ingest >= ROUNDS, f"only {mid_ingest} kills landed during ingest"
        print(
            f"kills during ingest: {mid_ingest} of {rnd_no + 1} rounds ({mid_commit} before all were stored), {sent} ratings"
        )
        from haochaping.daemon.store import Store

        s = Store(db)
        assert s.verify_chain() is None
        s.close()
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        for p in peers:
            if isinstance(p, PtyPeer):
                p.close()
        broker.stop()
