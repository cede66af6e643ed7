"""Actor: a virtual terminal -- the real firmware (``firmware.terminal``)
on a simulator board whose flash chip and port are the world's -- and the
faults a terminal suffers: a pulled cable, a power cut, a torn flash write.

``VTerm.on_flash`` reads every write with the journal's documented layout
(firmware/journal.py), so the engine knows what the firmware tried to store
and which slots an ACK point frees.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from haochaping.firmware import board_sim, links, terminal, ui
from haochaping.firmware import journal as journalmod
from haochaping.protocol.auth import Key
from haochaping.protocol.crc import crc16
from haochaping.simulator.vopr.world import (
    PRESS_HOLD_MS,
    TICKS_MASK,
    Flash,
    MessagePort,
    PowerCut,
    UartPort,
    Wire,
)

if TYPE_CHECKING:
    from haochaping.simulator.vopr.engine import Sim

_REC = ">IBBIIIH"  # the journal's record layout (firmware/journal.py), bytes 0..19


class SimBoard(board_sim.SimBoard):
    def __init__(self, vt: VTerm, flash: Flash) -> None:
        super().__init__(flash, name=vt.board_name, reset_cause=vt.reset_cause)
        self.vt = vt
        self.port: UartPort | MessagePort
        if vt.mqtt:
            self.port = MessagePort(vt)
            self.transport = self.port  # type: ignore[assignment]
        else:
            self.port = UartPort(vt)
            self.transport = links.SerialTransport(self.port)  # type: ignore[assignment]

    def show(self, pattern: int, button: int, terminal: Any) -> None:
        super().show(pattern, button, terminal)
        if pattern == ui.P_THANKS:
            self.vt.sim.thanks(self.vt, terminal)
        elif pattern in (ui.P_FAULT, ui.P_REFUSED, ui.P_IGNORED):
            self.vt.sim.count("shown_" + ui.PATTERN_NAMES[pattern].lower())


class VTerm:
    """One virtual terminal: its flash chip survives reboots, nothing else does."""

    def __init__(self, sim: Sim, index: int, tid: int, key: bytes) -> None:
        self.sim = sim
        self.index = index
        self.tid = tid
        self.key = key
        self.window_no = f"W{index + 1:02d}"
        self.durable = bytearray()
        self.plugged = True
        self.on = False
        self.reset_cause = 1
        self.term: terminal.Terminal | None = None
        self.flash: Flash | None = None
        self.board: SimBoard | None = None
        rng = sim.rng
        if sim.plan.skew:
            self.tick0 = TICKS_MASK - rng.randint(0, 600_000)  # wraps during the run
            self.rate = 1.0 + rng.uniform(-0.02, 0.02)
        else:
            self.tick0 = rng.randint(0, 1000)
            self.rate = 1.0
        self.up = Wire(rng, sim.plan)
        self.down = Wire(rng, sim.plan)
        self.mqtt = index < sim.plan.mqtt_terminals
        self.up.stream = self.down.stream = not self.mqtt
        self.boots = 0
        self.cut_next_write = 0
        self.acked_seen = 0  # ack point last written to flash
        self.jid = -1  # the journal id the flash's meta names
        self.board_name = "vopr"
        self.images: list[tuple[int, bytes]] = []  # (journal id, durable bytes) copies
        self.trusted_free = False  # the free_before_ack switch is freeing

    def ticks(self, now: int) -> int:
        return (self.tick0 + int(now * self.rate)) & TICKS_MASK

    def boot(self, now: int) -> None:
        """Power on from what the flash chip holds."""
        self.flash = Flash(self.durable, self.sim.rng)
        self.flash.observer = self.on_flash
        if self.cut_next_write:
            self.flash.cut_in = self.cut_next_write
            self.cut_next_write = 0
        self.board = SimBoard(self, self.flash)
        self.board.new_id = lambda: self.sim.rng.getrandbits(32)  # seeded: runs replay
        self.boots += 1
        try:
            t = terminal.Terminal(
                self.board, self.tid, Key(self.key), capacity=self.sim.plan.capacity
            )
        except PowerCut:
            self.sim.count("power_cut_at_boot")
            self.on = False
            self.sim.at(now + 500, lambda: self.boot(self.sim.now))
            return
        self.term = t
        self.on = True
        self.reset_cause = 1

    def on_flash(self, off: int, b: bytes, torn: bool) -> None:
        """Every write to the flash chip, read with the journal's documented
        layout (firmware/journal.py): record writes are what the firmware
        tried to store; a meta write with a higher ack point frees slots."""
        sim = self.sim
        if off >= journalmod.DATA_AT and len(b) == journalmod.REC_LEN:
            seq, lr, fl, session, t, up, boot = struct.unpack_from(_REC, b)
            key = (self.tid, self.jid, seq, (lr & 7, lr >> 3, fl, session, t, up, boot))
            sim.attempts[key] = (lr & 7, lr >> 3, session)
            sim.written_at[key] = sim.now
            if not torn:
                sim.stats["journaled"] += 1
        elif off < journalmod.DATA_AT and len(b) == journalmod.META_LEN and b[:2] == b"HJ":
            if torn:
                return
            acked = struct.unpack_from(">I", b, 10)[0]
            jid = struct.unpack_from(">I", b, 20)[0] if b[2] >= 2 else 0
            if jid != self.jid or acked < self.acked_seen:
                # a formatted, wiped or restored journal: its own ack point
                self.jid, self.acked_seen = jid, acked
            elif acked > self.acked_seen:
                if not self.trusted_free and self.flash is not None:
                    sim.check_ack(self, self.acked_seen, acked, jid, bytes(self.flash.data))
                self.acked_seen = acked

    def record_at(self, flash: bytes, jid: int, seq: int) -> tuple[int, int, int, tuple[int, ...]] | None:
        """The whole record for ``seq`` in a flash image, as an attempt key."""
        cap = self.term.journal.capacity if self.term is not None else self.sim.plan.capacity
        off = journalmod.DATA_AT + ((seq - 1) % cap) * journalmod.REC_LEN
        b = flash[off : off + journalmod.REC_LEN]
        if len(b) != journalmod.REC_LEN or crc16(b[:22]) != (b[22] << 8 | b[23]):
            return None
        s, lr, fl, session, t, up, boot = struct.unpack_from(_REC, b)
        if s != seq:
            return None
        return (self.tid, jid, s, (lr & 7, lr >> 3, fl, session, t, up, boot))

    def erase(self, durable: bytearray, survives: Callable[[Any], bool], now: int) -> None:
        """Power off, put ``durable`` on the flash chip (empty: erased), boot."""
        was_on = self.on
        self.term = None
        self.on = False
        self.sim.destroyed(self, survives)
        self.durable = durable
        self.reset_cause = 1
        if was_on:
            self.sim.at(now + self.sim.rng.randint(500, 5000), lambda: self.boot(self.sim.now))

    def power_cut(self, now: int) -> None:
        self.term = None
        self.on = False
        self.reset_cause = 0
        self.sim.at(now + self.sim.rng.randint(200, 5000), lambda: self.boot(self.sim.now))

    def step(self, now: int) -> None:
        if not self.on or self.term is None:
            return
        try:
            self.term.step(self.ticks(now))
        except PowerCut:
            self.sim.count("write_cut")
            self.power_cut(now)

    def press(self, button: int) -> None:
        if self.on and self.board is not None:
            self.board.mask |= 1 << button
            self.sim.at(self.sim.now + PRESS_HOLD_MS, lambda: self.release(button))

    def release(self, button: int) -> None:
        if self.board is not None:
            self.board.mask &= ~(1 << button)


    def heal(self) -> None:
        """The faults stop: the wires are clean, the cable is in, no cut is armed."""
        self.up.faulty = self.down.faulty = False
        self.plugged = True
        self.cut_next_write = 0
        if self.flash is not None:
            self.flash.cut_in = 0


# ---------------------------------------------------------------- faults


def schedule_faults(sim: Sim, end: int) -> None:
    """Unplugs, power cuts and torn writes at random terminals before ``end``."""
    r = sim.rng
    for _ in range(sim.plan.unplugs):
        vt = r.choice(sim.vts)
        t0 = r.randint(0, end)
        sim.at(t0, _plug(sim, vt, False))
        sim.at(t0 + r.randint(500, 180_000), _plug(sim, vt, True))
    for _ in range(sim.plan.power_cuts):
        vt = r.choice(sim.vts)
        sim.at(r.randint(0, end), _cut(sim, vt))
    for _ in range(sim.plan.write_cuts):
        vt = r.choice(sim.vts)
        sim.at(r.randint(0, end), _arm_write_cut(sim, vt, r.randint(1, 6)))


def schedule_journal_faults(sim: Sim, end: int) -> None:
    """Wiped flashes, replaced boards and restored journal images (issue #11)."""
    r = sim.rng
    for _ in range(sim.plan.wipes):
        sim.at(r.randint(0, end), _wipe(sim, r.choice(sim.vts), replace=False))
    for _ in range(sim.plan.replaces):
        sim.at(r.randint(0, end), _wipe(sim, r.choice(sim.vts), replace=True))
    for _ in range(sim.plan.restores):
        vt = r.choice(sim.vts)
        t0 = r.randint(0, end)
        sim.at(t0, _snapshot(vt))
        sim.at(t0 + r.randint(5_000, 120_000), _restore(sim, vt))


def _wipe(sim: Sim, vt: VTerm, replace: bool) -> Callable[[], None]:
    def fire() -> None:
        if not sim.faulty:
            return
        sim.count("board_replaced" if replace else "journal_wiped")
        if replace:
            vt.board_name = "vopr-new"  # the replacement board
        vt.erase(bytearray(), lambda key: False, sim.now)

    return fire


def _snapshot(vt: VTerm) -> Callable[[], None]:
    def fire() -> None:
        vt.images.append((vt.jid, bytes(vt.durable)))

    return fire


def _restore(sim: Sim, vt: VTerm) -> Callable[[], None]:
    def fire() -> None:
        if not sim.faulty or not vt.images:
            return
        jid, image = vt.images.pop()
        sim.count("journal_restored")
        vt.erase(bytearray(image), lambda key: vt.record_at(image, jid, key[2]) == key, sim.now)

    return fire


def _plug(sim: Sim, vt: VTerm, plugged: bool) -> Callable[[], None]:
    def fire() -> None:
        if sim.faulty or plugged:
            vt.plugged = plugged
            if not plugged:
                sim.count("unplugged")

    return fire


def _cut(sim: Sim, vt: VTerm) -> Callable[[], None]:
    def fire() -> None:
        if sim.faulty and vt.on:
            sim.count("power_cut")
            vt.power_cut(sim.now)

    return fire


def _arm_write_cut(sim: Sim, vt: VTerm, n: int) -> Callable[[], None]:
    def fire() -> None:
        if not sim.faulty:
            return
        if vt.on and vt.flash is not None:
            vt.flash.cut_in = n
        else:
            vt.cut_next_write = n

    return fire
