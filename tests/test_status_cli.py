"""`hcp status` (issue #12): on a running demo hall (`simulator/hall`: a
real daemon process, virtual terminals on the real firmware over ptys and a
real Mosquitto, the uplink and the reference receiver), `--json` lists every
terminal with the fields a technician reads; the table form says the same in
Chinese first."""

from __future__ import annotations

import json

from click.testing import CliRunner
from haochaping.daemon import core, health
from haochaping.simulator.hall import hall

from haochaping.cli import main

FIELDS = {"id", "window_no", "online", "online_word", "last_seen_ms", "last_seen_ago_s", "firmware", "board",
          "journal_used", "journal_capacity", "fill_pct", "ratings_per_day", "buffer_days_left",
          "clock_offset_ms", "unacknowledged", "refusals_24h", "state", "states", "words", "words_en"}  # fmt: skip


def test_offline_rule_is_the_daemons() -> None:
    assert health.OFFLINE_AFTER_MS == core.OFFLINE_AFTER_MS


def test_status_json_on_a_running_demo_hall(mosquitto_bin: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    opts = hall.HallOptions(terminals=2, mqtt_terminals=1, cases=2, seed=3, mosquitto=mosquitto_bin,
                            state_dir=str(tmp_path / "hall"), keep=True)  # fmt: skip
    h = hall.Hall(opts)
    try:
        s = h.run()
        assert h.ok(s), s
        env = {"HCP_CONFIG": str(h.dir / "daemon.toml")}
        r = CliRunner().invoke(main, ["status", "--json"], env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        snap = json.loads(r.output)
        by_id = {t["id"]: t for t in snap["terminals"]}
        assert set(by_id) == {f"{vt.tid:08x}" for vt in h.vts}
        for vt in h.vts:
            t = by_id[f"{vt.tid:08x}"]
            assert FIELDS <= set(t), FIELDS - set(t)
            assert t["window_no"] == vt.window_no and t["online"] is True and t["online_word"] == "在线"
            assert t["firmware"] and t["journal_capacity"] and t["last_seen_ago_s"] is not None
            assert t["ratings_total"] == len(vt.confirmed)
            assert t["clock_offset_ms"] is not None and t["refusals_24h"] == 0
        assert snap["summary"]["terminals"] == snap["summary"]["online"] == len(h.vts)
        up = snap["uplink"]
        assert {"state", "word", "pending_batches", "pending_ratings", "unbatched_ratings", "last_success_ms",
                "alarms", "held"} <= set(up), up
        assert up["state"] == "uplink_ok" and up["last_success_ms"] is not None  # the demo drained to the receiver
        assert "open_alerts" in snap["summary"] and isinstance(snap["alerts"], list)
        # the table for a person: Chinese words first, every window in it
        r = CliRunner().invoke(main, ["status"], env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        assert "大厅状态" in r.output and "在线" in r.output
        for vt in h.vts:
            assert vt.window_no in r.output
    finally:
        h.close()
