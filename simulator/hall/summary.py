"""What a hall run ends with: read each hop's own record (the terminals'
confirmations, the daemon's SQLite read-only, the uplink's outbox, the
receiver's database), re-verify every batch signature and the batch chain,
and decide whether every pressed rating reached the receiver exactly once,
bound to its case.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from haochaping.daemon import keys
from haochaping.daemon.uplink import batch as batchmod
from haochaping.simulator.hall.common import HALL_ID
from haochaping.simulator.hall.terminals import MpyTerminal

if TYPE_CHECKING:
    from haochaping.simulator.hall.hall import Hall


@dataclass
class Snapshot:
    pressed: int = 0
    cases: int = 0
    stored: int = 0
    acknowledged: int = 0
    phase: str = ""
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # window -> (cases, ratings)


def province_db(hall: Hall) -> sqlite3.Connection:
    return sqlite3.connect(
        "file:%s?mode=ro" % (hall.dir / "province" / "province.sqlite"), uri=True
    )


def hall_db(hall: Hall) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{hall.db}?mode=ro", uri=True)


def snapshot(hall: Hall, phase: str) -> Snapshot:
    s = Snapshot(phase=phase)
    s.pressed = sum(len(vt.confirmed) for vt in hall.vts)
    s.cases = sum(hall.cases_posted.values())
    with contextlib.suppress(sqlite3.Error):
        with contextlib.closing(hall_db(hall)) as c:
            s.stored = c.execute("SELECT count(*) FROM ratings").fetchone()[0]
    with contextlib.suppress(sqlite3.Error):
        with contextlib.closing(province_db(hall)) as c:
            s.acknowledged = c.execute("SELECT count(*) FROM records").fetchone()[0]
    for vt in hall.vts:
        s.windows[vt.window_no] = (hall.cases_posted.get(vt.window_no, 0), len(vt.confirmed))
    return s


def summarize(hall: Hall) -> tuple[dict[str, Any], dict[str, Any]]:
    confirmed = [c for vt in hall.vts for c in vt.confirmed]
    with contextlib.closing(hall_db(hall)) as h:
        stored = h.execute("SELECT count(*) FROM ratings").fetchone()[0]
        alerts = h.execute("SELECT count(*) FROM alerts").fetchone()[0]
        try:
            forwarded = h.execute(
                "SELECT coalesce(sum(count), 0) FROM uplink_batches"
            ).fetchone()[0]
            acked_batches = h.execute(
                "SELECT coalesce(sum(count), 0) FROM uplink_batches WHERE state = 'acked'"
            ).fetchone()[0]
        except sqlite3.Error:
            forwarded = acked_batches = 0
    records: list[dict[str, Any]] = []
    bodies: list[bytes] = []
    with contextlib.suppress(sqlite3.Error), contextlib.closing(province_db(hall)) as p:
        records = [
            json.loads(r[0])
            for r in p.execute("SELECT record FROM records WHERE hall_id = ?", (HALL_ID,))
        ]
        bodies = [bytes(r[0]) for r in p.execute(
            "SELECT body FROM batches WHERE hall_id = ? ORDER BY batch_seq", (HALL_ID,))]  # fmt: skip
    ring = keys.Keyring.load(hall.keys_dir)
    verified = 0
    prev = batchmod.GENESIS_HASH
    chain_ok = True
    for b in bodies:
        try:
            v = batchmod.verify(b, ring)
        except batchmod.BatchError:
            continue
        verified += 1
        if v.header["prevBatchHash"] != prev:
            chain_ok = False
        prev = v.hash
    seen: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in records:
        seen.setdefault((int(r["terminalId"], 16), int(r["seq"])), []).append(r)
    lost = 0
    duplicates = 0
    wrong_case = 0
    for c in confirmed:
        got = seen.get((c.tid, c.seq), [])
        if not got:
            lost += 1
            continue
        duplicates += len(got) - 1
        want = hall.sessions.get(c.session) if c.session else None
        if got[0]["projectNo"] != want or int(got[0]["satisfaction"]) != c.level:
            wrong_case += 1
    kinds = {vt.window_no: vt.transport_kind for vt in hall.vts}
    windows: dict[str, dict[str, Any]] = {}
    for r in records:
        w = windows.setdefault(r["winNo"] or "-", {"ratings": 0, "good": 0, "bad": 0, "sum": 0})
        lv = int(r["satisfaction"])
        w["ratings"] += 1
        w["sum"] += lv
        w["good" if lv >= 3 else "bad"] += 1
    per_window = {
        k: {"transport": kinds.get(k, "-"), "ratings": v["ratings"], "bad": v["bad"], "mean": round(v["sum"] / v["ratings"], 2),
            "satisfaction_pct": round(100.0 * v["good"] / v["ratings"], 1)}
        for k, v in sorted(windows.items())
    }  # fmt: skip
    out = {
        "pressed": len(confirmed),
        "journaled": sum(vt.journaled for vt in hall.vts),
        "stored": stored,
        "forwarded": forwarded,
        "acknowledged": len(records),
        "lost": lost,
        "duplicates": duplicates,
        "signatures_verified": bool(bodies) and verified == len(bodies) and chain_ok,
        "bad_ratings": sum(1 for c in confirmed if c.level <= 2),
        "alerts": alerts,
        "seconds": round(time.monotonic() - hall.t0, 1),
    }
    details = {
        "windows": per_window,
        "batches": len(bodies),
        "acked_by_uplink": acked_batches,
        "wrong_binding": wrong_case,
        "cases": sum(hall.cases_posted.values()),
        "terminals": {
            vt.transport_kind: sum(1 for v in hall.vts if v.transport_kind == vt.transport_kind)
            for vt in hall.vts
        },  # fmt: skip
        "errors": list(hall.errors)
        + [e for vt in hall.vts if isinstance(vt, MpyTerminal) for e in vt.errors],
        "micropython": [vt.version for vt in hall.vts if isinstance(vt, MpyTerminal)],
        "chaos": list(hall.chaos_log),
        "state_dir": str(hall.dir) if (hall.opts.keep or hall.opts.state_dir) else None,
    }
    return out, details


def ok(s: dict[str, Any], details: dict[str, Any]) -> bool:
    return bool(
        s["pressed"] > 0
        and s["lost"] == 0
        and s["duplicates"] == 0
        and s["acknowledged"] == s["pressed"]
        and s["signatures_verified"]
        and details["wrong_binding"] == 0
        and not details["errors"]
    )


