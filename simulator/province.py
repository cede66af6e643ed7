"""Reference provincial 好差评 receiver: what the uplink must satisfy, and fault injection.

``hcp province serve --listen 127.0.0.1:PORT --data DIR`` accepts POSTed
batches (any path but ``/admin/...``) and checks, in this order: size, JSON,
the schema of docs/uplink.schema.json, record count, the Ed25519 signature
against the keyring (DIR/keys/*.pem plus ``--pubkey`` files; re-read when an
unknown key id arrives, so registering a rotated key is dropping a file in),
the in-batch chain, province rules (a 差评 needs evalDetail or
writingEvaluation; assessTime not before serviceTime), idempotency on batch
id, batch order and chain continuity with the hall's previous batch, and
record uniqueness per (hall, terminal, seq) ("评价数据不可重复"), and that
every annotation names an evaluation already received (a review outcome such
as 不属实 marks it not adopted).  With
``require_cases`` (the case-first profile's province) an evaluation whose
projectNo was not first POSTed to ``.../cases`` is refused (422
``case_unknown``).  Accepted
batches and records are kept in DIR/province.sqlite, committed before the
answer.

Answers: 200 ``{"status": "accepted" | "duplicate", "batchId", ...}``;
400 (bad JSON/schema), 403 (unknown key, bad signature), 409 (order, chain,
batch id reused for other content), 413 (too large), 422 (record rules,
duplicate record), 503 (injected).  Errors carry ``{"code", "error"}``.

Fault injection (``--fault`` options, or POST /admin/faults with JSON
``{"mode", "rate", "count", "delay", "seed"}``; GET /admin/stats):

* ``refuse``              close the connection before reading the request
* ``5xx``                 answer 503 without committing
* ``timeout``             hold the request ``delay`` s (longer than the client
                          waits), then process and commit it anyway
* ``slow``                wait ``delay`` s, then process normally
* ``close_after_commit``  commit, then close the connection without an answer

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
import sqlite3
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

from haochaping.daemon import keys
from haochaping.daemon.uplink import batch as batchmod

MAX_BODY = 32 * 1024 * 1024  # bytes of one POSTed batch
MODES = ("none", "refuse", "5xx", "timeout", "slow", "close_after_commit")
DB_NAME = "province.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    hall_id TEXT NOT NULL,
    batch_seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    chain_end TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    body BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (hall_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS annotations (
    hall_id TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    rating_id INTEGER NOT NULL,
    terminal_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    PRIMARY KEY (hall_id, annotation_id)
);
CREATE TABLE IF NOT EXISTS cases (
    hall_id TEXT NOT NULL,
    project_no TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (hall_id, project_no)
);
CREATE TABLE IF NOT EXISTS records (
    hall_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    rating_id INTEGER NOT NULL,
    satisfaction TEXT NOT NULL,
    assess_time TEXT NOT NULL,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    record TEXT NOT NULL,
    PRIMARY KEY (hall_id, terminal_id, seq),
    UNIQUE (hall_id, rating_id)
);
"""


class Reject(Exception):
    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code = status, code


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


class Store:
    """What the province accepted, with every check the reference makes."""

    def __init__(
        self, data_dir: str | Path, pubkeys: tuple[str, ...] = (), require_cases: bool = False
    ) -> None:
        self.require_cases = require_cases
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "keys").mkdir(exist_ok=True)
        self.pubkeys = pubkeys
        self.keyring = self._load_keys()
        self.conn = sqlite3.connect(
            self.dir / DB_NAME, check_same_thread=False, isolation_level=None
        )
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(SCHEMA)
        self.lock = threading.Lock()

    def _load_keys(self) -> keys.Keyring:
        return keys.Keyring.load(self.dir / "keys", *self.pubkeys)

    def close(self) -> None:
        self.conn.close()

    def accept(self, body: bytes, now_ms: int) -> dict[str, Any]:
        """Check and keep one batch; return the acknowledgement or raise Reject."""
        try:
            doc = batchmod.parse(body)
        except batchmod.BatchError as e:
            raise Reject(400, e.code, str(e)) from e
        if doc["header"]["keyId"] not in self.keyring:
            self.keyring = self._load_keys()
        try:
            v = batchmod.verify_doc(doc, self.keyring)
        except batchmod.BatchError as e:
            status = {"key": 403, "signature": 403, "count": 400}.get(e.code, 422)
            raise Reject(status, e.code, str(e)) from e
        h = v.header
        ack = {
            "batchId": h["batchId"],
            "hallId": h["hallId"],
            "batchSeq": h["batchSeq"],
            "batchHash": v.hash,
            "records": h["recordCount"],
        }
        with self.lock:
            c = self.conn
            if self.require_cases:
                for i, rec in enumerate(v.records):
                    if (
                        rec["projectNo"] is not None
                        and not c.execute(
                            "SELECT 1 FROM cases WHERE hall_id = ? AND project_no = ?",
                            (h["hallId"], rec["projectNo"]),
                        ).fetchone()
                    ):
                        raise Reject(422, "case_unknown", f"records[{i}]: 办件 not pushed first")
            old = c.execute(
                "SELECT hash, received_ms FROM batches WHERE batch_id = ?", (h["batchId"],)
            ).fetchone()
            if old is not None:
                if old[0] != v.hash:
                    raise Reject(409, "batch_id_reused", "batch id already used for other content")
                return dict(ack, status="duplicate", receivedMs=old[1])
            last = c.execute(
                "SELECT batch_seq, hash, chain_end FROM batches WHERE hall_id = ?"
                " ORDER BY batch_seq DESC LIMIT 1",
                (h["hallId"],),
            ).fetchone()
            last_seq, last_hash, last_chain = last if last else (0, batchmod.GENESIS_HASH, None)
            if h["batchSeq"] != last_seq + 1:
                raise Reject(409, "order", f"expected batch {last_seq + 1}, got {h['batchSeq']}")
            if h["prevBatchHash"] != last_hash:
                raise Reject(409, "batch_chain", "prevBatchHash is not the previous batch's hash")
            if last_chain is not None and h["chainPrev"] != last_chain:
                raise Reject(409, "chain", "chainPrev does not continue the previous batch")
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        h["batchId"],
                        h["hallId"],
                        h["batchSeq"],
                        v.hash,
                        h["keyId"],
                        v.chain_end,
                        h["recordCount"],
                        body,
                        now_ms,
                    ),
                )
                c.executemany(
                    "INSERT INTO records VALUES (?,?,?,?,?,?,?,?)",
                    [
                        (
                            h["hallId"],
                            r["terminalId"],
                            r["seq"],
                            r["ratingId"],
                            r["satisfaction"],
                            r["assessTime"],
                            h["batchId"],
                            json.dumps(r, ensure_ascii=False, sort_keys=True),
                        )
                        for r in v.records
                    ],
                )
            except sqlite3.IntegrityError as e:
                c.execute("ROLLBACK")
                raise Reject(422, "duplicate_record", f"评价数据不可重复: {e}") from e
            for i, a in enumerate(v.annotations):
                rated = c.execute(
                    "SELECT rating_id FROM records WHERE hall_id = ? AND terminal_id = ?"
                    " AND seq = ?",
                    (h["hallId"], a["terminalId"], a["seq"]),
                ).fetchone()
                if rated is None or rated[0] != a["ratingId"]:
                    c.execute("ROLLBACK")
                    raise Reject(
                        422, "annotation", f"annotations[{i}]: names no evaluation received"
                    )
                try:
                    c.execute(
                        "INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            h["hallId"],
                            a["annotationId"],
                            a["ratingId"],
                            a["terminalId"],
                            a["seq"],
                            a["kind"],
                            a["value"],
                            a["createdMs"],
                            h["batchId"],
                        ),
                    )
                except sqlite3.IntegrityError as e:
                    c.execute("ROLLBACK")
                    raise Reject(422, "duplicate_annotation", f"annotations[{i}]: {e}") from e
            c.execute("COMMIT")
        return dict(ack, status="accepted", receivedMs=now_ms, annotations=len(v.annotations))

    def accept_cases(self, body: bytes) -> dict[str, Any]:
        """The case-first profile's service records (办件信息); idempotent on projectNo."""
        try:
            doc = json.loads(body)
            hall = doc["hallId"]
            cases = doc["cases"]
            if not isinstance(hall, str) or not isinstance(cases, list) or not cases:
                raise ValueError("hallId and a non-empty cases list are required")
            rows = []
            for cs in cases:
                if not isinstance(cs, dict) or not isinstance(cs.get("projectNo"), str):
                    raise ValueError("every case needs a projectNo")
                rows.append((hall, cs["projectNo"], json.dumps(cs, ensure_ascii=False)))
        except (ValueError, KeyError, TypeError) as e:
            raise Reject(400, "cases", f"bad cases document: {e}") from e
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR IGNORE INTO cases VALUES (?,?,?)", rows)
            self.conn.execute("COMMIT")
        return {"status": "accepted", "cases": len(rows)}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            b, r = self.conn.execute(
                "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM records)"
            ).fetchone()
        return {"batches": b, "records": r}

    def records(self, hall_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT record FROM records"
        args: tuple[Any, ...] = ()
        if hall_id is not None:
            q += " WHERE hall_id = ?"
            args = (hall_id,)
        with self.lock:
            rows = self.conn.execute(q + " ORDER BY hall_id, rating_id", args).fetchall()
        return [json.loads(x[0]) for x in rows]

    def annotations(self, hall_id: str) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT annotation_id, rating_id, terminal_id, seq, kind, value, created_ms"
                " FROM annotations WHERE hall_id = ? ORDER BY annotation_id",
                (hall_id,),
            ).fetchall()
        names = ("annotationId", "ratingId", "terminalId", "seq", "kind", "value", "createdMs")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def bodies(self, hall_id: str) -> list[bytes]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT body FROM batches WHERE hall_id = ? ORDER BY batch_seq", (hall_id,)
            ).fetchall()
        return [bytes(x[0]) for x in rows]


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
    ) -> None:
        self.store = Store(data_dir, pubkeys, require_cases)
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
