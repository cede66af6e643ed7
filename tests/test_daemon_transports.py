"""Transports on real ptys and a real broker: hot-plug, supervision, reconnect."""

from __future__ import annotations

import asyncio
import os
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
from haochaping.daemon.service import open_transport
from haochaping.daemon.transport import Bad, Gone, Inbox, Received, redact
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


def _tls_files(d):
    """A CA and a server certificate for 127.0.0.1, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcp test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.slow
def test_mqtt_over_tls(tmp_path, mosquitto_bin):
    import pwd

    broker = Mosquitto(mosquitto_bin, tmp_path / "broker")
    _tls_files(tmp_path / "broker")
    tls_port = free_port()
    b = broker.dir
    broker.conf.write_text(
        broker.conf.read_text()
        + f"listener {tls_port} 127.0.0.1\ncafile {b}/ca.pem\ncertfile {b}/server.pem\nkeyfile {b}/server.key\n"
        + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    broker.start()
    db = tmp_path / "hall.db"
    cfg = write_config(
        tmp_path / "hcp.toml",
        db,
        [{"url": f"mqtts://127.0.0.1:{tls_port}", "ca_file": str(b / "ca.pem")}],
        free_port(),
    )
    t = FakeTerminal(0x8201, make_key(1, 82))
    provision(db, [t])
    d = DaemonProcess(cfg, tmp_path).start()
    hub = MqttHub(broker.port)  # the terminals on the plain listener, the daemon on TLS
    p = hub.add(t)
    try:
        p.hello()
        t.press(2, reason=1)
        p.send_new()
        assert drive([p], 20), "no ACK through the TLS connection"
        assert "connected to broker" in d.output()
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill9()
        hub.close()
        broker.stop()
