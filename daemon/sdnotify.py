"""A tiny client of systemd's notify protocol (sd_notify(3)).

The protocol: send one datagram of newline-separated ``KEY=VALUE`` lines to
the AF_UNIX SOCK_DGRAM socket named by ``$NOTIFY_SOCKET`` (a leading '@'
means the abstract namespace).  ``$WATCHDOG_USEC`` asks for WATCHDOG=1 at
least that often; we ping at half of it.  With no NOTIFY_SOCKET every call
is a no-op, so the daemon runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr: str | bytes | None = None
        if addr.startswith("@"):
            self.addr = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self.addr = addr
        self.sock: socket.socket | None = None
        if self.addr is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never block the caller's loop: a manager that stopped reading
            # costs a lost notification, not a stalled daemon
            self.sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send e.g. notify(READY=1, STATUS='...'); False if not under systemd."""
        if self.sock is None or self.addr is None:
            return False
        msg = "\n".join("{}={}".format(k, str(v).replace("\n", " ")) for k, v in fields.items())
        try:
            self.sock.sendto(msg.encode(), self.addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, STATUS=status) if status else self.notify(READY=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        return self.notify(RELOADING=1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
