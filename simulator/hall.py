"""A whole hall on this machine, with real processes: what ``hcp demo`` and
``hcp sim --terminals N`` run.

What it is for: show (and check) the path a press takes in production.  It
starts, each as its own process, the reference provincial receiver (``hcp
province serve``), a Mosquitto broker when one is installed and asked for,
the hall daemon (``hcp daemon --config``) and the uplink (``hcp uplink
run``); then N virtual terminals running ``firmware/`` (Terminal with the
simulator board, a real journal file, the firmware's own serial and MQTT
transports) whose serial end is a real pseudo-terminal the daemon's pyserial
transport opens, or that talks to a real Mosquitto broker.  A window business system posts finished cases (办件) to the
daemon's HTTP API, which arms the window's terminal; simulated citizens
press its buttons.  At the end it reads what each hop holds and checks that
every rating whose THANKS was shown reached the receiver exactly once, and
that every batch's signature verifies.

What it must never do: reach into a running process; everything is observed
through the files and HTTP endpoints the parts offer (SQLite read-only).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tty
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haochaping.daemon import keys
from haochaping.daemon.store import Store
from haochaping.daemon.uplink import batch as batchmod
from haochaping.firmware import board_sim, links, terminal, ui
from haochaping.protocol.auth import Key

HALL_ID = "demo-hall"
MPY_HOST = Path(__file__).resolve().parent / "mpy" / "vterm.mjs"
MPY_PACKAGE = (
    Path(__file__).resolve().parent.parent / "tests" / "mpy" / "node_modules" / "@micropython"
    / "micropython-webassembly-pyscript" / "micropython.mjs"
)  # fmt: skip
LOOP_MS = 5  # the terminals' main loop period
PRESS_MS = 80  # a citizen holds a button this long
START_TIMEOUT_S = 30.0  # a part that is not up by then fails the run
DRAIN_TIMEOUT_S = 30.0
CHAOS_RETRY_S = 30.0  # with --chaos the business system retries a case this long  # after the last press, everything reaches the province within this
THANKS_MS = 400  # CONFIG C_THANKS_MS in the demo (the factory default is 2000)
REASON_TIMEOUT_S = 2
ARM_TIMEOUT_S = 5  # a citizen who walks away frees the window this soon


class HallError(Exception):
    """A part of the hall did not start or the run could not finish."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    what: str, ok: Callable[[], bool], timeout: float, proc: subprocess.Popen[Any] | None = None
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        if proc is not None and proc.poll() is not None:
            raise HallError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.05)
    raise HallError(f"{what} did not come up within {timeout:.0f} s")


def _http(url: str, body: dict[str, Any] | None = None, token: str | None = None,
          timeout: float = 5.0) -> tuple[int, Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None


# ---------------------------------------------------------------- terminal links


class PtyPort:
    """The terminal's end of a pseudo-terminal, as the non-blocking port the
    firmware's serial transport (firmware/links.SerialTransport) reads, like a
    UART.  The daemon opens the other end (by a symlink in the state
    directory) with pyserial, as it opens a USB port."""

    def __init__(self, link_path: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: a raw UART
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        if link_path.exists() or link_path.is_symlink():
            link_path.unlink()
        link_path.symlink_to(self.path)
        self.tx_dropped = 0

    def read(self, n: int) -> bytes | None:
        try:
            return os.read(self.master, n) or None
        except (BlockingIOError, OSError):
            return None

    def write(self, data: bytes) -> bool:
        view = memoryview(data)
        deadline = time.monotonic() + 1.0
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:  # nobody reads: a UART would drop too
                    self.tx_dropped += 1
                    return False
                time.sleep(0.001)
        return True

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class MqttLink:
    """The firmware's own MQTT client (firmware/mqtt.MQTTTransport, non-blocking
    MQTT 3.1.1 on a socket) toward the hall's broker."""

    def __init__(self, tid: int, host: str, port: int) -> None:
        from haochaping.firmware import mqtt as fw_mqtt

        self.transport = fw_mqtt.MQTTTransport(host, port, tid)

    def close(self) -> None:
        self.transport.close()


# ---------------------------------------------------------------- virtual terminal


class Board(board_sim.SimBoard):
    """The simulator board, reporting what it shows to the hall."""

    def __init__(self, vt: VirtualTerminal, journal_path: str) -> None:
        super().__init__(journal_path, name="sim")
        self.vt = vt

    def show(self, pattern: int, button: int, term: Any) -> None:
        super().show(pattern, button, term)
        if pattern == ui.P_THANKS:
            ev = term.ev
            self.vt.on_thanks(term.last_seq, ev.rec_level, ev.rec_reason, ev.rec_session)
        elif pattern in (ui.P_IDLE, ui.P_FAULT):
            self.vt.idle.set()
        elif pattern == ui.P_ARMED:
            self.vt.armed.set()


@dataclass
class Confirmed:
    tid: int
    seq: int
    level: int
    reason: int
    session: int


class VirtualTerminal:
    """firmware/ on CPython: Terminal + the simulator board + a real journal file."""

    def __init__(self, tid: int, key: bytes, window_no: str, transport: str, state: Path,
                 link: PtyPort | MqttLink) -> None:  # fmt: skip
        self.tid = tid
        self.key = key
        self.window_no = window_no
        self.transport_kind = transport
        self.link = link
        self.lock = threading.Lock()
        self.confirmed: list[Confirmed] = []
        self.thanks = threading.Event()
        self.idle = threading.Event()
        self.armed = threading.Event()
        self.journal_path = str(state / (f"{tid:08x}.journal"))
        self.journaled_before = 0  # journal writes of earlier boots
        self.boots = 0
        self.board, self.term = self._boot()
        self.presses = 0

    def _boot(self) -> tuple[Board, terminal.Terminal]:
        board = Board(self, self.journal_path)
        if isinstance(self.link, PtyPort):
            board.transport = links.SerialTransport(self.link)  # type: ignore[assignment]
        else:
            board.transport = self.link.transport  # type: ignore[assignment]
        self.boots += 1
        return board, terminal.Terminal(board, self.tid, Key(self.key), capacity=4000)

    def power_cut(self) -> None:
        """Power off and on between two main-loop turns: RAM is gone, the
        journal file (synced on every write) is what the new boot finds."""
        with self.lock:
            self.journaled_before += self.term.journal.writes
            self.term.journal.f.close()
            self.board, self.term = self._boot()

    def on_thanks(self, seq: int, level: int, reason: int, session: int) -> None:
        self.confirmed.append(Confirmed(self.tid, seq, level, reason, session))
        self.thanks.set()

    def step(self, now: int) -> None:
        with self.lock:
            self.term.step(now & (ui.TICKS_PERIOD - 1))

    def press(self, button: int) -> None:
        with self.lock:
            self.board.mask |= 1 << button
            self.presses += 1
        time.sleep(PRESS_MS / 1000)
        with self.lock:
            self.board.mask &= ~(1 << button)

    @property
    def journaled(self) -> int:
        return self.journaled_before + int(self.term.journal.writes)


class MpyTerminal:
    """firmware/ on real MicroPython: the WebAssembly port under Node.js
    (simulator/mpy/vterm.mjs runs simulator/mpy/vterm.py there).  This side
    only pumps the pseudo-terminal's bytes to and from the Node process; the
    serial framing, the link, the evaluator and the journal all run on
    MicroPython."""

    def __init__(
        self, tid: int, key: bytes, window_no: str, link: PtyPort, node: str, log: Path
    ) -> None:
        self.tid = tid
        self.key = key
        self.window_no = window_no
        self.transport_kind = "serial/micropython"
        self.link = link
        self.confirmed: list[Confirmed] = []
        self.thanks = threading.Event()
        self.idle = threading.Event()
        self.armed = threading.Event()
        self.ready = threading.Event()
        self.errors: list[str] = []
        self.version = ""
        self.mask = 0
        self.journaled = 0
        self.lock = threading.Lock()
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [node, str(MPY_HOST), str(tid), key.hex()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )  # fmt: skip
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="mpy-out", daemon=True)
        self._pump = threading.Thread(target=self._pump_rx, name="mpy-in", daemon=True)
        self._reader.start()
        self._pump.start()
        if not self.ready.wait(START_TIMEOUT_S):
            raise HallError("MicroPython terminal did not start: {}".format("; ".join(self.errors)))

    def _write(self, line: str) -> None:
        with self.lock:
            if self.proc.stdin is not None and self.proc.poll() is None:
                try:
                    self.proc.stdin.write(line + "\n")
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("TX "):
                self.link.write(bytes.fromhex(line[3:]))
            elif line.startswith("THANKS "):
                seq, level, reason, session, writes = (int(x) for x in line.split()[1:])
                self.confirmed.append(Confirmed(self.tid, seq, level, reason, session))
                self.journaled = writes
                self.thanks.set()
            elif line.startswith("SHOW "):
                p = int(line[5:])
                if p in (ui.P_IDLE, ui.P_FAULT):
                    self.idle.set()
                elif p == ui.P_ARMED:
                    self.armed.set()
            elif line.startswith("READY "):
                self.version = line[6:]
                self.ready.set()
            elif line.startswith("ERROR "):
                self.errors.append(line[6:])
        if not self._stop.is_set():
            self.errors.append(f"the MicroPython terminal exited (status {self.proc.poll()})")

    def _pump_rx(self) -> None:
        import select

        fd = self.link.master
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([fd], [], [], 0.05)
                if not r:
                    continue
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if data:
                self._write("RX " + data.hex())

    def step(self, now: int) -> None:
        pass  # its main loop runs in the Node process

    def press(self, button: int) -> None:
        self.mask |= 1 << button
        self._write(f"M {self.mask}")
        time.sleep(PRESS_MS / 1000)
        self.mask &= ~(1 << button)
        self._write(f"M {self.mask}")

    def close(self) -> None:
        self._stop.set()
        self._write("Q")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------- the hall


@dataclass
class HallOptions:
    terminals: int = 4  # on serial (pseudo-terminals)
    mqtt_terminals: int = 0  # on MQTT (needs a mosquitto binary)
    cases: int = 5  # per window
    seed: int = 1
    state_dir: str | None = None  # default: a temporary directory, removed afterwards
    keep: bool = False
    mosquitto: str | None = None
    runtime: str = "cpython"  # or "micropython": the first terminal runs on MicroPython (wasm)
    chaos: bool = False  # kill -9 the daemon, the uplink and the receiver now and then


@dataclass
class Snapshot:
    pressed: int = 0
    cases: int = 0
    stored: int = 0
    acknowledged: int = 0
    phase: str = ""
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # window -> (cases, ratings)


class Hall:
    def __init__(self, opts: HallOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.args: dict[str, list[str]] = {}
        self.chaos_log: list[str] = []
        self.vts: list[VirtualTerminal | MpyTerminal] = []
        self.stop = threading.Event()
        self.loop_thread: threading.Thread | None = None
        self.errors: list[str] = []
        self.cases_posted: dict[str, int] = {}
        self.sessions: dict[int, str] = {}  # session token -> case_no
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if opts.state_dir:
            self.dir = Path(opts.state_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="hcp-demo-")
            self.dir = Path(self._tmp.name)
        self.db = self.dir / "hall.sqlite"
        self.token = secrets.token_hex(16)
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[Any]:
        self.args[name] = args
        log = open(self.dir / (f"{name}.log"), "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            [sys.executable, "-m", "haochaping", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.procs[name] = p
        return p

    def start(self) -> None:
        node = None
        if self.opts.runtime == "micropython":
            node = shutil.which("node")
            if node is None:
                raise HallError("--runtime micropython needs Node.js (node) on PATH")
            if not MPY_PACKAGE.exists() and not os.environ.get("HCP_MPY_PACKAGE"):
                raise HallError(
                    "--runtime micropython needs MicroPython's WebAssembly port: run `npm ci` in tests/mpy"
                )
            if self.opts.terminals < 1:
                raise HallError(
                    "--runtime micropython runs the first serial terminal on MicroPython"
                )
        elif self.opts.runtime != "cpython":
            raise HallError("runtime is cpython or micropython")
        d = self.dir
        if self.db.exists():
            raise HallError(f"{d} already holds a hall; give a new or empty directory")
        for sub in ("tty", "terminals", "province"):
            (d / sub).mkdir(exist_ok=True)
        keys_dir = d / "keys"
        if not (keys_dir / keys.SIGNING_KEY).exists():
            keys.init(keys_dir)
        self.keys_dir = keys_dir
        # The provincial receiver.
        self.province_port = free_port()
        p = self._spawn("province", ["province", "serve", "--listen", f"127.0.0.1:{self.province_port}",
                                     "--data", str(d / "province"), "--pubkey", str(keys_dir)])  # fmt: skip
        self.province_url = f"http://127.0.0.1:{self.province_port}"
        _wait("the provincial receiver", lambda: self._up(self.province_port), START_TIMEOUT_S, p)
        # MQTT broker, if terminals use MQTT.
        self.mqtt_port = 0
        if self.opts.mqtt_terminals:
            self._start_mosquitto()
        # Terminals are provisioned in the daemon's store before it starts.
        self.api_port = free_port()
        st = Store(self.db)
        plan = []
        for i in range(self.opts.terminals + self.opts.mqtt_terminals):
            tid = 0x48430000 + i + 1
            key = bytes(self.rng.getrandbits(8) for _ in range(32))
            window = f"W{i + 1:02d}"
            kind = "serial" if i < self.opts.terminals else "mqtt"
            st.add_terminal(tid, key, window, int(time.time() * 1000))
            plan.append((tid, key, window, kind))
        st.close()
        (d / "api.tokens").write_text(f"window-system {self.token}\n")
        os.chmod(d / "api.tokens", 0o600)
        transports = [f'[[transports]]\nurl = "serial://{d / "tty"}/*"\n']
        if self.mqtt_port:
            transports.append(f'[[transports]]\nurl = "mqtt://127.0.0.1:{self.mqtt_port}?prefix=hcp"\n'
                              'client_id = "hcp-daemon-demo"\n')  # fmt: skip
        tr = "\n".join(transports)
        (d / "daemon.toml").write_text(
            '[store]\npath = "hall.sqlite"\ncontact_key = "contact.key"\n\n'
            f'[api]\nlisten = "127.0.0.1:{self.api_port}"\ntokens_file = "api.tokens"\n\n'
            f"{tr}\n"
            f"[terminal]\nno_case_policy = 0\nthanks_ms = {THANKS_MS}\nreason_timeout_s = {REASON_TIMEOUT_S}\n"
            f"status_interval_s = 10\narm_timeout_s = {ARM_TIMEOUT_S}\n\n"
            '[daemon]\nlog_level = "warning"\n'
        )
        # Terminals first (their ptys must exist when the daemon scans).
        for tid, key, window, kind in plan:
            link: PtyPort | MqttLink
            if kind == "serial" and node is not None and not self.vts:
                pty = PtyPort(d / "tty" / (f"term-{tid:08x}"))
                self.vts.append(MpyTerminal(tid, key, window, pty, node, d / f"mpy-{tid:08x}.log"))
                continue
            if kind == "serial":
                link = PtyPort(d / "tty" / (f"term-{tid:08x}"))
            else:
                link = MqttLink(tid, "127.0.0.1", self.mqtt_port)
            self.vts.append(VirtualTerminal(tid, key, window, kind, d / "terminals", link))
        self.loop_thread = threading.Thread(target=self._loop, name="terminals", daemon=True)
        self.loop_thread.start()
        dp = self._spawn("daemon", ["daemon", "--config", str(d / "daemon.toml")])
        self.api = f"http://127.0.0.1:{self.api_port}"
        _wait("the hall daemon", lambda: self._up(self.api_port), START_TIMEOUT_S, dp)
        self._spawn("uplink", ["uplink", "run", "--db", str(self.db), "--hall", HALL_ID, "--keys", str(keys_dir),
                               "--url", self.province_url + "/batches", "--max-age", "0.2",
                               "--batch-size", "50", "--backoff-cap", "2", "--min-free-mb", "0"])  # fmt: skip
        _wait("every terminal online", self._all_online, START_TIMEOUT_S, dp)

    def _start_mosquitto(self) -> None:
        exe = self.opts.mosquitto or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise HallError("MQTT terminals need a mosquitto binary")
        self.mqtt_port = free_port()
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        log = open(self.dir / "mosquitto.log", "wb")  # noqa: SIM115
        self.procs["mosquitto"] = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        _wait(
            "mosquitto", lambda: self._up(self.mqtt_port), START_TIMEOUT_S, self.procs["mosquitto"]
        )

    @staticmethod
    def _up(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _all_online(self) -> bool:
        code, body = _http(self.api + "/v1/terminals", token=self.token)
        if code != 200:
            return False
        return all(t.get("online") for t in body["terminals"]) and len(body["terminals"]) == len(
            self.vts
        )

    def _loop(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic_ns() // 1_000_000
            for vt in self.vts:
                try:
                    vt.step(now)
                except Exception as e:  # noqa: BLE001 - a firmware crash is a finding, not a hang
                    self.errors.append(f"terminal {vt.tid:08x}: {type(e).__name__}: {e}")
                    self.stop.set()
            time.sleep(LOOP_MS / 1000)

    def close(self) -> None:
        self.stop.set()
        if self.loop_thread is not None:
            self.loop_thread.join(5)
        for name in ("uplink", "daemon", "province", "mosquitto"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for vt in self.vts:
            if isinstance(vt, MpyTerminal):
                vt.close()
            vt.link.close()
        if self._tmp is not None and not self.opts.keep:
            self._tmp.cleanup()

    # ------------------------------------------------------------ the scenario

    def post_case(self, vt: VirtualTerminal | MpyTerminal, rng: random.Random) -> str | None:
        """The window business system: a case finished at ``vt``'s window.
        Returns the case number, or None (the error is recorded)."""
        n = self.cases_posted.get(vt.window_no, 0) + 1
        case_no = "4401" + time.strftime("%Y%m%d") + f"{vt.tid & 0xFFFF:04d}{n:04d}"
        body = {
            "case_no": case_no, "item_code": f"11440100MB2C{rng.randint(1, 99999):05d}",
            "item_name": rng.choice(["居民身份证换领", "不动产登记", "营业执照办理", "社保卡补办", "出入境证件"]),
            "dept_name": "市政务服务中心", "dept_code": "440100", "area_code": "440100",
            "window_no": vt.window_no, "window_name": f"综合窗口{vt.window_no[1:]}",
            "staff_id": f"S{vt.window_no[1:]}", "staff_name": f"工作人员{vt.window_no[1:]}",
        }  # fmt: skip
        end = time.monotonic() + (CHAOS_RETRY_S if self.opts.chaos else 0)
        while True:
            try:
                code, res = _http(self.api + "/v1/cases", body, self.token)
            except OSError as e:  # the daemon is down (chaos)
                code, res = 0, str(e)
            if code == 201:
                break
            if time.monotonic() >= end or self.stop.is_set():
                self.errors.append(f"case {case_no}: HTTP {code} {res}")
                return None
            time.sleep(0.3)  # the business system retries while the daemon restarts
        self.sessions[int(res["session"])] = case_no
        self.cases_posted[vt.window_no] = n
        return case_no

    def _window(self, vt: VirtualTerminal | MpyTerminal, n_cases: int, rng: random.Random) -> None:
        """One window: the business system posts a case, a citizen rates it."""
        for _ in range(n_cases):
            if self.stop.is_set():
                return
            vt.thanks.clear()
            vt.idle.clear()
            vt.armed.clear()
            case_no = self.post_case(vt, rng)
            if case_no is None:
                continue
            if not vt.armed.wait(5):
                if self.opts.chaos:
                    self.chaos_log.append(f"ARM for {case_no} lost with the daemon")
                else:
                    self.errors.append(f"window {vt.window_no} was never armed for {case_no}")
                continue
            time.sleep(rng.uniform(0.05, 0.4))  # the citizen reads the buttons
            u = rng.random()
            if u < 0.05:
                vt.idle.wait(ARM_TIMEOUT_S + 3)  # walks away: the ARM times out
                continue
            level = rng.choices((5, 4, 3, 2, 1), weights=(72, 14, 6, 5, 3))[0]
            vt.press(5 - level)
            if level <= 2:
                if rng.random() < 0.75:
                    time.sleep(rng.uniform(0.1, 0.5))
                    vt.press(rng.randrange(5))  # the reason
            if not vt.thanks.wait(REASON_TIMEOUT_S + 3):
                if self.opts.chaos:
                    self.chaos_log.append(f"no THANKS at {vt.window_no} for {case_no}")
                else:
                    self.errors.append(f"no THANKS at {vt.window_no} for {case_no}")
                continue
            if rng.random() < 0.1:
                vt.press(rng.randrange(5))  # presses again during THANKS: ignored
            vt.idle.wait(THANKS_MS / 1000 + 2)

    def run(self, progress: Callable[[Snapshot], None] | None = None) -> dict[str, Any]:
        self.t0 = time.monotonic()
        self.start()
        threads = []
        for i, vt in enumerate(self.vts):
            rng = random.Random(self.opts.seed * 1000 + i)
            th = threading.Thread(target=self._window, args=(vt, self.opts.cases, rng), daemon=True)
            threads.append(th)
            th.start()
        chaos = None
        if self.opts.chaos:
            chaos = threading.Thread(target=self._chaos, args=(threads,), daemon=True)
            chaos.start()
        while any(t.is_alive() for t in threads):
            if progress is not None:
                progress(self.snapshot("rating"))
            if self.stop.is_set():
                break
            time.sleep(0.2)
        if chaos is not None:
            chaos.join()
        pressed = sum(len(vt.confirmed) for vt in self.vts)
        end = time.monotonic() + DRAIN_TIMEOUT_S * (3 if self.opts.chaos else 1)
        while time.monotonic() < end and not self.stop.is_set():
            snap = self.snapshot("draining")
            if progress is not None:
                progress(snap)
            if snap.acknowledged >= pressed and snap.stored >= pressed:
                break
            time.sleep(0.2)
        if progress is not None:
            progress(self.snapshot("done"))
        return self.summary()

    def restart(self, name: str) -> None:
        """Start a killed part again, with the same arguments and files."""
        self._spawn(name, self.args[name])

    def kill(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            p.kill()  # SIGKILL: no shutdown path runs
            p.wait()

    def _chaos(self, windows: list[threading.Thread]) -> None:
        """kill -9 the daemon, the uplink or the receiver every few seconds
        while the windows work; each comes back after a moment."""
        rng = random.Random(self.opts.seed * 7919)
        while any(t.is_alive() for t in windows) and not self.stop.is_set():
            time.sleep(rng.uniform(1.5, 4.0))
            victim = rng.choice(("daemon", "uplink", "province", "terminal"))
            if victim == "terminal":
                vts = [v for v in self.vts if isinstance(v, VirtualTerminal)]
                if vts:
                    vt = rng.choice(vts)
                    vt.power_cut()
                    self.chaos_log.append(f"power cut {vt.window_no}")
                continue
            self.kill(victim)
            self.chaos_log.append(f"kill -9 {victim}")
            time.sleep(rng.uniform(0.3, 2.0))
            self.restart(victim)
        for name in ("province", "daemon", "uplink"):
            p = self.procs.get(name)
            if p is not None and p.poll() is not None:
                self.restart(name)

    # ------------------------------------------------------------ observing

    def _province_db(self) -> sqlite3.Connection:
        return sqlite3.connect(
            "file:%s?mode=ro" % (self.dir / "province" / "province.sqlite"), uri=True
        )

    def _hall_db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)

    def snapshot(self, phase: str) -> Snapshot:
        s = Snapshot(phase=phase)
        s.pressed = sum(len(vt.confirmed) for vt in self.vts)
        s.cases = sum(self.cases_posted.values())
        with contextlib.suppress(sqlite3.Error):
            with contextlib.closing(self._hall_db()) as c:
                s.stored = c.execute("SELECT count(*) FROM ratings").fetchone()[0]
        with contextlib.suppress(sqlite3.Error):
            with contextlib.closing(self._province_db()) as c:
                s.acknowledged = c.execute("SELECT count(*) FROM records").fetchone()[0]
        for vt in self.vts:
            s.windows[vt.window_no] = (self.cases_posted.get(vt.window_no, 0), len(vt.confirmed))
        return s

    def summary(self) -> dict[str, Any]:
        confirmed = [c for vt in self.vts for c in vt.confirmed]
        with contextlib.closing(self._hall_db()) as h:
            stored = h.execute("SELECT count(*) FROM ratings").fetchone()[0]
            alerts = h.execute("SELECT count(*) FROM alerts").fetchone()[0]
            try:
                forwarded = h.execute(
                    "SELECT coalesce(sum(count), 0) FROM uplink_batches"
                ).fetchone()[0]
                acked_batches = h.execute(
                    "SELECT coalesce(sum(count), 0) FROM uplink_batches WHERE state = 'acked'"
                ).fetchone()[0]
            except sqlite3.Error:
                forwarded = acked_batches = 0
        records: list[dict[str, Any]] = []
        bodies: list[bytes] = []
        with contextlib.suppress(sqlite3.Error), contextlib.closing(self._province_db()) as p:
            records = [
                json.loads(r[0])
                for r in p.execute("SELECT record FROM records WHERE hall_id = ?", (HALL_ID,))
            ]
            bodies = [bytes(r[0]) for r in p.execute(
                "SELECT body FROM batches WHERE hall_id = ? ORDER BY batch_seq", (HALL_ID,))]  # fmt: skip
        ring = keys.Keyring.load(self.keys_dir)
        verified = 0
        prev = batchmod.GENESIS_HASH
        chain_ok = True
        for b in bodies:
            try:
                v = batchmod.verify(b, ring)
            except batchmod.BatchError:
                continue
            verified += 1
            if v.header["prevBatchHash"] != prev:
                chain_ok = False
            prev = v.hash
        seen: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in records:
            seen.setdefault((int(r["terminalId"], 16), int(r["seq"])), []).append(r)
        lost = 0
        duplicates = 0
        wrong_case = 0
        for c in confirmed:
            got = seen.get((c.tid, c.seq), [])
            if not got:
                lost += 1
                continue
            duplicates += len(got) - 1
            want = self.sessions.get(c.session) if c.session else None
            if got[0]["projectNo"] != want or int(got[0]["satisfaction"]) != c.level:
                wrong_case += 1
        kinds = {vt.window_no: vt.transport_kind for vt in self.vts}
        windows: dict[str, dict[str, Any]] = {}
        for r in records:
            w = windows.setdefault(r["winNo"] or "-", {"ratings": 0, "good": 0, "bad": 0, "sum": 0})
            lv = int(r["satisfaction"])
            w["ratings"] += 1
            w["sum"] += lv
            w["good" if lv >= 3 else "bad"] += 1
        per_window = {
            k: {"transport": kinds.get(k, "-"), "ratings": v["ratings"], "bad": v["bad"], "mean": round(v["sum"] / v["ratings"], 2),
                "satisfaction_pct": round(100.0 * v["good"] / v["ratings"], 1)}
            for k, v in sorted(windows.items())
        }  # fmt: skip
        out = {
            "pressed": len(confirmed),
            "journaled": sum(vt.journaled for vt in self.vts),
            "stored": stored,
            "forwarded": forwarded,
            "acknowledged": len(records),
            "lost": lost,
            "duplicates": duplicates,
            "signatures_verified": bool(bodies) and verified == len(bodies) and chain_ok,
            "bad_ratings": sum(1 for c in confirmed if c.level <= 2),
            "alerts": alerts,
            "seconds": round(time.monotonic() - self.t0, 1),
        }
        self.details = {
            "windows": per_window,
            "batches": len(bodies),
            "acked_by_uplink": acked_batches,
            "wrong_binding": wrong_case,
            "cases": sum(self.cases_posted.values()),
            "terminals": {
                vt.transport_kind: sum(1 for v in self.vts if v.transport_kind == vt.transport_kind)
                for vt in self.vts
            },  # fmt: skip
            "errors": list(self.errors)
            + [e for vt in self.vts if isinstance(vt, MpyTerminal) for e in vt.errors],
            "micropython": [vt.version for vt in self.vts if isinstance(vt, MpyTerminal)],
            "chaos": list(self.chaos_log),
            "state_dir": str(self.dir) if (self.opts.keep or self.opts.state_dir) else None,
        }
        return out

    def ok(self, s: dict[str, Any]) -> bool:
        return bool(
            s["pressed"] > 0
            and s["lost"] == 0
            and s["duplicates"] == 0
            and s["acknowledged"] == s["pressed"]
            and s["signatures_verified"]
            and self.details["wrong_binding"] == 0
            and not self.details["errors"]
        )


def run(
    opts: HallOptions, progress: Callable[[Snapshot], None] | None = None
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Run a hall; return (summary, details, ok)."""
    hall = Hall(opts)
    try:
        s = hall.run(progress)
        return s, hall.details, hall.ok(s)
    finally:
        hall.close()
