"""Every message of protocol v2 and its payload layout (big-endian).

A message is a plain object: its fields are attributes named in ``FIELDS``,
``payload()`` packs them and ``from_payload()`` parses and validates them,
raising MessageError for anything SPEC.md does not allow.  The JSON form the
test vectors use lives in fields.py, off the board.

Type codes: bit 7 clear = up (terminal -> daemon), set = down (daemon ->
terminal).  Codes not listed are free for later versions.
"""

import struct

from haochaping.protocol.errors import MessageError, UnknownType

DOWN = 0x80

# Levels (SPEC.md "Levels"): 1 非常不满意 ... 5 非常满意; 差评 is level <= 2.
LEVEL_MIN = 1
LEVEL_MAX = 5
BAD_MAX = 2
REASON_MAX = 31  # reason codes 1..31 fit beside the level; 0 = none

# RATING flags (one byte).  Unknown bits are carried, never rejected.
F_TIME_SYNCED = 0x01  # device clock was set by TIME when the press happened
F_REASON_TIMEOUT = 0x02  # 差评 whose reason step timed out
F_NO_CASE = 0x04  # recorded with no armed case (no-case policy "record")
F_RAPID = 0x08  # came sooner than the minimum interval after the last one
# Bit 4 (was REPEATED in drafts) is reserved: a record is durable before THANKS,
# so presses during THANKS cannot be written into it; STATUS counts them.

RECORD_LEN = 20  # one rating record on the wire
MAX_RECORDS = 11  # ratings in one RATINGS frame (fits MAX_PAYLOAD)
BOARD_MAX = 16  # bytes of board name in HELLO
ERROR_TEXT_MAX = 64  # bytes of UTF-8 text in ERROR
CONFIG_MAX = 47  # entries in one CONFIG frame
DIGEST_LEN = 4  # bytes of case digest in ARM

JOURNAL_LEN = 4  # the journal id before the records of RATING / RATINGS
_REC = ">IBBIIIH"  # seq, level|reason<<3, flags, session, time, uptime_ms, boot


class Message:
    TYPE = -1
    NAME = "?"
    FIELDS = ()

    def __eq__(self, other):
        if type(other) is not type(self):
            return False
        for f in self.FIELDS:
            if getattr(self, f) != getattr(other, f):
                return False
        return True

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "%s(%s)" % (
            self.NAME,
            ", ".join("%s=%r" % (f, getattr(self, f)) for f in self.FIELDS),
        )

    def check(self):
        """Validate fields; raise MessageError.  Called on encode and decode."""
        return self


def _u(value, bits, name):
    if not isinstance(value, int) or value < 0 or value >= (1 << bits):
        raise MessageError("%s out of range" % name)
    return value


def _unpack(fmt, payload, name):
    if len(payload) != struct.calcsize(fmt):
        raise MessageError("%s payload must be %d bytes" % (name, struct.calcsize(fmt)))
    return struct.unpack(fmt, payload)


# --------------------------------------------------------------------- up


# HELLO flags
H_CLOCK_SYNCED = 0x01  # the clock has been set by TIME since boot
H_EPOCH_RAISED = 0x02  # this epoch was raised on the daemon's REPLAY hint: boot numbers went back
H_SELF_TEST = 0x04  # this firmware answers TEST (SPEC.md "Self-test"); absent: too old to self-test


class Hello(Message):
    TYPE = 0x01
    NAME = "HELLO"
    FIELDS = (
        "fw",
        "board",
        "boot",
        "reset_cause",
        "head",
        "tail",
        "acked",
        "capacity",
        "uptime_ms",
        "flags",
        "journal",
    )
    _FMT = ">HBIIIIHIB"  # boot, reset cause, journal, head, tail, acked, capacity, uptime, flags

    def __init__(
        self,
        fw=(0, 0, 0),
        board="",
        boot=0,
        reset_cause=0,
        head=1,
        tail=1,
        acked=0,
        capacity=0,
        uptime_ms=0,
        flags=0,
        journal=0,
    ):
        self.fw = tuple(fw)
        self.board = board
        self.boot = boot
        self.reset_cause = reset_cause
        self.head = head
        self.tail = tail
        self.acked = acked
        self.capacity = capacity
        self.uptime_ms = uptime_ms
        self.flags = flags
        self.journal = journal

    def check(self):
        if len(self.fw) != 3:
            raise MessageError("fw is (major, minor, patch)")
        for v in self.fw:
            _u(v, 8, "fw")
        b = self.board.encode() if isinstance(self.board, str) else None
        if b is None or len(b) > BOARD_MAX:
            raise MessageError("board is text of at most %d bytes" % BOARD_MAX)
        for v in b:
            if v < 0x20 or v > 0x7E:
                raise MessageError("board must be printable ASCII") from None
        _u(self.boot, 16, "boot")
        _u(self.reset_cause, 8, "reset_cause")
        _u(self.head, 32, "head")
        _u(self.tail, 32, "tail")
        _u(self.acked, 32, "acked")
        _u(self.capacity, 16, "capacity")
        _u(self.uptime_ms, 32, "uptime_ms")
        _u(self.flags, 8, "flags")
        _u(self.journal, 32, "journal")
        if not self.acked < self.tail <= self.head or self.tail < 1:
            raise MessageError("journal seqs must be acked < tail <= head, tail >= 1")
        return self

    def payload(self):
        self.check()
        b = self.board.encode()
        return (
            bytes(self.fw)
            + bytes((len(b),))
            + b
            + struct.pack(
                self._FMT,
                self.boot,
                self.reset_cause,
                self.journal,
                self.head,
                self.tail,
                self.acked,
                self.capacity,
                self.uptime_ms,
                self.flags,
            )
        )

    @classmethod
    def from_payload(cls, p):
        if len(p) < 4:
            raise MessageError("HELLO payload too short")
        n = p[3]
        if n > BOARD_MAX or len(p) != 4 + n + struct.calcsize(cls._FMT):
            raise MessageError("HELLO payload has the wrong length")
        try:
            board = bytes(p[4 : 4 + n]).decode()
        except UnicodeError:
            raise MessageError("board must be printable ASCII") from None
        boot, cause, journal, head, tail, acked, cap, up, flags = struct.unpack(cls._FMT, p[4 + n :])
        return cls(tuple(p[0:3]), board, boot, cause, head, tail, acked, cap, up, flags, journal).check()


class Rating(Message):
    """One rating record; also the unit of RATINGS.  ``journal`` is the id of
    the terminal's journal the record was written in: on the wire it comes
    once before the record(s) of the frame, not in the 20-byte record."""

    TYPE = 0x02
    NAME = "RATING"
    FIELDS = ("seq", "level", "reason", "flags", "session", "time", "uptime_ms", "boot", "journal")

    def __init__(
        self, seq=1, level=5, reason=0, flags=0, session=0, time=0, uptime_ms=0, boot=0, journal=0
    ):
        self.seq = seq
        self.level = level
        self.reason = reason
        self.flags = flags
        self.session = session
        self.time = time
        self.uptime_ms = uptime_ms
        self.boot = boot
        self.journal = journal

    def check(self):
        _u(self.journal, 32, "journal")
        _u(self.seq, 32, "seq")
        if self.seq == 0:
            raise MessageError("seq starts at 1")
        if not isinstance(self.level, int) or not LEVEL_MIN <= self.level <= LEVEL_MAX:
            raise MessageError("level must be 1..5")
        if not isinstance(self.reason, int) or not 0 <= self.reason <= REASON_MAX:
            raise MessageError("reason must be 0..%d" % REASON_MAX)
        if self.reason and self.level > BAD_MAX:
            raise MessageError("only a 差评 (level 1 or 2) carries a reason")
        _u(self.flags, 8, "flags")
        _u(self.session, 32, "session")
        _u(self.time, 32, "time")
        _u(self.uptime_ms, 32, "uptime_ms")
        _u(self.boot, 16, "boot")
        return self

    def pack_into(self, buf, off):
        self.check()
        struct.pack_into(
            _REC,
            buf,
            off,
            self.seq,
            self.level | (self.reason << 3),
            self.flags,
            self.session,
            self.time,
            self.uptime_ms,
            self.boot,
        )

    def payload(self):
        buf = bytearray(JOURNAL_LEN + RECORD_LEN)
        self.pack_into(buf, JOURNAL_LEN)  # checks every field, the journal id too
        struct.pack_into(">I", buf, 0, self.journal)
        return bytes(buf)

    @classmethod
    def unpack_from(cls, p, off, journal=0):
        seq, lr, flags, session, t, up, boot = struct.unpack_from(_REC, p, off)
        return cls(seq, lr & 7, lr >> 3, flags, session, t, up, boot, journal).check()

    @classmethod
    def from_payload(cls, p):
        if len(p) != JOURNAL_LEN + RECORD_LEN:
            raise MessageError("RATING payload must be %d bytes" % (JOURNAL_LEN + RECORD_LEN))
        return cls.unpack_from(p, JOURNAL_LEN, struct.unpack_from(">I", p, 0)[0])

    @property
    def bad(self):
        return self.level <= BAD_MAX


class Ratings(Message):
    """Several consecutive-or-not rating records of one journal in one frame
    (journal drain)."""

    TYPE = 0x03
    NAME = "RATINGS"
    FIELDS = ("records",)

    def __init__(self, records=()):
        self.records = list(records)

    @property
    def journal(self):
        return self.records[0].journal if self.records else 0

    def check(self):
        if not 1 <= len(self.records) <= MAX_RECORDS:
            raise MessageError("RATINGS carries 1..%d records" % MAX_RECORDS)
        for r in self.records:
            if not isinstance(r, Rating) or r.journal != self.records[0].journal:
                raise MessageError("RATINGS carries Rating records of one journal")
        return self

    def payload(self):
        self.check()
        buf = bytearray(JOURNAL_LEN + 1 + RECORD_LEN * len(self.records))
        off = JOURNAL_LEN + 1
        for r in self.records:
            r.pack_into(buf, off)  # checks every field, the journal id too
            off += RECORD_LEN
        struct.pack_into(">IB", buf, 0, self.journal, len(self.records))
        return bytes(buf)

    @classmethod
    def from_payload(cls, p):
        if len(p) < JOURNAL_LEN + 1:
            raise MessageError("RATINGS payload is too short")
        j, n = struct.unpack_from(">IB", p, 0)
        base = JOURNAL_LEN + 1
        if not 1 <= n <= MAX_RECORDS or len(p) != base + n * RECORD_LEN:
            raise MessageError("RATINGS count does not match its length")
        return cls([Rating.unpack_from(p, base + i * RECORD_LEN, j) for i in range(n)])


# STATUS alarm bits
A_JOURNAL_FULL = 0x01
A_JOURNAL_HIGH = 0x02  # at or above the high-water mark (80 %)
A_CLOCK_UNSYNCED = 0x04
A_CONFIG_MISSING = 0x08
A_LINK_DOWN = 0x10  # the link was down longer than the FAULT threshold


class Status(Message):
    TYPE = 0x04
    NAME = "STATUS"
    FIELDS = ("used", "capacity", "free_heap", "uptime_ms", "last_error", "alarms", "ignored", "state")
    _FMT = ">HHIIBBHB"

    def __init__(
        self, used=0, capacity=0, free_heap=0, uptime_ms=0, last_error=0, alarms=0, ignored=0, state=0
    ):
        self.used = used
        self.capacity = capacity
        self.free_heap = free_heap
        self.uptime_ms = uptime_ms
        self.last_error = last_error
        self.alarms = alarms
        self.ignored = ignored
        self.state = state

    def check(self):
        _u(self.used, 16, "used")
        _u(self.capacity, 16, "capacity")
        if self.used > self.capacity:
            raise MessageError("journal used exceeds its capacity")
        _u(self.free_heap, 32, "free_heap")
        _u(self.uptime_ms, 32, "uptime_ms")
        _u(self.last_error, 8, "last_error")
        _u(self.alarms, 8, "alarms")
        _u(self.ignored, 16, "ignored")
        _u(self.state, 8, "state")
        return self

    def payload(self):
        self.check()
        return struct.pack(
            self._FMT,
            self.used,
            self.capacity,
            self.free_heap,
            self.uptime_ms,
            self.last_error,
            self.alarms,
            self.ignored,
            self.state,
        )

    @classmethod
    def from_payload(cls, p):
        return cls(*_unpack(cls._FMT, p, "STATUS")).check()


class Error(Message):
    """ERROR in either direction: a code (errors.BY_CODE or E_* below), the
    counter or seq it refers to, and short UTF-8 text for a technician."""

    TYPE = 0x0F
    NAME = "ERROR"
    FIELDS = ("code", "ref", "text")

    def __init__(self, code=1, ref=0, text=""):
        self.code = code
        self.ref = ref
        self.text = text

    def check(self):
        _u(self.code, 8, "code")
        _u(self.ref, 32, "ref")
        if not isinstance(self.text, str) or len(self.text.encode()) > ERROR_TEXT_MAX:
            raise MessageError("ERROR text is at most %d bytes" % ERROR_TEXT_MAX)
        return self

    def payload(self):
        self.check()
        t = self.text.encode()
        return struct.pack(">BIB", self.code, self.ref, len(t)) + t

    @classmethod
    def from_payload(cls, p):
        if len(p) < 6 or len(p) != 6 + p[5]:
            raise MessageError("ERROR payload has the wrong length")
        code, ref, _ = struct.unpack_from(">BIB", p, 0)
        try:
            text = bytes(p[6:]).decode()
        except UnicodeError:
            raise MessageError("ERROR text is not UTF-8") from None
        return cls(code, ref, text).check()


class ErrorDown(Error):
    TYPE = 0x8F
    NAME = "ERROR_DOWN"


# The daemon's answer to an authentic frame refused as a replay (the code of
# errors.ReplayError): ``ref`` is the last up counter it accepted from the
# terminal, so a terminal whose boot count went back (a wiped or replaced
# journal) continues in an epoch above it (SPEC.md section 5).
E_REPLAY = 10

# Application error codes beyond the ProtocolError codes (errors.BY_CODE).
E_HELLO_REQUIRED = 32  # the daemon needs a HELLO before it can ACK
E_UNKNOWN_TERMINAL = 33
E_STORE_UNAVAILABLE = 34  # disk full or database error: not stored, resend later
E_NOT_ARMED = 35
E_JOURNAL_FULL = 36
E_SELF_TEST = 37  # an ARM refused during a self-test (ref = its session): ARM again after END


# ------------------------------------------------------------------- down


class Time(Message):
    TYPE = 0x81
    NAME = "TIME"
    FIELDS = ("utc_ms",)

    def __init__(self, utc_ms=0):
        self.utc_ms = utc_ms

    def check(self):
        _u(self.utc_ms, 64, "utc_ms")
        return self

    def payload(self):
        self.check()
        return struct.pack(">Q", self.utc_ms)

    @classmethod
    def from_payload(cls, p):
        return cls(*_unpack(">Q", p, "TIME")).check()


class Arm(Message):
    TYPE = 0x82
    NAME = "ARM"
    FIELDS = ("session", "timeout_s", "digest")

    def __init__(self, session=1, timeout_s=120, digest=b"\x00\x00\x00\x00"):
        self.session = session
        self.timeout_s = timeout_s
        self.digest = bytes(digest)

    def check(self):
        _u(self.session, 32, "session")
        if self.session == 0:
            raise MessageError("ARM needs a session token other than 0")
        _u(self.timeout_s, 16, "timeout_s")
        if self.timeout_s == 0:
            raise MessageError("ARM time-out must be at least 1 s")
        if len(self.digest) != DIGEST_LEN:
            raise MessageError("case digest is %d bytes" % DIGEST_LEN)
        return self

    def payload(self):
        self.check()
        return struct.pack(">IH", self.session, self.timeout_s) + self.digest

    @classmethod
    def from_payload(cls, p):
        if len(p) != 6 + DIGEST_LEN:
            raise MessageError("ARM payload must be %d bytes" % (6 + DIGEST_LEN))
        s, t = struct.unpack_from(">IH", p, 0)
        return cls(s, t, bytes(p[6:])).check()


class Disarm(Message):
    TYPE = 0x83
    NAME = "DISARM"
    FIELDS = ("session",)

    def __init__(self, session=0):
        self.session = session

    def check(self):
        _u(self.session, 32, "session")
        return self

    def payload(self):
        self.check()
        return struct.pack(">I", self.session)

    @classmethod
    def from_payload(cls, p):
        return cls(*_unpack(">I", p, "DISARM")).check()


class Ack(Message):
    """Cumulative: every seq <= ``seq`` of journal ``journal`` is durably stored."""

    TYPE = 0x84
    NAME = "ACK"
    FIELDS = ("seq", "journal")

    def __init__(self, seq=0, journal=0):
        self.seq = seq
        self.journal = journal

    def check(self):
        _u(self.seq, 32, "seq")
        _u(self.journal, 32, "journal")
        return self

    def payload(self):
        self.check()
        return struct.pack(">II", self.journal, self.seq)

    @classmethod
    def from_payload(cls, p):
        j, seq = _unpack(">II", p, "ACK")
        return cls(seq, j).check()


# CONFIG keys (SPEC.md "Settings").  Unknown keys are ignored by terminals.
C_NO_CASE_POLICY = 1  # 0 refuse, 1 record as "no case"
C_MIN_INTERVAL_S = 2  # minimum seconds between no-case ratings
C_REASON_TIMEOUT_S = 3
C_THANKS_MS = 4
C_DEBOUNCE_MS = 5
C_STATUS_INTERVAL_S = 6
C_ARM_TIMEOUT_S = 7  # default when ARM carries none (reserved)
C_LINK_FAULT_S = 8  # link down this long shows FAULT


class Config(Message):
    TYPE = 0x85
    NAME = "CONFIG"
    FIELDS = ("settings",)

    def __init__(self, settings=()):
        # A list of (key, value) pairs; order is kept on the wire.
        self.settings = [(k, v) for (k, v) in settings]

    def check(self):
        if len(self.settings) > CONFIG_MAX:
            raise MessageError("CONFIG carries at most %d settings" % CONFIG_MAX)
        for k, v in self.settings:
            _u(k, 8, "setting key")
            _u(v, 32, "setting value")
        return self

    def payload(self):
        self.check()
        out = bytearray()
        for k, v in self.settings:
            out.extend(struct.pack(">BI", k, v))
        return bytes(out)

    @classmethod
    def from_payload(cls, p):
        if len(p) % 5:
            raise MessageError("CONFIG payload is a whole number of 5-byte settings")
        return cls([struct.unpack_from(">BI", p, i) for i in range(0, len(p), 5)]).check()


# TEST / ECHO ops (SPEC.md "Self-test"): what to do (TEST, 0..3) or what was
# done or happened (ECHO, 0..6).  ``arg`` is a button 0..4 (left to right,
# 非常满意 .. 非常不满意) for LED and PRESS, else 0.
T_END = 0  # down: leave the test; up: left it on END (or was not in one)
T_LED = 1  # the LED of button ``arg`` alone is lit
T_BUZZER = 2  # the buzzer sounds, every LED off
T_ECHO = 3  # every LED glows: "press each button"
T_PRESS = 4  # up only: button ``arg`` was pressed (never a rating)
T_TIMEOUT = 5  # up only: left the test, no TEST for Test.TIMEOUT_S
T_BUSY = 6  # up only: not started, a case is armed or a rating is in progress


class Test(Message):
    """TEST (down): one step of the self-test; the terminal answers each with
    an ECHO of the same op and arg once it has done it."""

    TYPE = 0x86
    NAME = "TEST"
    FIELDS = ("op", "arg")
    TIMEOUT_S = 60  # the terminal leaves a test this long after the last TEST
    _OPS = 4  # END, LED, BUZZER, ECHO

    def __init__(self, op=0, arg=0):
        self.op = op
        self.arg = arg

    def check(self):
        if _u(self.op, 8, "op") >= self._OPS or _u(self.arg, 8, "arg") > 4:
            raise MessageError("%s op or arg out of range" % self.NAME)
        return self

    def payload(self):
        self.check()
        return bytes((self.op, self.arg))

    @classmethod
    def from_payload(cls, p):
        return cls(*_unpack("BB", p, cls.NAME)).check()


class Echo(Test):
    """ECHO (up): a TEST step done (its op and arg), a press during the test
    (T_PRESS, the button), its end by time-out (T_TIMEOUT), or a TEST not
    started (T_BUSY)."""

    TYPE = 0x06
    NAME = "ECHO"
    _OPS = 7  # and PRESS, TIMEOUT, BUSY


TYPES = {}  # fields.BY_NAME (host-only) maps names: a dict the board never needs
for _cls in (Hello, Rating, Ratings, Status, Error, Time, Arm, Disarm, Ack, Config, ErrorDown, Test, Echo):
    TYPES[_cls.TYPE] = _cls



def decode(msg_type, payload):
    cls = TYPES.get(msg_type)
    if cls is None:
        raise UnknownType("unknown message type 0x%02x" % msg_type)
    return cls.from_payload(payload)


def is_down(msg_type):
    return bool(msg_type & DOWN)
