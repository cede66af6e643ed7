"""Deterministic whole-system simulation (TigerBeetle's VOPR is the model).

What it is for: run the real code of every hop -- the firmware's Terminal
(buttons, Evaluator, Journal, link Session) on a simulated flash chip, the
serial framing, the daemon's sans-IO Core with the real SQLite Store, the
uplink's Outbox/Uplink (cut, sign, deliver, retry) and the reference
provincial receiver's checks (``simulator.province.Store``) -- in ONE process
on ONE virtual clock, with faults drawn from ONE seed:

* serial bytes dropped, duplicated, reordered, corrupted; cables unplugged
* a power cut at an arbitrary time or in the middle of a flash write (the
  terminal reboots from what the flash chip really holds)
* the daemon crashing before its commit, or between commit and ACK (the core
  is rebuilt from the SQLite file, as a restarted daemon does)
* the uplink crashing; the province down; the province's answer lost after it
  committed a batch
* clock skew: terminal tick counters that start near their wrap and run fast
  or slow, a daemon clock and a case system clock that are off

Invariants, checked while running and at the end:

* ``ack_unstored``   no ACK reaches a terminal for a rating not in SQLite
* ``lost``           every rating whose THANKS was shown reaches the receiver
* ``duplicate``      ... exactly once (the receiver refuses a second copy)
* ``binding``        ... with its values and the case (办件) it was armed for
* ``phantom``        the receiver holds nothing a terminal did not write
* ``rejected``       the receiver never rejects a batch (signature, order,
                     chain continuity, province rules)
* ``chain``          the daemon's local hash chain verifies at the end
* ``liveness``       after the faults stop, everything drains (journals empty)

A failure raises SimFailure naming the seed; ``run(seed)`` again replays the
same run to the same failure (nothing reads a wall clock or the OS's
randomness in a way that changes what happens).

What it must never do: change the code under test.  It drives it from
outside: a board (firmware/board_sim.SimBoard) with a simulated serial port
and flash file, the daemon's documented shell calls (receive, commit,
committed), the uplink's Uplink with an in-process sink.  The one patch is
``journal._sync_default`` (os.sync) while a run is on: the simulated flash
makes ``flush`` its durability point, and a real os.sync per simulated write
would only make the run slow.

``bug`` (test-only switch) breaks one rule on purpose, to prove the checker
catches it: ``ack_before_commit`` (the daemon sends ACKs before its commit)
or ``free_before_ack`` (the terminal frees a journal slot once a frame is
sent).
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import shutil
import sqlite3
import struct
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haochaping.daemon import core as coremod
from haochaping.daemon import keys
from haochaping.daemon.store import NewRating, Store, Stored
from haochaping.daemon.uplink import delivery
from haochaping.daemon.uplink import runner as uplink_runner
from haochaping.firmware import board_sim, links, terminal, ui
from haochaping.firmware import journal as journalmod
from haochaping.protocol import errors, messages, serial
from haochaping.protocol.auth import Key
from haochaping.simulator import province

TICK_MS = 50  # one turn of every main loop
PRESS_HOLD_MS = 100  # a button is held this long (debounce is 30 ms)
UPLINK_EVERY_MS = 500  # the uplink loop's turn
MAX_JUMP_MS = 1000  # when nothing is in flight, the clock may skip ahead this far
HEAL_MAX_MS = 15 * 60 * 1000  # after the faults stop, everything drains within this
HALL = "sim-hall"
BUGS = ("ack_before_commit", "free_before_ack")
EPOCH_MS = 1_795_600_000_000  # virtual t=0 on the daemon's UTC clock (2026-11-26)
TICKS_MASK = ui.TICKS_PERIOD - 1


class SimFailure(Exception):
    """An invariant broke.  ``str()`` is the same on every replay of the seed."""

    def __init__(self, seed: int, at_ms: int, invariant: str, detail: str) -> None:
        super().__init__(seed, at_ms, invariant, detail)
        self.seed, self.at_ms, self.invariant, self.detail = seed, at_ms, invariant, detail

    def __str__(self) -> str:
        return f"seed {self.seed}: invariant {self.invariant!r} broken at t={self.at_ms} ms: {self.detail}"


class PowerCut(Exception):
    """The simulated flash lost power in the middle of a write."""


# ---------------------------------------------------------------- fault plan


@dataclass
class Plan:
    """What one seed does: sizes and fault rates (swarm testing: each fault
    kind is on or off per seed, so rare combinations get runs of their own)."""

    terminals: int
    cases: int  # per terminal
    capacity: int
    no_case_record: bool
    drop: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    byte_loss: float = 0.0
    reorder: float = 0.0
    unplugs: int = 0
    power_cuts: int = 0
    write_cuts: int = 0
    daemon_crashes: int = 0
    crash_after_commit: float = 0.0
    uplink_crashes: int = 0
    outages: int = 0
    disk_fulls: int = 0  # windows in which every commit fails with StoreFull
    mqtt_terminals: int = 0  # the first ones talk MQTT-style (one frame per message), not serial
    cancel_rate: float = 0.0  # share of cases the business system withdraws (DISARM)
    ack_lost: float = 0.0
    skew: bool = False
    batch_size: int = 5
    case_gap_ms: tuple[int, int] = (4000, 40_000)  # between two cases at one window
    faults: list[str] = field(default_factory=list)

    @classmethod
    def day(cls, terminals: int = 20, hours: float = 8.0) -> Plan:
        """A fault-free working day: a case every 1-5 minutes at every window."""
        gap = (60_000, 300_000)
        return cls(
            terminals=terminals,
            cases=max(1, int(hours * 3_600_000 / ((gap[0] + gap[1]) / 2))),
            capacity=2000,
            no_case_record=False,
            batch_size=200,
            case_gap_ms=gap,
        )

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        p = cls(
            terminals=rng.randint(1, 3),
            cases=rng.randint(4, 14),
            capacity=rng.choice((2, 4, 8, 64, 2000)),
            no_case_record=rng.random() < 0.5,
            batch_size=rng.choice((1, 3, 5, 20)),
        )

        def on(name: str) -> bool:
            if rng.random() < 0.5:
                p.faults.append(name)
                return True
            return False

        if on("drop"):
            p.drop = rng.uniform(0.01, 0.15)
        if on("dup"):
            p.dup = rng.uniform(0.01, 0.15)
        if on("corrupt"):
            p.corrupt = rng.uniform(0.01, 0.1)
        if on("byte_loss"):
            p.byte_loss = rng.uniform(0.01, 0.1)
        if on("reorder"):
            p.reorder = rng.uniform(0.02, 0.2)
        if on("unplug"):
            p.unplugs = rng.randint(1, 4)
        if on("power_cut"):
            p.power_cuts = rng.randint(1, 3)
        if on("write_cut"):
            p.write_cuts = rng.randint(1, 4)
        if on("daemon_crash"):
            p.daemon_crashes = rng.randint(1, 4)
            p.crash_after_commit = rng.uniform(0.3, 1.0)
        if on("uplink_crash"):
            p.uplink_crashes = rng.randint(1, 3)
        if on("province_outage"):
            p.outages = rng.randint(1, 3)
        if on("ack_lost"):
            p.ack_lost = rng.uniform(0.05, 0.5)
        p.skew = on("clock_skew")
        if on("disk_full"):
            p.disk_fulls = rng.randint(1, 3)
        if on("mqtt"):
            p.mqtt_terminals = rng.randint(1, p.terminals)
        if on("cancel"):
            p.cancel_rate = rng.uniform(0.05, 0.3)
        return p


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


# ---------------------------------------------------------------- terminal


class SimBoard(board_sim.SimBoard):
    def __init__(self, vt: VTerm, flash: Flash) -> None:
        super().__init__(flash, name="vopr", reset_cause=vt.reset_cause)
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
        self.acked_seen = 0  # highest ack point written to flash
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
            seq, lr, _fl, session = struct.unpack_from(">IBBI", b)
            sim.attempts[(self.tid, seq)] = (lr & 7, lr >> 3, session)
            if not torn:
                sim.stats["journaled"] += 1
        elif off < journalmod.DATA_AT and len(b) == journalmod.META_LEN and b[:2] == b"HJ":
            acked = struct.unpack_from(">I", b, 10)[0]
            if not torn and acked > self.acked_seen:
                if not self.trusted_free:
                    sim.check_ack(self, self.acked_seen, acked)
                self.acked_seen = acked

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


# ---------------------------------------------------------------- daemon


class Daemon:
    """The daemon's shell around Core and Store, as common.md describes it:
    receive, then ONE commit for the group, then ACKs."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.store: Store | None = None
        self.core: coremod.Core | None = None
        self.decoders: dict[int, serial.Decoder] = {}
        self.up = False
        self.starts = 0

    def start(self, now: int) -> None:
        sim = self.sim
        self.store = Store(sim.db_path)
        self.store.next_daemon_start()
        terms = self.store.start_terminals()
        sessions = []
        for tok, case_id, win, tid, armed, expires, cancelled in self.store.sessions_since(
            now - coremod.SESSION_KEEP_MS
        ):
            sessions.append(
                coremod.Session(tok, case_id, win, tid, armed, expires, cancelled is not None)
            )
        self.core = coremod.Core(terms, sessions, sim.config)
        self.decoders = {vt.tid: serial.Decoder() for vt in sim.vts}
        self.up = True
        self.starts += 1

    def crash(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = None
        self.core = None
        self.up = False

    def now(self) -> int:
        return EPOCH_MS + self.sim.now + self.sim.daemon_skew

    def tick(self) -> None:
        if not self.up or self.core is None or self.store is None:
            return
        sim, core, now = self.sim, self.core, self.now()
        group: list[NewRating] = []
        refusals: list[tuple[int, str, int | None, str]] = []
        for vt in sim.vts:
            chunks = vt.up.due(sim.now)
            if not chunks:
                continue
            frames: list[bytes] = []
            if vt.mqtt:
                source = f"mqtt:{vt.tid:08x}"
                frames = chunks  # one frame per message
            else:
                source = f"sim:{vt.index}"
                dec = self.decoders[vt.tid]
                for c in chunks:
                    dec.receive_data(c)
                while True:
                    try:
                        f = dec.next_event()
                    except errors.ProtocolError as e:
                        refusals.append((now, source, None, coremod.refusal_reason(e)))
                        continue
                    if f is None:
                        break
                    frames.append(bytes(f))
            for f in frames:
                out = core.receive(source, f, now, bound=not vt.mqtt)
                if out.refused:
                    refusals.append((now, source, out.terminal_id, out.refused))
                for tid, frame in out.send:
                    sim.daemon_sent(tid, frame)
                group.extend(out.store)
        upd, boots = core.take_updates()
        if not (group or upd or boots or refusals):
            return
        if sim.bug == "ack_before_commit" and group:
            for tid, frame in core.committed([Stored(r, 0) for r in group], now):
                sim.daemon_sent(tid, frame)
        if sim.crash_now("before_commit"):
            return
        if sim.disk_full and sim.faulty:
            # What the service does on StoreFull: nothing was committed, keep
            # the terminal state for the next commit, tell the terminals.
            core.restore_updates(upd, boots)
            for tid, frame in core.failed(group):
                sim.daemon_sent(tid, frame)
            sim.count("commits_refused_disk_full")
            return
        stored = self.store.commit(group, now, upd, boots, refusals)
        sim.stats["stored"] += sum(1 for s in stored if s.id is not None)
        if group and sim.crash_now("after_commit"):
            return
        if sim.bug != "ack_before_commit":
            for tid, frame in core.committed(stored, now):
                sim.daemon_sent(tid, frame)

    def cancel(self, token: int) -> None:
        """The business system withdraws a case: the session is cancelled
        durably, then DISARM goes out."""
        if not self.up or self.core is None or self.store is None or self.sim.disk_full:
            return
        now = self.now()
        if self.store.cancel_session(token, now):
            self.sim.cancelled[token] = now
            self.sim.count("cases_cancelled")
        for tid, frame in self.core.cancel(token):
            self.sim.daemon_sent(tid, frame)

    def post_case(self, vt: VTerm, case_no: str, token: int) -> bool:
        """The window business system's "case finished at window W"."""
        if not self.up or self.core is None or self.store is None or self.sim.disk_full:
            return False
        sim = self.sim
        now = self.now()
        service_ms = EPOCH_MS + sim.now + sim.case_skew
        case = {
            "case_no": case_no,
            "item_code": f"11440000MB2C{len(sim.cases) + 1:05d}",
            "item_name": "居民身份证换领",
            "dept_code": "440000",
            "dept_name": "市公安局",
            "area_code": "440100",
            "window_no": vt.window_no,
            "window_name": f"综合窗口{vt.index + 1}",
            "staff_id": f"S{vt.index + 1:03d}",
            "staff_name": f"工作人员{vt.index + 1}",
            "service_ms": service_ms,
        }
        case_id = self.store.add_case(case, None, now)
        try:
            s, frames = self.core.arm(vt.window_no, case_id, case_no, token, now, sim.arm_timeout_s)
        except coremod.ArmError:
            sim.count("arm_refused")
            return False
        self.store.add_session(token, case_id, vt.window_no, vt.tid, s.armed_ms, s.expires_ms)
        for tid, frame in frames:
            sim.daemon_sent(tid, frame)
        return True


# ---------------------------------------------------------------- province


class Sink:
    """The uplink's sink: the reference receiver's checks, in process."""

    state = "acked"

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def deliver(self, batch_id: str, body: bytes) -> str:
        sim = self.sim
        if sim.province_down:
            sim.count("province_refused")
            raise delivery.Retryable("province down (simulated outage)")
        try:
            ack = sim.receiver.accept(body, sim.now)
        except province.Reject as e:
            sim.fail("rejected", f"the receiver rejected batch: {e.code} {e}")
            raise delivery.Rejected(e.status, str(e)) from e
        sim.stats["batches_" + ack["status"]] += 1
        if sim.faulty and sim.rng.random() < sim.plan.ack_lost:
            sim.count("province_ack_lost")
            raise delivery.Retryable("answer lost (simulated)")
        return json.dumps(ack)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the run


@dataclass
class Result:
    seed: int
    plan: Plan
    virtual_ms: int
    stats: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "virtual_ms": self.virtual_ms,
            "terminals": self.plan.terminals,
            "faults": self.plan.faults,
            **self.stats,
        }


class Sim:
    def __init__(
        self, seed: int, workdir: Path, bug: str | None = None, plan: Plan | None = None
    ) -> None:
        if bug is not None and bug not in BUGS:
            raise ValueError("bug is one of " + ", ".join(BUGS))
        self.seed = seed
        self.bug = bug
        self.rng = random.Random(seed)
        self.plan = plan if plan is not None else Plan.draw(self.rng)
        self.next_uplink = 0
        self.turns = 0
        self.now = 0
        self.events: list[tuple[int, int, Callable[[], None]]] = []
        self.n_events = 0
        self.faulty = True
        self.stats: dict[str, int] = {
            "presses": 0,
            "thanks": 0,
            "journaled": 0,
            "stored": 0,
            "acked_to_terminal": 0,
            "batches_accepted": 0,
            "batches_duplicate": 0,
        }
        self.daemon_skew = self.rng.randint(-90_000, 90_000) if self.plan.skew else 0
        self.case_skew = self.rng.randint(-30_000, 30_000) if self.plan.skew else 0
        self.arm_timeout_s = self.rng.choice((20, 60, 120))
        cfg: list[tuple[int, int]] = [
            (messages.C_NO_CASE_POLICY, 1 if self.plan.no_case_record else 0)
        ]
        cfg.append((messages.C_REASON_TIMEOUT_S, self.rng.choice((5, 15))))
        cfg.append((messages.C_THANKS_MS, self.rng.choice((1000, 2000))))
        self.config = cfg
        # what the terminals did: (tid, seq) -> (level, reason, session)
        self.attempts: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.confirmed: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.cases: dict[int, str] = {}  # session token -> case_no
        self.cancelled: dict[int, int] = {}  # session token -> daemon ms of the cancellation
        # files
        self.dir = workdir
        self.db_path = str(workdir / "hall.sqlite")
        keys_dir = workdir / "keys"
        info = keys.init(keys_dir)
        pdir = workdir / "province"
        (pdir / "keys").mkdir(parents=True)
        shutil.copy(keys_dir / keys.KEYRING / (info.key_id + ".pem"), pdir / "keys")
        self.receiver = province.Store(pdir)
        self.province_down = False
        self.disk_full = False
        self.pending_crashes = 0
        self.next_crash_at = 0
        self.crash_where = "before_commit"
        self.keys_dir = str(keys_dir)
        # the hall
        self.vts: list[VTerm] = []
        for i in range(self.plan.terminals):
            key = bytes(self.rng.getrandbits(8) for _ in range(32))
            self.vts.append(VTerm(self, i, 0x5100_0000 + i * 7 + 1, key))
        setup = Store(self.db_path)
        for vt in self.vts:
            setup.add_terminal(vt.tid, vt.key, vt.window_no, 0)
        setup.close()
        self.daemon = Daemon(self)
        self.uplink: uplink_runner.Uplink | None = None
        self.check_conn = sqlite3.connect(self.db_path, isolation_level=None)

    # -------------------------------------------------------- scheduling

    def at(self, t: int, fn: Callable[[], None]) -> None:
        self.n_events += 1
        heapq.heappush(self.events, (t, self.n_events, fn))

    def count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def fail(self, invariant: str, detail: str) -> None:
        raise SimFailure(self.seed, self.now, invariant, detail)

    # -------------------------------------------------------- hooks

    def check_ack(self, vt: VTerm, acked: int, upto: int) -> None:
        if upto <= acked:
            return
        self.stats["acked_to_terminal"] += upto - acked
        have = {
            r[0]
            for r in self.check_conn.execute(
                "SELECT seq FROM ratings WHERE terminal_id = ? AND seq > ? AND seq <= ?",
                (vt.tid, acked, upto),
            )
        }
        for s in range(acked + 1, upto + 1):
            if s not in have and (vt.tid, s) in self.attempts:
                self.fail(
                    "ack_unstored",
                    f"terminal {vt.tid:08x} got ACK {upto} but seq {s} is not in SQLite",
                )

    def thanks(self, vt: VTerm, t: terminal.Terminal) -> None:
        key = (vt.tid, t.last_seq)
        if key not in self.attempts:
            self.fail(
                "thanks_unwritten", f"THANKS for {key[0]:08x} seq {key[1]} with no journal write"
            )
        self.confirmed[key] = self.attempts[key]
        self.stats["thanks"] += 1

    def terminal_wrote(self, vt: VTerm, data: bytes) -> None:
        """Bytes (serial) or a frame (MQTT) the terminal put on its link."""
        if not vt.plugged:
            return
        vt.up.send(data, self.now)
        if self.bug == "free_before_ack" and vt.term is not None:
            # The broken rule: a frame on the wire counts as delivered.
            j = vt.term.journal
            vt.trusted_free = True
            try:
                j.ack(j.head - 1)
            finally:
                vt.trusted_free = False

    def daemon_sent(self, tid: int, frame: bytes) -> None:
        for vt in self.vts:
            if vt.tid == tid and vt.plugged:
                vt.down.send(frame if vt.mqtt else serial.encode(frame), self.now)

    def crash_now(self, where: str) -> bool:
        """Maybe crash the daemon at this point of its commit path."""
        if not self.faulty or self.pending_crashes <= 0:
            return False
        if self.now < self.next_crash_at:
            return False
        if where != self.crash_where:
            return False
        self.pending_crashes -= 1
        self.next_crash_at = self.now + self.rng.randint(10_000, 60_000)
        self._draw_crash_where()
        self.count("daemon_crash_" + where)
        self.daemon.crash()
        self.at(
            self.now + self.rng.randint(100, 8000), lambda: self.daemon.start(self.daemon.now())
        )
        return True

    # -------------------------------------------------------- scenario

    def _schedule(self) -> int:
        """Cases, citizens and faults; returns when the busy part ends."""
        r = self.rng
        end = 0
        used: set[int] = set()
        for vt in self.vts:
            t = r.randint(3000, 8000)
            for k in range(self.plan.cases):
                t += r.randint(*self.plan.case_gap_ms)
                token = r.randint(1, 0xFFFFFFFF)
                while token in used:
                    token = r.randint(1, 0xFFFFFFFF)
                used.add(token)
                case_no = f"44010020261125{vt.index:02d}{k:05d}"
                self.at(t, self._case(vt, case_no, token))
                if r.random() < 0.15:  # someone presses with no case armed
                    self.at(t - r.randint(500, 3000), self._citizen_press(vt, r.randrange(5)))
            end = max(end, t + 20_000)
        for _ in range(self.plan.unplugs):
            vt = r.choice(self.vts)
            t0 = r.randint(0, end)
            self.at(t0, self._plug(vt, False))
            self.at(t0 + r.randint(500, 180_000), self._plug(vt, True))
        for _ in range(self.plan.power_cuts):
            vt = r.choice(self.vts)
            self.at(r.randint(0, end), self._cut(vt))
        for _ in range(self.plan.write_cuts):
            vt = r.choice(self.vts)
            self.at(r.randint(0, end), self._arm_write_cut(vt, r.randint(1, 6)))
        for _ in range(self.plan.outages):
            t0 = r.randint(0, end)
            self.at(t0, self._province(False))
            self.at(t0 + r.randint(5_000, 120_000), self._province(True))
        for _ in range(self.plan.disk_fulls):
            t0 = r.randint(0, end)
            self.at(t0, self._disk(True))
            self.at(t0 + r.randint(2_000, 60_000), self._disk(False))
        for _ in range(self.plan.uplink_crashes):
            self.at(r.randint(0, end), self._uplink_crash)
        self.pending_crashes = self.plan.daemon_crashes
        self.next_crash_at = r.randint(0, end // 2 + 1)
        self._draw_crash_where()
        return end

    def _draw_crash_where(self) -> None:
        after = self.rng.random() < self.plan.crash_after_commit
        self.crash_where = "after_commit" if after else "before_commit"

    def _case(self, vt: VTerm, case_no: str, token: int) -> Callable[[], None]:
        def fire() -> None:
            self.cases[token] = case_no
            if not self.daemon.post_case(vt, case_no, token):
                return
            r = self.rng
            u = r.random()
            if u < 0.08:
                return  # walks away
            level = r.choices((5, 4, 3, 2, 1), weights=(70, 15, 7, 5, 3))[0]
            t = self.now + r.randint(800, 6000)
            self.at(t, self._citizen_press(vt, 5 - level))
            if level <= 2 and r.random() < 0.7:
                self.at(t + r.randint(600, 4000), self._citizen_press(vt, r.randrange(5)))
            if r.random() < 0.1:  # presses again during THANKS
                self.at(t + 300, self._citizen_press(vt, r.randrange(5)))
            if r.random() < self.plan.cancel_rate:  # the case is withdrawn, maybe mid-rating
                self.at(self.now + r.randint(0, 9000), lambda: self.daemon.cancel(token))

        return fire

    def _citizen_press(self, vt: VTerm, button: int) -> Callable[[], None]:
        def fire() -> None:
            self.stats["presses"] += 1
            vt.press(button)

        return fire

    def _plug(self, vt: VTerm, plugged: bool) -> Callable[[], None]:
        def fire() -> None:
            if self.faulty or plugged:
                vt.plugged = plugged
                if not plugged:
                    self.count("unplugged")

        return fire

    def _cut(self, vt: VTerm) -> Callable[[], None]:
        def fire() -> None:
            if self.faulty and vt.on:
                self.count("power_cut")
                vt.power_cut(self.now)

        return fire

    def _arm_write_cut(self, vt: VTerm, n: int) -> Callable[[], None]:
        def fire() -> None:
            if not self.faulty:
                return
            if vt.on and vt.flash is not None:
                vt.flash.cut_in = n
            else:
                vt.cut_next_write = n

        return fire

    def _province(self, up: bool) -> Callable[[], None]:
        def fire() -> None:
            if self.faulty or up:
                self.province_down = not up
                if not up:
                    self.count("province_outage")

        return fire

    def _disk(self, full: bool) -> Callable[[], None]:
        def fire() -> None:
            self.disk_full = full and self.faulty
            if self.disk_full:
                self.count("disk_full")

        return fire

    def _uplink_crash(self) -> None:
        if self.faulty and self.uplink is not None:
            self.count("uplink_crash")
            self.uplink.close()
            self.uplink = None

    # -------------------------------------------------------- running

    def _uplink_step(self) -> None:
        if not self.daemon.up:
            if self.uplink is not None:
                self.uplink.close()
                self.uplink = None
            return
        if self.uplink is None:
            cfg = uplink_runner.UplinkConfig(
                db=self.db_path,
                hall_id=HALL,
                keys_dir=self.keys_dir,
                url="http://province.invalid/batches",
                batch_size=self.plan.batch_size,
                max_age_s=1.0,
                backoff_base_s=0.5,
                backoff_cap_s=8.0,
                min_free_bytes=0,
                seed=self.rng.randint(0, 1 << 30),
            )
            self.uplink = uplink_runner.Uplink(
                cfg, clock=lambda: self.daemon.now() / 1000.0, sink=Sink(self)
            )
            self.uplink.next_alarm_check = float("inf")  # no disk probes: not simulated
        self.uplink.step()

    def _turn(self) -> None:
        while self.events and self.events[0][0] <= self.now:
            _, _, fn = heapq.heappop(self.events)
            fn()
        for vt in self.vts:
            if vt.plugged:
                data = vt.down.due(self.now)
                if data and vt.on and vt.board is not None:
                    for d in data:
                        vt.board.port.feed(d)
            else:
                vt.down.due(self.now)
            vt.step(self.now)
            if not vt.plugged:
                vt.up.due(self.now)  # a pulled cable carries nothing
        if self.daemon.up:
            self.daemon.tick()
        else:
            for vt in self.vts:
                vt.up.due(self.now)
        if self.now >= self.next_uplink:
            self.next_uplink = self.now + UPLINK_EVERY_MS
            self._uplink_step()
        self.turns += 1

    def _advance(self) -> None:
        """The next turn: one tick, or, when nothing is in flight anywhere, a
        jump to the next thing due (an event, a deadline, a STATUS), at most
        MAX_JUMP_MS: what the firmware does at each step is unchanged."""
        nxt = self.now + MAX_JUMP_MS
        if self.events:
            nxt = min(nxt, self.events[0][0])
        nxt = min(nxt, self.next_uplink)
        for vt in self.vts:
            if vt.up.q or vt.down.q:
                nxt = 0
                break
            t = vt.term
            if not vt.on or t is None or vt.board is None:
                continue
            s = t.session
            if vt.board.mask or s.state != 2 or s.inflight or s.sent_upto < t.journal.head - 1:
                nxt = 0
                break
            if vt.board.port.pending():
                nxt = 0
                break
            ticks = vt.ticks(self.now)
            d = t.ev.deadline_in(ticks)
            if d >= 0:
                nxt = min(nxt, self.now + int(d / vt.rate))
            st = ui.ticks_diff(s.status_at + s.status_ms, ticks)
            nxt = min(nxt, self.now + int(max(st, 0) / vt.rate))
        self.now = max(self.now + TICK_MS, nxt)

    def run(self) -> Result:
        for vt in self.vts:
            vt.boot(0)
        self.daemon.start(self.daemon.now())
        end = self._schedule()
        while self.now < end:
            self._advance()
            self._turn()
        # Heal: the faults stop; everything must drain.
        self.faulty = False
        for vt in self.vts:
            vt.up.faulty = vt.down.faulty = False
            vt.plugged = True
            vt.cut_next_write = 0
            if vt.flash is not None:
                vt.flash.cut_in = 0
        self.province_down = False
        self.disk_full = False
        if not self.daemon.up:
            self.daemon.start(self.daemon.now())
        heal_end = self.now + HEAL_MAX_MS
        next_check = self.now
        while True:
            self._advance()
            self._turn()
            if self.now >= next_check:
                next_check = self.now + 1000
                if self._drained():
                    break
            if self.now >= heal_end:
                self._final_check()
                self.fail(
                    "liveness",
                    f"not drained {HEAL_MAX_MS // 1000} s after the faults stopped: {self._backlog()}",
                )
        self._final_check()
        self.stats["turns"] = self.turns
        return Result(self.seed, self.plan, self.now, dict(self.stats))

    def _drained(self) -> bool:
        for vt in self.vts:
            if not vt.on or vt.term is None or vt.term.journal.used:
                return False
        n = self.receiver.stats()["records"]
        stored = self.check_conn.execute("SELECT count(*) FROM ratings").fetchone()[0]
        return bool(n == stored)

    def _backlog(self) -> str:
        parts = []
        for vt in self.vts:
            used = vt.term.journal.used if vt.term is not None else -1
            parts.append(f"{vt.tid:08x} journal {used} on={vt.on}")
        stored = self.check_conn.execute("SELECT count(*) FROM ratings").fetchone()[0]
        parts.append(f"stored {stored}, at receiver {self.receiver.stats()['records']}")
        return "; ".join(parts)

    def _final_check(self) -> None:
        recs: dict[tuple[int, int], dict[str, Any]] = {}
        for rec in self.receiver.records(HALL):
            key = (int(rec["terminalId"], 16), int(rec["seq"]))
            if key in recs:
                self.fail("duplicate", f"{key[0]:08x} seq {key[1]} reached the receiver twice")
            recs[key] = rec
        for key, (level, reason, session) in sorted(self.confirmed.items()):
            rec = recs.get(key)
            if rec is None:
                self.fail(
                    "lost", f"THANKS shown for {key[0]:08x} seq {key[1]}, not at the receiver"
                )
                return
            self._check_binding(key, rec, level, reason, session)
        for key, rec in sorted(recs.items()):
            att = self.attempts.get(key)
            if att is None:
                self.fail(
                    "phantom", f"the receiver has {key[0]:08x} seq {key[1]} that no terminal wrote"
                )
                return
            self._check_binding(key, rec, *att)
        if self.daemon.store is not None:
            bad = self.daemon.store.verify_chain()
            if bad is not None:
                self.fail("chain", f"local chain breaks at rating id {bad}")
        self.stats["at_receiver"] = len(recs)
        self.stats["daemon_starts"] = self.daemon.starts

    def _check_binding(
        self, key: tuple[int, int], rec: dict[str, Any], level: int, reason: int, session: int
    ) -> None:
        o = rec["origin"]
        want_case = self.cases.get(session) if session else None
        if session in self.cancelled:
            # The daemon's rule: a cancelled session binds only the ratings
            # it stored before the cancellation.
            row = self.check_conn.execute(
                "SELECT received_ms FROM ratings WHERE terminal_id = ? AND seq = ?", key
            ).fetchone()
            if row is None or row[0] >= self.cancelled[session]:
                want_case = None
        got = (o["level"], o["reason"], o["session"] or 0, rec["projectNo"])
        want = (level, reason, session, want_case)
        if got != want:
            self.fail(
                "binding",
                f"{key[0]:08x} seq {key[1]}: receiver has (level, reason, session, case) {got!r}, "
                f"terminal wrote {want!r}",
            )

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.close()
        self.daemon.crash()
        self.receiver.close()
        self.check_conn.close()


def _workdir_base() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def run(
    seed: int, bug: str | None = None, keep: str | None = None, plan: Plan | None = None
) -> Result:
    """One deterministic run; raises SimFailure.  ``keep``: run in this
    directory and leave the files (SQLite, receiver) for inspection."""
    if keep is not None:
        d = Path(keep)
        d.mkdir(parents=True, exist_ok=True)
        return _run_in(seed, bug, d, plan)
    with tempfile.TemporaryDirectory(prefix="hcp-vopr-", dir=_workdir_base()) as tmp:
        return _run_in(seed, bug, Path(tmp), plan)


def _run_in(seed: int, bug: str | None, d: Path, plan: Plan | None = None) -> Result:
    with _no_os_sync(), _quiet():
        sim = Sim(seed, d, bug, plan)
        try:
            return sim.run()
        except SimFailure:
            raise
        except Exception as e:
            # The code under test raised: that is a failure of this seed too.
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise SimFailure(
                seed, sim.now, "exception",
                f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})",
            ) from e  # fmt: skip
        finally:
            sim.close()


@contextmanager
def _quiet() -> Iterator[None]:
    """The uplink logs every retry; thousands of simulated ones are noise."""
    log = logging.getLogger("haochaping")
    saved = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(saved)


@dataclass
class CheckReport:
    seeds: list[int]
    passed: int
    failures: list[SimFailure]
    seconds: float
    totals: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": len(self.seeds),
            "first_seed": self.seeds[0] if self.seeds else None,
            "passed": self.passed,
            "failed": len(self.failures),
            "failures": [str(f) for f in self.failures],
            "seconds": round(self.seconds, 2),
            "totals": self.totals,
        }


def _one(seed: int, bug: str | None) -> Result | SimFailure:
    try:
        return run(seed, bug)
    except SimFailure as e:
        return e


def check(
    seeds: list[int],
    bug: str | None = None,
    progress: Callable[[int, Result | SimFailure], None] | None = None,
    stop_on_failure: bool = False,
    jobs: int = 1,
) -> CheckReport:
    """Run ``seeds`` (in ``jobs`` processes); the report lists failures by seed.
    Each seed's run is the same whichever process runs it."""
    t0 = time.perf_counter()
    failures: list[SimFailure] = []
    passed = 0
    totals: dict[str, int] = {}

    def take(s: int, res: Result | SimFailure) -> None:
        nonlocal passed
        if isinstance(res, SimFailure):
            failures.append(res)
        else:
            passed += 1
            for k, v in res.stats.items():
                totals[k] = totals.get(k, 0) + v
        if progress is not None:
            progress(s, res)

    if jobs <= 1:
        for s in seeds:
            take(s, _one(s, bug))
            if failures and stop_on_failure:
                break
    else:
        import concurrent.futures as cf
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # nothing inherited from this process
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futs = {pool.submit(_one, s, bug): s for s in seeds}
            for fut in cf.as_completed(futs):
                take(futs[fut], fut.result())
                if failures and stop_on_failure:
                    for f in futs:
                        f.cancel()
                    break
    failures.sort(key=lambda f: f.seed)
    return CheckReport(seeds, passed, failures, time.perf_counter() - t0, totals)
