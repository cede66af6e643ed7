"""The simulated world: the virtual clock, a flash chip that loses power, and
the wires and ports between the terminals and the daemon.

Nothing here is code under test; everything here is what the code under test
runs on.  A fault of the world (a torn write, a dropped byte) is drawn from
the seed's random generator and never from the OS.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from haochaping.firmware import journal as journalmod
from haochaping.firmware import ui
from haochaping.simulator.vopr.plan import Plan

if TYPE_CHECKING:
    from haochaping.simulator.vopr.terminal import VTerm

TICK_MS = 50  # one turn of every main loop
PRESS_HOLD_MS = 100  # a button is held this long (debounce is 30 ms)
EPOCH_MS = 1_795_600_000_000  # virtual t=0 on the daemon's UTC clock (2026-11-26)
TICKS_MASK = ui.TICKS_PERIOD - 1


class PowerCut(Exception):
    """The simulated flash lost power in the middle of a write."""


# ---------------------------------------------------------------- flash


class Flash:
    """A flash chip holding one file: ``flush`` is the durability point
    (littlefs commits on sync; MicroPython's flush is lfs_file_sync).  A cut
    armed for the n-th write tears that write: a prefix of it (chosen by the
    seed) reaches the chip, everything not flushed is lost."""

    def __init__(self, durable: bytearray, rng: random.Random) -> None:
        self.durable = durable  # what survives power loss
        self.data = bytearray(durable)  # what the running board sees
        self.pending: list[tuple[int, bytes]] = []
        self.pos = 0
        self.rng = rng
        self.cut_in = 0  # >0: the cut-th write from now tears
        self.writes = 0
        self.observer: Callable[[int, bytes, bool], None] | None = None  # (offset, bytes, torn)

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else len(self.data) + off)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), len(self.data) - self.pos))
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        b = bytes(self.data[self.pos : end])
        self.pos += len(b)
        return b

    def write(self, b: Any) -> int:
        b = bytes(b)
        self.writes += 1
        if self.cut_in > 0:
            self.cut_in -= 1
            if self.cut_in == 0:
                keep = self.rng.randint(0, len(b))
                if self.observer is not None:
                    self.observer(self.pos, b, True)
                _put(self.durable, self.pos, b[:keep])
                self.pending = []
                raise PowerCut(f"power cut after {keep} of {len(b)} bytes")
        if self.observer is not None:
            self.observer(self.pos, b, False)
        _put(self.data, self.pos, b)
        self.pending.append((self.pos, b))
        self.pos += len(b)
        return len(b)

    def flush(self) -> None:
        for off, b in self.pending:
            _put(self.durable, off, b)
        self.pending = []

    def close(self) -> None:
        pass


def _put(buf: bytearray, off: int, b: bytes) -> None:
    if off > len(buf):
        buf.extend(bytes(off - len(buf)))
    buf[off : off + len(b)] = b


@contextmanager
def _no_os_sync() -> Iterator[None]:
    saved = journalmod._sync_default
    journalmod._sync_default = lambda: None
    try:
        yield
    finally:
        journalmod._sync_default = saved


# ---------------------------------------------------------------- wires


class Wire:
    """One direction of one serial line: bytes arrive after a latency, with
    the plan's faults.  Order is kept unless the plan reorders."""

    def __init__(self, rng: random.Random, plan: Plan) -> None:
        self.rng = rng
        self.plan = plan
        self.q: list[tuple[int, int, bytes]] = []
        self.n = 0
        self.faulty = True
        self.stream = True  # a byte stream (serial); False: whole messages (MQTT over TCP)
        self.last_at = 0
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "corrupted": 0, "reordered": 0}

    def send(self, data: bytes, now: int) -> None:
        p, r = self.plan, self.rng
        self.stats["sent"] += 1
        copies = 1
        if self.faulty:
            if r.random() < p.drop:
                self.stats["dropped"] += 1
                return
            if r.random() < p.dup:
                copies = 2
                self.stats["duplicated"] += 1
        for _ in range(copies):
            b = bytearray(data)
            at = max(now + r.randint(1, 20), self.last_at)
            late = False
            if self.faulty:
                if self.stream and r.random() < p.corrupt:
                    i = r.randrange(len(b))
                    b[i] ^= 1 << r.randrange(8)
                    self.stats["corrupted"] += 1
                if self.stream and r.random() < p.byte_loss and len(b) > 1:
                    del b[r.randrange(len(b))]
                    self.stats["corrupted"] += 1
                if r.random() < p.reorder:
                    at = now + r.randint(20, 800)
                    late = True
                    self.stats["reordered"] += 1
            if not late:
                self.last_at = max(self.last_at, at)
            self.n += 1
            heapq.heappush(self.q, (at, self.n, bytes(b)))

    def due(self, now: int) -> list[bytes]:
        out = []
        while self.q and self.q[0][0] <= now:
            out.append(heapq.heappop(self.q)[2])
        return out

    def clear(self) -> None:
        self.q = []


class UartPort:
    """The terminal's UART on a serial line: the non-blocking port the
    firmware's own serial transport (firmware/links.SerialTransport) reads
    and writes, as it does ``machine.UART`` on a board."""

    def __init__(self, vt: VTerm) -> None:
        self.vt = vt
        self.rx = bytearray()

    def read(self, n: int) -> bytes | None:
        if not self.rx:
            return None
        out = bytes(self.rx[:n])
        del self.rx[:n]
        return out

    def write(self, b: bytes) -> int:
        self.vt.sim.terminal_wrote(self.vt, bytes(b))
        return len(b)

    def feed(self, data: bytes) -> None:
        self.rx.extend(data)

    def pending(self) -> bool:
        return bool(self.rx)


class MessagePort:
    """The terminal's MQTT-style link: one frame per message, and a
    connection state (the broker session) that a pulled cable ends."""

    def __init__(self, vt: VTerm) -> None:
        self.vt = vt
        self.frames: list[bytes] = []

    @property
    def connected(self) -> bool:
        return self.vt.plugged

    def poll(self, now: int) -> None:
        pass

    def recv(self) -> bytes | None:
        return self.frames.pop(0) if self.frames else None

    def send(self, frame: bytes) -> bool:
        self.vt.sim.terminal_wrote(self.vt, bytes(frame))
        return self.vt.plugged

    def feed(self, data: bytes) -> None:
        self.frames.append(data)

    def pending(self) -> bool:
        return bool(self.frames)
