"""The terminal: buttons, evaluator, journal and link session wired to a board.

This is the thin shell around the sans-IO cores.  A board adapter
(board_sim, board_esp32, board_rp2) supplies pins, feedback, the journal
file, a transport and the watchdog; ``Terminal.step(now)`` is one turn of the
main loop and never blocks (the transport's operations are bounded).

Order inside one press: debounce -> evaluator -> WRITE (journal append,
flush, sync) -> THANKS pattern.  If the write raises, the exception leaves
``step`` before THANKS is shown; the main loop resets the board and the
journal's boot scan recovers.
"""

from haochaping.firmware import ui
from haochaping.firmware.buttons import Buttons
from haochaping.firmware.journal import Journal
from haochaping.firmware.session import L_UP, Session
from haochaping.protocol import messages as _m

F_TIME_SYNCED = 0x01
HIGH_WATER_PCT = 80
LINK_FAULT_MS = 900000  # link down this long shows FAULT (C_LINK_FAULT_S)
# Uptime fields are u32 ms (wrap at 49.7 days): a new boot epoch starts
# before, at 46.3 days, so (boot, uptime) always names one instant (SPEC.md 5).
EPOCH_UPTIME_S = 4000000


class Terminal:
    def __init__(self, board, terminal_id, key, capacity=2000, settings=None, debounce_ms=30):
        from haochaping.protocol.link import TERMINAL, Link

        self.board = board
        self.terminal_id = terminal_id
        self.journal = Journal(board.journal_file(), capacity, new_id=getattr(board, "new_id", None))
        boot = self.journal.bump_boot()  # durable before the epoch is used
        self.link = Link(TERMINAL, terminal_id, key, boot, self.journal.rx_last)
        self.session = Session(self.link, self.journal, board.name, board.reset_cause())
        self.session.status_source = self._status_source
        self.session.uptime = self._uptime
        self.ev = ui.Evaluator(settings)
        self.buttons = Buttons(debounce_ms)
        self.link_fault_ms = LINK_FAULT_MS
        self.epoch_uptime_s = EPOCH_UPTIME_S
        self.up_s = 0  # uptime as seconds + ms: small ints for decades
        self.up_ms = 0
        self._last = None
        self._was_connected = False
        self._down_since = 0
        self._check = True
        self._link_latch = False  # A_LINK_DOWN stays until a STATUS carried it
        self.last_seq = 0

    # ---------------------------------------------------------------- loop

    def step(self, now):
        """One turn of the main loop at ``now`` (ticks_ms)."""
        if self._last is None:
            self._last = now
            self._down_since = now
        d = ui.ticks_diff(now, self._last)
        self._last = now
        if d > 0:
            ms = self.up_ms + d
            if ms >= 1000:
                self.up_s += ms // 1000
                ms = ms % 1000
            self.up_ms = ms
            if self.up_s >= self.epoch_uptime_s:
                self._new_epoch(now)
        ev = self.ev
        b = self.buttons
        pressed = b.update(self.board.read_buttons(), now)
        if pressed:
            for i in range(5):
                if pressed & (1 << i):
                    ev.press(i, now)
                    self._run()
        if b.take_tech(now):
            ev.tech(now)
            self._run()
        if ev.tick(now):
            self._run()
        self._link(now)
        if self._check:
            self._faults(now)

    def _run(self):
        ev = self.ev
        for i in range(ev.nact):
            a = ev.actions[i]
            code = a & 0xFF
            arg = a >> 8
            if code == ui.A_WRITE:
                self._write()
            elif code == ui.A_SHOW:
                self.board.show(arg, ev.pressed, self)
            elif code == ui.A_ERROR:
                self.session.send_error(arg, ev.err_ref)
            else:  # ui.A_ECHO
                self.session.echo(arg)

    def _write(self):
        ev = self.ev
        s = self.session
        flags = ev.rec_flags
        if s.clock.synced:
            flags |= F_TIME_SYNCED
        # uptime ms mod 2**32 and UTC seconds as 16-bit halves, small ints
        # only: up_s * 1000 would outgrow a small int after 12 days.
        a = self.up_s >> 16
        lo = (self.up_s & 0xFFFF) * 1000 + self.up_ms
        up_hi = (a * 1000 + (lo >> 16)) & 0xFFFF
        c = s.clock
        c.stamp(self.up_s, self.up_ms)
        self.last_seq = self.journal.append_w(
            ev.rec_level,
            ev.rec_reason,
            flags,
            ev.rec_session,
            c.hi,
            c.lo,
            up_hi,
            lo & 0xFFFF,
            self.journal.boot,
        )
        self._check = True

    def _link(self, now):
        t = self.board.transport
        t.poll(now)
        s = self.session
        c = t.connected
        if c != self._was_connected:
            self._was_connected = c
            self._send_all(s.connected(now) if c else s.disconnected(now))
        if c:
            while True:
                data = t.recv()
                if data is None:
                    break
                msg = s.receive(data, now)
                if msg is not None:
                    self._down(msg, now)
                self._check = True
            self._send_all(s.poll(now))
            if self._link_latch and s.state == L_UP and not s.status_due:
                self._link_latch = False  # the daemon has seen it
                self._check = True
        if s.state == L_UP:
            self._down_since = now
            if self.ev.faults & ui.FAULT_LINK:
                self._check = True
        elif self.link_fault_ms and ui.ticks_diff(now, self._down_since) >= self.link_fault_ms:
            if not self.ev.faults & ui.FAULT_LINK:
                self._check = True

    def _new_epoch(self, now):
        left = self._uptime()
        self.up_s = 0
        self.up_ms = 0
        frames = self.session.restart_epoch(now, left)
        if self.board.transport.connected:
            self._send_all(frames)

    def _send_all(self, frames):
        t = self.board.transport
        for f in frames:
            t.send(f)

    def _down(self, msg, now):
        ev = self.ev
        t = msg.TYPE
        if t == _m.Arm.TYPE:
            ev.arm(msg.session, msg.timeout_s * 1000, now)
            self._run()
        elif t == _m.Disarm.TYPE:
            ev.disarm(msg.session, now)
            self._run()
        elif t == _m.Config.TYPE:
            self.configure(msg.settings)
        elif t == _m.Test.TYPE:
            ev.test(msg.op, msg.arg, now)
            self._run()

    def configure(self, settings):
        st = self.ev.settings
        for k, v in settings:
            if k == _m.C_NO_CASE_POLICY:
                st.no_case_policy = ui.RECORD if v else ui.REFUSE
            elif k == _m.C_MIN_INTERVAL_S:
                st.min_interval_ms = v * 1000
            elif k == _m.C_REASON_TIMEOUT_S:
                st.reason_ms = v * 1000
            elif k == _m.C_THANKS_MS:
                st.thanks_ms = v
            elif k == _m.C_DEBOUNCE_MS:
                self.buttons.debounce_ms = v
            elif k == _m.C_STATUS_INTERVAL_S:
                self.session.status_ms = v * 1000
            elif k == _m.C_ARM_TIMEOUT_S:
                st.arm_ms_default = v * 1000
            elif k == _m.C_LINK_FAULT_S:
                self.link_fault_ms = v * 1000

    def _faults(self, now):
        """Feed fault changes to the evaluator and alarms to STATUS."""
        self._check = False
        j = self.journal
        ev = self.ev
        want = 0
        if j.full:
            want |= ui.FAULT_JOURNAL_FULL
        link_down = False
        if self.session.state != L_UP and self.link_fault_ms:
            link_down = ui.ticks_diff(now, self._down_since) >= self.link_fault_ms
            if link_down:
                want |= ui.FAULT_LINK
        new = want & ~ev.faults
        gone = ev.faults & ~want
        if new:
            ev.fault(new, now)
            self._run()
        if gone:
            ev.clear(gone, now)
            self._run()
        alarms = 0
        if j.full:
            alarms |= _m.A_JOURNAL_FULL
        if j.used * 100 >= j.capacity * HIGH_WATER_PCT:
            alarms |= _m.A_JOURNAL_HIGH
        if not self.session.clock.synced:
            alarms |= _m.A_CLOCK_UNSYNCED
        if link_down:
            self._link_latch = True
        if self._link_latch:
            alarms |= _m.A_LINK_DOWN
        self.session.set_alarms(alarms)

    def _uptime(self):
        return self.up_s * 1000 + self.up_ms

    def _status_source(self):
        return (self.board.free_heap(), self.ev.ignored, self.ev.state)

    def tech_info(self):
        """What technician mode shows: terminal id and link state."""
        return "%08x %s" % (self.terminal_id, ("DOWN", "HELLO", "UP")[self.session.state])
