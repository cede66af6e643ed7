"""The hall daemon's ingest core: sans-IO, like protocol/.

What it is for: turn frames from terminals into (1) ratings to store and (2)
frames to send back, and arm windows for cases.  It keeps one protocol Link
per terminal (tag and counter checks), binds ratings to the case armed on the
terminal's window by session token, rebuilds wall time for ratings pressed
before the terminal's clock was synced, and flags abuse patterns as
annotations (never by dropping a rating).

What it must never do: read a clock, touch a file, socket or port, or send an
ACK for a rating that has not been committed.  The shell calls:

    out = core.receive(source, data, now_ms)      # a frame from a transport
    ... store out.store together with core.take_updates() in ONE commit ...
    acks = core.committed(stored, now_ms)         # only after the commit returned
    core.failed(out.store)                        # or, if the commit failed

``receive`` never raises for anything a terminal or the network can send; a
refusal comes back as ``out.refused`` (a short reason) and is counted.

Rules:
- A frame whose terminal id is not provisioned is refused ('unknown_terminal').
- A frame failing the tag is refused ('auth'); a counter not above the last
  accepted one ('replay').  Either changes no state.
- One terminal per serial port: a port that carried terminal A refuses frames
  naming B ('wrong_source') until it is reopened.
- HELLO: TIME, then ACK(contiguous stored mark from tail-1), then CONFIG if set.
- RATING/RATINGS: every record goes to the store (the store's UNIQUE
  (terminal_id, seq) makes duplicates a no-op); after the commit, one
  cumulative ACK per terminal in the group.  Before any HELLO the records are
  stored and ERROR(E_HELLO_REQUIRED) asks for one: the ACK needs the tail.
- TIME again when a synced rating's clock is off by more than DRIFT_MAX_MS
  (at most once per TIME_MIN_INTERVAL_MS per terminal).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from haochaping.daemon.store import NewRating, Stored, TerminalRecord
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

REFUSAL_REASONS = (
    "unknown_terminal",
    "auth",
    "replay",
    "too_long",
    "checksum",
    "framing",
    "malformed",
    "direction",
    "wrong_source",
    "version",
)


class ArmError(Exception):
    """The window cannot be armed (no terminal, or it is offline)."""


def refusal_reason(e: Exception) -> str:
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


class _Peer:
    """The core's state for one provisioned terminal."""

    def __init__(self, rec: TerminalRecord) -> None:
        self.id = rec.id
        self.window_no = rec.window_no
        key = Key(rec.key)
        self.up = link.Link(link.DAEMON, rec.id, key, 0, rx_last=rec.rx_counter)
        self.down = link.Link(link.DAEMON, rec.id, key, min(rec.down_epoch, link.EPOCH_MAX))
        self.high_seq = rec.high_seq
        self.boots = dict(rec.boots)  # boot -> daemon ms at uptime 0
        self.hello = False
        self.mark = 0  # every seq in (tail-1, mark] is stored
        self.stored_ahead: set[int] = set()
        self.last_seen = -1
        self.last_time_ms = -TIME_MIN_INTERVAL_MS
        self.no_case: deque[int] = deque()
        self.source: str | None = None
        self.epoch_dirty = False


class Core:
    def __init__(
        self,
        terminals: dict[int, TerminalRecord],
        sessions: Sequence[Session] = (),
        config: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.peers: dict[int, _Peer] = {tid: _Peer(r) for tid, r in terminals.items()}
        self.by_window: dict[str, int] = {
            p.window_no: tid for tid, p in self.peers.items() if p.window_no
        }
        self.sessions: dict[int, Session] = {s.token: s for s in sessions}
        self.armed: dict[int, int] = {}  # terminal id -> live session token
        self.config = list(config)
        self.updates: dict[int, dict[str, Any]] = {}
        self.new_boots: list[tuple[int, int, int]] = []
        self.counters: dict[str, int] = {}
        self.source_of: dict[str, int] = {}  # serial source -> terminal id it carries

    def update_terminals(self, terminals: dict[int, TerminalRecord]) -> int:
        """After a reload: add new terminals, take new windows and keys; return how many were added."""
        added = 0
        for tid, rec in terminals.items():
            p = self.peers.get(tid)
            if p is None:
                self.peers[tid] = _Peer(rec)
                added += 1
            else:
                p.window_no = rec.window_no
                if p.up.key._key != rec.key:
                    fresh = _Peer(rec)
                    p.up, p.down = fresh.up, fresh.down
        for tid in [t for t in self.peers if t not in terminals]:
            del self.peers[tid]
        self.by_window = {p.window_no: tid for tid, p in self.peers.items() if p.window_no}
        return added

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
            _v, _t, tid, _c = frame.peek(data)
        except errors.ProtocolError as e:
            return self._refuse(out, refusal_reason(e))
        out.terminal_id = tid
        peer = self.peers.get(tid)
        if peer is None:
            return self._refuse(out, "unknown_terminal")
        if bound:
            owner = self.source_of.get(source)
            if owner is not None and owner != tid:
                return self._refuse(out, "wrong_source")
        try:
            f = peer.up.open(data)
        except errors.ProtocolError as e:
            return self._refuse(out, refusal_reason(e))
        except Exception:  # a decoder bug must not stop the hall
            return self._refuse(out, "malformed")
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
        elif isinstance(msg, messages.Error):
            self.count("terminal_errors")
        return out

    def _refuse(self, out: Output, reason: str) -> Output:
        out.refused = reason
        self.count("refused_" + reason)
        return out

    def _upd(self, tid: int) -> dict[str, Any]:
        return self.updates.setdefault(tid, {})

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
        upd["board"] = h.board
        upd["journal_used"] = h.head - h.tail
        upd["journal_capacity"] = h.capacity
        start = now_ms - h.uptime_ms
        if peer.boots.get(h.boot) is None or abs(peer.boots[h.boot] - start) > DRIFT_MAX_MS:
            peer.boots[h.boot] = start
            self.new_boots.append((peer.id, h.boot, start))
        base = h.tail - 1
        if not peer.hello or base > peer.mark or h.head - 1 < peer.mark:
            # First HELLO, the terminal is ahead of us, or its journal went
            # backwards (replaced or wiped): restart contiguity from its tail.
            if peer.hello and h.head - 1 < peer.mark:
                self.count("seq_backwards")
            peer.mark = base
            peer.stored_ahead = {s for s in peer.stored_ahead if s > base}
            self._advance(peer)
        peer.hello = True
        out.send.append((peer.id, self._send(peer, messages.Time(now_ms))))
        peer.last_time_ms = now_ms
        out.send.append((peer.id, self._send(peer, messages.Ack(peer.mark))))
        if self.config:
            out.send.append((peer.id, self._send(peer, messages.Config(self.config))))

    def _ratings(
        self, peer: _Peer, records: Sequence[messages.Rating], now_ms: int, out: Output
    ) -> None:
        drift = False
        for r in records:
            flags_found: list[str] = []
            start = peer.boots.get(r.boot)
            if r.flags & messages.F_TIME_SYNCED and r.time:
                assess = r.time * 1000
                quality = "synced"
                if start is not None:
                    offset = r.time * 1000 - (start + r.uptime_ms)
                    self._upd(peer.id)["clock_offset_ms"] = offset
                    if abs(offset) > DRIFT_MAX_MS + 1000:  # device time has 1 s resolution
                        drift = True
            elif start is not None:
                assess = start + r.uptime_ms
                quality = "rebuilt"
            else:
                assess = now_ms
                quality = "received"
            if assess > now_ms + FUTURE_SLACK_MS:
                assess = now_ms
                flags_found.append("clock_clamped")
            case_id = None
            if r.session:
                s = self.sessions.get(r.session)
                if s is not None and s.terminal_id == peer.id and not s.cancelled:
                    case_id = s.case_id
                    if assess - s.armed_ms < HUMAN_MIN_MS and quality != "received":
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
            if r.flags & messages.F_REPEATED and "repeated" not in flags_found:
                flags_found.append("repeated")
            if r.flags & messages.F_RAPID and "too_fast" not in flags_found:
                flags_found.append("too_fast")
            if r.seq <= peer.high_seq:
                # Only kept if the store finds it new: a new rating below the
                # highest stored seq means the terminal's numbering went back.
                flags_found.append("seq_backwards")
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
                )  # fmt: skip
            )
        self.count("ratings_in", len(records))
        if drift and now_ms - peer.last_time_ms >= TIME_MIN_INTERVAL_MS:
            peer.last_time_ms = now_ms
            out.send.append((peer.id, self._send(peer, messages.Time(now_ms))))
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

    def take_updates(self) -> tuple[dict[int, dict[str, Any]], list[tuple[int, int, int]]]:
        """Terminal state and boot times to write in the next commit."""
        u, b = self.updates, self.new_boots
        self.updates, self.new_boots = {}, []
        return u, b

    def restore_updates(self, u: dict[int, dict[str, Any]], b: list[tuple[int, int, int]]) -> None:
        """A commit failed: keep its terminal state for the next one."""
        for tid, d in u.items():
            merged = dict(d)
            merged.update(self.updates.get(tid, {}))
            self.updates[tid] = merged
        self.new_boots = b + self.new_boots

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
                if r.seq > peer.high_seq:
                    peer.high_seq = r.seq
                    self._upd(peer.id)["high_seq"] = r.seq
            if r.seq > peer.mark and len(peer.stored_ahead) < MAX_PENDING_SEQS:
                peer.stored_ahead.add(r.seq)
            touched[peer.id] = peer
        acks = []
        for peer in touched.values():
            self._advance(peer)
            if peer.hello:
                acks.append((peer.id, self._send(peer, messages.Ack(peer.mark))))
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
