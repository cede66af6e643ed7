"""Transports on real ptys and a real broker: hot-plug, supervision, reconnect."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from haochaping.daemon.testing import (
    DaemonProcess,
    FakeTerminal,
    Mosquitto,
    MqttHub,
    PtyPeer,
    drive,
    free_port,
    make_key,
    provision,
    write_config,
)
from haochaping.daemon.transport import Bad, Gone, Inbox, Received, open_transport, redact
from haochaping.daemon.transport_serial import SerialTransport
from haochaping.protocol import frame


def test_redact_hides_passwords():
    assert redact("mqtt://u:secret@host:1883") == "mqtt://u:***@host:1883"
    assert redact("serial:///dev/ttyACM*") == "serial:///dev/ttyACM*"
    with pytest.raises(ValueError, match="scheme"):
        open_transport("tcp://x", None, {})  # type: ignore[arg-type]


def test_inbox_full_drops_and_counts_never_blocks():
    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop(), limit=3)
        for i in range(5):
            inbox.put(Bad("x", str(i)))
        assert inbox.dropped == 2
        got = await inbox.get(0.1, 10)
        assert [e.reason for e in got] == ["0", "1", "2"]
        assert await inbox.get(0.01, 10) == []

    asyncio.run(main())


def test_serial_ports_come_go_and_dead_readers_restart(tmp_path):
    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        tr = open_transport(f"serial://{tmp_path}/term-*?baud=115200", inbox, {})
        assert isinstance(tr, SerialTransport)
        tr.start()
        events: list = []

        async def until(pred, timeout=10.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                tr.supervise()
                events.extend(await inbox.get(0.1, 1000))
                if pred():
                    return
            raise AssertionError(f"timed out; events: {events[-5:]!r}")

        t = FakeTerminal(0x8001, make_key(1, 8))
        # a port appears: picked up without a restart
        p = PtyPeer(t, tmp_path)
        await until(lambda: p.path in tr.health()["ports"])
        p.push([t.hello()])
        await until(lambda: any(isinstance(e, Received) and e.source == p.path for e in events))
        got = [e for e in events if isinstance(e, Received)][0]
        assert frame.peek(got.data)[2] == t.id and got.bound
        # it vanishes: dropped
        p.close()
        os.unlink(p.path)
        await until(lambda: any(isinstance(e, Gone) and e.source == p.path for e in events))
        await until(lambda: p.path not in tr.health()["ports"])
        # a port whose reader dies at once (the device is not there): restarted, with backoff
        link = tmp_path / "term-dead"
        link.symlink_to("/dev/pts/no-such-pty")
        await until(lambda: tr.restarts >= 2)
        assert any(isinstance(e, Bad) and e.reason == "port_error" for e in events)
        # the device comes back behind the same name: the supervised reader gets it
        p2 = PtyPeer(FakeTerminal(0x8002, make_key(2, 8)))
        link.unlink()
        link.symlink_to(p2.path)
        await until(lambda: str(link) in tr.health()["ports"], timeout=20)
        p2.push([p2.term.hello()])
        await until(lambda: any(isinstance(e, Received) and e.source == str(link) for e in events))
        tr.stop()
        p2.close()

    asyncio.run(main())


@pytest.mark.slow
def test_mqtt_reconnects_after_broker_restart(tmp_path, mosquitto_bin):
    broker = Mosquitto(mosquitto_bin, tmp_path / "broker").start()
    db = tmp_path / "hall.db"
    cfg = write_config(
        tmp_path / "hcp.toml", db, [{"url": f"mqtt://127.0.0.1:{broker.port}"}], free_port()
    )
    t = FakeTerminal(0x8101, make_key(1, 81))
    provision(db, [t])
    d = DaemonProcess(cfg, tmp_path).start()
    hub = MqttHub(broker.port)
    p = hub.add(t)
    try:
        p.hello()
        t.press(5)
        p.send_new()
        assert drive([p], 15)
        broker.stop()  # the broker goes away (persistence on)...
        hub.close()
        broker = Mosquitto(mosquitto_bin, tmp_path / "broker", port=broker.port).start()
        hub = MqttHub(broker.port)  # ...comes back; the terminals reconnect
        p = hub.add(t)
        for _ in range(5):
            t.press(4)
        p.resend()
        assert drive([p], 60), "the daemon did not reconnect (backoff is capped at 30 s)"
        assert d.output().count("connected to broker") >= 2
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        broker.stop()
