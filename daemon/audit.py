"""``hcp audit verify``: prove the local ratings log intact, or name where it is not.

Two independent witnesses are checked against the ``ratings`` table:

1. the local hash chain (daemon/chain.py): every row's stored ``chain`` must
   equal SHA-256(previous row's chain || canonical(row)); ids must be dense;
2. the signed batches in the uplink's outbox: each batch's signature (against
   a keyring the caller trusts, not one read from the database), its chain
   to the previous batch, and then every signed record against the row with
   the same rating id, field by field (a withheld entry -- a rating the
   province refused, docs/uplink.md -- by its chain value).

The signed batches make the verdict precise where the chain alone cannot be:
a row present in a batch but not in the table is *missing*; a row in the
table, within the signed range, that no batch holds is *inserted*; a row
whose fields differ from its signed record is *altered*.  Past the last
signed batch only the chain speaks (a row appended with a correctly
recomputed chain there cannot be told from a new rating: the chain is
unkeyed; it is signed, and so fixed, in the next batch).

Annotations sent to the province (review outcomes such as 不属实, later
flags) are signed too: one deleted or changed in the table since is an
*annotation* finding.

The report lists every finding in log order; the first one is *the* answer.
This module only reads the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haochaping.daemon import chain, keys
from haochaping.daemon.uplink import batch as batchmod

# Findings at the same log position: what the signed batches say is more precise than the chain.
_PRIORITY = {
    "missing": 0,
    "inserted": 1,
    "altered": 2,
    "gap": 3,
    "chain": 4,
    "annotation": 5,
    "batch": 6,
}


class AuditError(Exception):
    """The audit could not run (no such database, no ratings table, no keyring)."""


@dataclass(frozen=True)
class Finding:
    kind: str  # missing | inserted | altered | chain | annotation | batch
    rating_id: int | None  # id in the log where it shows (None for a batch-level finding)
    terminal_id: int | None
    seq: int | None
    detail: str
    order: tuple[int, int] = (0, 0)  # position in the log, then priority

    def describe(self) -> str:
        who = ""
        if self.rating_id is not None:
            who = f"rating id {self.rating_id}"
            if self.terminal_id is not None:
                who += f" (terminal {self.terminal_id:08x} seq {self.seq or 0})"
            who += ": "
        return f"{who}{self.kind}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ratingId": self.rating_id,
            "terminalId": None if self.terminal_id is None else f"{self.terminal_id:08x}",
            "seq": self.seq,
            "detail": self.detail,
        }


@dataclass
class Report:
    ratings: int = 0
    batches: int = 0
    signed_ratings: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "ratings": self.ratings,
            "batches": self.batches,
            "signedRatings": self.signed_ratings,
            "first": self.first.as_dict() if self.first else None,
            "findings": [f.as_dict() for f in self.findings],
        }


def _find(kind: str, row: Mapping[str, Any] | None, detail: str, pos: int) -> Finding:
    return Finding(
        kind=kind,
        rating_id=None if row is None else row["id"],
        terminal_id=None if row is None else row["terminal_id"],
        seq=None if row is None else row["seq"],
        detail=detail,
        order=(pos, _PRIORITY[kind]),
    )


def _rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cols = ", ".join(chain.FIELDS)
    try:
        cur = conn.execute(f"SELECT {cols}, chain FROM ratings ORDER BY id")
    except sqlite3.Error as e:
        raise AuditError(f"no readable ratings table: {e}") from e
    names = [*chain.FIELDS, "chain"]
    return [dict(zip(names, r, strict=True)) for r in cur]


def _check_chain(rows: list[dict[str, Any]], report: Report) -> None:
    prev = chain.GENESIS
    prev_id = 0
    for r in rows:
        if prev_id and r["id"] != prev_id + 1:
            report.findings.append(
                Finding(
                    "missing",
                    prev_id + 1,
                    None,
                    None,
                    f"ids {prev_id + 1}..{r['id'] - 1} absent from the log (id gap)",
                    (prev_id + 1, _PRIORITY["gap"]),
                )
            )
        stored = bytes(r["chain"] or b"")
        if stored != chain.next_hash(prev, r):
            report.findings.append(
                _find(
                    "chain",
                    r,
                    "stored chain value does not recompute (this row altered or inserted,"
                    " or the row before it removed)",
                    r["id"],
                )
            )
        # Resynchronise on the stored value so one bad row gives one finding, not all after it.
        prev = stored if len(stored) == 32 else chain.GENESIS
        prev_id = r["id"]


def _signed_records(
    conn: sqlite3.Connection,
    keyring: keys.Keyring,
    report: Report,
    annotations: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    try:
        rows = conn.execute("SELECT seq, hash, body FROM uplink_batches ORDER BY seq").fetchall()
    except sqlite3.OperationalError:
        return []  # no uplink outbox yet: only the chain speaks
    if rows and not len(keyring):
        raise AuditError("the log has signed batches: give a keyring (--keys or --pubkey)")
    out: list[dict[str, Any]] = []
    prev_hash = batchmod.GENESIS_HASH
    prev_chain: str | None = None
    for seq, stored_hash, body in rows:
        report.batches += 1
        try:
            v = batchmod.verify(bytes(body), keyring)
        except batchmod.BatchError as e:
            report.findings.append(
                Finding("batch", None, None, None, f"batch {seq}: {e}", (0, _PRIORITY["batch"]))
            )
            prev_hash, prev_chain = stored_hash, None
            continue
        h = v.header
        problems = []
        if h["batchSeq"] != seq or v.hash != stored_hash:
            problems.append("stored row disagrees with the signed body")
        if h["prevBatchHash"] != prev_hash:
            problems.append(f"prevBatchHash does not continue batch {seq - 1}")
        if prev_chain is not None and h["chainPrev"] != prev_chain:
            problems.append(f"chainPrev does not continue batch {seq - 1}")
        for p in problems:
            report.findings.append(
                Finding("batch", None, None, None, f"batch {seq}: {p}", (0, _PRIORITY["batch"]))
            )
        prev_hash, prev_chain = v.hash, v.chain_end
        if annotations is not None:
            annotations.extend(dict(a, _batch=seq) for a in v.annotations)
        for r in [*v.records, *v.late]:
            o = dict(r["origin"])
            o["chain"] = bytes.fromhex(r["chain"])
            o["_batch"] = seq
            out.append(o)
        for w in v.withheld:
            # a withheld rating: the batch signs its place in the chain only
            out.append({"id": w["ratingId"], "terminal_id": int(w["terminalId"], 16),
                        "journal_id": int(w["journalId"], 16), "seq": w["seq"], "fork": w["fork"],
                        "chain": bytes.fromhex(w["chain"]), "_batch": seq, "_withheld": True})  # fmt: skip
    out.sort(key=lambda o: (o["id"], not o.get("_withheld")))
    return out


def _identity(r: Mapping[str, Any]) -> tuple[int, int, int, int]:
    return (r["terminal_id"], chain.field(r, "journal_id"), r["seq"], chain.field(r, "fork"))


def _compare(signed: list[dict[str, Any]], rows: list[dict[str, Any]], report: Report) -> None:
    """Walk the signed ratings and the log together, in order, matching each
    rating's identity (terminal, journal, seq, fork): a signed one absent is
    missing, a row no batch holds is inserted, a differing one altered.  A
    withheld entry (docs/uplink.md) is matched by its chain value; a late
    record replaces its withheld entry."""
    merged: dict[int, dict[str, Any]] = {}
    for s in signed:  # id order, the withheld entry of an id before its late record
        if s["id"] in merged and not merged[s["id"]].get("_withheld"):
            report.findings.append(_find("batch", s, f"rating signed twice (batches"
                                     f" {merged[s['id']]['_batch']} and {s['_batch']})", s["id"]))  # fmt: skip
            continue
        merged[s["id"]] = s
    signed = [merged[k] for k in sorted(merged)]
    signed_keys = {_identity(s) for s in signed}
    row_keys = {_identity(r) for r in rows}
    i = j = 0
    while i < len(signed):
        s = signed[i]
        if j >= len(rows):
            report.findings.append(
                _find("missing", s, f"in signed batch {s['_batch']}, not in the log", s["id"])
            )
            i += 1
            continue
        d = rows[j]
        if _identity(s) == _identity(d):
            if s.get("_withheld"):
                diff = [] if s["chain"] == bytes(d["chain"] or b"") else ["chain"]
                if s["id"] != d["id"]:
                    diff.append("id")
            else:
                diff = [f for f in chain.FIELDS if s[f] != d[f]]
                if s["chain"] != bytes(d["chain"] or b""):
                    diff.append("chain")
            if diff:
                report.findings.append(
                    _find("altered", d, f"differs from signed batch {s['_batch']} in {', '.join(diff)}",
                          d["id"])  # fmt: skip
                )
            i += 1
            j += 1
        elif _identity(d) not in signed_keys:
            report.findings.append(
                _find("inserted", d, "within the signed range but in no signed batch", d["id"])
            )
            j += 1
        elif _identity(s) not in row_keys:
            report.findings.append(
                _find("missing", s, f"in signed batch {s['_batch']}, not in the log", s["id"])
            )
            i += 1
        else:
            report.findings.append(
                _find("altered", d, "out of the order the signed batches give", d["id"])
            )
            i += 1
            j += 1


def _compare_annotations(
    conn: sqlite3.Connection, signed: list[dict[str, Any]], report: Report
) -> None:
    """Every annotation sent to the province is still in the table, unchanged."""
    if not signed:
        return
    local = {
        r[0]: r[1:]
        for r in conn.execute("SELECT id, rating_id, kind, value, created_ms FROM annotations")
    }
    for a in signed:
        want = (a["ratingId"], a["kind"], a["value"], a["createdMs"])
        have = local.get(a["annotationId"])
        if have != want:
            what = "missing" if have is None else "altered"
            report.findings.append(
                Finding(
                    "annotation",
                    a["ratingId"],
                    int(a["terminalId"], 16),
                    a["seq"],
                    f"annotation {a['annotationId']} ({a['kind']} {a['value']}) {what}"
                    f" since signed batch {a['_batch']}",
                    (a["ratingId"], _PRIORITY["annotation"]),
                )
            )


def verify(db: str, keyring: keys.Keyring) -> Report:
    """Audit the ratings log in ``db`` against its chain and its signed batches."""
    try:
        conn = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise AuditError(f"cannot open {db}: {e}") from e
    try:
        report = Report()
        rows = _rows(conn)
        report.ratings = len(rows)
        _check_chain(rows, report)
        signed_anns: list[dict[str, Any]] = []
        signed = _signed_records(conn, keyring, report, signed_anns)
        report.signed_ratings = len(signed)
        _compare(signed, rows, report)
        _compare_annotations(conn, signed_anns, report)
    finally:
        conn.close()
    report.findings.sort(key=lambda f: f.order)
    return report
