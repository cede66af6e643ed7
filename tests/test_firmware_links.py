"""The terminal's links with real parts: the serial transport over a real
pty, the MQTT client against a real Mosquitto broker."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))

import fw_scenarios as sc  # noqa: E402
from fw_peer import Peer  # noqa: E402
from haochaping.firmware import mqtt as fm  # noqa: E402
from haochaping.firmware import ui  # noqa: E402
from haochaping.firmware.board_sim import SimBoard  # noqa: E402
from haochaping.firmware.links import SerialTransport  # noqa: E402
from haochaping.firmware.terminal import Terminal  # noqa: E402
from haochaping.protocol import messages as m  # noqa: E402
from haochaping.protocol import mqtt as topics  # noqa: E402
from haochaping.protocol import serial as wire  # noqa: E402


class FdPort:
    """One end of a pty as a non-blocking port (read -> bytes | None)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)

    def read(self, n: int) -> bytes | None:
        try:
            return os.read(self.fd, n) or None
        except BlockingIOError:
            return None

    def write(self, b: bytes) -> int:
        return os.write(self.fd, b)


def _raw(fd: int) -> None:
    import termios
    import tty

    tty.setraw(fd, termios.TCSANOW)


def test_serial_link_over_a_real_pty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    _raw(master)
    _raw(slave)
    board = SimBoard(str(tmp_path / "journal.bin"))
    board.transport = SerialTransport(FdPort(master))
    t = Terminal(board, sc.TID, sc.KEY, 32)
    daemon = FdPort(slave)
    dec = wire.Decoder()
    peer = Peer(sc.TID, sc.KEY)
    now = 0

    def turn(n: int = 1) -> None:
        nonlocal now
        for _ in range(n):
            now += 10
            board.now = now
            t.step(now)
            data = daemon.read(4096)
            if data:
                dec.receive_data(data)
                while (f := dec.next_event()) is not None:
                    for reply in peer.handle(f, now):
                        daemon.write(wire.encode(reply))

    deadline = time.monotonic() + 10
    while peer.hellos == 0 and time.monotonic() < deadline:
        turn()
    daemon.write(wire.encode(peer.send(m.Arm(77, 60, b"case"))))
    while t.ev.state != ui.S_ARMED and time.monotonic() < deadline:
        turn()
    board.mask = 1 << 1
    turn(5)
    board.mask = 0
    while peer.count < 1 and time.monotonic() < deadline:
        turn()
    # Line noise between frames costs only the damaged chunk.
    os.write(slave, b"\x13\x37garbage\x00")
    while t.journal.used and time.monotonic() < deadline:
        turn()
    turn(10)
    os.close(master)
    os.close(slave)
    assert peer.stored[1][1] == 4 and peer.stored[1][4] == 77
    assert t.journal.used == 0
    assert board.transport.bad_chunks >= 1


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def broker(tmp_path: Path, mosquitto_bin: str):
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen(
        [mosquitto_bin, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)  # waiting for the broker process to listen
    yield port
    p.terminate()
    p.wait(5)


def test_mqtt_link_against_real_mosquitto(tmp_path: Path, broker: int) -> None:
    import paho.mqtt.client as paho

    got: list[bytes] = []
    d = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fw-test-daemon")
    d.on_message = lambda c, u, msg: got.append((msg.topic, msg.payload, msg.retain))
    d.connect("127.0.0.1", broker)
    d.subscribe(topics.up_filter(), 1)
    d.subscribe(topics.state_topic(sc.TID), 1)
    d.loop_start()
    try:
        board = SimBoard(str(tmp_path / "journal.bin"))
        board.transport = fm.MQTTTransport("127.0.0.1", broker, sc.TID)
        t = Terminal(board, sc.TID, sc.KEY, 32)
        peer = Peer(sc.TID, sc.KEY)
        t0 = time.monotonic()

        def turn() -> None:
            now = int((time.monotonic() - t0) * 1000) + 1
            board.now = now
            t.step(now)
            while got:
                topic, payload, _ = got.pop(0)
                if topic == topics.up_topic(sc.TID):
                    for reply in peer.handle(payload, now):
                        d.publish(topics.down_topic(sc.TID), reply, qos=1)
                elif topic == topics.state_topic(sc.TID):
                    states.append(payload)

        states: list[bytes] = []
        deadline = time.monotonic() + 15
        while t.session.state != 2 and time.monotonic() < deadline:
            turn()
        assert t.session.state == 2, board.transport.last_error
        d.publish(topics.down_topic(sc.TID), peer.send(m.Arm(5, 60, b"abcd")), qos=1)
        while t.ev.state != ui.S_ARMED and time.monotonic() < deadline:
            turn()
        board.mask = 1
        for _ in range(3):
            turn()
        board.mask = 0
        while (peer.count < 1 or t.journal.used) and time.monotonic() < deadline:
            turn()
        assert peer.stored[1][1] == 5 and peer.stored[1][4] == 5
        assert t.journal.used == 0
        assert b"online" in states
        assert board.transport.connects == 1
    finally:
        d.loop_stop()
        d.disconnect()


def test_mqtt_connect_failures_are_bounded() -> None:
    # Nothing listens: the connect fails, the transport backs off.
    port = _free_port()
    tr = fm.MQTTTransport("127.0.0.1", port, sc.TID)
    now = 0
    deadline = time.monotonic() + 5
    while tr.failures == 0 and time.monotonic() < deadline:
        now += 10
        tr.poll(now)
    assert tr.failures >= 1 and tr.state == fm.M_OFF and not tr.connected
    assert tr.send(b"x") is False
    # A peer that accepts TCP but never answers CONNACK: the deadline (in the
    # caller's clock) closes it; no socket call ever waits.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    tr2 = fm.MQTTTransport("127.0.0.1", srv.getsockname()[1], sc.TID)
    tr2.poll(0)
    tr2.poll(10)
    assert tr2.state in (fm.M_CONNECTING, fm.M_CONNACK)
    tr2.poll(fm.CONNECT_MS + 20)
    assert tr2.state == fm.M_OFF and "CONNACK" in tr2.last_error
    srv.close()


def test_mqtt_packets_are_byte_exact() -> None:
    assert fm.publish_packet("a/b", b"\x01\x02", 7) == b"\x32\x09\x00\x03a/b\x00\x07\x01\x02"
    assert fm.subscribe_packet("d", 1) == b"\x82\x06\x00\x01\x00\x01d\x01"
    c = fm.connect_packet("hcp-1", 30, "s", b"offline")
    assert c[:2] == b"\x10" + bytes((len(c) - 2,))
    assert c[2:12] == b"\x00\x04MQTT\x04\x2e\x00\x1e"
    big = fm.publish_packet("t", bytes(200), 1)
    assert big[1:3] == bytes((0x80 | ((200 + 5) & 0x7F), (200 + 5) >> 7))
