"""The JSON Schema of an uplink batch, and the small validator that applies it.

``SCHEMA`` is the single source; ``docs/uplink.schema.json`` is this dict
written out (a test keeps the two equal).  The validator (compiled
once into closures: the receiver checks every record of every batch)
implements exactly the JSON Schema (2020-12) keywords the schema uses: ``type``, ``properties``,
``required``, ``additionalProperties: false``, ``pattern``, ``enum``,
``const``, ``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``items``,
``minItems``, ``maxItems``.  A keyword it does not know raises SchemaError at
import, so the schema cannot silently grow a rule nobody checks.

Rules a schema cannot say (recordCount equals the number of records, a
batch carries at least one record or annotation, the
signature, the chains) are checked in ``batch.verify``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from haochaping.daemon import chain

FORMAT = "hcp-uplink/2"  # 2: journal identity (journalId, fork)
MAX_RECORDS = 5000  # records in one batch
MAX_ANNOTATIONS = 5000  # annotations in one batch
TEXT_MAX = 200  # characters in a national text field
WRITING_MAX = 500  # characters of writingEvaluation
FLAGS_MAX = 16  # suspect-reason flags on one record

_HEX64 = "^[0-9a-f]{64}$"
_TIME = "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
_U32 = {"type": "integer", "minimum": 0, "maximum": 0xFFFFFFFF}
_INT_OR_NULL = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**53 - 1}


def _text(desc: str, nullable: bool = True, max_len: int = TEXT_MAX) -> dict[str, Any]:
    return {
        "type": ["string", "null"] if nullable else "string",
        "maxLength": max_len,
        "description": desc,
    }


# Columns of the local ratings row that the chain covers.
_ORIGIN_FIELDS = chain.FIELDS

RECORD: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "projectNo",
        "taskCode",
        "taskHandleItem",
        "taskName",
        "deptCode",
        "areaCode",
        "proDepart",
        "proManager",
        "winNo",
        "winName",
        "serviceNumber",
        "pf",
        "satisfaction",
        "evalDetail",
        "writingEvaluation",
        "assessTime",
        "assessNumber",
        "serviceTime",
        "terminalId",
        "journalId",
        "seq",
        "fork",
        "flags",
        "timeQuality",
        "ratingId",
        "chain",
        "origin",
    ],
    "properties": {
        "projectNo": _text("办件编号 (case number); null when the rating has no case"),
        "taskCode": _text("事项编码 (item code)"),
        "taskHandleItem": _text("业务办理项编码 (handling item code)"),
        "taskName": _text("事项名称 (item name)"),
        "deptCode": _text("部门编码 (department code)"),
        "areaCode": _text("行政区划编码 (area code)"),
        "proDepart": _text("部门名称 (department name)"),
        "proManager": _text("办件人员 (staff name); null unless configured to send"),
        "winNo": _text("窗口编号 (window number)"),
        "winName": _text("窗口名称 (window name)"),
        "serviceNumber": _text("服务编号 / 取号号码 (queue number); null unless configured"),
        "pf": {
            "type": "string",
            "pattern": "^[0-9]{1,2}$",
            "description": "评价渠道 (channel) code; 5 = 政务大厅其他终端 by default",
        },
        "satisfaction": {
            "type": "string",
            "enum": ["1", "2", "3", "4", "5"],
            "description": "1 非常不满意, 2 不满意, 3 基本满意, 4 满意, 5 非常满意",
        },
        "evalDetail": {
            "type": "string",
            "maxLength": TEXT_MAX,
            "pattern": "^([0-9A-Za-z_-]+(,[0-9A-Za-z_-]+)*)?$",
            "description": "评价详情: reason codes, comma-separated; empty when none",
        },
        "writingEvaluation": _text(
            "文字评价; empty when none", nullable=False, max_len=WRITING_MAX
        ),
        "assessTime": {
            "type": "string",
            "pattern": _TIME,
            "description": "评价时间 yyyy-MM-dd HH:mm:ss, Asia/Shanghai (UTC+8); never before serviceTime",
        },
        "assessNumber": {"const": 1, "description": "评价次数: one rating per service"},
        "serviceTime": {
            "type": ["string", "null"],
            "pattern": _TIME,
            "description": "办结时间 of the bound case (UTC+8); null when no case",
        },
        "terminalId": {"type": "string", "pattern": "^[0-9a-f]{8}$", "description": "评价器 id"},
        "journalId": {
            "type": "string",
            "pattern": "^[0-9a-f]{8}$",
            "description": "the terminal journal's id; 00000000 for a journal from before journal identity",
        },
        "seq": dict(_U32, description="the rating's sequence number in its journal"),
        "fork": dict(
            _U32,
            description="0; else this record diverged from an earlier one under the same seq "
            "(a restored journal image) and is kept beside it (SPEC.md section 5)",
        ),
        "flags": {
            "type": "array",
            "maxItems": FLAGS_MAX,
            "items": {"type": "string", "minLength": 1, "maxLength": 64},
            "description": "suspect reasons and corrections, sorted (e.g. rapid, clock_clamped)",
        },
        "timeQuality": {"type": "string", "enum": ["synced", "rebuilt", "received"]},
        "ratingId": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "chain": {"type": "string", "pattern": _HEX64, "description": "local chain value"},
        "origin": {
            "type": "object",
            "additionalProperties": False,
            "required": list(_ORIGIN_FIELDS),
            "properties": {f: dict(_INT_OR_NULL) for f in _ORIGIN_FIELDS},
            "description": "the stored rating row exactly as the local chain covers it",
        },
    },
}

ANNOTATION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["annotationId", "ratingId", "terminalId", "seq", "kind", "value", "createdMs"],
    "properties": {
        "annotationId": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "ratingId": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "terminalId": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "seq": dict(_U32),
        "kind": {"type": "string", "enum": ["review", "flag"]},
        "value": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "e.g. 不属实 (review found the 差评 untrue: not adopted), too_fast",
        },
        "createdMs": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
    },
}

WITHHELD: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ratingId", "terminalId", "journalId", "seq", "fork", "chain", "reason"],
    "properties": {
        "ratingId": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "terminalId": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "journalId": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "seq": dict(_U32),
        "fork": dict(_U32),
        "chain": {"type": "string", "pattern": _HEX64, "description": "its local chain value"},
        "reason": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "why it is withheld: the province's refusal code, or unbuildable",
        },
    },
}

HEADER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "format",
        "hallId",
        "batchSeq",
        "batchId",
        "createdMs",
        "prevBatchHash",
        "chainPrev",
        "recordCount",
        "keyId",
    ],
    "properties": {
        "format": {"const": FORMAT},
        "hallId": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
        "batchSeq": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "batchId": {
            "type": "string",
            "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        },
        "createdMs": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
        "prevBatchHash": {"type": "string", "pattern": _HEX64},
        "chainPrev": {"type": "string", "pattern": _HEX64},
        "recordCount": {"type": "integer", "minimum": 0, "maximum": MAX_RECORDS},
        "keyId": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://haochaping.example/uplink.schema.json",
    "title": "haochaping uplink batch (hcp-uplink/2)",
    "type": "object",
    "additionalProperties": False,
    "required": ["header", "records", "signature"],
    "properties": {
        "header": HEADER,
        "records": {"type": "array", "minItems": 0, "maxItems": MAX_RECORDS, "items": RECORD},
        "annotations": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_ANNOTATIONS,
            "items": ANNOTATION,
            "description": "review outcomes and flags recorded after their rating was batched",
        },
        "withheld": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_RECORDS,
            "items": WITHHELD,
            "description": "ratings of this batch's range the hall does not send (refused by the "
            "province for good, or not buildable): each keeps its place in the chain",
        },
        "late": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_RECORDS,
            "items": RECORD,
            "description": "ratings withheld by an earlier batch, released by a person: each "
            "must link into the chain where its withheld entry stood",
        },
        "signature": {
            "type": "string",
            "pattern": "^[A-Za-z0-9+/]{86}==$",
            "description": "Ed25519 over RFC 8785 canonical {header, records}, base64",
        },
    },
}


class SchemaError(ValueError):
    """The document does not match the batch schema; ``path`` says where."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__("{}: {}".format("$" + path, msg))
        self.path, self.msg = path, msg

    def under(self, prefix: str) -> SchemaError:
        return SchemaError(prefix + self.path, self.msg)


_KNOWN = {
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "pattern",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
}
# JSON types as the exact Python types json.loads produces (bool is not an integer).
_PYTYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "null": (type(None),),
    "boolean": (bool,),
}

Check = Callable[[Any], None]


def _lint(s: dict[str, Any], path: str = "") -> None:
    for k, v in s.items():
        if k not in _KNOWN:
            raise SchemaError(path, f"schema keyword not implemented: {k}")
        if k == "properties":
            for name, sub in v.items():
                _lint(sub, path + "." + name)
        elif k == "items":
            _lint(v, path + "[]")
        elif k == "additionalProperties" and v is not False:
            raise SchemaError(path, "only additionalProperties: false is implemented")


def _compile(s: dict[str, Any]) -> Check:
    """Turn one schema node into a function that raises SchemaError (path relative)."""
    checks: list[Check] = []
    if "type" in s:
        names = s["type"] if isinstance(s["type"], list) else [s["type"]]
        allowed = frozenset(t for n in names for t in _PYTYPES[n])
        expected = "expected " + " or ".join(names)

        def c_type(v: Any) -> None:
            if type(v) not in allowed:
                raise SchemaError("", expected)

        checks.append(c_type)
    if "const" in s:
        const = s["const"]

        def c_const(v: Any) -> None:
            if type(v) is not type(const) or v != const:
                raise SchemaError("", f"must be {const!r}")

        checks.append(c_const)
    if "enum" in s:
        enum = frozenset(s["enum"])

        def c_enum(v: Any) -> None:
            if type(v) is not str or v not in enum:
                raise SchemaError("", f"must be one of {sorted(enum)}")

        checks.append(c_enum)
    if {"minLength", "maxLength", "pattern"} & s.keys():
        lo, hi = s.get("minLength", 0), s.get("maxLength", 1 << 62)
        rx = re.compile(s["pattern"]) if "pattern" in s else None

        def c_str(v: Any) -> None:
            if type(v) is str:
                if not lo <= len(v) <= hi:
                    raise SchemaError("", "length out of range")
                if rx is not None and rx.search(v) is None:
                    raise SchemaError("", f"does not match {rx.pattern}")

        checks.append(c_str)
    if {"minimum", "maximum"} & s.keys():
        mn, mx = s.get("minimum", -(1 << 62)), s.get("maximum", 1 << 62)

        def c_int(v: Any) -> None:
            if type(v) is int and not mn <= v <= mx:
                raise SchemaError("", f"outside {mn}..{mx}")

        checks.append(c_int)
    if {"minItems", "maxItems", "items"} & s.keys():
        lo_i, hi_i = s.get("minItems", 0), s.get("maxItems", 1 << 62)
        item = _compile(s["items"]) if "items" in s else None

        def c_list(v: Any) -> None:
            if type(v) is list:
                if not lo_i <= len(v) <= hi_i:
                    raise SchemaError("", "number of items out of range")
                if item is not None:
                    for i, x in enumerate(v):
                        try:
                            item(x)
                        except SchemaError as e:
                            raise e.under(f"[{i}]") from None

        checks.append(c_list)
    if {"required", "properties", "additionalProperties"} & s.keys():
        required = tuple(s.get("required", ()))
        props = {k: _compile(sub) for k, sub in s.get("properties", {}).items()}
        closed = s.get("additionalProperties") is False

        def c_obj(v: Any) -> None:
            if type(v) is dict:
                for name in required:
                    if name not in v:
                        raise SchemaError("", f"missing {name}")
                for name, x in v.items():
                    sub = props.get(name)
                    if sub is None:
                        if closed:
                            raise SchemaError("", f"unexpected member {name}")
                        continue
                    try:
                        sub(x)
                    except SchemaError as e:
                        raise e.under("." + name) from None

        checks.append(c_obj)
    if len(checks) == 1:
        return checks[0]

    def run(v: Any) -> None:
        for c in checks:
            c(v)

    return run


_lint(SCHEMA)
_VALIDATE = _compile(SCHEMA)
_VALIDATE_RECORD = _compile(RECORD)


def validate(doc: Any) -> None:
    """Raise SchemaError unless ``doc`` (parsed JSON) is a well-formed batch."""
    _VALIDATE(doc)


def validate_record(rec: Any) -> None:
    _VALIDATE_RECORD(rec)


_FIELD_CHECKS: dict[str, Check] = {k: _compile(v) for k, v in RECORD["properties"].items()}


def check_field(name: str, value: Any) -> None:
    """Raise SchemaError unless ``value`` is valid for record member ``name``
    (the API checks a case's values with this before it takes them)."""
    try:
        _FIELD_CHECKS[name](value)
    except SchemaError as e:
        raise e.under("." + name) from None


def schema_json() -> str:
    """The text of docs/uplink.schema.json."""
    return json.dumps(SCHEMA, ensure_ascii=False, indent=2) + "\n"
