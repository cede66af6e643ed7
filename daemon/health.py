"""The hall's health at a glance: one snapshot of every terminal, the uplink
and the open 差评 alerts, read from the hall's SQLite file.

``snapshot(conn, now_ms)`` is what ``hcp status`` prints (and ``--json``),
what ``GET /v1/status`` answers and what the ``/status`` page shows.  It
reads the store only (a read-only connection is enough), so it works with
the daemon stopped too; ``online`` then means "heard from lately", the
same rule the daemon applies (``core.OFFLINE_AFTER_MS``).  A running daemon
passes its core's own view (``online=``: terminal id -> online), which
wins: after a restart a terminal is offline until it is heard from again,
whatever the store says.

Words a technician reads come in Chinese first, English beside
(``WORDS``): 在线 online, 离线 offline, 缓存将满 buffer nearly full, 时钟偏差
clock off, ...  The states of a terminal, in the order a technician acts on
them:

    retired        退役     its key is revoked; frames under it are refused
    offline        离线     no frame for OFFLINE_AFTER_MS (STATUS comes every 60 s)
    buffer_full    缓存已满  the journal is full: presses are refused (FAULT)
    buffer_high    缓存将满  journal at or above HIGH_PCT, or under BUFFER_DAYS_LOW days left
    clock_off      时钟偏差  the terminal's clock is more than CLOCK_OFF_MS from the daemon's
    never_seen     未上线    provisioned, never heard from
    ok             正常
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

OFFLINE_AFTER_MS = 180_000  # = daemon/core.py OFFLINE_AFTER_MS (a test keeps them equal)
HIGH_PCT = 80  # journal fill at or above this: 缓存将满 (the firmware's HIGH_WATER_PCT)
BUFFER_DAYS_LOW = 2.0  # days of buffer left at the window's usual rate below which: 缓存将满
CLOCK_OFF_MS = 60_000  # = core.CLOCK_TOLERANCE_MS: a clock further off is 时钟偏差
RATE_DAYS = 7  # the window's usual rate: ratings a day over this many days
REFUSALS_WINDOW_MS = 24 * 3600 * 1000  # refusals counted over the last day
ALERTS_SHOWN = 50

# Alarm bits of STATUS (protocol/messages.py A_*): name, Chinese, English.
ALARM_BITS = (
    (0x01, "journal_full", "缓存已满", "journal full"),
    (0x02, "journal_high", "缓存将满", "journal nearly full"),
    (0x04, "clock_unsynced", "时钟未同步", "clock not synced"),
    (0x08, "config_missing", "未配置", "not configured"),
    (0x10, "link_down", "通信中断", "link was down"),
)

WORDS: dict[str, tuple[str, str]] = {
    "ok": ("正常", "OK"),
    "online": ("在线", "online"),
    "offline": ("离线", "offline"),
    "never_seen": ("未上线", "never seen"),
    "retired": ("退役", "retired"),
    "buffer_full": ("缓存已满", "buffer full"),
    "buffer_high": ("缓存将满", "buffer nearly full"),
    "clock_off": ("时钟偏差", "clock off"),
    "uplink_ok": ("上报正常", "uplink OK"),
    "uplink_backlog": ("上报积压", "uplink backlog"),
    "uplink_alarm": ("上报告警", "uplink alarm"),
    "uplink_none": ("未启用上报", "no uplink yet"),
}

LEVELS = {1: "非常不满意", 2: "不满意", 3: "基本满意", 4: "满意", 5: "非常满意"}
LEVELS_EN = {1: "very dissatisfied", 2: "dissatisfied", 3: "basically satisfied",
             4: "satisfied", 5: "very satisfied"}  # fmt: skip

# state -> how urgent (the terminals are listed most urgent first)
_URGENCY = {"retired": 0, "buffer_full": 6, "offline": 5, "buffer_high": 4, "clock_off": 3,
            "never_seen": 2, "ok": 1}  # fmt: skip


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _cols(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def terminal_states(t: dict[str, Any]) -> list[str]:
    """Every state that applies to terminal row ``t`` (snapshot form), most urgent first."""
    if t.get("retired"):
        return ["retired"]
    out = []
    if t["last_seen_ms"] is None and not t["online"]:
        out.append("never_seen")
    elif not t["online"]:
        out.append("offline")
    if t["alarms_bits"] & 0x01:
        out.append("buffer_full")
    elif (
        (t["fill_pct"] is not None and t["fill_pct"] >= HIGH_PCT)
        or t["alarms_bits"] & 0x02
        or (t["buffer_days_left"] is not None and t["buffer_days_left"] < BUFFER_DAYS_LOW)
    ):
        out.append("buffer_high")
    if t["clock_offset_ms"] is not None and abs(t["clock_offset_ms"]) > CLOCK_OFF_MS:
        out.append("clock_off")
    out.sort(key=lambda s: -_URGENCY[s])
    return out or ["ok"]


def _terminals(conn: sqlite3.Connection, now_ms: int,
               online: Mapping[int, bool] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    cols = _cols(conn, "terminals")
    has_retired = "retired_ms" in cols
    rows = conn.execute(
        "SELECT id, window_no, firmware, board, last_seen_ms, journal_used, journal_capacity,"
        " clock_offset_ms, alarms, enabled" + (", retired_ms" if has_retired else ", NULL")
        + " FROM terminals ORDER BY window_no IS NULL, window_no, id"
    ).fetchall()  # fmt: skip
    since = now_ms - RATE_DAYS * 86_400_000
    rates = dict(conn.execute(
        "SELECT terminal_id, count(*) FROM ratings WHERE received_ms >= ? GROUP BY terminal_id",
        (since,)))  # fmt: skip
    firsts = dict(
        conn.execute("SELECT terminal_id, min(received_ms) FROM ratings GROUP BY terminal_id")
    )
    totals = dict(conn.execute("SELECT terminal_id, count(*) FROM ratings GROUP BY terminal_id"))
    refusals = dict(conn.execute(
        "SELECT terminal_id, count(*) FROM refusals WHERE at_ms >= ? AND terminal_id IS NOT NULL"
        " GROUP BY terminal_id", (now_ms - REFUSALS_WINDOW_MS,)))  # fmt: skip
    out = []
    for tid, window, fw, board, seen, used, cap, offset, alarms, enabled, retired in rows:
        # the window's usual rate: ratings a day over the last RATE_DAYS days
        # (or since its first rating, if that is more recent, at least a day)
        first = firsts.get(tid)
        span_days = (
            RATE_DAYS if first is None else max(1.0, min(RATE_DAYS, (now_ms - first) / 86_400_000))
        )
        per_day = rates.get(tid, 0) / span_days
        fill = None if not cap else round(100 * (used or 0) / cap, 1)
        days_left = None
        if cap and per_day > 0:
            days_left = round((cap - (used or 0)) / per_day, 1)
        t = {
            "id": f"{tid:08x}",
            "window_no": window,
            "online": bool(enabled) and (
                online[tid] if online is not None and tid in online
                else seen is not None and now_ms - seen < OFFLINE_AFTER_MS
            ),
            "last_seen_ms": seen,
            "last_seen_ago_s": None if seen is None else max(0, (now_ms - seen) // 1000),
            "firmware": fw,
            "board": board,
            "journal_used": used,
            "journal_capacity": cap,
            "fill_pct": fill,
            "ratings_per_day": round(per_day, 1),
            "buffer_days_left": days_left,
            "clock_offset_ms": offset,
            "unacknowledged": used,  # records in the journal: not yet acknowledged by the daemon
            "refusals_24h": refusals.get(tid, 0),
            "ratings_total": totals.get(tid, 0),
            "alarms_bits": alarms or 0,
            "alarms": [name for bit, name, _zh, _en in ALARM_BITS if (alarms or 0) & bit],
            "retired": bool(retired) or not enabled,
            "retired_ms": retired,
        }
        t["states"] = terminal_states(t)
        t["state"] = t["states"][0]
        t["words"] = [WORDS[s][0] for s in t["states"]]
        t["words_en"] = [WORDS[s][1] for s in t["states"]]
        t["online_word"] = WORDS["online" if t["online"] else "offline"][0]
        out.append(t)
    return out


def _uplink(conn: sqlite3.Connection, tables: set[str], now_ms: int) -> dict[str, Any]:
    if "uplink_batches" not in tables or "uplink_meta" not in tables:
        return {"state": "uplink_none", "word": WORDS["uplink_none"][0], "word_en": WORDS["uplink_none"][1],
                "pending_batches": 0, "pending_ratings": 0, "unbatched_ratings": _count(conn, "ratings"),
                "last_success_ms": None, "last_error": None, "alarms": [], "held": 0}  # fmt: skip
    pend = conn.execute(
        "SELECT count(*), coalesce(sum(count), 0), min(created_ms) FROM uplink_batches"
        " WHERE state = 'pending'"
    ).fetchone()
    last_ok = conn.execute(
        "SELECT max(acked_ms) FROM uplink_batches WHERE state != 'pending'"
    ).fetchone()[0]
    last_id = conn.execute(
        "SELECT coalesce(max(last_rating_id), 0) FROM uplink_batches"
    ).fetchone()[0]
    unbatched = conn.execute("SELECT count(*) FROM ratings WHERE id > ?", (last_id,)).fetchone()[0]
    err = conn.execute(
        "SELECT last_error FROM uplink_batches WHERE state = 'pending' ORDER BY seq LIMIT 1"
    ).fetchone()
    row = conn.execute("SELECT value FROM uplink_meta WHERE key = 'alarms'").fetchone()
    alarms = json.loads(row[0]) if row else []
    held = conn.execute("SELECT count(*) FROM uplink_held WHERE state = 'held'").fetchone()[0] if (
        "uplink_held" in tables) else 0  # fmt: skip
    state = "uplink_alarm" if alarms or held else "uplink_backlog" if pend[0] > 1 else "uplink_ok"
    return {
        "state": state,
        "word": WORDS[state][0],
        "word_en": WORDS[state][1],
        "pending_batches": pend[0],
        "pending_ratings": pend[1],
        "oldest_pending_ms": pend[2],
        "unbatched_ratings": unbatched,
        "last_success_ms": last_ok,
        "last_success_ago_s": None if last_ok is None else max(0, (now_ms - last_ok) // 1000),
        "last_error": err[0] if err else None,
        "alarms": alarms,
        "held": held,
    }


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _alerts(conn: sqlite3.Connection) -> tuple[int, list[dict[str, Any]]]:
    """差评 alerts with no review outcome yet (open), newest first."""
    where = (" FROM alerts a JOIN ratings r ON r.id = a.rating_id LEFT JOIN cases c ON c.id = r.case_id"
             " WHERE NOT EXISTS (SELECT 1 FROM annotations n WHERE n.rating_id = a.rating_id"
             " AND n.kind = 'review')")  # fmt: skip
    n = conn.execute("SELECT count(*)" + where).fetchone()[0]
    rows = conn.execute(
        "SELECT a.id, a.rating_id, a.created_ms, r.terminal_id, r.level, r.reason, c.window_no,"
        " c.case_no, c.staff_name" + where + " ORDER BY a.id DESC LIMIT ?", (ALERTS_SHOWN,)
    ).fetchall()  # fmt: skip
    return n, [
        {"alert_id": a, "rating_id": rid, "created_ms": at, "terminal": f"{tid:08x}", "level": lvl,
         "level_word": LEVELS.get(lvl, str(lvl)), "level_word_en": LEVELS_EN.get(lvl, str(lvl)),
         "reason": reason, "window_no": win, "case_no": case_no, "staff_name": staff}
        for a, rid, at, tid, lvl, reason, win, case_no, staff in rows
    ]  # fmt: skip


def snapshot(conn: sqlite3.Connection, now_ms: int,
             online: Mapping[int, bool] | None = None) -> dict[str, Any]:  # fmt: skip
    """The hall's health (JSON-ready).  ``conn``: any connection to the hall's
    store; ``online``: the running daemon's view of who is online (terminal
    id -> bool, from its core), used instead of last_seen where given."""
    tables = _tables(conn)
    if "terminals" not in tables:
        raise ValueError("not a hall store (no terminals table)")
    terms = _terminals(conn, now_ms, online)
    n_open, alerts = _alerts(conn)
    active = [t for t in terms if not t["retired"]]
    counts: dict[str, int] = {}
    for t in active:
        for s in t["states"]:
            counts[s] = counts.get(s, 0) + 1
    return {
        "now_ms": now_ms,
        "terminals": sorted(
            terms,
            key=lambda t: (
                -_URGENCY[t["state"]] if not t["retired"] else 1,
                t["window_no"] or "~",
                t["id"],
            ),
        ),
        "summary": {
            "terminals": len(active),
            "online": sum(1 for t in active if t["online"]),
            "offline": sum(1 for t in active if not t["online"]),
            "retired": len(terms) - len(active),
            "attention": sum(1 for t in active if t["state"] != "ok"),
            "states": counts,
            "ratings": _count(conn, "ratings"),
            "open_alerts": n_open,
        },
        "uplink": _uplink(conn, tables, now_ms),
        "alerts": alerts,
        "words": {k: {"zh": zh, "en": en} for k, (zh, en) in WORDS.items()},
    }


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection to the hall's store (never creates the file)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.execute("PRAGMA query_only = 1")
    return conn
