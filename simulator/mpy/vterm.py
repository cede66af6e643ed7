"""A virtual terminal on real MicroPython (the WebAssembly port under Node.js).

This file runs INSIDE MicroPython (loaded by simulator/mpy/vterm.mjs): the
firmware's Terminal with the simulator board, a journal file on the
interpreter's own filesystem, and its serial framing (protocol.serial) done
here, on MicroPython.  The Node.js host only moves bytes: serial line bytes
in and out as hex, the button mask in, and what the board shows out.

MicroPython code: no typing, no f-strings beyond what MicroPython has.
"""

import binascii

from haochaping.firmware import board_sim, terminal, ui
from haochaping.protocol import serial
from haochaping.protocol.auth import Key
from haochaping.protocol.errors import ProtocolError


class Link:
    """The terminal's UART: bytes from the host in, COBS frames decoded here."""

    def __init__(self):
        self.connected = True
        self.dec = serial.Decoder()
        self.frames = []
        self.tx = []
        self.rx_errors = 0

    def poll(self, now):
        pass

    def feed(self, data):
        self.dec.receive_data(data)
        while True:
            try:
                f = self.dec.next_event()
            except ProtocolError:
                self.rx_errors += 1
                continue
            if f is None:
                return
            self.frames.append(bytes(f))

    def recv(self):
        if self.frames:
            return self.frames.pop(0)
        return None

    def send(self, frame):
        self.tx.append(serial.encode(frame))
        return True


class Board(board_sim.SimBoard):
    def __init__(self, path):
        board_sim.SimBoard.__init__(self, path, "mpy-wasm")
        self.events = []

    def show(self, pattern, button, term):
        board_sim.SimBoard.show(self, pattern, button, term)
        if pattern == ui.P_THANKS:
            ev = term.ev
            vals = (term.last_seq, ev.rec_level, ev.rec_reason, ev.rec_session, term.journal.writes)
            self.events.append("THANKS " + " ".join(str(v) for v in vals))
        else:
            self.events.append("SHOW " + str(pattern))


_state = {}  # type: dict


def start(tid, key_hex, journal_path):
    b = Board(journal_path)
    link = Link()
    b.transport = link
    t = terminal.Terminal(b, tid, Key(binascii.unhexlify(key_hex)), capacity=2000)
    _state["t"] = t
    _state["b"] = b
    _state["l"] = link
    import sys

    v = sys.implementation.version
    return "READY " + sys.implementation.name + " " + ".".join(str(x) for x in v[:3])


def step(now, rx_hex, mask):
    """One turn of the main loop; returns the lines for the host."""
    t, b, link = _state["t"], _state["b"], _state["l"]
    if rx_hex:
        link.feed(binascii.unhexlify(rx_hex))
    b.mask = mask
    t.step(now)
    out = b.events
    b.events = []
    for data in link.tx:
        out.append("TX " + binascii.hexlify(data).decode())
    link.tx = []
    return "\n".join(out)
