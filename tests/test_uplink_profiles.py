"""Provincial profiles: the case-first province refuses evaluations of unknown cases."""

from __future__ import annotations

import json
import random

import pytest
from haochaping.daemon import keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import profiles, runner
from haochaping.simulator import province


@pytest.fixture()
def hall(tmp_path):
    keys.init(tmp_path / "keys")
    st = store.Store(tmp_path / "hall.sqlite")
    bench.fill(st, 60, random.Random(5))
    st.close()
    return tmp_path


def cfg(tmp, url: str, profile: str) -> runner.UplinkConfig:
    return runner.UplinkConfig(
        db=str(tmp / "hall.sqlite"), hall_id="hall-p", keys_dir=str(tmp / "keys"), url=url,
        batch_size=20, max_age_s=0.0, backoff_base_s=0.01, backoff_cap_s=0.02, seed=1,
        profile=profile,
    )  # fmt: skip


def test_case_first_profile_delivers_where_signed_json_is_refused(hall):
    with province.Receiver(hall / "prov", pubkeys=(str(hall / "keys"),), require_cases=True) as r:
        up = runner.Uplink(cfg(hall, r.url, "signed-json"))
        up.step()
        st = runner.status(str(hall / "hall.sqlite"))
        assert "batch_rejected" in st["alarms"] and "case_unknown" in st["lastError"]
        up.close()
        up = runner.Uplink(cfg(hall, r.url, "case-first"))
        up.run(until_idle=True)
        up.close()
        recs = r.store.records("hall-p")
        assert len(recs) == 60
        with r.store.lock:
            pushed = {x[0] for x in r.store.conn.execute("SELECT project_no FROM cases")}
        assert pushed == {x["projectNo"] for x in recs if x["projectNo"] is not None}


def test_cases_body_is_the_distinct_cases_of_a_batch(hall):
    cfg_ = cfg(hall, "http://127.0.0.1:9/batches", "case-first")
    cfg_.spool_dir, cfg_.url = str(hall / "out"), None
    up = runner.Uplink(cfg_)
    up.run(until_idle=True)
    up.close()
    body = sorted((hall / "out").glob("*.json"))[0].read_bytes()
    doc = json.loads(profiles.CaseFirstSink.cases_body(body) or b"{}")
    want = {r["projectNo"] for r in json.loads(body)["records"] if r["projectNo"]}
    assert doc["hallId"] == "hall-p"
    assert {c["projectNo"] for c in doc["cases"]} == want
    assert len(doc["cases"]) == len(want) and set(doc["cases"][0]) == set(profiles.CASE_FIELDS)


def test_unknown_profile_is_refused(hall):
    with pytest.raises(runner.UplinkError, match="unknown profile"):
        runner.Uplink(cfg(hall, "http://127.0.0.1:9/batches", "sm2"))
