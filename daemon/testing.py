"""A CPython fake terminal for tests and benchmarks: the protocol's terminal
side (protocol.link + messages) with an in-memory journal, no I/O.

It behaves as SPEC.md's link rules ask of a terminal: HELLO on (re)connect
with head/tail/acked, every rating kept until a cumulative ACK covers it,
resend of everything unacknowledged on demand (``resend``).  It records every
ACK so a test can check that nothing was acknowledged before it was stored.
It is not the firmware (firmware/ is); it is the test peer of the daemon.
"""

from __future__ import annotations

from haochaping.protocol import link, messages
from haochaping.protocol.auth import Key


class FakeTerminal:
    def __init__(self, terminal_id: int, key: bytes, boot: int = 1, capacity: int = 4096) -> None:
        self.id = terminal_id
        self.key = Key(key)
        self.boot = boot
        self.capacity = capacity
        self.link = link.Link(link.TERMINAL, terminal_id, self.key, boot)
        self.journal: dict[int, messages.Rating] = {}
        self.head = 1  # next seq to write
        self.acked = 0  # highest seq the daemon acknowledged
        self.sent_upto = 0  # highest seq sent at least once
        self.ack_log: list[int] = []
        self.received: list[messages.Message] = []
        self.session = 0
        self.clock_offset_ms: int | None = None  # daemon ms - uptime ms, once TIME came
        self.uptime_ms = 0

    # ------------------------------------------------------------ up

    @property
    def tail(self) -> int:
        return self.acked + 1

    def hello(self) -> bytes:
        return self.link.send(
            messages.Hello((1, 0, 0), "fake", self.boot, 0, self.head, self.tail, self.acked,
                           min(self.capacity, 0xFFFF), self.uptime_ms, 0)  # fmt: skip
        )

    def press(self, level: int, reason: int = 0, session: int | None = None, flags: int = 0) -> int:
        seq = self.head
        sess = self.session if session is None else session
        t = 0
        if self.clock_offset_ms is not None:
            flags |= messages.F_TIME_SYNCED
            t = (self.clock_offset_ms + self.uptime_ms) // 1000
        if not sess:
            flags |= messages.F_NO_CASE
        self.journal[seq] = messages.Rating(
            seq, level, reason if level <= 2 else 0, flags, sess, t, self.uptime_ms, self.boot
        )
        self.head += 1
        self.session = 0 if session is None else self.session
        return seq

    def _frames(self, seqs: list[int], per_frame: int) -> list[bytes]:
        out = []
        for i in range(0, len(seqs), per_frame):
            recs = [self.journal[s] for s in seqs[i : i + per_frame]]
            msg: messages.Message = recs[0] if len(recs) == 1 else messages.Ratings(recs)
            out.append(self.link.send(msg))
        return out

    def send_new(self, per_frame: int = 1) -> list[bytes]:
        seqs = [s for s in sorted(self.journal) if s > self.sent_upto]
        if seqs:
            self.sent_upto = seqs[-1]
        return self._frames(seqs, per_frame)

    def resend(self, per_frame: int = messages.MAX_RECORDS) -> list[bytes]:
        """HELLO, then every unacknowledged record (what a terminal does on
        reconnect or on an ACK time-out)."""
        seqs = sorted(self.journal)
        if seqs:
            self.sent_upto = max(self.sent_upto, seqs[-1])
        return [self.hello()] + self._frames(seqs, per_frame)

    def status(self) -> bytes:
        return self.link.send(messages.Status(len(self.journal), min(self.capacity, 0xFFFF), 10000, self.uptime_ms))

    # ------------------------------------------------------------ down

    def receive(self, data: bytes) -> messages.Message:
        f = self.link.receive(data)
        m = f.msg
        self.received.append(m)
        if isinstance(m, messages.Ack):
            self.ack_log.append(m.seq)
            if m.seq > self.acked:
                if m.seq >= self.head:
                    raise AssertionError("ACK %d for a seq never written (head %d)" % (m.seq, self.head))
                for s in range(self.acked + 1, m.seq + 1):
                    self.journal.pop(s, None)
                self.acked = m.seq
        elif isinstance(m, messages.Time):
            self.clock_offset_ms = m.utc_ms - self.uptime_ms
        elif isinstance(m, messages.Arm):
            self.session = m.session
        elif isinstance(m, messages.Disarm):
            if self.session == m.session:
                self.session = 0
        return m

    @property
    def done(self) -> bool:
        return not self.journal
