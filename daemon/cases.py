"""What a finished case (办件) must be when a window business system posts it.

What it is for: refuse at the door, with the field named, every value the
uplink could not send to the province -- the national items' types and
lengths (daemon/uplink/schema.py's record members, the one source), the
administrative-area code table's shape, a service time that exists -- so
that nothing the API takes can jam the uplink later (issue #11).

What it must never do: log or return the applicant's contact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from haochaping.daemon.uplink import schema

# API field -> description; the national item each one becomes, where it has one.
CASE_FIELDS = {
    "case_no": "办件编号 (projectNo)",
    "item_code": "事项编码 (taskCode)",
    "item_name": "事项名称 (taskName)",
    "handle_item": "办理项 (taskHandleItem)",
    "dept_code": "部门编码 (deptCode)",
    "dept_name": "部门名称 (proDepart)",
    "area_code": "行政区划编码 (areaCode)",
    "window_no": "窗口编号 (winNo)",
    "window_name": "窗口名称 (winName)",
    "staff_id": "工作人员编号",
    "staff_name": "工作人员姓名 (proManager)",
    "service_number": "服务编号 (serviceNumber)",
}
NATIONAL = {
    "case_no": "projectNo",
    "item_code": "taskCode",
    "item_name": "taskName",
    "handle_item": "taskHandleItem",
    "dept_code": "deptCode",
    "dept_name": "proDepart",
    "area_code": "areaCode",
    "window_no": "winNo",
    "window_name": "winName",
    "staff_name": "proManager",
    "service_number": "serviceNumber",
}
REQUIRED = ("case_no", "item_code", "item_name", "window_no", "staff_name")
EXTRA = ("service_ms", "contact", "timeout_s")
STAFF_ID_MAX = 64  # characters (not a national item: our own join key)
CONTACT_MAX = 64  # characters of an applicant's contact (a phone number, an e-mail)
# 行政区划代码 (GB/T 2260): 6 digits, or 9 / 12 with the township and village parts.
AREA_CODE = re.compile(r"^[0-9]{6}(?:[0-9]{3}){0,2}$")
SERVICE_MIN_MS = 946_684_800_000  # 2000-01-01 UTC: an earlier service time is a bug
SERVICE_AHEAD_MS = 86_400_000  # a service finished at most a day ahead of the daemon's clock
TIMEOUT_MAX_S = 0xFFFF  # ARM time-out (u16 on the wire)


class CaseError(ValueError):
    """A posted case is refused; ``field`` names what is wrong."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(f"{field}: {msg}")
        self.field = field


@dataclass
class Case:
    fields: dict[str, Any]  # the cases table's columns (CASE_FIELDS + service_ms)
    contact: str | None
    timeout_s: int


def plain_text(v: str) -> bool:
    """No control characters, and valid Unicode (JSON may carry a lone surrogate)."""
    return not any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in v)


def _int(v: Any) -> bool:
    return type(v) is int  # JSON true/false are not numbers


def check(body: Any, now_ms: int, default_timeout_s: int) -> Case:
    """The case in a POSTed body, or CaseError naming the first wrong field."""
    if not isinstance(body, dict):
        raise CaseError("(body)", "must be a JSON object")
    for k in body:
        if k not in CASE_FIELDS and k not in EXTRA:
            raise CaseError(k, "unknown field")
    for k in REQUIRED:
        v = body.get(k)
        if not isinstance(v, str) or not v.strip():
            raise CaseError(k, "is required: non-empty text")
    fields: dict[str, Any] = {}
    for k in CASE_FIELDS:
        v = body.get(k)
        if v is not None and not isinstance(v, str):
            raise CaseError(k, "must be text or null")
        nat = NATIONAL.get(k)
        if nat is not None:
            try:
                schema.check_field(nat, v)
            except schema.SchemaError as e:
                raise CaseError(k, f"the national item {nat} refuses it ({e.msg})") from None
        elif v is not None and len(v) > STAFF_ID_MAX:
            raise CaseError(k, f"at most {STAFF_ID_MAX} characters")
        if v is not None and not plain_text(v):
            raise CaseError(k, "control characters and lone surrogates are not allowed")
        fields[k] = v
    if fields["area_code"] is not None and not AREA_CODE.match(fields["area_code"]):
        raise CaseError("area_code", "must be a 行政区划代码 of 6, 9 or 12 digits")
    service = body.get("service_ms", now_ms)
    if not _int(service):
        raise CaseError("service_ms", "must be an integer (UTC ms)")
    if not SERVICE_MIN_MS <= service <= now_ms + SERVICE_AHEAD_MS:
        raise CaseError("service_ms", "must be after 2000-01-01 and at most a day ahead of now")
    fields["service_ms"] = service
    contact = body.get("contact")
    if contact is not None and (
        not isinstance(contact, str) or len(contact) > CONTACT_MAX or not plain_text(contact)
    ):
        raise CaseError("contact", f"must be text of at most {CONTACT_MAX} characters")
    timeout_s = body.get("timeout_s", default_timeout_s)
    if not _int(timeout_s) or not 1 <= timeout_s <= TIMEOUT_MAX_S:
        raise CaseError("timeout_s", f"must be an integer 1..{TIMEOUT_MAX_S}")
    return Case(fields, contact or None, timeout_s)
