"""The engine: ``Sim`` runs one seed -- the event queue on the virtual clock,
the scenario (windows post cases, citizens press), the turn of every actor,
and the invariants (see the package docstring), checked while running and at
the end.

What it must never do: read a wall clock or the OS's randomness, or reach
into the code under test beyond the calls its shells make.
"""

from __future__ import annotations

import heapq
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haochaping.daemon import keys
from haochaping.daemon.store import Store
from haochaping.firmware import terminal, ui
from haochaping.protocol import messages, serial
from haochaping.simulator import province
from haochaping.simulator.vopr import province as province_actor
from haochaping.simulator.vopr import terminal as terminal_actor
from haochaping.simulator.vopr.daemon import Daemon
from haochaping.simulator.vopr.plan import BUGS, Plan
from haochaping.simulator.vopr.result import Result, SimFailure
from haochaping.simulator.vopr.terminal import VTerm
from haochaping.simulator.vopr.uplink import HALL, UPLINK_EVERY_MS, UplinkActor
from haochaping.simulator.vopr.world import TICK_MS

# A rating as a terminal wrote it: (terminal, journal, seq, content), content =
# (level, reason, flags, session, device time, uptime ms, boot).  Content is
# part of the key: a restored journal image can write two ratings under one seq.
Attempt = tuple[int, int, int, tuple[int, ...]]

MAX_JUMP_MS = 1000
HUMAN_SLACK_MS = 400 + 1000  # coremod.HUMAN_MIN_MS, plus the ARM's way to the terminal  # when nothing is in flight, the clock may skip ahead this far
HEAL_MAX_MS = 15 * 60 * 1000  # after the faults stop, everything drains within this

__all__ = ["HALL", "Sim"]


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
        # what the terminals did: (tid, journal, seq, record content) -> (level, reason, session)
        self.attempts: dict[Attempt, tuple[int, int, int]] = {}
        self.written_at: dict[Attempt, int] = {}  # virtual ms of the journal write
        self.armed_at: dict[int, list[int]] = {}  # terminal -> virtual ms of each ARM
        self.confirmed: dict[Attempt, tuple[int, int, int]] = {}
        self.cases: dict[int, str] = {}  # session token -> case_no
        self.cancelled: dict[int, int] = {}  # session token -> last rating id stored before its cancel
        # files
        self.dir = workdir
        self.db_path = str(workdir / "hall.sqlite")
        keys_dir = workdir / "keys"
        info = keys.init(keys_dir)
        pdir = workdir / "province"
        (pdir / "keys").mkdir(parents=True)
        shutil.copy(keys_dir / keys.KEYRING / (info.key_id + ".pem"), pdir / "keys")
        self.receiver = province.Store(pdir, refuse_task_codes=(province_actor.REFUSED_ITEM,))
        self.province_down = False
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
        self.uplink = UplinkActor(self)
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

    def held(self, key: Attempt) -> bool:
        """Is this rating (with this content) in the daemon's SQLite?"""
        tid, jid, seq, c = key
        return self.check_conn.execute(
            "SELECT 1 FROM ratings WHERE terminal_id = ? AND journal_id = ? AND seq = ? AND level = ?"
            " AND reason = ? AND flags = ? AND coalesce(session, 0) = ? AND device_time = ?"
            " AND uptime_ms = ? AND boot = ?",
            (tid, jid, seq, *c),
        ).fetchone() is not None

    def check_ack(self, vt: VTerm, acked: int, upto: int, jid: int, flash: bytes) -> None:
        """A meta write moved the ack point: every record it frees (read from
        the flash as the firmware wrote it) must be in SQLite."""
        if upto <= acked:
            return
        self.stats["acked_to_terminal"] += upto - acked
        for s in range(acked + 1, upto + 1):
            key = vt.record_at(flash, jid, s)
            if key is not None and key in self.attempts and not self.held(key):
                self.fail(
                    "ack_unstored",
                    f"terminal {vt.tid:08x} got ACK {upto} of journal {jid:08x} but seq {s}"
                    " is not in SQLite",
                )

    def thanks(self, vt: VTerm, t: terminal.Terminal) -> None:
        rec = t.journal.record(t.last_seq)
        key = None if rec is None else (vt.tid, t.journal.id, rec[0], tuple(rec[1:]))
        if key is None or key not in self.attempts:
            self.fail(
                "thanks_unwritten", f"THANKS for {vt.tid:08x} seq {t.last_seq} with no journal write"
            )
            return
        self.confirmed[key] = self.attempts[key]
        self.stats["thanks"] += 1

    def destroyed(self, vt: VTerm, survives: Callable[[Attempt], bool]) -> None:
        """A technician erased or replaced what the flash held: ratings it held
        that the daemon does not (and that ``survives`` does not keep) are gone
        with it, as a press on a terminal that is off is; count them."""
        for key in [k for k in self.confirmed if k[0] == vt.tid]:
            if not survives(key) and not self.held(key):
                del self.confirmed[key]
                self.count("destroyed_with_the_flash")

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
        # The faults, each scheduled by the actor that suffers it.  The order
        # of these calls is part of every seed's outcome: add new ones last.
        terminal_actor.schedule_faults(self, end)
        province_actor.schedule_faults(self, end)
        self.daemon.schedule_disk_fulls(end)
        self.uplink.schedule_faults(end)
        self.daemon.schedule_crashes(end)
        terminal_actor.schedule_journal_faults(self, end)
        self.daemon.schedule_clock_steps(end)
        return end

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

    # -------------------------------------------------------- running

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
            self.uplink.step()
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
            vt.heal()
        self.province_down = False
        self.daemon.disk_full = False
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
        try:
            held = self.check_conn.execute("SELECT count(*) FROM uplink_held").fetchone()[0]
        except sqlite3.OperationalError:
            held = 0
        return bool(n + held == stored)

    def _backlog(self) -> str:
        parts = []
        for vt in self.vts:
            used = vt.term.journal.used if vt.term is not None else -1
            parts.append(f"{vt.tid:08x} journal {used} on={vt.on}")
        stored = self.check_conn.execute("SELECT count(*) FROM ratings").fetchone()[0]
        parts.append(f"stored {stored}, at receiver {self.receiver.stats()['records']}")
        return "; ".join(parts)

    def _final_check(self) -> None:
        recs: dict[Attempt, dict[str, Any]] = {}
        for rec in self.receiver.records(HALL):
            o = rec["origin"]
            key: Attempt = (o["terminal_id"], o["journal_id"], o["seq"], (o["level"], o["reason"], o["flags"],
                   o["session"] or 0, o["device_time"], o["uptime_ms"], o["boot"]))  # fmt: skip
            if key in recs:
                self.fail("duplicate", f"{_name(key)} reached the receiver twice")
            recs[key] = rec
        held = self._held()
        for key, (level, reason, session) in sorted(self.confirmed.items()):
            got = recs.get(key)
            if key in held:
                if got is not None:
                    self.fail("held", f"{_name(key)} of a refused case reached the receiver")
                continue
            if got is None:
                self.fail("lost", f"THANKS shown for {_name(key)}, not at the receiver")
                return
            self._check_binding(key, got, level, reason, session)
        for key, rec in sorted(recs.items()):
            att = self.attempts.get(key)
            if att is None:
                self.fail("phantom", f"the receiver has {_name(key)} that no terminal wrote")
                return
            self._check_binding(key, rec, *att)
        if not self.plan.skew:
            self._check_clock_flags(recs)
        if self.daemon.store is not None:
            bad = self.daemon.store.verify_chain()
            if bad is not None:
                self.fail("chain", f"local chain breaks at rating id {bad}")
        self.stats["at_receiver"] = len(recs)
        self.stats["daemon_starts"] = self.daemon.starts

    def _held(self) -> set[Attempt]:
        """Ratings bound to a case the province refuses: each must be held
        (withheld, alarmed) in the outbox, and the only ones held."""
        rows = self.check_conn.execute(
            "SELECT r.id, r.terminal_id, r.journal_id, r.seq, r.level, r.reason, r.flags,"
            " coalesce(r.session, 0), r.device_time, r.uptime_ms, r.boot, c.item_code"
            " FROM ratings r LEFT JOIN cases c ON c.id = r.case_id"
        ).fetchall()
        try:
            held_ids = {r[0] for r in self.check_conn.execute(
                "SELECT rating_id FROM uplink_held WHERE state = 'held'")}  # fmt: skip
        except sqlite3.OperationalError:
            held_ids = set()
        refused = {r[0] for r in rows if r[11] == province_actor.REFUSED_ITEM}
        if held_ids != refused:
            self.fail("held", f"held ratings {sorted(held_ids)}, refused cases' ratings {sorted(refused)}")
        if refused:
            self.count("ratings_held", len(refused))
        return {(r[1], r[2], r[3], tuple(r[4:11])) for r in rows if r[0] in refused}

    def _check_clock_flags(self, recs: dict[Attempt, dict[str, Any]]) -> None:
        """Honest terminals, clocks not skewed: no rating may carry a clock
        suspicion (clock_off; too_fast but the terminal's own RAPID;
        clock_clamped unless the daemon's clock was off before its step).
        A fork is exempt: it was written by a restored journal image, whose
        boot numbers may repeat ones of the history the daemon holds, so its
        (boot, uptime) cannot name an instant for sure -- a terminal that
        disagrees with its own history, which is what a flag is for."""
        for key, rec in sorted(recs.items()):
            f = set(rec["flags"])
            if rec["fork"]:
                continue
            bad = {"clock_off"} & f
            if "too_fast" in f and not rec["origin"]["flags"] & messages.F_RAPID:
                # honest only if the terminal really was armed just before
                # (a late citizen of the previous case pressing into a new ARM)
                t = self.written_at.get(key, -1)
                if not any(t - HUMAN_SLACK_MS <= a <= t for a in self.armed_at.get(key[0], ())):
                    bad.add("too_fast")
            if "clock_clamped" in f and not self.plan.clock_steps:
                bad.add("clock_clamped")
            if bad:
                self.fail("clock_flags", f"{_name(key)} carries {sorted(bad)} with no clock at fault")

    def _check_binding(
        self, key: Attempt, rec: dict[str, Any], level: int, reason: int, session: int
    ) -> None:
        o = rec["origin"]
        want_case = self.cases.get(session) if session else None
        if session in self.cancelled and o["id"] > self.cancelled[session]:
            # The daemon's rule: a cancelled session binds only the ratings
            # it stored before the cancellation.
            want_case = None
        got = (o["level"], o["reason"], o["session"] or 0, rec["projectNo"])
        want = (level, reason, session, want_case)
        if got != want:
            self.fail(
                "binding",
                f"{_name(key)}: receiver has (level, reason, session, case) {got!r}, "
                f"terminal wrote {want!r}",
            )

    def close(self) -> None:
        self.uplink.close()
        self.daemon.crash()
        self.receiver.close()
        self.check_conn.close()


def _name(key: Attempt) -> str:
    return f"{key[0]:08x} journal {key[1]:08x} seq {key[2]}"
