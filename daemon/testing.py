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
        return self.link.send(
            messages.Status(len(self.journal), min(self.capacity, 0xFFFF), 10000, self.uptime_ms)
        )

    # ------------------------------------------------------------ down

    def receive(self, data: bytes) -> messages.Message:
        f = self.link.receive(data)
        m = f.msg
        self.received.append(m)
        if isinstance(m, messages.Ack):
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


# ---------------------------------------------------------------------------
# Harness: a real Mosquitto, fake terminals over MQTT and over ptys, and the
# daemon as a real process.  Used by tests/test_daemon_*.py and daemon/bench.py.

import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tty  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from haochaping.protocol import mqtt as topics  # noqa: E402
from haochaping.protocol import serial as wire  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


class Mosquitto:
    """A broker of our own on a free loopback port, persistence in ``workdir``."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {self.dir}/\nautosave_on_changes true\nautosave_interval 1\nmax_queued_messages 1000000\nmax_inflight_messages 0\nmax_packet_size 4096\nlog_dest file {self.dir}/mosquitto.log\n"
        )

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        "mosquitto exited: see %s" % (self.dir / "mosquitto.log")
                    ) from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *a: object) -> None:
        self.stop()


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


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for m in self.messages:
            if key in m and (value is None or m[key] == value):
                return m
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            m = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(m)
            if key in m and (value is None or m[key] == value):
                return m
        raise TimeoutError(f"no {key}={value} from the daemon")

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """``hcp daemon --config PATH`` as a real process, readiness via sd_notify."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.dir = Path(workdir)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.runs = 0

    def start(self, wait: bool = True) -> DaemonProcess:
        self.runs += 1
        sock = self.dir / (f"notify-{self.runs}.sock")
        self.notify = NotifySocket(sock)
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = str(sock)
        self.log = open(self.dir / (f"daemon-{self.runs}.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "haochaping.cli", "daemon", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        if wait:
            self.notify.wait_for("READY", "1")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._close()
        return rc

    def _close(self) -> None:
        if self.notify is not None:
            self.notify.close()
            os.unlink(self.notify.path)
            self.notify = None
        self.log.close()

    def output(self) -> str:
        return "\n".join(
            p.read_text("utf-8", "replace") for p in sorted(self.dir.glob("daemon-*.log"))
        )


def write_config(path: Path, db: Path, transports: list[dict[str, Any]], api_port: int,
                 tokens: dict[str, str] | None = None, extra: str = "") -> Path:  # fmt: skip
    """A daemon config for tests (TOML written by hand: tomllib only reads)."""
    lines = [
        "[store]",
        f'path = "{db}"',
        'contact_key = "{}"'.format(db.parent / "contact.key"),
        "",
    ]
    lines += ["[api]", f'listen = "127.0.0.1:{api_port}"']
    if tokens:
        tf = path.parent / "api-tokens"
        tf.write_text("".join(f"{n} {t}\n" for n, t in tokens.items()))
        lines.append(f'tokens_file = "{tf}"')
    lines.append("")
    for t in transports:
        lines.append("[[transports]]")
        for k, v in t.items():
            lines.append("{} = {}".format(k, (f'"{v}"') if isinstance(v, str) else v))
        lines.append("")
    path.write_text("\n".join(lines) + extra)
    return path


def provision(
    db: Path, terms: Iterable[FakeTerminal], windows: dict[int, str] | None = None
) -> None:
    from haochaping.daemon.store import Store

    s = Store(db)
    for t in terms:
        s.add_terminal(t.id, t.key._key, (windows or {}).get(t.id), 0)
    s.close()


def make_key(tid: int, seed: int = 0) -> bytes:
    import hashlib

    return hashlib.sha256(b"test-key:%d:%d" % (seed, tid)).digest()
