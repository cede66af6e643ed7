"""The reference province's record and checks: what a provincial 好差评
system accepts from a hall, and what it keeps (DIR/province.sqlite).

``Store.accept`` checks one batch in the order the package docstring gives
and commits it before answering; ``Reject`` names the refusal (HTTP status
and a code).  No I/O beyond the SQLite file: the HTTP server (server.py) and
the simulation (simulator/vopr) both call it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from haochaping.daemon import chain, keys
from haochaping.daemon.uplink import batch as batchmod

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
CREATE TABLE IF NOT EXISTS withheld (
    hall_id TEXT NOT NULL,
    rating_id INTEGER NOT NULL,
    chain TEXT NOT NULL,        -- its place in the hall's chain
    prev_chain TEXT NOT NULL,   -- the chain value before it, to check a late record
    reason TEXT NOT NULL,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    filled_by TEXT,             -- the batch that brought it late
    PRIMARY KEY (hall_id, rating_id)
);
CREATE TABLE IF NOT EXISTS records (
    hall_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    journal_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    fork INTEGER NOT NULL,
    rating_id INTEGER NOT NULL,
    satisfaction TEXT NOT NULL,
    assess_time TEXT NOT NULL,
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    record TEXT NOT NULL,
    PRIMARY KEY (hall_id, terminal_id, journal_id, seq, fork),
    UNIQUE (hall_id, rating_id)
);
"""


class Reject(Exception):
    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code = status, code


class Store:
    """What the province accepted, with every check the reference makes."""

    def __init__(
        self, data_dir: str | Path, pubkeys: tuple[str, ...] = (), require_cases: bool = False,
        refuse_task_codes: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.require_cases = require_cases
        # the province's item list lacks these codes: a record naming one is
        # refused for good (422 task_refused), as a real province refuses
        self.refuse_task_codes = set(refuse_task_codes)
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
            for part in ("records", "late"):
                for i, rec in enumerate(v.doc.get(part, [])):
                    if rec["taskCode"] in self.refuse_task_codes:
                        raise Reject(422, "task_refused",
                                     f"{part}[{i}]: taskCode {rec['taskCode']} is not in the"
                                     " province's item list")  # fmt: skip
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
                    "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            h["hallId"],
                            r["terminalId"],
                            r["journalId"],
                            r["seq"],
                            r["fork"],
                            r["ratingId"],
                            r["satisfaction"],
                            r["assessTime"],
                            h["batchId"],
                            json.dumps(r, ensure_ascii=False, sort_keys=True),
                        )
                        for r in v.records
                    ],
                )
                self._withheld(c, h, v)
                self._late(c, h, v)
            except sqlite3.IntegrityError as e:
                c.execute("ROLLBACK")
                raise Reject(422, "duplicate_record", f"评价数据不可重复: {e}") from e
            except Reject:
                c.execute("ROLLBACK")
                raise
            for i, a in enumerate(v.annotations):
                rated = c.execute(
                    "SELECT terminal_id, seq FROM records WHERE hall_id = ? AND rating_id = ?",
                    (h["hallId"], a["ratingId"]),
                ).fetchone()
                if rated is None or tuple(rated) != (a["terminalId"], a["seq"]):
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

    @staticmethod
    def _withheld(c: sqlite3.Connection, h: dict[str, Any], v: batchmod.Verified) -> None:
        """Keep each withheld entry with the chain value before it: a late
        record must link in there."""
        if not v.withheld:
            return
        merged = sorted([(r["ratingId"], r["chain"]) for r in v.records]
                        + [(w["ratingId"], w["chain"]) for w in v.withheld])  # fmt: skip
        prev = h["chainPrev"]
        reasons = {w["ratingId"]: w["reason"] for w in v.withheld}
        for rid, ch in merged:
            if rid in reasons:
                c.execute("INSERT INTO withheld VALUES (?,?,?,?,?,?,NULL)",
                          (h["hallId"], rid, ch, prev, reasons[rid], h["batchId"]))  # fmt: skip
            prev = ch

    @staticmethod
    def _late(c: sqlite3.Connection, h: dict[str, Any], v: batchmod.Verified) -> None:
        """A late record fills its withheld place: it must recompute to the
        chain value that stood there (so it is the very rating withheld)."""
        for i, r in enumerate(v.late):
            row = c.execute(
                "SELECT chain, prev_chain, filled_by FROM withheld WHERE hall_id = ? AND rating_id = ?",
                (h["hallId"], r["ratingId"]),
            ).fetchone()
            if row is None:
                raise Reject(422, "late", f"late[{i}]: rating {r['ratingId']} was never withheld")
            if row[2] is not None:
                raise Reject(422, "duplicate_record", f"late[{i}]: 评价数据不可重复 (sent late before)")
            if chain.next_hash(bytes.fromhex(row[1]), r["origin"]).hex() != row[0] or r["chain"] != row[0]:
                raise Reject(422, "late", f"late[{i}]: does not link into the chain where it was withheld")
            c.execute(
                "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?)",
                (h["hallId"], r["terminalId"], r["journalId"], r["seq"], r["fork"], r["ratingId"],
                 r["satisfaction"], r["assessTime"], h["batchId"],
                 json.dumps(r, ensure_ascii=False, sort_keys=True)),
            )  # fmt: skip
            c.execute("UPDATE withheld SET filled_by = ? WHERE hall_id = ? AND rating_id = ?",
                      (h["batchId"], h["hallId"], r["ratingId"]))  # fmt: skip

    def withheld(self, hall_id: str) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT rating_id, reason, filled_by FROM withheld WHERE hall_id = ? ORDER BY rating_id",
                (hall_id,),
            ).fetchall()
        return [{"ratingId": a, "reason": b, "filledBy": c} for a, b, c in rows]

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
