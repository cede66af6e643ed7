"""Where signed batches go: the province over HTTP(S), or a spool directory.

A sink's ``deliver(batch_id, body)`` returns the acknowledgement text to
record, raises Retryable for anything that may succeed later (network
errors, time-outs, 5xx, 408, 429) and Rejected when the province says the
batch itself is wrong (other 4xx).  What the uplink does then is its
policy (runner.py, docs/uplink.md "When the province refuses"): a refused
record is isolated and held, the rest goes on; a refusal that blames no
record (an unregistered key, a broken order) is retried at the backoff cap.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

MAX_ACK_BYTES = 64 * 1024  # an acknowledgement larger than this is a protocol error
REFUSAL_MAX = 2000  # characters of a province's refusal kept (it names what it refused)
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 60.0


class DeliveryError(Exception):
    pass


class Retryable(DeliveryError):
    pass


class Rejected(DeliveryError):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(f"HTTP {status}: {msg}")
        self.status = status
        self.body = msg  # the province's answer (JSON {"code", "error"} from the reference)


class Sink(Protocol):
    state: str  # the outbox state a delivered batch gets

    def deliver(self, batch_id: str, body: bytes) -> str: ...

    def close(self) -> None: ...


class Backoff:
    """Capped exponential backoff, equal jitter: uniform(d/2, d), d = min(cap, base * 2**n)."""

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next(self) -> float:
        hi = min(self.cap, self.base * 2 ** min(self.failures, 62))
        self.failures += 1
        return self.rng.uniform(hi / 2, hi)  # half jitter: never hammer at ~0 s

    def reset(self) -> None:
        self.failures = 0


@dataclass
class TLS:
    cafile: str | None = None  # trust anchors for the province's certificate
    client_cert: str | None = None  # mTLS: the hall's certificate (PEM)
    client_key: str | None = None  # mTLS: its private key (PEM, mode 0600)

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


class HttpSink:
    """POST each batch to ``url``; one kept-alive connection, rebuilt after any error."""

    state = "acked"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        tls: TLS | None = None,
    ) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("the province URL must be http:// or https://")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.path = (u.path or "/") + ("?" + u.query if u.query else "")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ssl_ctx = (tls or TLS()).context() if u.scheme == "https" else None
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.ssl_ctx is not None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.connect_timeout, context=self.ssl_ctx
                )
            else:
                self.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.connect_timeout
                )
            self.conn.connect()
            if self.conn.sock is not None:
                self.conn.sock.settimeout(self.read_timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def post(self, path: str, body: bytes, key: str) -> tuple[int, str]:
        """POST ``body`` to ``path``; (status, text), or Retryable for transport failures."""
        try:
            conn = self._connection()
            conn.request(
                "POST",
                path,
                body=body,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Idempotency-Key": key,
                },
            )
            resp = conn.getresponse()
            text = resp.read(MAX_ACK_BYTES + 1)
            status = resp.status
            if resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise Retryable(f"{type(e).__name__}: {e}") from e
        if len(text) > MAX_ACK_BYTES:
            self.close()
            raise Retryable(f"acknowledgement longer than {MAX_ACK_BYTES} bytes")
        msg = text.decode("utf-8", "replace")
        if status in (408, 425, 429) or status >= 500:
            raise Retryable(f"HTTP {status}: {msg[:200]}")
        if status >= 400:
            raise Rejected(status, msg[:REFUSAL_MAX])
        if status != 200:
            raise Retryable(f"unexpected HTTP {status}")
        return status, msg

    def deliver(self, batch_id: str, body: bytes) -> str:
        _, msg = self.post(self.path, body, batch_id)
        try:
            ack = json.loads(msg)
        except ValueError as e:
            raise Retryable("acknowledgement is not JSON") from e
        if (
            not isinstance(ack, dict)
            or ack.get("batchId") != batch_id
            or ack.get("status") not in ("accepted", "duplicate")
        ):
            raise Retryable(f"acknowledgement does not confirm batch {batch_id}")
        return msg


class SpoolSink:
    """Write each batch to ``dir`` as <hall>-<seq>-<batchId>.json (atomic, fsynced)."""

    state = "spooled"

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def file_name(body: bytes) -> str:
        h = json.loads(body)["header"]
        return f"{h['hallId']}-{h['batchSeq']:012d}-{h['batchId']}.json"

    def deliver(self, batch_id: str, body: bytes) -> str:
        name = self.file_name(body)
        final = self.dir / name
        try:
            if final.exists() and final.read_bytes() == body:
                return json.dumps({"status": "spooled", "file": name})
            tmp = self.dir / (f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise Retryable(f"spool: {e}") from e
        return json.dumps({"status": "spooled", "file": name})

    def close(self) -> None:
        pass
