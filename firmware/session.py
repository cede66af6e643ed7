"""The terminal's link session: HELLO, TIME, ACK, and the journal drain.

Sans-IO on top of protocol.link.Link: ``connected(now)``, ``receive(frame,
now)`` and ``poll(now)`` return frames (bytes, not yet wire-wrapped) for the
transport to send; nothing here opens a port or reads a clock.

States (one table, rules below):
    DOWN   no transport connection
    HELLO  HELLO sent; waiting for the daemon's ACK (it answers TIME, ACK,
           maybe CONFIG); resent on the ACK time-out
    UP     the daemon knows our journal: unacknowledged records flow

Rules:
 1. Every (re)connect sends HELLO (journal id, head, tail, acked, capacity,
    boot, reset cause).  Records flow only after the ACK that answers it, so
    the resend starts from what the daemon really has.  An ACK naming another
    journal id than ours frees nothing (an old ACK of a journal this flash no
    longer holds).
 2. Records are sent oldest first, up to 11 per RATINGS frame (one alone goes
    as RATING), with at most _WINDOW frames outstanding; an ACK (cumulative)
    frees journal slots (persisted with the down counter) and opens the
    window.  No ACK progress for ack_timeout_ms while frames are outstanding:
    resend from the oldest unacknowledged record; after _MAX_TIMEOUTS such
    time-outs in a row, HELLO again.
 3. TIME sets the UTC offset; ratings before any TIME carry only uptime and
    boot (F_TIME_SYNCED clear).
 4. ERROR_DOWN E_HELLO_REQUIRED (daemon restarted) sends HELLO again.
 5. The up counter's epoch is the boot count: when an epoch runs out of
    counters (CounterExhausted) the persisted boot count is bumped and the
    link continues in the new epoch.  ERROR_DOWN REPLAY with ``ref`` at or
    above our epoch (our boot count went back: a wiped, replaced or restored
    journal) raises the boot count above ``ref``'s epoch, then HELLO again.
    ``restart_epoch`` starts a new epoch with uptime from 0 (before uptime
    would wrap), then HELLO again.
 6. Frames that fail the protocol checks change no state; they are counted
    and the last error code kept for STATUS.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.firmware.ui import ticks_diff
from haochaping.protocol import messages as _m
from haochaping.protocol.errors import CounterExhausted, ProtocolError

L_DOWN = const(0)
_L_HELLO = const(1)
L_UP = const(2)
LINK_STATE_NAMES = ("DOWN", "HELLO", "UP")

# events
_LE_CONNECT = const(0)
_LE_DISCONNECT = const(1)
LE_ACK = const(2)
_LE_TIMEOUT = const(3)
_LE_HELLO_REQUIRED = const(4)
LINK_EVENT_NAMES = ("CONNECT", "DISCONNECT", "ACK", "TIMEOUT", "HELLO_REQUIRED")

# (state, event, next state)
LINK_TABLE = (
    (L_DOWN, _LE_CONNECT, _L_HELLO),
    (L_DOWN, _LE_DISCONNECT, L_DOWN),
    (_L_HELLO, _LE_CONNECT, _L_HELLO),
    (_L_HELLO, _LE_DISCONNECT, L_DOWN),
    (_L_HELLO, LE_ACK, L_UP),
    (_L_HELLO, _LE_TIMEOUT, _L_HELLO),
    (_L_HELLO, _LE_HELLO_REQUIRED, _L_HELLO),
    (L_UP, _LE_CONNECT, _L_HELLO),
    (L_UP, _LE_DISCONNECT, L_DOWN),
    (L_UP, LE_ACK, L_UP),
    (L_UP, _LE_TIMEOUT, L_UP),
    (L_UP, _LE_HELLO_REQUIRED, _L_HELLO),
)
_LT = [None] * (3 * 8)  # index state * 8 + event -> next state
for x in LINK_TABLE:  # x: a name the modules intern anyway
    _LT[x[0] * 8 + x[1]] = x[2]
del x

_WINDOW = const(4)  # RATINGS frames outstanding
_ACK_TIMEOUT_MS = const(3000)
_MAX_TIMEOUTS = const(3)
_STATUS_MS = const(60000)

FW = (0, 2, 0)  # 0.2: the self-test (TEST / ECHO, HELLO flag bit 2)


def _zero():
    return 0


class LinkStateError(Exception):
    """A link event with no row in LINK_TABLE for the current state."""


class Clock:
    """Device UTC from uptime plus the offset the daemon's TIME gave.

    ``stamp`` works on uptime as (seconds, ms) and keeps the offset as 16-bit
    halves, so a press computes its time with small ints only (no heap)."""

    def __init__(self):
        self.synced = False
        self.offset_ms = 0
        self._off_hi = 0
        self._off_lo = 0
        self._off_frac = 0
        self.hi = 0
        self.lo = 0

    def set(self, utc_ms, uptime_ms):
        self.offset_ms = utc_ms - uptime_ms
        off_s = self.offset_ms // 1000
        self._off_frac = self.offset_ms - off_s * 1000
        self._off_hi = off_s >> 16
        self._off_lo = off_s & 0xFFFF
        self.synced = True

    def stamp(self, up_s, up_ms):
        """Set hi, lo = 16-bit halves of UTC seconds at uptime up_s + up_ms
        (0, 0 before any TIME)."""
        if not self.synced:
            self.hi = 0
            self.lo = 0
            return
        carry = (up_ms + self._off_frac) // 1000
        lo = (up_s & 0xFFFF) + self._off_lo + carry
        self.hi = ((up_s >> 16) + self._off_hi + (lo >> 16)) & 0xFFFF
        self.lo = lo & 0xFFFF


class Session:
    def __init__(self, link, journal, board_name="sim", reset_cause=0, status_ms=_STATUS_MS):
        self.link = link
        self.journal = journal
        self.board_name = board_name
        self.reset_cause = reset_cause
        self.clock = Clock()
        self.state = L_DOWN
        self.ack_timeout_ms = _ACK_TIMEOUT_MS
        self.window = _WINDOW
        self.status_ms = status_ms
        self.sent_upto = 0  # highest seq sent since the last (re)start of the drain
        self.inflight = []  # last seq of each outstanding frame, oldest first
        self.progress_at = 0  # ms of the last send or ACK progress
        self.timeouts = 0
        self.hello_at = 0
        self.status_at = 0
        self.status_due = False
        self.alarms = 0
        self.last_error = 0
        self.rx_errors = 0
        self.resends = 0
        self.foreign_acks = 0  # ACKs naming another journal (ignored)
        self.epoch_jumps = 0  # boot count raised on the daemon's REPLAY hint
        self.raised_boot = -1  # the boot count the last such raise went to
        self.frames_sent = 0
        self.records_sent = 0
        self.uptime = _zero  # callable -> uptime ms (the terminal's)
        self.status_source = None  # callable -> (free_heap, ignored, ui state)
        self._out = []

    # ---------------------------------------------------------- machinery

    def _go(self, event):
        new = _LT[self.state * 8 + event]
        if new is None:
            raise LinkStateError(
                "no link transition for %s in %s"
                % (LINK_EVENT_NAMES[event], LINK_STATE_NAMES[self.state])
            )
        self.state = new

    def _send(self, msg):
        try:
            f = self.link.send(msg)
        except CounterExhausted:
            self.link.new_epoch(self.journal.bump_boot())
            f = self.link.send(msg)
        self.frames_sent += 1
        self._out.append(f)

    def _take(self):
        out = self._out
        self._out = []
        return out

    def _hello(self, now):
        j = self.journal
        self._send(
            _m.Hello(
                FW,
                self.board_name,
                j.boot,
                self.reset_cause,
                j.head,
                j.tail,
                j.acked,
                j.capacity,
                self.uptime() & 0xFFFFFFFF,
                (1 if self.clock.synced else 0) | (2 if j.boot == self.raised_boot else 0) | 4,
                j.id,
            )
        )
        self.hello_at = now
        self.inflight = []
        self.sent_upto = j.acked

    # ------------------------------------------------------------- inputs

    def connected(self, now):
        """The transport (re)connected: say HELLO."""
        self._go(_LE_CONNECT)
        self.timeouts = 0
        self._hello(now)
        return self._take()

    def disconnected(self, now):
        self._go(_LE_DISCONNECT)
        self.inflight = []
        return self._take()

    def receive(self, data, now):
        """Handle one down frame.  Returns the message for the terminal to
        act on (ARM, DISARM, CONFIG), else None.  Frames to send are queued
        for the next poll."""
        try:
            f = self.link.open(data)
        except ProtocolError as e:
            self.rx_errors += 1
            self.last_error = e.code
            return None
        msg = f.msg
        t = f.type
        out = None
        if t == _m.Ack.TYPE:
            if msg.journal == self.journal.id:
                self.journal.ack(msg.seq, f.counter)
                self._on_ack(msg.seq, now)
            else:
                self.foreign_acks += 1
        elif t == _m.Time.TYPE:
            self.clock.set(msg.utc_ms, self.uptime())
        elif t == _m.ErrorDown.TYPE:
            self.last_error = msg.code & 0xFF
            if msg.code == _m.E_HELLO_REQUIRED and self.state != L_DOWN:
                self._go(_LE_HELLO_REQUIRED)
                self._hello(now)
            elif msg.code == _m.E_REPLAY:
                self._catch_up(msg.ref, now)
        else:
            out = msg
        self.link.accept(f)
        return out

    def _catch_up(self, ref, now):
        """The daemon accepted counters up to ``ref``.  Above what we sent (our
        boot count went back: wiped, replaced, restored), continue in the epoch
        after it; else (a duplicate frame it refused) nothing is wrong."""
        if ref <= self.link.tx_last or (ref >> 16) >= 0xFFFF:
            return
        self.link.new_epoch(self.journal.raise_boot((ref >> 16) + 1))
        self.epoch_jumps += 1
        self.raised_boot = self.journal.boot
        if self.state != L_DOWN:
            self._go(_LE_HELLO_REQUIRED)
            self._hello(now)

    def restart_epoch(self, now, uptime_ms):
        """A new boot epoch whose uptime starts at 0 (``uptime_ms`` is the
        uptime it leaves behind); the daemon learns it from the HELLO."""
        self.link.new_epoch(self.journal.bump_boot())
        if self.clock.synced:
            self.clock.set(self.clock.offset_ms + uptime_ms, 0)
        if self.state != L_DOWN:
            self._go(_LE_HELLO_REQUIRED)
            self._hello(now)
        return self._take()

    def _on_ack(self, seq, now):
        if self.state == L_DOWN:
            return
        self._go(LE_ACK)
        fl = self.inflight
        moved = False
        while fl and fl[0] <= seq:
            fl.pop(0)
            moved = True
        if self.sent_upto < self.journal.acked:
            self.sent_upto = self.journal.acked
        if moved or not fl:
            self.progress_at = now
            self.timeouts = 0

    def poll(self, now):
        """Frames due now: HELLO resends, records to drain, STATUS."""
        if self.state == _L_HELLO:
            if ticks_diff(now, self.hello_at) >= self.ack_timeout_ms:
                self._go(_LE_TIMEOUT)
                self._hello(now)
        elif self.state == L_UP:
            j = self.journal
            if self.inflight and ticks_diff(now, self.progress_at) >= self.ack_timeout_ms:
                self._go(_LE_TIMEOUT)
                self.timeouts += 1
                self.resends += 1
                self.inflight = []
                self.sent_upto = j.acked
                if self.timeouts >= _MAX_TIMEOUTS:
                    self.state = _L_HELLO
                    self._hello(now)
                    return self._take()
            while len(self.inflight) < self.window and self.sent_upto < j.head - 1:
                self._drain_one(now)
            if self.status_due or ticks_diff(now, self.status_at) >= self.status_ms:
                self._status(now)
        return self._take()

    def _drain_one(self, now):
        j = self.journal
        first = self.sent_upto + 1
        last = j.head - 1
        if last - first + 1 > _m.MAX_RECORDS:
            last = first + _m.MAX_RECORDS - 1
        recs = []
        for seq in range(first, last + 1):
            r = j.record(seq)
            if r is not None:
                recs.append(_m.Rating(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], j.id))
        if recs:
            if len(recs) == 1:
                self._send(recs[0])
            else:
                self._send(_m.Ratings(recs))
            self.records_sent += len(recs)
        if not self.inflight:
            self.progress_at = now
        self.inflight.append(last)
        self.sent_upto = last

    def _status(self, now):
        j = self.journal
        heap, ignored, state = 0, 0, 0
        if self.status_source is not None:
            heap, ignored, state = self.status_source()
        used = j.used if j.used <= 0xFFFF else 0xFFFF
        self._send(
            _m.Status(
                used,
                j.capacity if j.capacity >= used else used,
                heap & 0xFFFFFFFF,
                self.uptime() & 0xFFFFFFFF,
                self.last_error & 0xFF,
                self.alarms & 0xFF,
                ignored & 0xFFFF,
                state & 0xFF,
            )
        )
        self.status_at = now
        self.status_due = False

    def set_alarms(self, alarms):
        if alarms != self.alarms:
            self.alarms = alarms
            self.status_due = True

    def send_error(self, code, ref, text=""):
        """An ERROR up (e.g. an ARM the terminal cannot serve)."""
        if self.state != L_DOWN:
            self._send(_m.Error(code, ref & 0xFFFFFFFF, text))

    def echo(self, a):
        """An ECHO up, a = op << 4 | arg (a self-test step done, a press, the end).
        Live only: with the link down it is gone, as the test is."""
        if self.state != L_DOWN:
            self._send(_m.Echo(a >> 4, a & 15))
