"""The hall: start each part as its own process (the reference receiver,
Mosquitto, the daemon, the uplink), the virtual terminals (terminals.py)
beside them, and run the scenario: window business systems post finished
cases to the daemon's API, citizens press; ``--chaos`` kills parts now and
then.  summary.py reads what each hop holds at the end.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haochaping.daemon import keys
from haochaping.daemon.store import Store
from haochaping.simulator.hall import summary as summary_mod
from haochaping.simulator.hall.common import (
    ARM_TIMEOUT_S,
    CHAOS_RETRY_S,
    DRAIN_TIMEOUT_S,
    HALL_ID,
    LOOP_MS,
    MPY_PACKAGE,
    REASON_TIMEOUT_S,
    START_TIMEOUT_S,
    THANKS_MS,
    HallError,
    _http,
    _wait,
    free_port,
)
from haochaping.simulator.hall.summary import Snapshot
from haochaping.simulator.hall.terminals import MpyTerminal, MqttLink, PtyPort, VirtualTerminal


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

    def snapshot(self, phase: str) -> Snapshot:
        return summary_mod.snapshot(self, phase)

    def summary(self) -> dict[str, Any]:
        out, self.details = summary_mod.summarize(self)
        return out

    def ok(self, s: dict[str, Any]) -> bool:
        return summary_mod.ok(s, self.details)


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
