"""Serial transport: the protocol's COBS+CRC framing over a UART or USB-CDC.

``SerialTransport(port)`` takes any object with non-blocking ``read(n)``
(bytes, or None when nothing is waiting) and ``write(b)``: ``machine.UART``
(created with ``timeout=0``), ``StdioPort`` below (USB-CDC through
sys.stdin/stdout, polled with select), or a pty/pyserial object in tests.
A serial line has no connection state: it counts as connected from boot,
and the session says HELLO then (and again when the daemon asks).
Bounded: at most READ_MAX bytes read per poll, RX_FRAMES_MAX frames queued
(the decoder itself bounds a partial frame); damaged chunks are counted and
dropped, never raised into the main loop.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.protocol import serial as _serial
from haochaping.protocol.errors import FrameError

READ_MAX = const(512)
RX_FRAMES_MAX = const(16)


class SerialTransport:
    def __init__(self, port):
        self.port = port
        self.connected = True
        self._dec = _serial.Decoder()
        self._frames = []
        self.bad_chunks = 0
        self.dropped = 0

    def poll(self, now):
        data = self.port.read(READ_MAX)
        if not data:
            return
        self._dec.receive_data(data)
        while True:
            try:
                f = self._dec.next_event()
            except FrameError:
                self.bad_chunks += 1
                continue
            if f is None:
                return
            if len(self._frames) >= RX_FRAMES_MAX:
                self.dropped += 1
            else:
                self._frames.append(f)

    def recv(self):
        if not self._frames:
            return None
        return self._frames.pop(0)

    def send(self, frame):
        self.port.write(_serial.encode(frame))
        return True


class StdioPort:
    """USB-CDC (the REPL's serial port) as a non-blocking port.  The REPL
    must be detached first (boot.py does it when the config says so)."""

    def __init__(self):
        import select
        import sys

        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def read(self, n):
        out = b""
        while len(out) < n and self._poll.poll(0):
            b = self._in.read(1)
            if not b:
                break
            out += b
        return out or None

    def write(self, b):
        return self._out.write(b)
