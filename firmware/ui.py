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
    TEST    the daemon's self-test (TEST frames): LEDs and the buzzer as
            commanded; a press is echoed to the daemon, never a rating

Events: PRESS(button), TIMEOUT (the state's deadline passed), ARM(session),
DISARM(session), FAULT (a fault bit was set), CLEAR (the last fault bit
cleared), TECH (the outer-button chord was held), TEST(op, arg) (a TEST frame).

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
 9. Self-test (SPEC.md "Self-test"): a TEST starts it from IDLE, FAULT or
    TECH only; in ARMED, REASON or THANKS (a case waits or a rating is in
    progress) it is answered ECHO(BUSY) and changes nothing.  In TEST
    each command is done, then echoed (ECHO action); a press lights its LED
    and is echoed, never written; an ARM is refused with ERROR E_SELF_TEST
    (the daemon arms again after the test); faults wait for its end.  END,
    or test_ms with no TEST, leaves it where TECH would (FAULT, a still
    valid ARMED, IDLE) and is echoed (END or TIMEOUT).
"""

try:
    from micropython import const
except ImportError:  # CPython (simulator, tests)

    def const(x):
        return x


# A constant with a leading underscore is folded in by the compiler: the
# board keeps neither a module global nor an interned name for it (each
# interned name costs RAM; boards.md, "Measured budgets").  Constants no
# other module reads are named so, except the state and event names the
# table is written in; buttons, journal, session and board_sim do the same.

# States
S_IDLE = const(0)
S_ARMED = const(1)
S_REASON = const(2)
S_THANKS = const(3)
S_FAULT = const(4)
S_TECH = const(5)
S_TEST = const(6)
STATE_NAMES = ("IDLE", "ARMED", "REASON", "THANKS", "FAULT", "TECH", "TEST")

# Events
E_PRESS = const(0)
E_TIMEOUT = const(1)
E_ARM = const(2)
E_DISARM = const(3)
E_FAULT = const(4)
E_CLEAR = const(5)
E_TECH = const(6)
E_TEST = const(7)
EVENT_NAMES = ("PRESS", "TIMEOUT", "ARM", "DISARM", "FAULT", "CLEAR", "TECH", "TEST")

# Actions: an int, code | arg << 8
A_SHOW = const(1)  # arg = pattern
A_WRITE = const(2)  # the rating is in rec_level/rec_reason/rec_flags/rec_session
A_ERROR = const(3)  # arg = error code, err_ref = session
A_ECHO = const(4)  # arg = op << 4 | arg of the ECHO to send (messages.T_*)
_MAX_ACTIONS = const(8)

# Feedback patterns (board adapters render them on LEDs and the buzzer)
P_IDLE = const(0)  # all LEDs off
P_ARMED = const(1)  # all LEDs glow: "please rate"
P_REASON = const(2)  # the bad level's LED on, reason labels lit, short beep
P_THANKS = const(3)  # pressed LED on, double beep
P_REFUSED = const(4)  # short low buzz, no LED
P_FAULT = const(5)  # all LEDs blink fast, long tone every few seconds
P_TECH = const(6)  # terminal id and link state blinked out
P_IGNORED = const(7)  # a press during THANKS: nothing new (a faint tick)
P_TEST_LED = const(8)  # self-test: the button's LED alone, no sound
P_TEST_BUZZ = const(9)  # self-test: the buzzer sounds, every LED off
PATTERN_NAMES = (
    "IDLE", "ARMED", "REASON", "THANKS", "REFUSED", "FAULT", "TECH", "IGNORED", "TEST_LED",
    "TEST_BUZZ",
)  # fmt: skip

# Fault bits
FAULT_JOURNAL_FULL = const(1)
_FAULT_CONFIG = const(2)
FAULT_LINK = const(4)

# No-case policy (CONFIG C_NO_CASE_POLICY)
REFUSE = const(0)
RECORD = const(1)

_BUTTONS = const(5)

# Flags (messages.F_*; repeated here so the press path imports nothing big)
_F_REASON_TIMEOUT = const(0x02)
_F_NO_CASE = const(0x04)
_F_RAPID = const(0x08)

_E_NOT_ARMED = const(35)  # messages.E_NOT_ARMED
E_JOURNAL_FULL = const(36)  # messages.E_JOURNAL_FULL
E_SELF_TEST = const(37)  # messages.E_SELF_TEST

# Self-test ops (messages.T_*)
_T_END = const(0)
_T_LED = const(1)
_T_BUZZER = const(2)
_T_PRESS = const(4)
_T_TIMEOUT = const(5)
_T_BUSY = const(6)

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
        self.test_ms = 60000  # messages.Test.TIMEOUT_S
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
        self.actions = [0] * _MAX_ACTIONS
        self.nact = 0

    # ------------------------------------------------------------- inputs

    def press(self, button, now):
        if not 0 <= button < _BUTTONS:
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

    def test(self, op, arg, now):
        """A TEST frame's step (messages.T_*; arg a button for LED)."""
        return self._fire(E_TEST, op << 4 | arg, now)

    def deadline_in(self, now):
        """ms until the next TIMEOUT, or -1 if none is due (for sleeping)."""
        if not self.has_deadline:
            return -1
        d = ticks_diff(self.deadline, now)
        return d if d > 0 else 0

    # ---------------------------------------------------------- machinery

    def _fire(self, event, arg, now):
        self.nact = 0
        i = _TABLE[self.state * 8 + event]
        if i is None:
            raise TransitionError(
                "no transition for %s in %s" % (EVENT_NAMES[event], STATE_NAMES[self.state])
            )
        new = TABLE[i + 2](self, arg, now)
        if not (TABLE[i + 3] >> new) & 1:
            raise TransitionError(
                "%s in %s may not lead to %s"
                % (EVENT_NAMES[event], STATE_NAMES[self.state], STATE_NAMES[new])
            )
        self.state = new
        return self.nact

    def _emit(self, action):
        if self.nact >= _MAX_ACTIONS:
            raise TransitionError("more than %d actions for one event" % _MAX_ACTIONS)
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
        level = _BUTTONS - button
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
        """Where TECH and TEST return: FAULT, still-valid ARMED, or IDLE."""
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
    flags = _F_NO_CASE
    if m.has_rated and ticks_diff(now, m.last_rated) < s.min_interval_ms:
        flags |= _F_RAPID
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
    return m._write(m.level, 0, m.flags | _F_REASON_TIMEOUT, now)


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
        m.session = 0  # TECH and TEST return to ARMED only for a case still armed
    return m.state


def _test(m, a, now):
    """A TEST step (a = op << 4 | arg): done first, then echoed."""
    op = a >> 4
    if op == _T_END:
        s = m._base(now)
        m._emit(A_ECHO)  # ECHO(END)
        return s
    if op == _T_LED:
        m.pressed = a & 15
        m._show(P_TEST_LED)
    elif op == _T_BUZZER:
        m._show(P_TEST_BUZZ)
    else:  # T_ECHO: every LED glows, as for "please rate"
        m._show(P_ARMED)
    m._emit(A_ECHO | (a << 8))
    m._set_deadline(now, m.settings.test_ms)
    return S_TEST


def _test_busy(m, a, now):
    m._emit(A_ECHO | (_T_BUSY << 12))  # ECHO(BUSY)
    return m.state


def _test_press(m, button, now):
    m.pressed = button
    m._show(P_TEST_LED)
    m._emit(A_ECHO | ((_T_PRESS << 4 | button) << 8))
    return S_TEST


def _test_timeout(m, arg, now):
    s = m._base(now)
    m._emit(A_ECHO | (_T_TIMEOUT << 12))  # ECHO(TIMEOUT)
    return s


def _test_arm(m, session, now):
    m._error(E_SELF_TEST, session)
    return S_TEST


# State masks for the table's last column.
_I = const(1 << S_IDLE)
_A = const(1 << S_ARMED)
_R = const(1 << S_REASON)
_T = const(1 << S_THANKS)
_F = const(1 << S_FAULT)
_X = const(1 << S_TECH)
_Z = const(1 << S_TEST)
_B = const(_I | _A | _F)  # where TECH and TEST return (Evaluator._base)

# THE transition table, one row a line: state, event, handler, the states it
# may lead to.  One flat tuple rather than a tuple of row tuples: a row tuple
# is a 32-byte object on the board's heap, so this form keeps ~830 bytes of
# RAM free (tabledoc.rows() reads it back as rows for the docs and tests).
# fmt: off
TABLE = (
    S_IDLE, E_PRESS, _idle_press, _I | _R | _T,
    S_IDLE, E_TIMEOUT, _stay, _I,
    S_IDLE, E_ARM, _arm, _A | _I,
    S_IDLE, E_DISARM, _stay, _I,
    S_IDLE, E_FAULT, _to_fault, _F,
    S_IDLE, E_TECH, _to_tech, _X,
    S_IDLE, E_CLEAR, _stay, _I,  # clear() fires CLEAR only from a fault
    S_IDLE, E_TEST, _test, _Z | _B,
    S_ARMED, E_PRESS, _armed_press, _R | _T,
    S_ARMED, E_TIMEOUT, _armed_timeout, _I,
    S_ARMED, E_ARM, _arm, _A,
    S_ARMED, E_DISARM, _armed_disarm, _A | _I,
    S_ARMED, E_FAULT, _to_fault, _F,
    S_ARMED, E_TECH, _to_tech, _X,
    S_ARMED, E_CLEAR, _stay, _A,
    S_ARMED, E_TEST, _test_busy, _A,  # a case waits for its rating
    S_REASON, E_PRESS, _reason_press, _T,
    S_REASON, E_TIMEOUT, _reason_timeout, _T,
    S_REASON, E_ARM, _defer_arm, _R,
    S_REASON, E_DISARM, _defer_disarm, _R,
    S_REASON, E_FAULT, _stay, _R,
    S_REASON, E_TECH, _ignore, _R,
    S_REASON, E_CLEAR, _stay, _R,  # the rating in progress ends first
    S_REASON, E_TEST, _test_busy, _R,
    S_THANKS, E_PRESS, _ignore_press, _T,
    S_THANKS, E_TIMEOUT, _thanks_timeout, _I | _A | _F,
    S_THANKS, E_ARM, _defer_arm, _T,
    S_THANKS, E_DISARM, _defer_disarm, _T,
    S_THANKS, E_FAULT, _stay, _T,
    S_THANKS, E_TECH, _ignore, _T,
    S_THANKS, E_CLEAR, _stay, _T,
    S_THANKS, E_TEST, _test_busy, _T,
    S_FAULT, E_PRESS, _fault_press, _F,
    S_FAULT, E_TIMEOUT, _stay, _F,
    S_FAULT, E_ARM, _fault_arm, _F,
    S_FAULT, E_DISARM, _stay, _F,
    S_FAULT, E_FAULT, _stay, _F,
    S_FAULT, E_CLEAR, _fault_clear, _I,
    S_FAULT, E_TECH, _to_tech, _X,
    S_FAULT, E_TEST, _test, _Z | _B,
    S_TECH, E_PRESS, _tech_leave, _I | _A | _F,
    S_TECH, E_TIMEOUT, _tech_leave, _I | _A | _F,
    S_TECH, E_ARM, _arm, _A | _X,
    S_TECH, E_DISARM, _tech_disarm, _X,
    S_TECH, E_FAULT, _stay, _X,
    S_TECH, E_CLEAR, _stay, _X,
    S_TECH, E_TECH, _stay, _X,
    S_TECH, E_TEST, _test, _Z | _B,
    S_TEST, E_PRESS, _test_press, _Z,
    S_TEST, E_TIMEOUT, _test_timeout, _B,
    S_TEST, E_ARM, _test_arm, _Z,
    S_TEST, E_DISARM, _tech_disarm, _Z,
    S_TEST, E_FAULT, _stay, _Z,  # shown when the test ends
    S_TEST, E_CLEAR, _stay, _Z,
    S_TEST, E_TECH, _stay, _Z,
    S_TEST, E_TEST, _test, _Z | _B,
)
# fmt: on

_TABLE = [None] * (7 * 8)  # index state * 8 + event -> where its row starts in TABLE
for i in range(0, len(TABLE), 4):  # i: a name the modules intern anyway
    _TABLE[TABLE[i] * 8 + TABLE[i + 1]] = i
del i
