"""A small daemon-side peer for firmware tests, built from protocol.link only.

Runs on CPython and MicroPython.  It follows the link rules of common.md /
SPEC: HELLO -> TIME, ACK(journal, contiguous), CONFIG if set; RATING/RATINGS
stored idempotently on (journal, seq), then ACK(journal, highest contiguous);
ECHO (self-test answers) kept in ``echoes``, apart from ratings.  ``compact=True`` keeps
O(1) memory (for the MicroPython memory measurement): it only checks that
records arrive in order and counts them; otherwise every record is kept so
tests can compare contents (a reused seq shows up as a conflict).
"""

from haochaping.protocol import messages as m
from haochaping.protocol.errors import ReplayError
from haochaping.protocol.link import DAEMON, Link

UTC0 = 1764000000000  # 2025-11-24T16:00:00Z


class Conflict(Exception):
    """The same seq arrived twice with different content (a reused seq)."""


class Peer:
    def __init__(self, tid, key, epoch=1, compact=False):
        self.link = Link(DAEMON, tid, key, epoch)
        self.compact = compact
        self.stored = {}  # seq -> record tuple, of the current journal
        self.journal = 0  # the journal of the last HELLO (ACKs name it)
        self.journals = {0: self.stored}  # journal id -> its stored records
        self.contig = 0
        self.count = 0
        self.dups = 0
        self.hellos = 0
        self.frames = 0
        self.statuses = []
        self.errors = []
        self.config = None
        self.answer = True  # False: swallow frames (daemon down / not answering)
        self.epoch = epoch
        self.acks = 0
        self.last_hello = None
        self.replay_hints = False  # answer a replayed authentic frame with ERROR REPLAY
        self.replays = 0
        self.echoes = []  # (op, arg) of every ECHO (self-test), in order

    def restart(self):
        """A daemon restart: new down epoch, forgets who said HELLO."""
        self.epoch += 1
        rx = self.link.rx_last
        self.link = Link(DAEMON, self.link.terminal_id, self.link.key, self.epoch, rx)

    def _store(self, r):
        t = (r.seq, r.level, r.reason, r.flags, r.session, r.time, r.uptime_ms, r.boot)
        if r.journal != self.journal:
            return  # not the journal this link said HELLO for: no ACK can cover it
        if self.compact:
            if r.seq <= self.contig:
                self.dups += 1
            elif r.seq == self.contig + 1:
                self.contig = r.seq
                self.count += 1
            # else: a gap (earlier frame lost); the terminal will resend
            return
        key = r.seq
        old = self.stored.get(key)
        if old is not None:
            if old != t:
                raise Conflict("seq %d arrived as %r and as %r" % (r.seq, old, t))
            self.dups += 1
            return
        self.stored[key] = t
        self.count += 1
        while (self.contig + 1) in self.stored:
            self.contig += 1

    def handle(self, data, now_ms):
        """Frames to send back for one up frame."""
        try:
            f = self.link.receive(data)
        except ReplayError:
            if not self.replay_hints:
                raise
            self.replays += 1
            return [self.link.send(m.ErrorDown(m.E_REPLAY, self.link.rx_last, "replay"))]
        self.frames += 1
        msg = f.msg
        if not self.answer:
            if f.type == m.Status.TYPE:
                self.statuses = [msg]
            return []
        out = []
        if f.type == m.Hello.TYPE:
            self.hellos += 1
            self.last_hello = msg
            if msg.journal != self.journal:
                # another journal (a formatted flash): its own sequence space
                self.journal = msg.journal
                self.stored = self.journals.setdefault(msg.journal, {})
                self.contig = 0
            base = msg.tail - 1
            if base > self.contig:
                # Everything below the terminal's tail was ACKed earlier.
                self.contig = base
                if not self.compact:
                    while (self.contig + 1) in self.stored:
                        self.contig += 1
            out.append(self.link.send(m.Time(UTC0 + now_ms)))
            out.append(self.link.send(m.Ack(self.contig, self.journal)))
            if self.config:
                out.append(self.link.send(m.Config(self.config)))
        elif f.type == m.Rating.TYPE:
            self._store(msg)
            out.append(self.link.send(m.Ack(self.contig, self.journal)))
            self.acks += 1
        elif f.type == m.Ratings.TYPE:
            for r in msg.records:
                self._store(r)
            out.append(self.link.send(m.Ack(self.contig, self.journal)))
            self.acks += 1
        elif f.type == m.Status.TYPE:
            if not self.compact:
                self.statuses.append(msg)
            else:
                self.statuses = [msg]
        elif f.type == m.Error.TYPE:
            self.errors.append((msg.code, msg.ref))
        elif f.type == m.Echo.TYPE:
            self.echoes.append((msg.op, msg.arg))  # a self-test answer: never a rating
        return out

    def send(self, msg):
        return self.link.send(msg)
