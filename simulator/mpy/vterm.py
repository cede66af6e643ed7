"""A virtual terminal on real MicroPython (the WebAssembly port under Node.js).

This file runs INSIDE MicroPython (loaded by simulator/mpy/vterm.mjs): the
firmware's Terminal with the simulator board, a journal file on the
interpreter's own filesystem, and the firmware's serial transport
(firmware/links.SerialTransport: COBS framing, CRC) running here, on
MicroPython.  The Node.js host only moves bytes: serial line bytes
in and out as hex, the button mask in, and what the board shows out.

MicroPython code: no typing, no f-strings beyond what MicroPython has.
"""

import binascii

from haochaping.firmware import board_sim, links, terminal, ui
from haochaping.protocol.auth import Key


class HostPort:
    """The terminal's UART as the firmware's serial transport sees it
    (non-blocking read/write); the Node.js host fills and empties it."""

    def __init__(self):
        self.rx = bytearray()
        self.tx = []

    def read(self, n):
        if not self.rx:
            return None
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def write(self, b):
        self.tx.append(bytes(b))
        return len(b)


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
    link = HostPort()
    b.transport = links.SerialTransport(link)  # type: ignore[assignment]  # the board's slot takes any transport
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
        link.rx.extend(binascii.unhexlify(rx_hex))
    b.mask = mask
    t.step(now)
    out = b.events
    b.events = []
    for data in link.tx:
        out.append("TX " + binascii.hexlify(data).decode())
    link.tx = []
    return "\n".join(out)
