"""Reference provincial 好差评 receiver: what the uplink must satisfy, and fault injection.

``hcp province serve --listen 127.0.0.1:PORT --data DIR`` accepts POSTed
batches (any path but ``/admin/...``) and checks, in this order: size, JSON,
the schema of docs/uplink.schema.json, record count, the Ed25519 signature
against the keyring (DIR/keys/*.pem plus ``--pubkey`` files; re-read when an
unknown key id arrives, so registering a rotated key is dropping a file in),
the in-batch chain, province rules (a 差评 needs evalDetail or
writingEvaluation; assessTime not before serviceTime), idempotency on batch
id, batch order and chain continuity with the hall's previous batch, and
record uniqueness per (hall, terminal, journal, seq, fork) ("评价数据不可重复"), and that
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

The package: ``store`` (the checks and the record), ``server`` (HTTP, fault
injection, ``hcp province`` helpers).
"""

from haochaping.simulator.province.server import (
    MAX_BODY,
    MODES,
    FaultPlan,
    Faults,
    Receiver,
    parse_listen,
    spool_order,
)
from haochaping.simulator.province.store import DB_NAME, Reject, Store

__all__ = [
    "DB_NAME",
    "MAX_BODY",
    "MODES",
    "FaultPlan",
    "Faults",
    "Receiver",
    "Reject",
    "Store",
    "parse_listen",
    "spool_order",
]
