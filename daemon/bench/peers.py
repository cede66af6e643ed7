"""Test peers of the daemon: a CPython fake terminal (the protocol's terminal
side, protocol.link + messages, with an in-memory journal, no I/O) and the
ways to put it on a link the daemon reads: a pty (``PtyPeer``) or a real
broker (``MqttHub``/``MqttPeer``); ``drive`` resends like a terminal.

It behaves as SPEC.md's link rules ask of a terminal: HELLO on (re)connect
with head/tail/acked, every rating kept until a cumulative ACK covers it,
resend of everything unacknowledged on demand (``resend``).  It records every
ACK so a test can check that nothing was acknowledged before it was stored.
It is not the firmware (firmware/ is); it is the test peer of the daemon.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import tty
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from haochaping.protocol import link, messages
from haochaping.protocol import mqtt as topics
from haochaping.protocol import serial as wire
from haochaping.protocol.auth import Key


class FakeTerminal:
    def __init__(self, terminal_id: int, key: bytes, boot: int = 1, capacity: int = 4096,
                 journal: int = 1) -> None:  # fmt: skip
        self.id = terminal_id
        self.key = Key(key)
        self.boot = boot
        self.capacity = capacity
        self.journal_id = journal  # the journal's identity: a new one is a wiped flash
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
            messages.Hello(
                (1, 0, 0),
                "fake",
                self.boot,
                0,
                self.head,
                self.tail,
                self.acked,
                min(self.capacity, 0xFFFF),
                self.uptime_ms,
                0,
                self.journal_id,
            )  # fmt: skip
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
            seq, level, reason if level <= 2 else 0, flags, sess, t, self.uptime_ms, self.boot,
            self.journal_id,
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
        return self.link.send(
            messages.Status(len(self.journal), min(self.capacity, 0xFFFF), 10000, self.uptime_ms)
        )

    # ------------------------------------------------------------ down

    def receive(self, data: bytes) -> messages.Message:
        f = self.link.receive(data)
        m = f.msg
        self.received.append(m)
        if isinstance(m, messages.Ack):
            if m.journal != self.journal_id:
                return m  # an ACK of another journal frees nothing
            self.ack_log.append(m.seq)
            if m.seq > self.acked:
                if m.seq >= self.head:
                    raise AssertionError(f"ACK {m.seq} for a seq never written (head {self.head})")
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


HELLO_MIN_INTERVAL_S = 0.5


class Peer:
    """A FakeTerminal plus the way to reach the daemon.  ``push`` sends frames;
    down frames arrive on another thread and go through ``deliver``."""

    def __init__(self, term: FakeTerminal) -> None:
        self.term = term
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.last_progress = time.monotonic()
        self.last_hello = 0.0

    def deliver(self, data: bytes) -> None:
        again: list[bytes] = []
        with self.lock:
            before = self.term.acked
            m = None
            try:
                m = self.term.receive(data)
            except AssertionError as e:
                self.errors.append(str(e))
            except Exception as e:  # noqa: BLE001 - a refused down frame is a test failure, recorded
                self.errors.append(f"{type(e).__name__}: {e}")
            now = time.monotonic()
            if self.term.acked != before:
                self.last_progress = now
            if (
                isinstance(m, messages.Error)
                and m.code == messages.E_HELLO_REQUIRED
                and now - self.last_hello > HELLO_MIN_INTERVAL_S
            ):
                # the daemon restarted and lost our HELLO: HELLO, then resend
                self.last_hello = self.last_progress = now
                again = self.term.resend()
        if again:
            self.push(again)

    def push(self, frames: Iterable[bytes]) -> None:
        raise NotImplementedError

    def send_new(self, per_frame: int = 1) -> None:
        with self.lock:
            frames = self.term.send_new(per_frame)
        self.push(frames)

    def resend(self) -> None:
        with self.lock:
            frames = self.term.resend()
            self.last_progress = time.monotonic()
        self.push(frames)

    def hello(self) -> None:
        with self.lock:
            frames = [self.term.hello()]
        self.push(frames)


class MqttHub:
    """One paho client carrying many fake terminals' topics."""

    def __init__(
        self, port: int, prefix: str = topics.DEFAULT_PREFIX, client_id: str = "hcp-test-peers"
    ) -> None:
        import paho.mqtt.client as mqtt

        self.prefix = prefix
        self.peers: dict[int, MqttPeer] = {}
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.c.max_inflight_messages_set(0)
        self.c.max_queued_messages_set(0)
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/t/+/down", qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("test peers could not subscribe")

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        parsed = topics.parse_topic(m.topic, self.prefix)
        if parsed and parsed[0] in self.peers:
            self.peers[parsed[0]].deliver(m.payload)

    def add(self, term: FakeTerminal) -> MqttPeer:
        p = MqttPeer(term, self)
        self.peers[term.id] = p
        return p

    def publish(self, tid: int, frames: Iterable[bytes]) -> list[Any]:
        topic = topics.up_topic(tid, self.prefix)
        return [self.c.publish(topic, fr, qos=1) for fr in frames]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class MqttPeer(Peer):
    def __init__(self, term: FakeTerminal, hub: MqttHub) -> None:
        super().__init__(term)
        self.hub = hub

    def push(self, frames: Iterable[bytes]) -> None:
        self.hub.publish(self.term.id, frames)


class PtyPeer(Peer):
    """A fake terminal on the master side of a pty; the daemon opens ``path``."""

    def __init__(self, term: FakeTerminal, link_dir: Path | None = None) -> None:
        super().__init__(term)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)
        if link_dir is not None:
            # a stable name the daemon's glob matches (like /dev/serial/by-id)
            link = Path(link_dir) / (f"term-{term.id:08x}")
            link.symlink_to(self.path)
            self.path = str(link)
        self.wlock = threading.Lock()
        self.closed = False
        self.dec = wire.Decoder()
        self.bad_chunks = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closed:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.dec.receive_data(data)
            while True:
                try:
                    fr = self.dec.next_event()
                except Exception:  # noqa: BLE001 - a chunk cut short (daemon killed mid-write)
                    self.bad_chunks += 1
                    continue
                if fr is None:
                    break
                self.deliver(fr)

    def write_raw(self, data: bytes) -> None:
        with self.wlock:
            os.write(self.master, data)

    def push(self, frames: Iterable[bytes]) -> None:
        self.write_raw(b"".join(wire.encode(f) for f in frames))

    def close(self) -> None:
        self.closed = True
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def drive(peers: list[Peer], timeout_s: float, ack_timeout_s: float = 2.0,
          alive: Callable[[], bool] | None = None) -> bool:  # fmt: skip
    """Resend like a terminal (HELLO + everything unacknowledged) whenever a
    peer made no progress for ``ack_timeout_s``; True when every journal is empty."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = [p for p in peers if not p.term.done]
        if not pending:
            return True
        now = time.monotonic()
        if alive is None or alive():
            for p in pending:
                if now - p.last_progress > ack_timeout_s:
                    p.resend()
        time.sleep(0.05)
    return all(p.term.done for p in peers)


def make_key(tid: int, seed: int = 0) -> bytes:
    return hashlib.sha256(b"test-key:%d:%d" % (seed, tid)).digest()
