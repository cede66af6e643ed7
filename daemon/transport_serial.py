"""Serial transport: one terminal per port (USB-CDC, RS-232, RS-485 adapter).

``serial:///dev/ttyACM*?baud=115200``: the path is a glob.  ``supervise``
(called every TICK by the daemon) opens ports that appeared, drops ports
that vanished and reopens a port whose reading failed, with a backoff from
BACKOFF_MIN_S doubling to BACKOFF_MAX_S while it keeps failing.

Each open port is read on the daemon's asyncio loop (``add_reader`` on its
file descriptor, non-blocking reads) and written without blocking (a
bounded queue per port, ``add_writer`` while it drains, OUT_MAX): no thread
per port, and a port that stopped draining cannot stall the others; the ports and
the ingest loop never hand the GIL back and forth (the MQTT transport does
the same; docs/benchmarks.md).  The COBS stream goes through
protocol.serial.Decoder; whole frames go into the inbox, damaged chunks
become ``Bad`` events and cost only themselves.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import serial as pyserial
from haochaping.daemon.core import refusal_reason
from haochaping.daemon.transport import BACKOFF_MAX_S, BACKOFF_MIN_S, Bad, Gone, Inbox, Received
from haochaping.protocol import errors
from haochaping.protocol import serial as wire

log = logging.getLogger("hcp.serial")

READ_MAX = 4096
OUT_MAX = 64 * 1024  # bytes waiting for one port; past it new frames are dropped and counted


class _Port:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ser: Any = None
        self.fd = -1
        self.dec = wire.Decoder()
        self.failures = 0
        self.next_try = 0.0
        self.out = bytearray()  # encoded frames the port has not taken yet
        self.writing = False  # a writer callback is registered for the fd


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
        self.bytes_in = 0
        self.out_dropped = 0  # down frames dropped: a port that stopped draining
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.supervise()

    def stop(self) -> None:
        for p in list(self.ports.values()):
            self._close(p, None)
        self.ports.clear()

    def supervise(self) -> None:
        now = time.monotonic()
        present = set(glob.glob(self.pattern))
        for path in list(self.ports):
            if path not in present:
                log.info("port %s vanished", path)
                self._close(self.ports.pop(path), None)
        for path in sorted(present):
            p = self.ports.get(path)
            if p is None:
                p = self.ports[path] = _Port(path)
                self._open(p)
            elif p.ser is None and now >= p.next_try:
                self.restarts += 1
                self._open(p)

    def _open(self, p: _Port) -> None:
        assert self._loop is not None
        try:
            p.ser = pyserial.Serial(p.path, self.baud, timeout=0, write_timeout=0)
            p.fd = p.ser.fileno()
            # Writes never block the loop: a hung board, held flow control or a
            # USB-CDC device that stopped reading only fills this port's queue.
            os.set_blocking(p.fd, False)
            p.out = bytearray()
            p.dec = wire.Decoder()
            self._loop.add_reader(p.fd, self._readable, p)
            log.info("port %s open", p.path)
        except Exception as e:  # noqa: BLE001 - any failure: report, back off, try again
            self._failed(p, e)

    def _failed(self, p: _Port, e: Exception) -> None:
        p.failures += 1
        p.next_try = time.monotonic() + min(
            BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(p.failures - 1, 10)
        )
        if p.failures == 1 or p.failures % 10 == 0:
            log.warning("port %s failed (%s); reopening with backoff", p.path, type(e).__name__)
        self.inbox.put(Bad(p.path, "port_error"))
        self._close(p, e)

    def _close(self, p: _Port, e: Exception | None) -> None:
        if p.ser is None:
            return
        if self._loop is not None and p.fd >= 0:
            self._loop.remove_reader(p.fd)
            if p.writing:
                self._loop.remove_writer(p.fd)
        p.writing = False
        p.out = bytearray()
        if p.dec.buffered:
            self.inbox.put(Bad(p.path, "partial_frame"))
        try:
            p.ser.close()
        except Exception:  # noqa: BLE001
            pass
        p.ser, p.fd = None, -1
        self.inbox.put(Gone(p.path))

    def _readable(self, p: _Port) -> None:
        try:
            data = os.read(p.fd, READ_MAX)
            if not data:
                raise OSError("end of file")
        except BlockingIOError:
            return
        except Exception as e:  # noqa: BLE001 - the device went away
            self._failed(p, e)
            return
        p.failures = 0
        self.bytes_in += len(data)
        inbox, dec = self.inbox, p.dec
        dec.receive_data(data)
        while True:
            try:
                fr = dec.next_event()
            except errors.ProtocolError as e:
                inbox.put(Bad(p.path, refusal_reason(e)))
                continue
            if fr is None:
                break
            inbox.put(Received(p.path, fr, True, self))

    def send(self, source: str, terminal_id: int, frame: bytes) -> bool:
        """Queue a frame for the port and write what it takes now; never block.
        False (and counted) when the port is gone or its queue is full."""
        p = self.ports.get(source)
        if p is None or p.ser is None:
            return False
        data = wire.encode(frame)
        if len(p.out) + len(data) > OUT_MAX:
            self.out_dropped += 1
            return False
        p.out += data
        self._flush(p)
        return True

    def _flush(self, p: _Port) -> None:
        while p.out and p.fd >= 0:
            try:
                n = os.write(p.fd, p.out)
            except BlockingIOError:
                break
            except OSError:  # the device went away: the next read notices and reopens
                p.out = bytearray()
                break
            del p.out[:n]
        want = bool(p.out) and p.fd >= 0
        if want != p.writing and self._loop is not None:
            if want:
                self._loop.add_writer(p.fd, self._flush, p)
            else:
                self._loop.remove_writer(p.fd)
            p.writing = want

    def health(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ports": sorted(path for path, p in self.ports.items() if p.ser is not None),
            "restarts": self.restarts,
            "bytes_in": self.bytes_in,
            "out_dropped": self.out_dropped,
            "out_queued": sum(len(p.out) for p in self.ports.values()),
        }
