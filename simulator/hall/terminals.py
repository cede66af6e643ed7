"""The hall's virtual terminals: the real firmware on CPython (Terminal, the
simulator board, a real journal file, the firmware's own serial and MQTT
transports) or on real MicroPython (the WebAssembly port under Node.js), and
their links: a pseudo-terminal the daemon opens with pyserial, or the
firmware's MQTT client toward the hall's broker.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haochaping.firmware import board_sim, links, terminal, ui
from haochaping.protocol.auth import Key
from haochaping.simulator.hall.common import MPY_HOST, PRESS_MS, START_TIMEOUT_S, HallError


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

    def __init__(self, tid: int, host: str, port: int, prefix: str = "hcp",
                 user: str | None = None, password: str | None = None) -> None:  # fmt: skip
        from haochaping.firmware import mqtt as fw_mqtt

        self.transport = fw_mqtt.MQTTTransport(host, port, tid, prefix=prefix, user=user, password=password)

    def close(self) -> None:
        self.transport.close()


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

    @classmethod
    def from_config(cls, config_file: Path, state: Path, tty_dir: Path, window_no: str = "") -> VirtualTerminal:
        """A virtual board that boots from a board config file (/config.json,
        as ``hcp terminal provision`` writes it), read by the firmware's own
        parser: a serial or USB link becomes a pseudo-terminal named
        ``tty_dir/term-<id>``, an MQTT link the firmware's MQTT client to the
        broker the file names."""
        from haochaping.firmware import config as fw_config

        cfg = fw_config.parse(Path(config_file).read_text("utf-8"))
        tid = cfg["terminal_id"]
        link: PtyPort | MqttLink
        if cfg["link"] == "mqtt":
            m = cfg["mqtt"]
            link = MqttLink(tid, m["host"], int(m["port"]), m.get("prefix") or "hcp", m.get("user"), m.get("password"))
        else:
            link = PtyPort(tty_dir / f"term-{tid:08x}")
        return cls(tid, cfg["key"], window_no, "mqtt" if cfg["link"] == "mqtt" else "serial", state, link)

    def reconfigure(self, config_file: Path) -> None:
        """A technician wrote a new config (a rekey) and the board restarted:
        the same journal, the new key."""
        from haochaping.firmware import config as fw_config

        cfg = fw_config.parse(Path(config_file).read_text("utf-8"))
        if cfg["terminal_id"] != self.tid:
            raise HallError("the new config is for another terminal")
        with self.lock:
            self.key = cfg["key"]
            self.journaled_before += self.term.journal.writes
            self.term.journal.f.close()
            self.board, self.term = self._boot()

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
