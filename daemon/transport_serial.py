"""Serial transport: one terminal per port (USB-CDC, RS-232, RS-485 adapter).

``serial:///dev/ttyACM*?baud=115200``: the path is a glob.  ``supervise``
(called every SCAN_INTERVAL_S by the daemon) opens ports that appeared,
drops ports that vanished and restarts a reader that died, with a capped
backoff.  Each port has one reader thread that decodes the COBS stream
(protocol.serial.Decoder) and puts whole frames into the inbox; damaged
chunks become ``Bad`` events and cost only themselves.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import serial as pyserial
from haochaping.daemon.core import refusal_reason
from haochaping.daemon.transport import BACKOFF_MAX_S, BACKOFF_MIN_S, Bad, Gone, Inbox, Received
from haochaping.protocol import errors
from haochaping.protocol import serial as wire

log = logging.getLogger("hcp.serial")

READ_TIMEOUT_S = 0.05
WRITE_TIMEOUT_S = 1.0
READ_MAX = 4096
SCAN_INTERVAL_S = 0.5
# Bytes fed to the decoder at once.  protocol.serial.Decoder keeps at most
# MAX_PENDING whole chunks and drops the oldest beyond that; the shortest
# chunk it keeps is 2 bytes (one byte and the delimiter), so a slice this
# size can never make it drop one.
FEED_MAX = wire.MAX_PENDING * 2


class _Port:
    def __init__(self, path: str, t: SerialTransport) -> None:
        self.path = path
        self.t = t
        self.stop = threading.Event()
        self.ser: pyserial.Serial | None = None
        self.wlock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name="serial " + path, daemon=True)
        self.failures = 0
        self.next_try = 0.0

    def run(self) -> None:
        inbox, path = self.t.inbox, self.path
        dec = wire.Decoder()
        try:
            ser = pyserial.Serial(
                path, self.t.baud, timeout=READ_TIMEOUT_S, write_timeout=WRITE_TIMEOUT_S
            )
            self.ser = ser
            log.info("port %s open", path)
            while not self.stop.is_set():
                data = ser.read(max(1, min(ser.in_waiting, READ_MAX)))
                if not data:
                    continue
                for i in range(0, len(data), FEED_MAX):
                    # the decoder holds at most MAX_PENDING whole chunks:
                    # feed it a slice that cannot hold more, then drain it
                    dec.receive_data(data[i : i + FEED_MAX])
                    while True:
                        try:
                            fr = dec.next_event()
                        except errors.ProtocolError as e:
                            inbox.put(Bad(path, refusal_reason(e)))
                            continue
                        if fr is None:
                            break
                        inbox.put(Received(path, fr, True, self.t))
                self.failures = 0
        except Exception as e:  # noqa: BLE001 - any port failure ends this reader; supervise restarts it
            if not self.stop.is_set():
                log.warning("port %s reader stopped: %s", path, type(e).__name__)
                inbox.put(Bad(path, "port_error"))
        finally:
            if dec.buffered:
                inbox.put(Bad(path, "partial_frame"))
            s, self.ser = self.ser, None
            if s is not None:
                try:
                    s.close()
                except Exception:  # noqa: BLE001
                    pass
            inbox.put(Gone(path))

    def write(self, data: bytes) -> bool:
        s = self.ser
        if s is None:
            return False
        try:
            with self.wlock:
                s.write(data)
            return True
        except Exception:  # noqa: BLE001 - the reader notices and is restarted
            return False


class SerialTransport:
    def __init__(self, url: str, inbox: Inbox, options: dict[str, Any]) -> None:
        u = urlsplit(url)
        q = parse_qs(u.query)
        self.url = url
        self.pattern = u.path
        self.baud = int(q.get("baud", [options.get("baud", 115200)])[0])
        self.inbox = inbox
        self.ports: dict[str, _Port] = {}
        self.restarts = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        self.supervise()

    def stop(self) -> None:
        with self.lock:
            ports = list(self.ports.values())
            self.ports.clear()
        for p in ports:
            p.stop.set()
        for p in ports:
            p.thread.join(2)

    def supervise(self) -> None:
        now = time.monotonic()
        present = set(glob.glob(self.pattern))
        with self.lock:
            for path in list(self.ports):
                if path not in present:
                    log.info("port %s vanished", path)
                    self.ports.pop(path).stop.set()
            for path in sorted(present):
                p = self.ports.get(path)
                if p is None:
                    p = _Port(path, self)
                    self.ports[path] = p
                    p.thread.start()
                elif not p.thread.is_alive() and now >= p.next_try:
                    # A dead reader: restart it, backing off while it keeps dying.
                    q = _Port(path, self)
                    q.failures = p.failures + 1
                    q.next_try = now + min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(q.failures, 10))
                    self.ports[path] = q
                    self.restarts += 1
                    q.thread.start()

    def send(self, source: str, terminal_id: int, frame: bytes) -> bool:
        p = self.ports.get(source)
        return p.write(wire.encode(frame)) if p is not None else False

    def health(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ports": sorted(p for p, v in self.ports.items() if v.ser is not None),
            "restarts": self.restarts,
        }
