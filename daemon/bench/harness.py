"""The daemon as a real process, and what runs beside it in tests and
benchmarks: a Mosquitto broker of our own, a real notify socket standing in
for systemd's, a config writer and terminal provisioning in a store file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from haochaping.daemon.bench.peers import FakeTerminal
from haochaping.daemon.store import Store


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
        tf.chmod(0o600)
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
    s = Store(db)
    for t in terms:
        s.add_terminal(t.id, t.key._key, (windows or {}).get(t.id), 0)
    s.close()
