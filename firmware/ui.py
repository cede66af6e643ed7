"""The evaluator (评价器) state machine: sans-IO, one transition table.

It takes button presses, ticks, and the ARM/DISARM/fault events the terminal
derives from frames and the journal, each with the time in ms; it returns
actions (show a feedback pattern, write a rating, send an error) in a
preallocated list.  It never touches a pin, a file, a socket or a clock, and
allocates nothing per event (tests prove it under ``micropython.heap_lock``).

States
    IDLE    no case armed; waiting
    ARMED   a case (办件) waits for its one rating; ends at the ARM time-out
    REASON  after 不满意/非常不满意 the same five buttons pick a reason
            category (printed under each button); time-out = no reason
    THANKS  the confirmation is showing; presses are ignored and counted
    FAULT   journal full, configuration missing or link down too long:
            presses are refused with the fault pattern
    TECH    technician mode (both outer buttons held): shows the terminal
            id and link state; any press or its time-out leaves it

Events: PRESS(button), TIMEOUT (the state's deadline passed), ARM(session),
DISARM(session), FAULT (a fault bit was set), CLEAR (the last fault bit
cleared), TECH (the outer-button chord was held).

Rules (each row of TABLE below is one of these):
 1. One rating per ARM (一次一评): the first press in ARMED is the rating; it
    leaves ARMED, so a second press is not a second rating.
 2. Buttons left to right are levels 5..1 (非常满意 .. 非常不满意).  A level
    <= 2 (差评) goes to REASON; button i there is reason i+1.  The REASON
    time-out writes the rating with reason 0 and F_REASON_TIMEOUT.
 3. A rating is written (WRITE action, which the terminal performs and syncs
    to flash) *before* the THANKS pattern; the actions are ordered so, and
    the terminal stops at a failed write, so THANKS is never shown for a
    rating that is not durable.
 4. Presses during THANKS (and REASON's chord, TECH's ignored events) are
    ignored and counted in ``ignored`` (reported in STATUS).
 5. A press with no armed case follows the no-case policy: REFUSE shows the
    refused pattern and counts it; RECORD makes a rating with F_NO_CASE, and
    with F_RAPID as well when it comes sooner than the minimum interval after
    the previous rating of any kind (flag, never drop: 刷好评 defence).
 6. An ARM while a rating is in progress (REASON, THANKS) is kept and takes
    effect when THANKS ends; a DISARM for it cancels it.  An ARM for the
    case that got the last rating arms nothing (一次一评 against a resent
    ARM).  An ARM in FAULT is answered with an ERROR (the rating could not
    be stored).
 7. A fault (journal full, ...) is entered from any state at the next
    boundary: immediately from IDLE/ARMED (the armed case is dropped and
    answered with ERROR), after the confirmation from REASON/THANKS.
 8. An event with no row for the current state raises TransitionError; a
    handler that returns a state not listed in its row raises it too.
"""

try:
    from micropython import const
except ImportError:  # CPython (simulator, tests)

    def const(x):
        return x


# States
S_IDLE = const(0)
S_ARMED = const(1)
S_REASON = const(2)
S_THANKS = const(3)
S_FAULT = const(4)
S_TECH = const(5)
STATE_NAMES = ("IDLE", "ARMED", "REASON", "THANKS", "FAULT", "TECH")

# Events
E_PRESS = const(0)
E_TIMEOUT = const(1)
E_ARM = const(2)
E_DISARM = const(3)
E_FAULT = const(4)
E_CLEAR = const(5)
E_TECH = const(6)
EVENT_NAMES = ("PRESS", "TIMEOUT", "ARM", "DISARM", "FAULT", "CLEAR", "TECH")

# Actions: an int, code | arg << 8
A_SHOW = const(1)  # arg = pattern
A_WRITE = const(2)  # the rating is in rec_level/rec_reason/rec_flags/rec_session
A_ERROR = const(3)  # arg = error code, err_ref = session
MAX_ACTIONS = const(8)

# Feedback patterns (board adapters render them on LEDs and the buzzer)
P_IDLE = const(0)  # all LEDs off
P_ARMED = const(1)  # all LEDs glow: "please rate"
P_REASON = const(2)  # the bad level's LED on, reason labels lit, short beep
P_THANKS = const(3)  # pressed LED on, double beep
P_REFUSED = const(4)  # short low buzz, no LED
P_FAULT = const(5)  # all LEDs blink fast, long tone every few seconds
P_TECH = const(6)  # terminal id and link state blinked out
P_IGNORED = const(7)  # a press during THANKS: nothing new (a faint tick)
PATTERN_NAMES = ("IDLE", "ARMED", "REASON", "THANKS", "REFUSED", "FAULT", "TECH", "IGNORED")

# Fault bits
FAULT_JOURNAL_FULL = const(1)
FAULT_CONFIG = const(2)
FAULT_LINK = const(4)

# No-case policy (CONFIG C_NO_CASE_POLICY)
REFUSE = const(0)
RECORD = const(1)

BUTTONS = const(5)

# Flags (messages.F_*; repeated here so the press path imports nothing big)
F_REASON_TIMEOUT = const(0x02)
F_NO_CASE = const(0x04)
F_RAPID = const(0x08)

E_NOT_ARMED = const(35)  # messages.E_NOT_ARMED
E_JOURNAL_FULL = const(36)  # messages.E_JOURNAL_FULL

TICKS_PERIOD = const(1 << 30)  # MicroPython's ticks_ms wraps here
_HALF = const(1 << 29)


def ticks_diff(a, b):
    """a - b for ms timestamps that wrap at TICKS_PERIOD (as time.ticks_diff)."""
    return ((a - b + _HALF) & (TICKS_PERIOD - 1)) - _HALF


class TransitionError(Exception):
    """An event arrived in a state whose table has no row for it, or a handler
    chose a state its row does not allow."""


class Settings:
    """The evaluator's tunables, with their defaults (CONFIG can change them)."""

    def __init__(self):
        self.no_case_policy = REFUSE
        self.min_interval_ms = 30000  # between no-case ratings
        self.reason_ms = 15000
        self.thanks_ms = 2000
        self.tech_ms = 10000
        self.arm_ms_default = 120000


class Evaluator:
    def __init__(self, settings=None):
        self.settings = settings if settings is not None else Settings()
        self.state = S_IDLE
        self.deadline = 0
        self.has_deadline = False
        self.session = 0  # armed case token
        self.rated_session = 0  # the last case that got its rating
        self.arm_until = 0
        self.pending = 0  # ARM received during REASON/THANKS
        self.pending_ms = 0
        self.level = 0  # level chosen, waiting for its reason
        self.flags = 0
        self.faults = 0
        self.ignored = 0  # presses ignored (THANKS) or refused
        self.refused = 0
        self.ratings = 0
        self.last_rated = 0  # ms of the last rating's press
        self.has_rated = False
        # The rating to WRITE
        self.rec_level = 0
        self.rec_reason = 0
        self.rec_flags = 0
        self.rec_session = 0
        self.err_ref = 0
        self.arm_ms = 0
        self.pressed = 0  # button of the last rating (for the THANKS LED)
        self.actions = [0] * MAX_ACTIONS
        self.nact = 0

    # ------------------------------------------------------------- inputs

    def press(self, button, now):
        if not 0 <= button < BUTTONS:
            raise ValueError("button is 0..4")
        return self._fire(E_PRESS, button, now)

    def tick(self, now):
        """Fire TIMEOUT if the state's deadline has passed (else no actions)."""
        self.nact = 0
        if self.has_deadline and ticks_diff(now, self.deadline) >= 0:
            return self._fire(E_TIMEOUT, 0, now)
        return 0

    def arm(self, session, timeout_ms, now):
        if session == 0:
            raise ValueError("an ARM session is not 0")
        self.arm_ms = timeout_ms if timeout_ms > 0 else self.settings.arm_ms_default
        return self._fire(E_ARM, session, now)

    def disarm(self, session, now):
        return self._fire(E_DISARM, session, now)

    def fault(self, bits, now):
        self.faults |= bits
        return self._fire(E_FAULT, bits, now)

    def clear(self, bits, now):
        """Clear fault bits; CLEAR fires only when none are left."""
        had = self.faults
        self.faults &= ~bits
        if had and not self.faults:
            return self._fire(E_CLEAR, bits, now)
        self.nact = 0
        return 0

    def tech(self, now):
        return self._fire(E_TECH, 0, now)

    def deadline_in(self, now):
        """ms until the next TIMEOUT, or -1 if none is due (for sleeping)."""
        if not self.has_deadline:
            return -1
        d = ticks_diff(self.deadline, now)
        return d if d > 0 else 0

    # ---------------------------------------------------------- machinery

    def _fire(self, event, arg, now):
        self.nact = 0
        row = _TABLE[self.state * 8 + event]
        if row is None:
            raise TransitionError(
                "no transition for %s in %s" % (EVENT_NAMES[event], STATE_NAMES[self.state])
            )
        new = row[2](self, arg, now)
        if not (row[3] >> new) & 1:
            raise TransitionError(
                "%s in %s may not lead to %s"
                % (EVENT_NAMES[event], STATE_NAMES[self.state], STATE_NAMES[new])
            )
        self.state = new
        return self.nact

    def _emit(self, action):
        if self.nact >= MAX_ACTIONS:
            raise TransitionError("more than %d actions for one event" % MAX_ACTIONS)
        self.actions[self.nact] = action
        self.nact += 1

    def _show(self, pattern):
        self._emit(A_SHOW | (pattern << 8))

    def _set_deadline(self, now, ms):
        self.deadline = (now + ms) & (TICKS_PERIOD - 1)
        self.has_deadline = True

    def _enter_idle(self):
        self.has_deadline = False
        self._show(P_IDLE)
        return S_IDLE

    def _enter_armed(self, session, until):
        self.session = session
        self.arm_until = until
        self.deadline = until
        self.has_deadline = True
        self._show(P_ARMED)
        return S_ARMED

    def _enter_fault(self):
        self.has_deadline = False
        self._show(P_FAULT)
        return S_FAULT

    def _write(self, level, reason, flags, now):
        self.rec_level = level
        self.rec_reason = reason
        self.rec_flags = flags
        self.rec_session = self.session
        if self.session:
            self.rated_session = self.session
        self.session = 0
        self.ratings += 1
        self._emit(A_WRITE)
        self._show(P_THANKS)
        self._set_deadline(now, self.settings.thanks_ms)
        return S_THANKS

    def _rate(self, button, flags, now):
        self.has_rated = True
        self.last_rated = now
        level = BUTTONS - button
        self.pressed = button
        if level <= 2:
            self.level = level
            self.flags = flags
            self._show(P_REASON)
            self._set_deadline(now, self.settings.reason_ms)
            return S_REASON
        return self._write(level, 0, flags, now)

    def _after_rating(self, now):
        """Where THANKS (or an aborted step) leads: FAULT, a pending ARM, IDLE."""
        if self.faults:
            if self.pending:
                self._error(E_JOURNAL_FULL, self.pending)
                self.pending = 0
            return self._enter_fault()
        if self.pending:
            s = self.pending
            self.pending = 0
            if ticks_diff(self.pending_ms, now) > 0:
                return self._enter_armed(s, self.pending_ms)
        return self._enter_idle()

    def _error(self, code, ref):
        self.err_ref = ref
        self._emit(A_ERROR | (code << 8))

    def _base(self, now):
        """Where TECH returns: FAULT, still-valid ARMED, or IDLE."""
        if self.faults:
            return self._enter_fault()
        if self.session and ticks_diff(self.arm_until, now) > 0:
            return self._enter_armed(self.session, self.arm_until)
        self.session = 0
        return self._enter_idle()


# ------------------------------------------------------------ handlers
# Each takes (evaluator, event argument, now) and returns the next state.


def _idle_press(m, button, now):
    s = m.settings
    if s.no_case_policy != RECORD:
        m.refused += 1
        m.ignored += 1
        m._show(P_REFUSED)
        return S_IDLE
    flags = F_NO_CASE
    if m.has_rated and ticks_diff(now, m.last_rated) < s.min_interval_ms:
        flags |= F_RAPID
    m.session = 0
    return m._rate(button, flags, now)


def _arm(m, session, now):
    if session == m.rated_session:
        # This case already has its rating (一次一评): a repeated ARM for it
        # (a daemon resending after a reconnect) arms nothing.
        return m.state
    until = (now + m.arm_ms) & (TICKS_PERIOD - 1)
    return m._enter_armed(session, until)


def _stay(m, arg, now):
    return m.state


def _ignore(m, arg, now):
    m.ignored += 1
    return m.state


def _ignore_press(m, arg, now):
    m.ignored += 1
    m._show(P_IGNORED)
    return m.state


def _to_fault(m, arg, now):
    if m.session:
        m._error(E_JOURNAL_FULL, m.session)
        m.session = 0
    return m._enter_fault()


def _to_tech(m, arg, now):
    m._set_deadline(now, m.settings.tech_ms)
    m._show(P_TECH)
    return S_TECH


def _armed_press(m, button, now):
    return m._rate(button, 0, now)


def _armed_timeout(m, arg, now):
    m.session = 0
    return m._enter_idle()


def _armed_disarm(m, session, now):
    if session == m.session or session == 0:
        m.session = 0
        return m._enter_idle()
    return S_ARMED


def _reason_press(m, button, now):
    return m._write(m.level, button + 1, m.flags, now)


def _reason_timeout(m, arg, now):
    return m._write(m.level, 0, m.flags | F_REASON_TIMEOUT, now)


def _defer_arm(m, session, now):
    if session == m.rated_session:
        return m.state
    m.pending = session
    m.pending_ms = (now + m.arm_ms) & (TICKS_PERIOD - 1)
    return m.state


def _defer_disarm(m, session, now):
    if session == m.pending or session == 0:
        m.pending = 0
    return m.state


def _thanks_timeout(m, arg, now):
    return m._after_rating(now)


def _fault_press(m, button, now):
    m.refused += 1
    m.ignored += 1
    m._show(P_FAULT)
    return S_FAULT


def _fault_arm(m, session, now):
    m._error(E_JOURNAL_FULL, session)
    return S_FAULT


def _fault_clear(m, arg, now):
    return m._enter_idle()


def _tech_leave(m, arg, now):
    return m._base(now)


def _tech_disarm(m, session, now):
    if session == m.session or session == 0:
        m.session = 0
    return S_TECH


_I = 1 << S_IDLE
_A = 1 << S_ARMED
_R = 1 << S_REASON
_T = 1 << S_THANKS
_F = 1 << S_FAULT
_X = 1 << S_TECH

# THE transition table: (state, event, handler, states it may lead to).
TABLE = (
    (S_IDLE, E_PRESS, _idle_press, _I | _R | _T),
    (S_IDLE, E_TIMEOUT, _stay, _I),
    (S_IDLE, E_ARM, _arm, _A | _I),
    (S_IDLE, E_DISARM, _stay, _I),
    (S_IDLE, E_FAULT, _to_fault, _F),
    (S_IDLE, E_TECH, _to_tech, _X),
    (S_IDLE, E_CLEAR, _stay, _I),  # clear() fires CLEAR only from a fault
    (S_ARMED, E_PRESS, _armed_press, _R | _T),
    (S_ARMED, E_TIMEOUT, _armed_timeout, _I),
    (S_ARMED, E_ARM, _arm, _A),
    (S_ARMED, E_DISARM, _armed_disarm, _A | _I),
    (S_ARMED, E_FAULT, _to_fault, _F),
    (S_ARMED, E_TECH, _to_tech, _X),
    (S_ARMED, E_CLEAR, _stay, _A),
    (S_REASON, E_PRESS, _reason_press, _T),
    (S_REASON, E_TIMEOUT, _reason_timeout, _T),
    (S_REASON, E_ARM, _defer_arm, _R),
    (S_REASON, E_DISARM, _defer_disarm, _R),
    (S_REASON, E_FAULT, _stay, _R),
    (S_REASON, E_TECH, _ignore, _R),
    (S_REASON, E_CLEAR, _stay, _R),  # the rating in progress ends first
    (S_THANKS, E_PRESS, _ignore_press, _T),
    (S_THANKS, E_TIMEOUT, _thanks_timeout, _I | _A | _F),
    (S_THANKS, E_ARM, _defer_arm, _T),
    (S_THANKS, E_DISARM, _defer_disarm, _T),
    (S_THANKS, E_FAULT, _stay, _T),
    (S_THANKS, E_TECH, _ignore, _T),
    (S_THANKS, E_CLEAR, _stay, _T),
    (S_FAULT, E_PRESS, _fault_press, _F),
    (S_FAULT, E_TIMEOUT, _stay, _F),
    (S_FAULT, E_ARM, _fault_arm, _F),
    (S_FAULT, E_DISARM, _stay, _F),
    (S_FAULT, E_FAULT, _stay, _F),
    (S_FAULT, E_CLEAR, _fault_clear, _I),
    (S_FAULT, E_TECH, _to_tech, _X),
    (S_TECH, E_PRESS, _tech_leave, _I | _A | _F),
    (S_TECH, E_TIMEOUT, _tech_leave, _I | _A | _F),
    (S_TECH, E_ARM, _arm, _A | _X),
    (S_TECH, E_DISARM, _tech_disarm, _X),
    (S_TECH, E_FAULT, _stay, _X),
    (S_TECH, E_CLEAR, _stay, _X),
    (S_TECH, E_TECH, _stay, _X),
)

_TABLE = [None] * (6 * 8)  # index state * 8 + event -> row
for _row in TABLE:
    _TABLE[_row[0] * 8 + _row[1]] = _row
