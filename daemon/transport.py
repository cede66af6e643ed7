"""The one small interface every transport implements, and the hand-off
from transport threads to the daemon's event loop.

A transport is named by a URL (pyserial style), one module per scheme
(service.open_transport builds them; the implementations import this
module, never the other way):

    serial:///dev/ttyACM*?baud=115200    transport_serial.SerialTransport
    mqtt://127.0.0.1:1883?prefix=hcp     transport_mqtt.MqttTransport  (mqtts:// = TLS)

A transport only moves frames: it puts ``Received``/``Bad``/``Gone`` events
into the ``Inbox`` (never calls the core itself, never blocks on the loop) and
sends frames it is given.  Each one supervises its own threads: a reader that
dies is restarted with a capped backoff.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

INBOX_MAX = 100_000  # events waiting for the core; past it new ones are dropped and counted
GATHER_S = 0.002  # latency added to the first event of a batch
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(slots=True)
class Received:
    source: str  # serial port path, or 'mqtt:<terminal hex>'
    data: bytes
    bound: bool  # the source carries exactly one terminal
    transport: Transport


@dataclass(slots=True)
class Bad:
    source: str
    reason: str  # a core.REFUSAL_REASONS name, or 'partial_frame' / 'port_error'


@dataclass(slots=True)
class Gone:
    source: str


Event = Received | Bad | Gone


class Inbox:
    """Thread-safe queue into one asyncio loop; wakes the loop once per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = INBOX_MAX) -> None:
        self._loop = loop
        self._q: deque[Event] = deque()
        self._lock = threading.Lock()
        self._limit = limit
        self._wake = asyncio.Event()
        self._signalled = False
        self.dropped = 0  # events refused because the inbox was full

    def put(self, ev: Event) -> None:
        with self._lock:
            if len(self._q) >= self._limit:
                # Never block: transports run on the loop that drains this.
                # A frame dropped here was not acknowledged; its terminal
                # sends it again after its ACK time-out.
                self.dropped += 1
                return
            self._q.append(ev)
            if self._signalled:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._wake.set)

    async def get(self, timeout: float, max_n: int) -> list[Event]:
        """Up to ``max_n`` events; waits at most ``timeout`` s for the first."""
        if not self._q:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
        if 0 < len(self._q) < max_n and GATHER_S > 0:
            # Let a batch gather: waking per message makes the loop thread and
            # the transport threads hand the GIL back and forth (measured:
            # 1.5x slower drain), and bigger groups make cheaper commits.
            await asyncio.sleep(GATHER_S)
        with self._lock:
            self._wake.clear()
            self._signalled = False
            n = min(max_n, len(self._q))
            out = [self._q.popleft() for _ in range(n)]
            if self._q:
                # more left: come straight back
                self._signalled = True
                self._wake.set()
        return out

    def __len__(self) -> int:
        return len(self._q)


class Transport(Protocol):
    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def send(self, source: str, terminal_id: int, frame: bytes) -> bool: ...

    def supervise(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


def redact(url: str) -> str:
    """The URL without a password, for logs."""
    u = urlsplit(url)
    if u.password:
        return url.replace(":" + u.password + "@", ":***@")
    return url
