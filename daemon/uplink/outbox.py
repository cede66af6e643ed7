"""The uplink's outbox: signed batches stored in the hall's SQLite file.

The uplink owns two tables in the daemon's database (created here with
``CREATE TABLE IF NOT EXISTS``; the daemon's own tables are only read):

``uplink_batches``  one row per signed batch: its header values, the exact
                    body bytes to send, delivery state ('pending', 'acked',
                    'spooled'), attempts, last error and the province's ack.
``uplink_meta``     key/value: the hall id the outbox is bound to, alarms,
                    the annotation floor.
``uplink_annotations`` which batch took each row of ``annotations``.
``uplink_held``     ratings the province refused for good (or that cannot be
                    built): withheld from the batches (their chain value
                    stands in their place), alarmed until a person releases
                    (sent later as ``late``) or dismisses them.
``uplink_rejected`` batches the province refused, kept as evidence; the range
                    is cut again (same batch seq) without what was refused.

A batch is cut in one IMMEDIATE transaction (read the next ratings by
``id > last batched id``, sign, insert), so after any crash either the whole
batch exists, signed, or nothing does; a batch that exists is resent byte for
byte.  Rows of ``ratings`` are never written.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from haochaping.daemon import chain
from haochaping.daemon.uplink import batch as batchmod

BUSY_TIMEOUT_MS = 10_000  # wait this long for the daemon's write lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS uplink_batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    first_rating_id INTEGER NOT NULL,
    last_rating_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    chain_end TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acked', 'spooled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    acked_ms INTEGER,
    ack TEXT
);
CREATE INDEX IF NOT EXISTS uplink_batches_pending ON uplink_batches(state, seq);
CREATE TABLE IF NOT EXISTS uplink_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS uplink_annotations (
    annotation_id INTEGER PRIMARY KEY,
    batch_seq INTEGER NOT NULL,
    sent INTEGER NOT NULL  -- 1: in the batch's annotations, 0: carried as a record flag
);
CREATE TABLE IF NOT EXISTS uplink_held (
    rating_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('held', 'released', 'dismissed', 'sent')),
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    held_ms INTEGER NOT NULL,
    acted_ms INTEGER,
    note TEXT,
    late_batch INTEGER
);
CREATE TABLE IF NOT EXISTS uplink_rejected (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    batch_id TEXT NOT NULL,
    first_rating_id INTEGER NOT NULL,
    last_rating_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL,
    error TEXT NOT NULL,
    rejected_ms INTEGER NOT NULL
);
"""

LATE_PER_BATCH = 100  # released ratings sent in one batch at most
HELD_STATES = ("held", "released", "dismissed", "sent")


class OutboxError(Exception):
    """The outbox cannot proceed (bound to another hall, broken local chain, ...)."""


# Refusal codes that say nothing about a record: the batch is not cut apart for
# them (the hall's key unknown, the batch order or chain, an injected fault, a
# case the profile never pushed: the profile is wrong, not the record).
NOT_RECORD_CODES = frozenset({"key", "signature", "order", "batch_chain", "chain", "batch_id_reused",
                              "size", "json", "case_unknown"})  # fmt: skip


def _refusal(error: str) -> tuple[str, str]:
    """(code, message) of a province's refusal body ('{"code", "error"}' or text)."""
    try:
        doc = json.loads(error)
    except ValueError:
        return "refused", error
    if not isinstance(doc, dict):
        return "refused", error
    return str(doc.get("code") or "refused")[:64], str(doc.get("error") or error)


@dataclass(frozen=True)
class Pending:
    seq: int
    batch_id: str
    body: bytes
    attempts: int
    count: int


def connect(path: str) -> sqlite3.Connection:
    # check_same_thread off: an Uplink may be built in one thread and run in another
    # (never used from two at once).
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class Outbox:
    def __init__(self, conn: sqlite3.Connection, hall_id: str) -> None:
        self.conn = conn
        self.hall_id = hall_id
        with self._tx():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            row = conn.execute("SELECT value FROM uplink_meta WHERE key='hall_id'").fetchone()
            if row is None:
                conn.execute("INSERT INTO uplink_meta VALUES ('hall_id', ?)", (hall_id,))
            elif row[0] != hall_id:
                raise OutboxError(
                    f"this database's outbox belongs to hall {row[0]!r}, not {hall_id!r}"
                )

    @contextmanager
    def _tx(self, mode: str = "IMMEDIATE") -> Iterator[None]:
        self.conn.execute("BEGIN " + mode)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- cutting -----------------------------------------------------------

    def _last(self) -> tuple[int, str, int, bytes | None]:
        row = self.conn.execute(
            "SELECT seq, hash, last_rating_id, chain_end FROM uplink_batches"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0, batchmod.GENESIS_HASH, 0, None
        return row[0], row[1], row[2], bytes.fromhex(row[3])

    def last_batched_id(self) -> int:
        return self._last()[2]

    def unbatched(self) -> tuple[int, int | None]:
        """(number of ratings not yet in a batch, received_ms of the oldest of them)."""
        last = self.last_batched_id()
        n, oldest = self.conn.execute(
            "SELECT count(*), min(received_ms) FROM ratings WHERE id > ?", (last,)
        ).fetchone()
        return n, oldest

    def oldest_unbatched_ms(self) -> int | None:
        """received_ms of the first rating not yet in a batch (an index lookup)."""
        row = self.conn.execute(
            "SELECT received_ms FROM ratings WHERE id > ? ORDER BY id LIMIT 1",
            (self.last_batched_id(),),
        ).fetchone()
        return None if row is None else int(row[0])

    def cut(
        self,
        *,
        key: Ed25519PrivateKey,
        cfg: batchmod.RecordConfig,
        now_ms: int,
        max_records: int,
        force: bool,
    ) -> batchmod.Built | None:
        """Sign and store the next batch: ``max_records`` ratings, or fewer if ``force``."""
        with self._tx():
            seq, prev_hash, last_id, chain_prev = self._last()
            cap = self._bisect_cap(last_id)
            if cap is not None and cap < max_records:
                max_records, force = cap, True
            rows = self.conn.execute(
                "SELECT * FROM ratings WHERE id > ? ORDER BY id LIMIT ?", (last_id, max_records)
            ).fetchall()
            late = self._released()
            if len(rows) < max_records and not force and not late:
                return None
            new_last = rows[-1]["id"] if rows else last_id
            held = self._held_in(rows)
            carried, send = self._waiting_annotations(rows, new_last)
            if not rows and not send and not late:
                return None
            if chain_prev is None:
                before = self.conn.execute(
                    "SELECT chain FROM ratings WHERE id < ? ORDER BY id DESC LIMIT 1",
                    (rows[0]["id"] if rows else last_id + 1,),
                ).fetchone()
                chain_prev = bytes(before[0]) if before is not None else chain.GENESIS
            case_ids = sorted({r["case_id"] for r in [*rows, *late] if r["case_id"] is not None})
            cases: dict[int, Any] = {}
            for i in range(0, len(case_ids), 500):
                part = case_ids[i : i + 500]
                q = "SELECT * FROM cases WHERE id IN ({})".format(",".join("?" * len(part)))
                for c in self.conn.execute(q, part):
                    cases[c["id"]] = c
            flags: dict[int, list[str]] = {}
            for aid, rid, value in self.conn.execute(
                "SELECT id, rating_id, value FROM annotations WHERE kind = 'flag'"
                " AND rating_id BETWEEN ? AND ? ORDER BY id",
                (last_id + 1, new_last),
            ):
                if aid in carried:
                    flags.setdefault(rid, []).append(value)
            for r in late:  # a late record carries every flag written with it
                flags[r["id"]] = [v for (v,) in self.conn.execute(
                    "SELECT value FROM annotations WHERE kind = 'flag' AND rating_id = ?"
                    " ORDER BY id", (r["id"],))]  # fmt: skip
            try:
                built = batchmod.build(
                    hall_id=self.hall_id,
                    seq=seq + 1,
                    prev_hash=prev_hash,
                    chain_prev=chain_prev,
                    rows=rows,
                    cases=cases,
                    flags=flags,
                    key=key,
                    now_ms=now_ms,
                    cfg=cfg,
                    annotations=send,
                    prev_last_id=last_id,
                    held=held,
                    late=late,
                )
            except batchmod.BatchError as e:
                raise OutboxError(f"refusing to sign: {e} (run `hcp audit verify`)") from e
            for rid, err in built.unbuildable.items():
                self._hold(rid, "unbuildable", err, now_ms)
            if not rows and not send and not built.late_ids:
                return None  # only released ratings, and none of them buildable: held again
            self.conn.execute(
                "INSERT INTO uplink_batches (seq, batch_id, hash, key_id, created_ms,"
                " first_rating_id, last_rating_id, count, chain_end, body)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    built.seq,
                    built.batch_id,
                    built.hash,
                    built.key_id,
                    now_ms,
                    built.first_id,
                    built.last_id,
                    built.count,
                    built.chain_end,
                    built.body,
                ),
            )
            self.conn.executemany(
                "INSERT INTO uplink_annotations VALUES (?, ?, ?)",
                [(a, built.seq, 0) for a in sorted(carried)]
                + [(a, built.seq, 1) for a in built.annotation_ids],
            )
            self.conn.executemany(
                "UPDATE uplink_held SET state = 'sent', late_batch = ? WHERE rating_id = ?",
                [(built.seq, rid) for rid in built.late_ids],
            )
            self._advance_annotation_floor()
        return built

    # -- held ratings (the policy of docs/uplink.md, "When the province refuses") --

    def _held_in(self, rows: list[Any]) -> dict[int, str]:
        """Rating id -> reason for the rows of a batch held before: they go as
        withheld entries (a row that cannot be built is found, and held, by
        ``batch.build``)."""
        if not rows:
            return {}
        return {
            int(rid): str(reason)
            for rid, reason in self.conn.execute(
                "SELECT rating_id, reason FROM uplink_held WHERE rating_id BETWEEN ? AND ?",
                (rows[0]["id"], rows[-1]["id"]),
            )
        }

    def _released(self) -> list[Any]:
        return self.conn.execute(
            "SELECT r.* FROM uplink_held h JOIN ratings r ON r.id = h.rating_id"
            " WHERE h.state = 'released' ORDER BY h.rating_id LIMIT ?",
            (LATE_PER_BATCH,),
        ).fetchall()

    def _hold(self, rating_id: int, reason: str, detail: str, now_ms: int) -> None:
        self.conn.execute(
            "INSERT INTO uplink_held (rating_id, state, reason, detail, held_ms) VALUES"
            " (?, 'held', ?, ?, ?) ON CONFLICT(rating_id) DO UPDATE SET state = 'held',"
            " reason = excluded.reason, detail = excluded.detail, held_ms = excluded.held_ms",
            (rating_id, reason[:64], detail[:500], now_ms),
        )

    def _bisect_cap(self, last_id: int) -> int | None:
        row = self.conn.execute("SELECT value FROM uplink_meta WHERE key = 'bisect'").fetchone()
        if row is None:
            return None
        b = json.loads(row[0])
        if last_id >= b["to"]:
            self.conn.execute("DELETE FROM uplink_meta WHERE key = 'bisect'")
            return None
        return int(b["size"])

    def isolate(self, seq: int, status: int, error: str, now_ms: int) -> str | None:
        """The province refused batch ``seq`` for good.  Find what it refused
        and take it out: a record (or a late record) it names is held; an
        annotation it names is withheld; otherwise the batch's range is cut
        again in halves until the refused record stands alone.  The batch
        moves to uplink_rejected and its range is cut again (same seq).
        Returns what was done, or None when nothing in the batch is to blame
        (an unknown key, a broken chain: the province's state, retried)."""
        code, msg = _refusal(error)
        if status not in (400, 413, 422) or code in NOT_RECORD_CODES:
            return None
        with self._tx():
            row = self.conn.execute(
                "SELECT batch_id, first_rating_id, last_rating_id, count, body FROM uplink_batches"
                " WHERE seq = ? AND state = 'pending'", (seq,),
            ).fetchone()  # fmt: skip
            if row is None:
                return None
            if self.conn.execute(
                "SELECT count(*) FROM uplink_batches WHERE seq > ? AND state != 'pending'", (seq,)
            ).fetchone()[0]:
                return None  # only pending batches follow the one in flight: never the case
            doc = json.loads(bytes(row["body"]))
            what = None
            m = re.search(r"(records|late|annotations)\[(\d+)\]", msg)
            if m is not None:
                part, i = m.group(1), int(m.group(2))
                items = doc.get(part, [])
                if i < len(items):
                    if part == "annotations":
                        aid = int(items[i]["annotationId"])
                        self.conn.execute(
                            "INSERT INTO uplink_annotations VALUES (?, ?, 2)"
                            " ON CONFLICT DO UPDATE SET sent = 2", (aid, -seq))  # fmt: skip
                        what = f"annotation {aid} withheld ({code})"
                    else:
                        rid = int(items[i]["ratingId"])
                        self._hold(rid, code, msg, now_ms)
                        what = f"rating {rid} held ({code})"
            if what is None:
                n = len(doc.get("records", []))
                if n == 1:
                    rid = int(doc["records"][0]["ratingId"])
                    self._hold(rid, code, msg, now_ms)
                    what = f"rating {rid} held ({code})"
                elif n > 1:
                    size = max(1, n // 2)
                    self.conn.execute(
                        "INSERT INTO uplink_meta VALUES ('bisect', ?) ON CONFLICT(key) DO UPDATE"
                        " SET value = excluded.value",
                        (json.dumps({"from": row["first_rating_id"], "to": row["last_rating_id"],
                                     "size": size}),),  # fmt: skip
                    )
                    what = f"batch {seq} cut again in parts of {size} to find the refused record"
                else:
                    return None
            self.conn.execute(
                "INSERT INTO uplink_rejected (seq, batch_id, first_rating_id, last_rating_id, count,"
                " body, error, rejected_ms) VALUES (?,?,?,?,?,?,?,?)",
                (seq, row["batch_id"], row["first_rating_id"], row["last_rating_id"], row["count"],
                 row["body"], f"HTTP {status}: {error}"[:2000], now_ms),
            )  # fmt: skip
            # It and the batches cut after it (pending, never sent: they chain
            # after it) go; their annotations (sent or carried) go again with
            # the new cut, a late record they carried is released again.
            self.conn.execute(
                "DELETE FROM uplink_annotations WHERE batch_seq >= ? AND sent != 2", (seq,)
            )
            self.conn.execute(
                "UPDATE uplink_held SET state = 'released', late_batch = NULL"
                " WHERE late_batch >= ? AND state = 'sent'", (seq,),
            )  # fmt: skip
            self.conn.execute("DELETE FROM uplink_batches WHERE seq >= ?", (seq,))
            self._advance_annotation_floor()
        return what

    def act(self, rating_ids: list[int], action: str, note: str, now_ms: int) -> list[int]:
        """A person acts on held ratings: 'release' (send them, late) or
        'dismiss' (never send; the alarm stops).  Returns the ids changed."""
        if action not in ("release", "dismiss"):
            raise OutboxError("the action is release or dismiss")
        new = "released" if action == "release" else "dismissed"
        done = []
        with self._tx():
            for rid in rating_ids:
                cur = self.conn.execute(
                    "UPDATE uplink_held SET state = ?, acted_ms = ?, note = ?"
                    " WHERE rating_id = ? AND state IN ('held', 'dismissed', 'released')",
                    (new, now_ms, note[:500], rid),
                )
                if cur.rowcount:
                    done.append(rid)
        return done

    def held(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(
            "SELECT rating_id, state, reason, detail, held_ms, acted_ms, note, late_batch"
            " FROM uplink_held ORDER BY rating_id")]  # fmt: skip

    # -- annotations ---------------------------------------------------------
    #
    # Every annotation of the daemon's table goes to the province exactly once:
    # a 'flag' written with its rating travels in that rating's record flags
    # ("carried"); anything written after its rating was batched -- a review
    # outcome such as 不属实, a later flag -- travels in the next batch's
    # ``annotations``.  uplink_annotations records which batch took each one;
    # ``ann_floor`` (every id below it is handled) keeps the lookups short.

    def _floor(self) -> int:
        row = self.conn.execute("SELECT value FROM uplink_meta WHERE key='ann_floor'").fetchone()
        return int(row[0]) if row else 0

    def _waiting_annotations(self, rows: list[Any], new_last: int) -> tuple[set[int], list[Any]]:
        """(ids carried as flags of ``rows``, annotation rows to send) for the next batch."""
        first_new = rows[0]["id"] if rows else new_last + 1
        carried: set[int] = set()
        send: list[Any] = []
        for a in self.conn.execute(
            "SELECT a.id, a.rating_id, a.kind, a.value, a.created_ms, r.terminal_id, r.seq"
            " FROM annotations a JOIN ratings r ON r.id = a.rating_id"
            " LEFT JOIN uplink_annotations u ON u.annotation_id = a.id"
            " LEFT JOIN uplink_held h ON h.rating_id = a.rating_id"
            " WHERE a.id >= ? AND a.rating_id <= ? AND u.annotation_id IS NULL"
            " AND (h.rating_id IS NULL OR (h.state = 'sent' AND a.rating_id <= ?))"
            " ORDER BY a.id LIMIT ?",
            (self._floor(), new_last, new_last, batchmod.schema.MAX_ANNOTATIONS),
        ):
            if a["kind"] == "flag" and a["rating_id"] >= first_new:
                carried.add(a["id"])
            else:
                send.append(a)
        return carried, send

    def _advance_annotation_floor(self) -> None:
        floor = self._floor()
        row = self.conn.execute(
            "SELECT min(a.id) FROM annotations a LEFT JOIN uplink_annotations u"
            " ON u.annotation_id = a.id WHERE a.id >= ? AND u.annotation_id IS NULL",
            (floor,),
        ).fetchone()
        if row[0] is None:
            row = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM annotations").fetchone()
        self.conn.execute(
            "INSERT INTO uplink_meta VALUES ('ann_floor', ?) ON CONFLICT(key) DO UPDATE"
            " SET value = excluded.value",
            (str(int(row[0])),),
        )

    def oldest_waiting_annotation_ms(self) -> int | None:
        """created_ms of the oldest annotation on a batched rating not yet sent."""
        row = self.conn.execute(
            "SELECT min(a.created_ms) FROM annotations a LEFT JOIN uplink_annotations u"
            " ON u.annotation_id = a.id WHERE a.id >= ? AND a.rating_id <= ?"
            " AND u.annotation_id IS NULL",
            (self._floor(), self.last_batched_id()),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    # -- delivery ----------------------------------------------------------

    def oldest_pending(self) -> Pending | None:
        row = self.conn.execute(
            "SELECT seq, batch_id, body, attempts, count FROM uplink_batches"
            " WHERE state = 'pending' ORDER BY seq LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return Pending(row[0], row[1], bytes(row[2]), row[3], row[4])

    def pending_count(self) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM uplink_batches WHERE state = 'pending'"
            ).fetchone()[0]
        )

    def mark_delivered(self, seq: int, ack: str, now_ms: int, state: str = "acked") -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE uplink_batches SET state = ?, ack = ?, acked_ms = ?, last_error = NULL,"
                " attempts = attempts + 1 WHERE seq = ? AND state = 'pending'",
                (state, ack, now_ms, seq),
            )

    def mark_failed(self, seq: int, error: str) -> None:
        with self._tx():
            self.conn.execute(
                "UPDATE uplink_batches SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                (error[:500], seq),
            )

    # -- state ---------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self.conn.execute(
                "INSERT INTO uplink_meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
                " SET value = excluded.value",
                (key, json.dumps(value, ensure_ascii=False)),
            )

    def held_summary(self) -> dict[str, int]:
        return {
            k: int(v)
            for k, v in self.conn.execute("SELECT state, count(*) FROM uplink_held GROUP BY state")
        }

    def status(self) -> dict[str, Any]:
        c = self.conn
        by_state = dict(c.execute("SELECT state, count(*) FROM uplink_batches GROUP BY state"))
        pend = c.execute(
            "SELECT count(*), coalesce(sum(count), 0), coalesce(sum(length(body)), 0),"
            " min(created_ms) FROM uplink_batches WHERE state = 'pending'"
        ).fetchone()
        n_unbatched, oldest_unbatched = self.unbatched()
        last_error = c.execute(
            "SELECT last_error FROM uplink_batches WHERE state = 'pending' ORDER BY seq LIMIT 1"
        ).fetchone()
        alarms = c.execute("SELECT value FROM uplink_meta WHERE key = 'alarms'").fetchone()
        return {
            "hallId": self.hall_id,
            "batches": {k: by_state.get(k, 0) for k in ("pending", "acked", "spooled")},
            "pendingRatings": pend[1],
            "pendingBytes": pend[2],
            "oldestPendingMs": pend[3],
            "unbatchedRatings": n_unbatched,
            "oldestUnbatchedMs": oldest_unbatched,
            "lastBatchedRatingId": self.last_batched_id(),
            "lastError": last_error[0] if last_error else None,
            "alarms": json.loads(alarms[0]) if alarms else [],
            "held": {k: self.held_summary().get(k, 0) for k in HELD_STATES},
            "heldRatings": [
                {"ratingId": r["rating_id"], "reason": r["reason"], "detail": r["detail"]}
                for r in self.held() if r["state"] == "held"
            ][:50],
            "rejectedBatches": int(c.execute("SELECT count(*) FROM uplink_rejected").fetchone()[0]),
            "withheldAnnotations": int(c.execute(
                "SELECT count(*) FROM uplink_annotations WHERE sent = 2").fetchone()[0]),
        }
