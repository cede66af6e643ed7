"""Uplink batches: national-format records, signing, hashing and verification.

Sans-IO: functions take rows (mappings with the column names of the shared
SQLite contract), configuration and the current time as arguments; nothing
here opens a file or a socket or reads a clock.

A batch document is ``{"header": {...}, "records": [...], "signature": "..."}``
(see docs/uplink.md).  The signed bytes are the RFC 8785 form of ``{"header",
"records"}``; the batch hash (the next batch's ``prevBatchHash``) is the
SHA-256 of those bytes; the wire body is the RFC 8785 form of the whole
document, built once and stored, so every resend is byte-identical.

Never: guess a case for a rating that has none, send the applicant's contact,
or sign a record whose local chain value does not recompute.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from haochaping.daemon import chain, keys
from haochaping.daemon.uplink import canonical, schema

GENESIS_HASH = "0" * 64  # prevBatchHash of a hall's first batch
TZ_OFFSET_MS = 8 * 3600 * 1000  # Asia/Shanghai is UTC+8 all year (no DST since 1991)
BAD_MAX = 2  # 差评 = satisfaction <= 2

# Protocol RATING flag bits (protocol/messages.py) and the names records carry.
FLAG_NAMES = (
    (0x02, "reason_timeout"),
    (0x04, "no_case"),
    (0x08, "rapid"),
)
CLOCK_CLAMPED = "clock_clamped"
DEFAULT_REASON = "default_reason"
NATIONAL_TEXT = (
    ("projectNo", "case_no"),
    ("taskCode", "item_code"),
    ("taskHandleItem", "handle_item"),
    ("taskName", "item_name"),
    ("deptCode", "dept_code"),
    ("areaCode", "area_code"),
    ("proDepart", "dept_name"),
    ("winNo", "window_no"),
    ("winName", "window_name"),
)


class BatchError(ValueError):
    """A batch that does not verify; ``code`` is a short machine-readable reason."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


@dataclass
class RecordConfig:
    """How local ratings become national records (a provincial profile may change it)."""

    pf: str = "5"  # 评价渠道: 5 政务大厅其他终端 (national code table); some provinces use 4
    # A 差评 from the terminal without a reason gets these (provinces refuse a 差评
    # with neither evalDetail nor writingEvaluation).  At least one must be non-empty.
    default_eval_detail: str = ""
    default_writing: str = "评价人未选择具体原因（评价器按键评价）"
    # terminal reason code (1..31) -> the province's evalDetail code; unmapped codes pass as digits
    reason_codes: dict[int, str] = field(default_factory=dict)
    send_staff_name: bool = True  # proManager (staff, not the rater)
    send_service_number: bool = False  # queue ticket numbers can identify a person

    def check(self) -> None:
        if not (self.default_eval_detail or self.default_writing):
            raise ValueError("a 差评 needs a default evalDetail or writingEvaluation")
        if not (self.pf.isdigit() and 1 <= len(self.pf) <= 2):
            raise ValueError("pf must be a one- or two-digit channel code")


def format_time(utc_ms: int) -> str:
    """UTC milliseconds as 'yyyy-MM-dd HH:mm:ss' in Asia/Shanghai (fixed UTC+8)."""
    import datetime as _dt

    t = _dt.datetime(1970, 1, 1) + _dt.timedelta(milliseconds=utc_ms + TZ_OFFSET_MS)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def build_record(
    rating: Mapping[str, Any],
    case: Mapping[str, Any] | None,
    extra_flags: Iterable[str],
    cfg: RecordConfig,
) -> dict[str, Any]:
    """One national-format record for a stored rating and its bound case."""
    level = int(rating["level"])
    reason = int(rating["reason"] or 0)
    bits = int(rating["flags"] or 0)
    flags = {name for bit, name in FLAG_NAMES if bits & bit}
    flags.update(f for f in extra_flags if f)
    assess_ms = rating["assess_ms"]
    if assess_ms is None:
        assess_ms = rating["received_ms"]
    service_ms = case["service_ms"] if case is not None else None
    if service_ms is not None and assess_ms < service_ms:
        # The terminal's clock (or the case system's) is off: a province refuses an
        # evaluation timed before its service record, so clamp and say so.
        assess_ms = service_ms
        flags.add(CLOCK_CLAMPED)
    eval_detail = ""
    writing = ""
    if level <= BAD_MAX:
        if reason:
            eval_detail = cfg.reason_codes.get(reason, str(reason))
        else:
            eval_detail = cfg.default_eval_detail
            writing = cfg.default_writing
            flags.add(DEFAULT_REASON)
    rec: dict[str, Any] = {}
    for out, col in NATIONAL_TEXT:
        rec[out] = case[col] if case is not None else None
    rec["proManager"] = case["staff_name"] if case is not None and cfg.send_staff_name else None
    rec["serviceNumber"] = (
        case["service_number"] if case is not None and cfg.send_service_number else None
    )
    rec.update(
        pf=cfg.pf,
        satisfaction=str(level),
        evalDetail=eval_detail,
        writingEvaluation=writing,
        assessTime=format_time(int(assess_ms)),
        assessNumber=1,
        serviceTime=format_time(int(service_ms)) if service_ms is not None else None,
        terminalId="{:08x}".format(int(rating["terminal_id"])),
        journalId="{:08x}".format(chain.field(rating, "journal_id")),
        seq=int(rating["seq"]),
        fork=chain.field(rating, "fork"),
        # Bounded like every list in a batch; the flag values are a small fixed
        # vocabulary, so FLAGS_MAX is not reached in practice, and every flag also
        # stays in the local annotations table.
        flags=sorted(flags)[: schema.FLAGS_MAX],
        timeQuality=rating["time_quality"],
        ratingId=int(rating["id"]),
        chain=bytes(rating["chain"]).hex(),
        origin={
            f: chain.field(rating, f) if f in ("journal_id", "fork")
            else (None if rating[f] is None else int(rating[f]))
            for f in chain.FIELDS
        },
    )
    return rec


def signing_bytes(
    header: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]] | None = None,
    schema_valid: bool = False,
    withheld: Sequence[Mapping[str, Any]] | None = None,
    late: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """JCS of {header, records[, annotations][, withheld][, late]}: the bytes
    signed and hashed.

    The optional members are present only when non-empty, so a batch without
    them has exactly the signed form it had before they existed.
    """
    content: dict[str, Any] = {"header": header, "records": records}
    if annotations:
        content["annotations"] = annotations
    if withheld:
        content["withheld"] = withheld
    if late:
        content["late"] = late
    return canonical.dumps(content, schema_valid=schema_valid)


def batch_hash(
    header: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    return hashlib.sha256(signing_bytes(header, records, annotations)).hexdigest()


def build_annotation(a: Mapping[str, Any]) -> dict[str, Any]:
    """An annotation row (joined with its rating's terminal_id and seq) as sent."""
    return {
        "annotationId": int(a["id"]),
        "ratingId": int(a["rating_id"]),
        "terminalId": "{:08x}".format(int(a["terminal_id"])),
        "seq": int(a["seq"]),
        "kind": str(a["kind"]),
        "value": str(a["value"]),
        "createdMs": int(a["created_ms"]),
    }


@dataclass(frozen=True)
class Built:
    """A signed batch as stored in the outbox and sent."""

    seq: int
    batch_id: str
    hash: str
    body: bytes  # canonical bytes of the whole document, sent as is
    first_id: int
    last_id: int
    count: int
    chain_end: str
    key_id: str
    annotation_ids: tuple[int, ...] = ()
    withheld_ids: tuple[int, ...] = ()
    late_ids: tuple[int, ...] = ()
    # rating id -> why its record could not be built (it went as withheld)
    unbuildable: Mapping[int, str] = field(default_factory=dict)


def withheld_entry(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """A rating the hall does not send (the province refused it for good, or
    it cannot be built): its place in the chain, so the chain stays whole."""
    return {
        "ratingId": int(row["id"]),
        "terminalId": "{:08x}".format(int(row["terminal_id"])),
        "journalId": "{:08x}".format(chain.field(row, "journal_id")),
        "seq": int(row["seq"]),
        "fork": chain.field(row, "fork"),
        "chain": bytes(row["chain"]).hex(),
        "reason": reason[:64] or "held",
    }


def check_chain(prev: bytes, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Recompute the local chain over ``rows``; raise on the first stored value that is wrong."""
    for r in rows:
        want = chain.next_hash(prev, r)
        if bytes(r["chain"]) != want:
            raise BatchError("chain", f"rating id {r['id']}: stored chain value does not recompute")
        prev = want
    return prev


def build(
    *,
    hall_id: str,
    seq: int,
    prev_hash: str,
    chain_prev: bytes,
    rows: Sequence[Mapping[str, Any]],
    cases: Mapping[int, Mapping[str, Any]],
    flags: Mapping[int, Sequence[str]],
    key: Ed25519PrivateKey,
    now_ms: int,
    cfg: RecordConfig,
    batch_id: str | None = None,
    annotations: Sequence[Mapping[str, Any]] = (),
    prev_last_id: int = 0,
    held: Mapping[int, str] | None = None,
    late: Sequence[Mapping[str, Any]] = (),
) -> Built:
    """Sign one batch over ``rows`` (in id order, chain-checked first) and ``annotations``.

    ``annotations`` are rows of the daemon's annotations table joined with their
    rating's terminal_id and seq; ``prev_last_id`` is the last rating id of the
    previous batch (the range of an annotations-only batch is empty after it).
    ``held``: rating id -> reason for rows sent as ``withheld`` entries (their
    chain value only); ``late``: earlier withheld rows released by a person,
    sent in full (their cases and flags in ``cases``/``flags`` as for rows).
    A row whose record cannot be built or fails the record schema (a stored
    value the province could not take) goes as withheld too, reason
    ``unbuildable``, and is named in ``Built.unbuildable``: one bad row never
    stops the uplink.
    """
    held = held or {}
    if not rows and not annotations and not late:
        raise ValueError("a batch holds at least one rating or annotation")
    if len(annotations) > schema.MAX_ANNOTATIONS:
        raise ValueError(f"at most {schema.MAX_ANNOTATIONS} annotations per batch")
    if len(rows) > schema.MAX_RECORDS:
        raise ValueError(f"at most {schema.MAX_RECORDS} ratings per batch")
    end = check_chain(chain_prev, rows)

    bad: dict[int, str] = {}

    def rec(r: Mapping[str, Any]) -> dict[str, Any] | None:
        case = cases.get(r["case_id"]) if r["case_id"] is not None else None
        try:
            out = build_record(r, case, flags.get(r["id"], ()), cfg)
            schema.validate_record(out)
        except Exception as e:  # noqa: BLE001 - whatever a stored row holds, hold it
            bad[int(r["id"])] = f"{type(e).__name__}: {e}"[:500]
            return None
        return out

    records: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    for r in rows:
        x = None if r["id"] in held else rec(r)
        if x is not None:
            records.append(x)
        else:
            withheld.append(withheld_entry(r, held.get(r["id"], "unbuildable")))
    late_recs = [x for x in map(rec, late) if x is not None]
    kid = keys.key_id(key.public_key())
    header = {
        "format": schema.FORMAT,
        "hallId": hall_id,
        "batchSeq": seq,
        "batchId": batch_id or str(uuid.uuid4()),
        "createdMs": now_ms,
        "prevBatchHash": prev_hash,
        "chainPrev": chain_prev.hex(),
        "recordCount": len(records),
        "keyId": kid,
    }
    anns = [build_annotation(a) for a in annotations]
    signed = signing_bytes(header, records, anns, withheld=withheld, late=late_recs)
    sig = base64.b64encode(key.sign(signed)).decode()
    # JCS sorts "signature" after every other member: append it to the signed bytes.
    body = canonical.with_member(signed, "signature", sig)
    return Built(
        seq=seq,
        batch_id=str(header["batchId"]),
        hash=hashlib.sha256(signed).hexdigest(),
        body=body,
        first_id=int(rows[0]["id"]) if rows else prev_last_id + 1,
        last_id=int(rows[-1]["id"]) if rows else prev_last_id,
        count=len(records),
        chain_end=end.hex(),
        key_id=kid,
        annotation_ids=tuple(a["annotationId"] for a in anns),
        withheld_ids=tuple(w["ratingId"] for w in withheld),
        late_ids=tuple(r["ratingId"] for r in late_recs),
        unbuildable=bad,
    )


@dataclass(frozen=True)
class Verified:
    doc: dict[str, Any]
    hash: str

    @property
    def header(self) -> dict[str, Any]:
        return self.doc["header"]  # type: ignore[no-any-return]

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.doc["records"]  # type: ignore[no-any-return]

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self.doc.get("annotations", [])  # type: ignore[no-any-return]

    @property
    def withheld(self) -> list[dict[str, Any]]:
        return self.doc.get("withheld", [])  # type: ignore[no-any-return]

    @property
    def late(self) -> list[dict[str, Any]]:
        return self.doc.get("late", [])  # type: ignore[no-any-return]

    @property
    def chain_end(self) -> str:
        """The local chain value after this batch (its chainPrev if it has no records)."""
        last = max(self.records + self.withheld, key=lambda r: r["ratingId"], default=None)
        if last is not None:
            return last["chain"]  # type: ignore[no-any-return]
        return self.header["chainPrev"]  # type: ignore[no-any-return]


def parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BatchError("json", f"not JSON: {e}") from e
    try:
        schema.validate(doc)
    except schema.SchemaError as e:
        raise BatchError("schema", str(e)) from e
    return doc  # type: ignore[no-any-return]


def _origin(r: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The record's origin, checked to be the row the record describes."""
    o = r["origin"]
    if None in (o["id"], o["terminal_id"], o["seq"], o["level"], o["received_ms"]):
        raise BatchError("record", f"{where}: origin lacks a required value")
    if (
        o["id"] != r["ratingId"]
        or "{:08x}".format(o["terminal_id"]) != r["terminalId"]
        or "{:08x}".format(o["journal_id"] or 0) != r["journalId"]
        or o["seq"] != r["seq"]
        or (o["fork"] or 0) != r["fork"]
        or str(o["level"]) != r["satisfaction"]
    ):
        raise BatchError("record", f"{where}: origin disagrees with the record")
    return o  # type: ignore[no-any-return]


def _record_rules(r: Mapping[str, Any], where: str) -> None:
    """The province's rules for one record (the reference receiver's too)."""
    if int(r["satisfaction"]) <= BAD_MAX and not (r["evalDetail"] or r["writingEvaluation"]):
        raise BatchError("bad_no_reason", f"{where}: 差评 without evalDetail or text")
    if r["serviceTime"] is not None and r["assessTime"] < r["serviceTime"]:
        raise BatchError("time", f"{where}: assessTime before serviceTime")


def verify(body: bytes, keyring: keys.Keyring) -> Verified:
    """Schema, record count, signature, in-batch chain and record rules of one batch.

    Continuity with the previous batch (prevBatchHash, chainPrev) needs state
    and is the caller's check.
    """
    return verify_doc(parse(body), keyring)


def verify_doc(doc: dict[str, Any], keyring: keys.Keyring) -> Verified:
    """``verify`` for a document already through ``parse`` (schema-valid)."""
    h, recs = doc["header"], doc["records"]
    if h["recordCount"] != len(recs):
        raise BatchError("count", f"recordCount {h['recordCount']} but {len(recs)} records")
    if h["keyId"] not in keyring:
        raise BatchError("key", "unknown signing key {}".format(h["keyId"]))
    anns = doc.get("annotations", [])
    withheld = doc.get("withheld", [])
    late = doc.get("late", [])
    if not recs and not anns and not withheld and not late:
        raise BatchError("empty", "a batch carries at least one record or annotation")
    signed = signing_bytes(h, recs, anns, schema_valid=True, withheld=withheld, late=late)
    if not keyring.verify(h["keyId"], base64.b64decode(doc["signature"]), signed):
        raise BatchError("signature", "signature does not verify")
    prev = bytes.fromhex(h["chainPrev"])
    seen: set[tuple[str, str, int, int]] = set()
    last_id = 0
    # The chain walks records and withheld entries together, in rating id order:
    # a withheld entry gives its chain value (the hall signs it) in its place.
    held_at = {w["ratingId"]: w for w in withheld}
    if len(held_at) != len(withheld) or held_at.keys() & {r["ratingId"] for r in recs}:
        raise BatchError("withheld", "a rating is both withheld and sent, or withheld twice")
    pending = sorted(held_at)
    for i, r in enumerate(recs):
        while pending and pending[0] < r["ratingId"]:
            w = held_at[pending.pop(0)]
            if w["ratingId"] <= last_id:
                raise BatchError("order", "withheld rating ids must increase with the records")
            prev, last_id = bytes.fromhex(w["chain"]), w["ratingId"]
        o = _origin(r, f"records[{i}]")
        if r["ratingId"] <= last_id:
            raise BatchError("order", f"records[{i}]: rating ids must increase")
        last_id = r["ratingId"]
        key = (r["terminalId"], r["journalId"], r["seq"], r["fork"])
        if key in seen:
            raise BatchError("duplicate", f"records[{i}]: 评价数据不可重复 {key}")
        seen.add(key)
        prev = chain.next_hash(prev, o)
        if prev.hex() != r["chain"]:
            raise BatchError("chain", f"records[{i}]: chain value does not recompute")
        _record_rules(r, f"records[{i}]")
    for w in pending:  # withheld after the last record
        if w <= last_id:
            raise BatchError("order", "withheld rating ids must increase with the records")
        last_id = w
    for i, r in enumerate(late):
        # its place in the chain is a withheld entry of an earlier batch: the
        # receiver, which keeps those, checks the link
        _origin(r, f"late[{i}]")
        _record_rules(r, f"late[{i}]")
    in_batch = {r["ratingId"]: (r["terminalId"], r["seq"]) for r in recs}
    last_ann = 0
    for i, a in enumerate(anns):
        if a["annotationId"] <= last_ann:
            raise BatchError("order", f"annotations[{i}]: annotation ids must increase")
        last_ann = a["annotationId"]
        ref = in_batch.get(a["ratingId"])
        if ref is not None and ref != (a["terminalId"], a["seq"]):
            raise BatchError("annotation", f"annotations[{i}]: not the rating it names")
        if ref is None and recs and a["ratingId"] > recs[-1]["ratingId"]:
            raise BatchError("annotation", f"annotations[{i}]: names a rating not yet sent")
    return Verified(doc, hashlib.sha256(signed).hexdigest())
