"""Actor: the daemon's shell around the real Core and Store, as
daemon/service.py runs them (receive, ONE commit for the group, then ACKs),
and the daemon's faults: a crash before or after its commit (the core is
rebuilt from the SQLite file, as a restarted daemon does) and a full disk
(every commit fails with StoreFull).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from haochaping.daemon import core as coremod
from haochaping.daemon.clock import StepWatch
from haochaping.daemon.store import NewRating, Store, Stored, Updates
from haochaping.protocol import errors, serial
from haochaping.simulator.vopr import province as province_actor
from haochaping.simulator.vopr.world import EPOCH_MS

if TYPE_CHECKING:
    from haochaping.simulator.vopr.engine import Sim
    from haochaping.simulator.vopr.terminal import VTerm


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
        self.disk_full = False
        self.pending_crashes = 0
        self.next_crash_at = 0
        self.crash_where = "before_commit"
        self.watch = StepWatch()

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
        self.core = coremod.Core(terms, sessions, sim.config, self.store.clock_steps())
        self.watch = StepWatch()  # a new process: a new monotonic clock
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
        wall = EPOCH_MS + self.sim.now + self.sim.daemon_skew
        if self.core is not None:
            # the shell's watch, as service.py keeps it: a step of the wall
            # clock against the monotonic one (sim.now) goes to the core
            step = self.watch.observe(wall, self.sim.now)
            if step:
                self.core.clock_stepped(step, wall)
                self.sim.count("daemon_clock_steps_seen")
        return wall

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
                    if out.refused == "replay" and out.send:
                        sim.count("replay_hints_seen")
                for tid, frame in out.send:
                    sim.daemon_sent(tid, frame)
                group.extend(out.store)
        upd = core.take_updates()
        if not (group or upd or refusals):
            return
        if sim.bug == "ack_before_commit" and group:
            for tid, frame in core.committed([Stored(r, 0) for r in group], now):
                sim.daemon_sent(tid, frame)
        if self.crash_now("before_commit"):
            return
        if self.disk_full and sim.faulty:
            # What the service does on StoreFull: nothing was committed, keep
            # the terminal state for the next commit, tell the terminals.
            core.restore_updates(upd)
            for tid, frame in core.failed(group):
                sim.daemon_sent(tid, frame)
            sim.count("commits_refused_disk_full")
            return
        if sim.bug == "no_journal_identity":
            stored = self._commit_as_before_journal_identity(group, now, upd, refusals)
        else:
            stored = self.store.commit(group, now, upd, refusals)
        sim.stats["stored"] += sum(1 for s in stored if s.id is not None)
        forks = sum(1 for s in stored if s.id is not None and s.fork)
        if forks:
            sim.count("forks_stored", forks)
        if group and self.crash_now("after_commit"):
            return
        if sim.bug != "ack_before_commit":
            for tid, frame in core.committed(stored, now):
                sim.daemon_sent(tid, frame)

    def _commit_as_before_journal_identity(
        self, group: list[NewRating], now: int, upd: Updates, refusals: list[Any]
    ) -> list[Stored]:
        """Test-only (bug ``no_journal_identity``): the store as it was before
        journal identity -- a record whose (terminal, seq) is held is taken for
        a duplicate, whatever its journal or content -- to show the checks
        catch what that lost."""
        if self.store is None:
            return []
        seen = set(self.store.conn.execute("SELECT terminal_id, seq FROM ratings").fetchall())
        new: list[NewRating] = []
        out: list[Stored | None] = []
        for r in group:
            if (r.terminal_id, r.seq) in seen:
                out.append(Stored(r, None))
            else:
                seen.add((r.terminal_id, r.seq))
                new.append(r)
                out.append(None)
        done = iter(self.store.commit(new, now, upd, refusals))
        return [x if x is not None else next(done) for x in out]

    def cancel(self, token: int) -> None:
        """The business system withdraws a case: the session is cancelled
        durably, then DISARM goes out."""
        if not self.up or self.core is None or self.store is None or self.disk_full:
            return
        now = self.now()
        if self.store.cancel_session(token, now):
            # the watermark: ratings stored after this one come after the cancel
            self.sim.cancelled[token] = self.store.conn.execute(
                "SELECT coalesce(max(id), 0) FROM ratings"
            ).fetchone()[0]
            self.sim.count("cases_cancelled")
        for tid, frame in self.core.cancel(token):
            self.sim.daemon_sent(tid, frame)

    def post_case(self, vt: VTerm, case_no: str, token: int) -> bool:
        """The window business system's "case finished at window W"."""
        if not self.up or self.core is None or self.store is None or self.disk_full:
            return False
        sim = self.sim
        now = self.now()
        service_ms = EPOCH_MS + sim.now + sim.case_skew
        case = {
            "case_no": case_no,
            "item_code": province_actor.REFUSED_ITEM if sim.rng.random() < sim.plan.refused_cases
            else f"11440000MB2C{len(sim.cases) + 1:05d}",
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
        sim.armed_at.setdefault(vt.tid, []).append(sim.now)
        for tid, frame in frames:
            sim.daemon_sent(tid, frame)
        return True

    # ------------------------------------------------------------ faults

    def schedule_disk_fulls(self, end: int) -> None:
        r, sim = self.sim.rng, self.sim
        for _ in range(sim.plan.disk_fulls):
            t0 = r.randint(0, end)
            sim.at(t0, self._disk(True))
            sim.at(t0 + r.randint(2_000, 60_000), self._disk(False))

    def _disk(self, full: bool) -> Callable[[], None]:
        def fire() -> None:
            self.disk_full = full and self.sim.faulty
            if self.disk_full:
                self.sim.count("disk_full")

        return fire

    def schedule_crashes(self, end: int) -> None:
        self.pending_crashes = self.sim.plan.daemon_crashes
        self.next_crash_at = self.sim.rng.randint(0, end // 2 + 1)
        self._draw_crash_where()

    def _draw_crash_where(self) -> None:
        after = self.sim.rng.random() < self.sim.plan.crash_after_commit
        self.crash_where = "after_commit" if after else "before_commit"

    def crash_now(self, where: str) -> bool:
        """Maybe crash the daemon at this point of its commit path."""
        sim = self.sim
        if not sim.faulty or self.pending_crashes <= 0:
            return False
        if sim.now < self.next_crash_at:
            return False
        if where != self.crash_where:
            return False
        self.pending_crashes -= 1
        self.next_crash_at = sim.now + sim.rng.randint(10_000, 60_000)
        self._draw_crash_where()
        sim.count("daemon_crash_" + where)
        self.crash()
        sim.at(sim.now + sim.rng.randint(100, 8000), lambda: self.start(self.now()))
        return True

    def schedule_clock_steps(self, end: int) -> None:
        """The daemon's clock starts off by up to 2 h either way; NTP steps it
        back to the true time (in one step or two)."""
        sim, r = self.sim, self.sim.rng
        if not sim.plan.clock_steps:
            return
        off = r.choice((-1, 1)) * r.randint(60_000, 7_200_000)
        sim.daemon_skew += off
        times = sorted(r.randint(0, end) for _ in range(sim.plan.clock_steps))
        parts = [off // 2, off - off // 2] if len(times) == 2 else [off]
        for t, d in zip(times, parts, strict=True):
            sim.at(t, self._step(-d))

    def _step(self, delta: int) -> Callable[[], None]:
        def fire() -> None:
            self.sim.daemon_skew += delta
            self.sim.count("daemon_clock_step")

        return fire
