"""Provincial profiles: what faces the province, behind one small interface.

The outbox, exactly-once delivery, ordering, restart safety and the audit are
the same for every province; a profile supplies only what differs (the record mapping — ``pf``, reason
codes, default 差评 code or text, personal data — is ``RecordConfig``, set by
options for any profile):

* ``http_sink``: how a stored, signed batch is handed to the province over
  HTTP(S) (spool mode always writes the batch file as is).

Two profiles are built:

``signed-json`` (default)
    POST the signed batch (docs/uplink.md) to the configured URL.
``case-first``
    For provinces that need the service record (办件信息) before an
    evaluation that references it: first POST the distinct cases of the batch
    to ``<base>/cases`` (idempotent on projectNo), then the batch to the URL.
    Both steps are inside one ``deliver``, so to the outbox it is still one
    idempotent step, retried as a whole.

A profile with another envelope or signature (e.g. SM2/SM3 under GM/T 0009)
would add ``build``/``verify`` here; the outbox stores whatever bytes
``build`` returns and resends them unchanged.  See docs/uplink.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from haochaping.daemon.uplink import canonical
from haochaping.daemon.uplink.delivery import TLS, HttpSink, Retryable

# Case (办件) fields a case-first province wants before the evaluation.
CASE_FIELDS = (
    "projectNo",
    "taskCode",
    "taskHandleItem",
    "taskName",
    "deptCode",
    "areaCode",
    "proDepart",
    "winNo",
    "winName",
    "serviceTime",
)


class CaseFirstSink(HttpSink):
    """POST the batch's cases to ``<base>/cases``, then the batch itself."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.cases_path = self.path.rsplit("/", 1)[0] + "/cases"

    @staticmethod
    def cases_body(batch_body: bytes) -> bytes | None:
        doc = json.loads(batch_body)
        seen: dict[str, dict[str, Any]] = {}
        for r in doc["records"]:
            if r["projectNo"] is not None and r["projectNo"] not in seen:
                seen[r["projectNo"]] = {f: r[f] for f in CASE_FIELDS}
        if not seen:
            return None
        return canonical.dumps({"hallId": doc["header"]["hallId"], "cases": list(seen.values())})

    def deliver(self, batch_id: str, body: bytes) -> str:
        cases = self.cases_body(body)
        if cases is not None:
            _, msg = self.post(self.cases_path, cases, batch_id + "-cases")
            try:
                ok = json.loads(msg).get("status") == "accepted"
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                raise Retryable("the province did not confirm the cases")
        return super().deliver(batch_id, body)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    http_sink: Callable[..., HttpSink]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "signed-json",
            "signed JCS/Ed25519 batches POSTed to one URL (docs/uplink.md)",
            HttpSink,
        ),
        Profile(
            "case-first",
            "the batch's cases (办件信息) to <base>/cases first, then the signed batch",
            CaseFirstSink,
        ),
    )
}
DEFAULT = "signed-json"


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            "unknown profile {!r} (known: {})".format(name, ", ".join(PROFILES))
        ) from None


__all__ = ["PROFILES", "DEFAULT", "Profile", "CaseFirstSink", "get", "TLS"]
