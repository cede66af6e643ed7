"""The reference province's HTTP side: a threaded ``http.server`` around
store.Store, with fault injection (``Faults``), plus the helpers of ``hcp
province`` (listen address, spool order).

Why ``http.server`` and not aiohttp: this is a test instrument that must do
unusual things to a socket at exact moments (drop it before reading, after
the commit, hold it); a thread per connection with the raw socket in hand
makes that direct, needs nothing beyond the standard library, and one lock
around check-and-commit gives the strict batch order a province keeps.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from haochaping.simulator.province.store import Reject, Store

MAX_BODY = 32 * 1024 * 1024  # bytes of one POSTed batch
MODES = ("none", "refuse", "5xx", "timeout", "slow", "close_after_commit")


@dataclass
class FaultPlan:
    mode: str = "none"
    rate: float = 0.0  # probability per batch request
    count: int = 0  # or: the next `count` batch requests, whatever the rate
    delay: float = 2.0  # seconds, for timeout and slow
    seed: int = 0


class Faults:
    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {m: 0 for m in MODES}
        self.set(plan or FaultPlan())

    def set(self, plan: FaultPlan) -> None:
        if plan.mode not in MODES:
            raise ValueError("fault mode must be one of {}".format(", ".join(MODES)))
        with self.lock:
            self.plan = plan
            self.rng = random.Random(plan.seed)

    def decide(self) -> str:
        with self.lock:
            p = self.plan
            if p.mode == "none":
                return "none"
            if p.count > 0:
                p.count -= 1
                hit = True
            else:
                hit = self.rng.random() < p.rate
            mode = p.mode if hit else "none"
            self.injected[mode] += 1
            return mode


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection at once, no answer (RST where the OS allows)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body(self) -> bytes | None:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"code": "length", "error": "Content-Length required"})
            return None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            self._send(413, {"code": "size", "error": f"batch larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(n)

    def do_GET(self) -> None:
        if self.path == "/admin/stats":
            st = self.server.store.stats()
            st["faults"] = dict(self.server.faults.injected)
            self._send(200, st)
        elif self.path == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"code": "path", "error": "not found"})

    def do_POST(self) -> None:
        if self.path == "/admin/faults":
            body = self._body()
            if body is None:
                return
            try:
                self.server.faults.set(FaultPlan(**json.loads(body)))
            except (ValueError, TypeError) as e:
                self._send(400, {"code": "faults", "error": str(e)})
                return
            self._send(200, {"status": "ok"})
            return
        if self.path.endswith("/cases"):
            body = self._body()
            if body is None:
                return
            try:
                self._send(200, self.server.store.accept_cases(body))
            except Reject as e:
                self._send(e.status, {"code": e.code, "error": str(e)})
            return
        mode = self.server.faults.decide()
        if mode == "refuse":
            self._drop()
            return
        body = self._body()
        if body is None:
            return
        if mode == "5xx":
            self._send(503, {"code": "injected", "error": "service unavailable (injected)"})
            return
        if mode in ("timeout", "slow"):
            time.sleep(self.server.faults.plan.delay)
        try:
            ack = self.server.store.accept(body, int(time.time() * 1000))
        except Reject as e:
            self._send(e.status, {"code": e.code, "error": str(e)})
            return
        if mode in ("timeout", "close_after_commit"):
            self._drop()
            return
        self._send(200, ack)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        addr: tuple[str, int],
        store: Store,
        faults: Faults,
        verbose: bool,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(addr, _Handler)
        self.store, self.faults, self.verbose = store, faults, verbose
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (time-out fault) or a dropped connection is expected here.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class Receiver:
    """The reference receiver, served from a background thread (tests) or forever (CLI)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        pubkeys: tuple[str, ...] = (),
        faults: FaultPlan | None = None,
        verbose: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        require_cases: bool = False,
        refuse_task_codes: tuple[str, ...] = (),
    ) -> None:
        self.store = Store(data_dir, pubkeys, require_cases, refuse_task_codes)
        self.faults = Faults(faults)
        ctx = None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            if client_ca:  # mTLS: only halls with a certificate from this CA get in
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
        self.scheme = "https" if ctx else "http"
        self.server = _Server((host, port), self.store, self.faults, verbose, ctx)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/batches"

    def start(self) -> Receiver:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join()
        self.store.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def spool_order(files: Iterable[str]) -> list[str]:
    """Spooled batch files sorted by (hall, batchSeq), whatever order they were given in."""

    def key(f: str) -> tuple[str, int]:
        h = json.loads(Path(f).read_bytes())["header"]
        return str(h["hallId"]), int(h["batchSeq"])

    return sorted(files, key=key)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("--listen must be HOST:PORT")
    return host or "127.0.0.1", int(port)
