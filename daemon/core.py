"""The hall daemon's ingest core: sans-IO, like protocol/.

What it is for: turn frames from terminals into (1) ratings to store and (2)
frames to send back, and arm windows for cases.  It keeps one protocol Link
per terminal (tag and counter checks), binds ratings to the case armed on the
terminal's window by session token, rebuilds wall time for ratings pressed
before the terminal's clock was synced, and flags abuse patterns as
annotations (never by dropping a rating).

What it must never do: read a clock, touch a file, socket or port, or send an
ACK for a rating that has not been received and committed.  The shell calls:

    out = core.receive(source, data, now_ms)      # a frame from a transport
    ... store out.store together with core.take_updates() in ONE commit ...
    acks = core.committed(stored, now_ms)         # only after the commit returned
    core.failed(out.store)                        # or, if the commit failed
    core.clock_stepped(delta_ms, now_ms)          # the shell saw its wall clock step

``receive`` never raises for anything a terminal or the network can send; a
refusal comes back as ``out.refused`` (a short reason) and is counted.

Rules (SPEC.md section 5):
- A frame whose terminal id is not provisioned is refused ('unknown_terminal').
- A frame failing the tag is refused ('auth'); a counter not above the last
  accepted one ('replay').  Either changes no state.  An authentic replayed
  frame (a terminal whose boot count went back) is answered, at most once per
  REPLAY_HINT_MS, with ERROR REPLAY naming the last accepted counter.
- One terminal per serial port: a port that carried terminal A refuses frames
  naming B ('wrong_source') until it is reopened.
- Ratings are (terminal, journal, seq).  HELLO names the journal: a journal
  not seen before starts a new sequence space (event 'journal_new'); a head
  at or below what the store holds of that journal is an older image
  ('journal_behind').  At every HELLO the acknowledgement point restarts at
  tail-1 and moves only over records received after it and held.
- HELLO: TIME, then ACK(journal, mark), then CONFIG if set.
- RATING/RATINGS: every record goes to the store (identical resends are
  duplicates; a divergent record under a held seq becomes a fork, store.py);
  after the commit, one cumulative ACK per terminal in the group, for the
  journal of its HELLO.  Before any HELLO the records are stored and
  ERROR(E_HELLO_REQUIRED) asks for one: the ACK needs the tail.
- Assess time by the clock rule of SPEC.md section 5 ('clock_off',
  'clock_clamped'); TIME again when a synced rating's clock is off by more
  than DRIFT_MAX_MS (at most once per TIME_MIN_INTERVAL_MS per terminal).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from haochaping.daemon.store import NewRating, Stored, TerminalRecord, Updates
from haochaping.protocol import errors, frame, link, messages
from haochaping.protocol.auth import Key

# Named limits (docs/operations.md lists them).
DRIFT_MAX_MS = 2_000  # a terminal clock further off than this gets TIME
TIME_MIN_INTERVAL_MS = 60_000  # at most one drift TIME per terminal per minute
OFFLINE_AFTER_MS = 180_000  # no frame for this long: offline (STATUS comes every 60 s)
HUMAN_MIN_MS = 400  # a press sooner than this after ARM is 'too_fast'
BURST_WINDOW_MS = 60_000  # 'burst_no_case': more than BURST_MAX no-case ratings in this window
BURST_MAX = 3
MAX_PENDING_SEQS = 4_096  # out-of-order stored seqs remembered per terminal
ARM_TIMEOUT_S = 120
SESSION_KEEP_MS = 7 * 24 * 3600 * 1000  # sessions a late rating may still bind to
SESSIONS_PRUNE_AT = 10_000  # sessions in memory before old ones are pruned
FUTURE_SLACK_MS = 5_000  # assess time later than receipt by more: clamped
CLOCK_TOLERANCE_MS = 60_000  # device time further than this from the daemon's view: 'clock_off'
REPLAY_HINT_MS = 5_000  # at most one ERROR REPLAY per terminal in this long
LATENCY_SLACK_MS = 1_000  # the reference may sit this far outside the device's second (link latency)
PREV_STARTS_KEPT = 8  # earlier starts of one boot epoch kept, to explain old-timeline device times
CLOCK_STEPS_KEPT = 16  # the daemon's own clock steps remembered (and persisted) to explain offsets
ECHOES_KEPT = 64  # self-test ECHOs kept per terminal for the one waiting on the test

REFUSAL_REASONS = (
    "unknown_terminal",
    "retired",
    "auth",
    "replay",
    "too_long",
    "checksum",
    "framing",
    "malformed",
    "malformed_hello",
    "malformed_rating",
    "malformed_ratings",
    "malformed_status",
    "malformed_error",
    "unknown_type",
    "direction",
    "wrong_source",
    "version",
)
EVENT_KINDS = ("journal_new", "journal_switch", "journal_behind", "rekeyed")


class ArmError(Exception):
    """The window cannot be armed (no terminal, or it is offline)."""


class SelfTestError(Exception):
    """A self-test step cannot be sent (unknown, offline, old firmware, armed)."""


def refusal_reason(e: Exception, msg_type: int | None = None) -> str:
    if isinstance(e, errors.FrameTooLong):
        return "too_long"
    if isinstance(e, errors.ChecksumError):
        return "checksum"
    if isinstance(e, errors.AuthError):
        return "auth"
    if isinstance(e, errors.ReplayError):
        return "replay"
    if isinstance(e, errors.VersionError):
        return "version"
    if isinstance(e, errors.DirectionError):
        return "direction"
    if isinstance(e, errors.FrameError):
        return "framing"
    if isinstance(e, errors.UnknownType):
        return "unknown_type"
    cls = messages.TYPES.get(msg_type) if msg_type is not None else None
    if isinstance(e, errors.MessageError) and cls is not None and not messages.is_down(cls.TYPE):
        return "malformed_" + cls.NAME.lower()  # e.g. a HELLO with tail 0: malformed_hello
    return "malformed"


@dataclass(slots=True)
class Session:
    token: int
    case_id: int
    window_no: str
    terminal_id: int
    armed_ms: int
    expires_ms: int
    cancelled: bool = False
    used: bool = False


@dataclass
class Output:
    """What one received frame asks of the shell."""

    terminal_id: int | None = None
    store: list[NewRating] = field(default_factory=list)
    send: list[tuple[int, bytes]] = field(default_factory=list)  # may go at once (not ACKs)
    refused: str | None = None
    kind: str | None = None  # message name, for metrics
    authentic: bool = False  # the tag verified (the source may be answered)


class _Peer:
    """The core's state for one provisioned terminal."""

    def __init__(self, rec: TerminalRecord) -> None:
        self.id = rec.id
        self.window_no = rec.window_no
        key = Key(rec.key)
        self.up = link.Link(link.DAEMON, rec.id, key, 0, rx_last=rec.rx_counter)
        self.down = link.Link(link.DAEMON, rec.id, key, min(rec.down_epoch, link.EPOCH_MAX))
        self.journal: int | None = rec.journal_id  # of the last HELLO; ACKs name it
        self.highs = dict(rec.journals)  # journal id -> highest seq stored
        self.boots = dict(rec.boots)  # (journal, boot) -> daemon ms at uptime 0
        self.distrust = dict(rec.distrust)  # journal -> (boot below, seq from): boot numbers reused
        # a boot's start as known before a HELLO of that same boot moved it: the
        # daemon's clock changed under a running terminal (a step across a restart)
        self.prev_starts: dict[tuple[int, int], list[int]] = {}
        self.hello = False
        self.mark = 0  # every seq of self.journal in (tail-1, mark] was received and is stored
        self.stored_ahead: set[int] = set()
        self.last_seen = -1
        self.last_time_ms = -TIME_MIN_INTERVAL_MS
        self.no_case: deque[int] = deque()
        self.source: str | None = None
        self.epoch_dirty = False
        # rekey: the key before it, accepted until a frame under the new one
        # arrives; the down link uses whichever key the terminal last used
        self.prev_key: Key | None = Key(rec.prev_key) if rec.prev_key is not None else None
        # self-test (SPEC.md "Self-test"): what the HELLO said, the test's
        # deadline on the terminal, and the ECHOs heard, numbered
        self.can_test = False
        self.testing_until = -1
        self.echo_n = 0
        self.echoes: deque[tuple[int, int, int, int]] = deque(maxlen=ECHOES_KEPT)  # (n, at_ms, op, arg)
        self.new_key = key
        if self.prev_key is not None:
            self.down.key = self.prev_key
        self.last_hint = -REPLAY_HINT_MS
        self.synced_at_step: int | None = None  # core.step_total when TIME was last sent
        self.need_time = False  # the daemon's clock stepped: send TIME at the next frame


class Core:
    def __init__(
        self,
        terminals: dict[int, TerminalRecord],
        sessions: Sequence[Session] = (),
        config: Sequence[tuple[int, int]] = (),
        clock_steps: Sequence[tuple[int, int]] = (),
        retired: Sequence[int] = (),
    ) -> None:
        self.peers: dict[int, _Peer] = {tid: _Peer(r) for tid, r in terminals.items()}
        self.retired: set[int] = set(retired) - set(self.peers)  # revoked: refused as 'retired'
        self.by_window: dict[str, int] = {
            p.window_no: tid for tid, p in self.peers.items() if p.window_no
        }
        self.sessions: dict[int, Session] = {s.token: s for s in sessions}
        self.armed: dict[int, int] = {}  # terminal id -> live session token
        self.config = list(config)
        self.pending = Updates()
        self.counters: dict[str, int] = {}
        self.step_total = 0  # sum of the daemon clock steps seen in this run (ms)
        self.steps: list[tuple[int, int]] = list(clock_steps)[-CLOCK_STEPS_KEPT:]  # (at, delta)
        for tid, r in terminals.items():
            if not r.epoch_saved:  # a full disk at start: make the new epoch durable
                self._upd(tid)["down_epoch"] = r.down_epoch
        self.source_of: dict[str, int] = {}  # serial source -> terminal id it carries

    def update_terminals(self, terminals: dict[int, TerminalRecord], retired: Sequence[int] = ()) -> int:
        """After a change of the terminals (a reload, ``hcp terminal``): add new
        terminals, take new windows and keys, drop retired ones; return how
        many were added.  A new key (rekey) keeps the links' counters: the old
        key stays accepted until the terminal uses the new one."""
        added = 0
        for tid, rec in terminals.items():
            p = self.peers.get(tid)
            if p is None:
                self.peers[tid] = _Peer(rec)
                added += 1
            else:
                p.window_no = rec.window_no
                if p.new_key._key != rec.key:
                    old = p.up.key
                    p.new_key = p.up.key = Key(rec.key)
                    if rec.prev_key is not None:
                        p.prev_key = Key(rec.prev_key) if rec.prev_key != old._key else old
                        p.down.key = p.prev_key  # until the terminal speaks under the new key
                    else:
                        p.prev_key, p.down.key = None, p.new_key
                for jid, high in rec.journals.items():
                    p.highs[jid] = max(p.highs.get(jid, 0), high)
        for tid in [t for t in self.peers if t not in terminals]:
            del self.peers[tid]
        self.retired = set(retired) - set(self.peers)
        self.by_window = {p.window_no: tid for tid, p in self.peers.items() if p.window_no}
        return added

    def _open(self, peer: _Peer, data: bytes, now_ms: int) -> frame.Frame:
        """Open an up frame under the terminal's key; after a rekey, under the
        previous key too, until a frame under the new one arrives."""
        try:
            f = peer.up.open(data)
        except errors.AuthError:
            if peer.prev_key is None:
                raise
            peer.up.key = peer.prev_key
            try:
                f = peer.up.open(data)  # raises as any frame would
            finally:
                peer.up.key = peer.new_key
            self.count("frames_previous_key")
            peer.down.key = peer.prev_key
            return f
        if peer.prev_key is not None:
            # the terminal holds its new key: the old one is forgotten, durably
            peer.prev_key = None
            peer.down.key = peer.new_key
            self._upd(peer.id)["prev_key"] = None
            self._event(peer, now_ms, "rekeyed", peer.journal, "the terminal uses its new key")
        return f

    # ------------------------------------------------------------ metrics

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ------------------------------------------------------------ ingest

    def receive(self, source: str, data: bytes, now_ms: int, bound: bool = False) -> Output:
        """One frame's bytes from ``source`` (a port path or 'mqtt:<tid>').

        ``bound``: the source carries one terminal only (serial): once a
        frame from it authenticates, frames naming another terminal are refused.
        """
        out = Output()
        self.count("frames_in")
        try:
            _v, mtype, tid, _c = frame.peek(data)
        except errors.ProtocolError as e:
            return self._refuse(out, refusal_reason(e))
        out.terminal_id = tid
        peer = self.peers.get(tid)
        if peer is None:
            return self._refuse(out, "retired" if tid in self.retired else "unknown_terminal")
        if bound:
            owner = self.source_of.get(source)
            if owner is not None and owner != tid:
                return self._refuse(out, "wrong_source")
        try:
            f = self._open(peer, data, now_ms)
        except errors.ReplayError:
            # Authentic (the tag is checked first) but behind: a terminal whose
            # boot count went back.  Tell it where the counters stand.
            out.authentic = True
            if now_ms - peer.last_hint >= REPLAY_HINT_MS or now_ms < peer.last_hint:
                peer.last_hint = now_ms
                hint = messages.ErrorDown(messages.E_REPLAY, peer.up.rx_last, "counter behind")
                out.send.append((tid, self._send(peer, hint)))
                self.count("replay_hints")
            return self._refuse(out, "replay")
        except errors.ProtocolError as e:
            return self._refuse(out, refusal_reason(e, mtype))
        except Exception:  # a decoder bug must not stop the hall
            return self._refuse(out, "malformed")
        out.authentic = True
        peer.up.accept(f)
        if bound:
            self.source_of[source] = tid
        peer.source = source
        peer.last_seen = now_ms
        upd = self._upd(tid)
        upd["rx_counter"] = f.counter
        upd["last_seen_ms"] = now_ms
        msg = f.msg
        out.kind = msg.NAME
        self.count("frames_ok")
        if peer.need_time and not isinstance(msg, messages.Hello):
            peer.need_time = False
            self._time(peer, now_ms, out)
        if isinstance(msg, messages.Hello):
            self._hello(peer, msg, now_ms, out)
        elif isinstance(msg, messages.Rating):
            self._ratings(peer, [msg], now_ms, out)
        elif isinstance(msg, messages.Ratings):
            self._ratings(peer, msg.records, now_ms, out)
        elif isinstance(msg, messages.Status):
            upd["journal_used"] = msg.used
            upd["journal_capacity"] = msg.capacity
            upd["alarms"] = msg.alarms
        elif isinstance(msg, messages.Echo):
            self._echo(peer, msg, now_ms)
        elif isinstance(msg, messages.Error):
            self.count("terminal_errors")
        return out

    def _echo(self, peer: _Peer, e: messages.Echo, now_ms: int) -> None:
        peer.echo_n += 1
        peer.echoes.append((peer.echo_n, now_ms, e.op, e.arg))
        self.count("echoes")
        if e.op in (messages.T_END, messages.T_TIMEOUT, messages.T_BUSY):
            peer.testing_until = -1
        else:
            peer.testing_until = now_ms + messages.Test.TIMEOUT_S * 1000

    def _refuse(self, out: Output, reason: str) -> Output:
        out.refused = reason
        self.count("refused_" + reason)
        return out

    def _upd(self, tid: int) -> dict[str, Any]:
        return self.pending.terminals.setdefault(tid, {})

    def _event(self, peer: _Peer, at_ms: int, kind: str, journal: int | None, detail: str) -> None:
        self.pending.events.append((peer.id, at_ms, kind, journal, detail))
        self.count("event_" + kind)

    def _time(self, peer: _Peer, now_ms: int, out: Output) -> None:
        out.send.append((peer.id, self._send(peer, messages.Time(now_ms))))
        peer.last_time_ms = now_ms
        peer.synced_at_step = self.step_total

    def _send(self, peer: _Peer, msg: messages.Message) -> bytes:
        try:
            return peer.down.send(msg)
        except errors.CounterExhausted:
            peer.down.new_epoch(peer.down.epoch + 1)
            self._upd(peer.id)["down_epoch"] = peer.down.epoch
            return peer.down.send(msg)

    def _hello(self, peer: _Peer, h: messages.Hello, now_ms: int, out: Output) -> None:
        upd = self._upd(peer.id)
        upd["firmware"] = ".".join(str(v) for v in h.fw)
        peer.can_test = bool(h.flags & messages.H_SELF_TEST)
        peer.testing_until = -1  # a (re)boot or a reconnect ends a test
        upd["board"] = h.board
        upd["journal_used"] = h.head - h.tail
        upd["journal_capacity"] = h.capacity
        upd["journal_id"] = h.journal
        jid, base = h.journal, h.tail - 1
        start = now_ms - h.uptime_ms
        bk = (jid, h.boot)
        if peer.boots.get(bk) is None or abs(peer.boots[bk] - start) > DRIFT_MAX_MS:
            if bk in peer.boots:
                peer.prev_starts[bk] = (peer.prev_starts.get(bk, []) + [peer.boots[bk]])[-PREV_STARTS_KEPT:]
            peer.boots[bk] = start
            self.pending.boots.append((peer.id, jid, h.boot, start))
        new_space = jid != peer.journal
        detail = f"head {h.head}, tail {h.tail}, boot {h.boot}"
        if jid not in peer.highs:
            # A journal this daemon has never seen: a new sequence space.
            prev = "none" if peer.journal is None else f"{peer.journal:08x}"
            self._event(peer, now_ms, "journal_new", jid, f"{detail}; previous journal {prev}")
            peer.highs[jid] = 0
            self.pending.journals.append((peer.id, jid, now_ms))
        elif new_space and peer.journal is not None:
            self._event(peer, now_ms, "journal_switch", jid, f"{detail}; from {peer.journal:08x}")
        if h.flags & messages.H_EPOCH_RAISED and peer.distrust.get(jid, (0, 0))[0] < h.boot:
            # The boot count went back and was raised on our REPLAY hint:
            # records of lower boot numbers may reuse numbers we knew.
            peer.distrust[jid] = (h.boot, 0)
            self.pending.distrust.append((peer.id, jid, h.boot, 0))
        behind = h.head - 1 < peer.highs[jid]
        if behind:
            # An older image of this journal (restored, cloned): it may hold
            # records written after the daemon's copy under seqs the daemon
            # holds; only what arrives again counts for the ACK.
            self._event(peer, now_ms, "journal_behind", jid,
                        f"{detail}; the store holds up to seq {peer.highs[jid]}")  # fmt: skip
            # Since the image came back, the terminal counted boots from the
            # image's count again: a record of an earlier boot number from the
            # tail on may be of a boot the daemon knows under that number.
            if peer.distrust.get(jid, (0, 0))[0] < h.boot:
                peer.distrust[jid] = (h.boot, h.tail)
                self.pending.distrust.append((peer.id, jid, h.boot, h.tail))
        # The ACK point restarts at the tail at every HELLO, and moves only over
        # records received after it: whatever the daemon held before, the
        # terminal may hold other records under those seqs now (an image put
        # back, then pressed before its HELLO went out).  The terminal resends
        # from its tail after every HELLO anyway (firmware/session.py).
        peer.mark = base
        peer.stored_ahead = set()
        peer.journal = jid
        peer.hello = True
        peer.need_time = False
        self._time(peer, now_ms, out)
        out.send.append((peer.id, self._send(peer, messages.Ack(peer.mark, jid))))
        if self.config:
            out.send.append((peer.id, self._send(peer, messages.Config(self.config))))

    def _start(self, peer: _Peer, r: messages.Rating) -> int | None:
        """When the rating's boot epoch began (daemon ms), if known for sure."""
        d = peer.distrust.get(r.journal)
        if d is not None and r.boot < d[0] and r.seq >= d[1]:
            return None  # maybe a reused boot number (an older journal image came back)
        return peer.boots.get((r.journal, r.boot))

    def _press_ms(self, peer: _Peer, r: messages.Rating, assess: int) -> int:
        """The press on the daemon's timeline with ms precision, for intervals:
        the rebuilt time when the boot is known, else the latest instant the
        device's whole second allows (so a rounding never makes a press fast)."""
        start = self._start(peer, r)
        if start is not None:
            return start + r.uptime_ms
        return assess + 999 if r.flags & messages.F_TIME_SYNCED and r.time else assess

    def _assess(self, peer: _Peer, r: messages.Rating, now_ms: int,
                flags_found: list[str]) -> tuple[int, str, bool]:  # fmt: skip
        """(assess ms, time quality, drifted) by the clock rule of SPEC.md section 5."""
        start = self._start(peer, r)
        ref = None if start is None else start + r.uptime_ms
        if r.flags & messages.F_TIME_SYNCED and r.time:
            dev = r.time * 1000
            if peer.synced_at_step is not None:
                dev += self.step_total - peer.synced_at_step  # the daemon's clock stepped since
            if ref is not None:
                offset = dev - ref
                self._upd(peer.id)["clock_offset_ms"] = offset
                drift = abs(offset) > DRIFT_MAX_MS + 1000  # device time has 1 s resolution
                if abs(offset) <= CLOCK_TOLERANCE_MS:
                    # the device's whole second, refined to the ms by the
                    # reference where it falls inside that second
                    # (the two differ by the link's latency both ways, too)
                    if dev - LATENCY_SLACK_MS <= ref <= dev + 999 + LATENCY_SLACK_MS:
                        dev = min(max(ref, dev), dev + 999)
                    return min(dev, now_ms), "synced", drift
                if self._explained_by_steps(offset) or any(
                    self._explained_by_steps(dev - (p + r.uptime_ms), 0)
                    for p in peer.prev_starts.get((r.journal, r.boot), ())
                ):
                    # Synced by a TIME from before a step of the daemon's own
                    # clock (perhaps before a restart): the daemon's doing.
                    self.count("clock_offsets_from_daemon_steps")
                else:
                    flags_found.append("clock_off")
                assess, quality = ref, "rebuilt"
            else:
                return self._not_future(dev, now_ms, "synced", flags_found)
        elif ref is not None:
            assess, quality, drift = ref, "rebuilt", False
        else:
            return now_ms, "received", False
        a, q, _ = self._not_future(assess, now_ms, quality, flags_found)
        return a, q, ref is not None and bool(r.flags & messages.F_TIME_SYNCED and r.time)

    def _explained_by_steps(self, offset: int, runs_from: int = 1) -> bool:
        """Does a run of the daemon's recent clock steps add up to -offset
        (``runs_from`` 0: or no step at all)?"""
        if runs_from == 0 and abs(offset) <= CLOCK_TOLERANCE_MS:
            return True
        st = self.steps
        for i in range(len(st)):
            acc = 0
            for j in range(i, len(st)):
                acc += st[j][1]
                if abs(offset + acc) <= CLOCK_TOLERANCE_MS:
                    return True
        return False

    @staticmethod
    def _not_future(t: int, now_ms: int, quality: str, flags_found: list[str]) -> tuple[int, str, bool]:
        if t > now_ms + FUTURE_SLACK_MS:
            flags_found.append("clock_clamped")
            return now_ms, "received", False
        return t, quality, False

    def _ratings(
        self, peer: _Peer, records: Sequence[messages.Rating], now_ms: int, out: Output
    ) -> None:
        drift = False
        for r in records:
            flags_found: list[str] = []
            assess, quality, drifted = self._assess(peer, r, now_ms, flags_found)
            drift = drift or drifted
            case_id = None
            if r.session:
                s = self.sessions.get(r.session)
                if s is not None and s.terminal_id == peer.id and not s.cancelled:
                    case_id = s.case_id
                    # A negative interval is clocks disagreeing, not a fast hand.
                    fast = self._press_ms(peer, r, assess) - s.armed_ms
                    if 0 <= fast < HUMAN_MIN_MS and quality != "received":
                        flags_found.append("too_fast")
                    if s.used:
                        flags_found.append("repeated")
                    s.used = True
                    if self.armed.get(peer.id) == s.token:
                        del self.armed[peer.id]
                else:
                    flags_found.append("unknown_session")
            else:
                q = peer.no_case
                q.append(assess)
                while q and q[0] < assess - BURST_WINDOW_MS:
                    q.popleft()
                if len(q) > BURST_MAX:
                    flags_found.append("burst_no_case")
            if r.flags & messages.F_RAPID and "too_fast" not in flags_found:
                flags_found.append("too_fast")
            out.store.append(
                NewRating(
                    peer.id,
                    r.seq,
                    r.level,
                    r.reason,
                    r.flags,
                    r.session or None,
                    case_id,
                    r.time,
                    r.uptime_ms,
                    r.boot,
                    assess,
                    quality,
                    flags_found,
                    r.journal,
                )  # fmt: skip
            )
        self.count("ratings_in", len(records))
        if drift and not 0 <= now_ms - peer.last_time_ms < TIME_MIN_INTERVAL_MS:
            self._time(peer, now_ms, out)
            self.count("time_drift")
        if not peer.hello:
            out.send.append(
                (
                    peer.id,
                    self._send(
                        peer, messages.ErrorDown(messages.E_HELLO_REQUIRED, 0, "send HELLO")
                    ),
                )
            )

    # ------------------------------------------------------------ after the commit

    def take_updates(self) -> Updates:
        """Terminal state, boot times, journals and events for the next commit."""
        u, self.pending = self.pending, Updates()
        return u

    def restore_updates(self, u: Updates) -> None:
        """A commit failed: keep its terminal state for the next one."""
        u.merge_after(self.pending)
        self.pending = u

    def committed(self, stored: Sequence[Stored], now_ms: int) -> list[tuple[int, bytes]]:
        """The ratings in ``stored`` are durable: the ACK frames to send."""
        touched: dict[int, _Peer] = {}
        for s in stored:
            r = s.rating
            peer = self.peers.get(r.terminal_id)
            if peer is None:
                continue
            if s.id is None:
                self.count("ratings_duplicate")
            else:
                self.count("ratings_stored")
                if s.fork:
                    self.count("ratings_forked")
                if r.seq > peer.highs.get(r.journal_id, 0):
                    peer.highs[r.journal_id] = r.seq
            if r.journal_id != peer.journal:
                continue  # stored; the ACK of another journal waits for its HELLO
            if r.seq > peer.mark and len(peer.stored_ahead) < MAX_PENDING_SEQS:
                peer.stored_ahead.add(r.seq)
            touched[peer.id] = peer
        acks = []
        for peer in touched.values():
            self._advance(peer)
            if peer.hello and peer.journal is not None:
                acks.append((peer.id, self._send(peer, messages.Ack(peer.mark, peer.journal))))
                self.count("acks_sent")
        return acks

    def failed(self, ratings: Sequence[NewRating]) -> list[tuple[int, bytes]]:
        """The commit failed (disk full): tell each terminal to keep its
        ratings; they stay in its journal and come again."""
        out = []
        for tid in {r.terminal_id for r in ratings}:
            peer = self.peers.get(tid)
            if peer is not None:
                e = messages.ErrorDown(messages.E_STORE_UNAVAILABLE, 0, "store unavailable")
                out.append((tid, self._send(peer, e)))
        return out

    def _advance(self, peer: _Peer) -> None:
        ahead = peer.stored_ahead
        while peer.mark + 1 in ahead:
            peer.mark += 1
            ahead.discard(peer.mark)
        if ahead:
            peer.stored_ahead = {s for s in ahead if s > peer.mark}

    def clock_stepped(self, delta_ms: int, now_ms: int) -> None:
        """The shell's wall clock jumped by ``delta_ms`` (an NTP step, an
        operator): move what this core remembers in wall time by the step, so
        intervals and rebuilt times stay on one timeline, and send every
        terminal TIME at its next frame.  A step flags no rating."""
        if not delta_ms:
            return
        self.step_total += delta_ms
        self.count("daemon_clock_steps")
        self.steps = (self.steps + [(now_ms, delta_ms)])[-CLOCK_STEPS_KEPT:]
        self.pending.clock_steps.append((now_ms, delta_ms))
        for p in self.peers.values():
            for bk in list(p.boots):
                p.prev_starts[bk] = (p.prev_starts.get(bk, []) + [p.boots[bk]])[-PREV_STARTS_KEPT:]
                p.boots[bk] += delta_ms
                self.pending.boots.append((p.id, bk[0], bk[1], p.boots[bk]))
            if p.last_seen >= 0:
                p.last_seen += delta_ms
            p.last_time_ms += delta_ms
            p.last_hint += delta_ms
            p.no_case = deque(t + delta_ms for t in p.no_case)
            p.need_time = True
        for s in self.sessions.values():
            s.armed_ms += delta_ms
            s.expires_ms += delta_ms

    # ------------------------------------------------------------ cases

    def online(self, tid: int, now_ms: int) -> bool:
        p = self.peers.get(tid)
        return p is not None and p.last_seen >= 0 and now_ms - p.last_seen <= OFFLINE_AFTER_MS

    def arm(
        self,
        window_no: str,
        case_id: int,
        case_no: str,
        token: int,
        now_ms: int,
        timeout_s: int = ARM_TIMEOUT_S,
    ) -> tuple[Session, list[tuple[int, bytes]]]:
        """Arm ``window_no``'s terminal for one rating of ``case_id``.
        ``token`` is a fresh random u32 != 0 from the shell."""
        tid = self.by_window.get(window_no)
        if tid is None:
            raise ArmError(f"window {window_no} has no terminal")
        if not self.online(tid, now_ms):
            raise ArmError(f"the terminal of window {window_no} is offline")
        if self.testing(tid, now_ms):
            raise ArmError(f"the terminal of window {window_no} is in its self-test")
        if not 0 < token <= 0xFFFFFFFF or token in self.sessions:
            raise ArmError("session token is not fresh")
        peer = self.peers[tid]
        if len(self.sessions) >= SESSIONS_PRUNE_AT:
            self.prune_sessions(now_ms)
        s = Session(token, case_id, window_no, tid, now_ms, now_ms + timeout_s * 1000)
        self.sessions[token] = s
        self.armed[tid] = token
        digest = hashlib.sha256(case_no.encode()).digest()[: messages.DIGEST_LEN]
        return s, [(tid, self._send(peer, messages.Arm(token, timeout_s, digest)))]

    def test(self, tid: int, op: int, arg: int, now_ms: int) -> list[tuple[int, bytes]]:
        """One self-test step for terminal ``tid`` (messages.T_END .. T_ECHO);
        its ECHO comes back through ``echoes``.  Raises SelfTestError when the
        terminal is unknown, offline, too old, or has a case armed."""
        peer = self.peers.get(tid)
        if peer is None:
            raise SelfTestError(f"terminal {tid:08x} is not provisioned (or retired)")
        if not self.online(tid, now_ms):
            raise SelfTestError(f"terminal {tid:08x} is offline")
        if not peer.can_test:
            raise SelfTestError(f"terminal {tid:08x} runs firmware without the self-test (before 0.2.0)")
        token = self.armed.get(tid)
        s = self.sessions.get(token) if token is not None else None
        if op != messages.T_END and s is not None and not s.used and not s.cancelled and s.expires_ms > now_ms:
            raise SelfTestError(f"terminal {tid:08x} has a case armed: test it once the case is rated or cancelled")
        try:
            msg = messages.Test(op, arg).check()
        except errors.MessageError as e:
            raise SelfTestError(str(e)) from None
        if op != messages.T_END:
            peer.testing_until = now_ms + messages.Test.TIMEOUT_S * 1000
        self.count("tests_sent")
        return [(tid, self._send(peer, msg))]

    def echoes(self, tid: int, after: int = 0) -> list[tuple[int, int, int, int]]:
        """The ECHOs heard from ``tid`` numbered above ``after``: (n, at_ms, op, arg)."""
        peer = self.peers.get(tid)
        return [] if peer is None else [e for e in peer.echoes if e[0] > after]

    def testing(self, tid: int, now_ms: int) -> bool:
        """Whether ``tid`` is in a self-test (as far as the daemon knows)."""
        peer = self.peers.get(tid)
        return peer is not None and peer.testing_until > now_ms

    def prune_sessions(self, now_ms: int) -> None:
        """Forget sessions older than SESSION_KEEP_MS (their rows stay in the store)."""
        old = [t for t, s in self.sessions.items() if s.armed_ms < now_ms - SESSION_KEEP_MS]
        for t in old:
            del self.sessions[t]

    def cancel(self, token: int) -> list[tuple[int, bytes]]:
        s = self.sessions.get(token)
        if s is None or s.cancelled:
            return []
        s.cancelled = True
        if self.armed.get(s.terminal_id) == token:
            del self.armed[s.terminal_id]
        peer = self.peers.get(s.terminal_id)
        if peer is None:
            return []
        return [(peer.id, self._send(peer, messages.Disarm(token)))]

    def source(self, tid: int) -> str | None:
        p = self.peers.get(tid)
        return p.source if p else None

    def drop_source(self, source: str) -> None:
        """A serial port closed: whatever it carried may come back on any port."""
        self.source_of.pop(source, None)
