"""Batch format: canonical bytes, schema, national records, signatures, key rotation."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
from pathlib import Path

import pytest
from haochaping.daemon import chain, keys
from haochaping.daemon.uplink import batch, canonical, schema
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent

# RFC 8785 section 3.2.3 style vectors, restricted to the batch value domain.
VECTORS = [
    ({"b": 1, "a": [1, "x", None, True]}, b'{"a":[1,"x",null,true],"b":1}'),
    ({"k": '\u20ac$\u000f\nA\'B"\\\\"/'}, b'{"k":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'),
    ({"n": -0, "m": 9007199254740991}, b'{"m":9007199254740991,"n":0}'),
    ({"t": "评价\u2028"}, '{"t":"评价\u2028"}'.encode()),
]


@pytest.mark.parametrize("value,expected", VECTORS)
def test_canonical_vectors(value, expected):
    assert canonical.dumps(value) == expected


@pytest.mark.parametrize(
    "bad", [1.5, 2**53, {"é": 1}, {1: 2}, "\ud800", b"x", {"a": {"b": [float("nan")]}}]
)
def test_canonical_refuses_outside_domain(bad):
    with pytest.raises(canonical.CanonicalError):
        canonical.dumps(bad)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(st.characters(max_codepoint=127), max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
)


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jcs_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def jcs(v) -> str:
    """RFC 8785 written from the RFC's text, independently of canonical.py."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _jcs_quote(v)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    keys_ = sorted(v, key=lambda k: k.encode("utf-16-be"))  # UTF-16 code units (3.2.3)
    return "{" + ",".join(_jcs_quote(k) + ":" + jcs(v[k]) for k in keys_) + "}"


@settings(max_examples=300, deadline=None)
@given(_json)
def test_canonical_equals_rfc8785_written_from_the_text(value):
    assert canonical.dumps(value) == jcs(value).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(_json)
def test_canonical_equals_reference_rfc8785(value):
    rfc8785 = pytest.importorskip("rfc8785")
    assert canonical.dumps(value) == rfc8785.dumps(value)


def test_schema_file_is_the_schema():
    text = (ROOT / "docs" / "uplink.schema.json").read_text("utf-8")
    assert text == schema.schema_json()
    assert json.loads(text)["$schema"].endswith("2020-12/schema")


# ------------------------------------------------------------------ records

CASE = {
    "id": 7,
    "case_no": "QD2026112500001",
    "item_code": "11370200MB0000000X-001",
    "item_name": "企业设立登记",
    "handle_item": "001",
    "dept_code": "11370200MB0000000X",
    "dept_name": "青岛市行政审批服务局",
    "area_code": "370200",
    "window_no": "W12",
    "window_name": "综合受理12号窗口",
    "staff_id": "S1",
    "staff_name": "张三",
    "service_ms": 1_764_050_000_000,
    "service_number": "A012",
}


def rating(i: int = 1, prev: bytes = chain.GENESIS, **kw) -> dict:
    r = {
        "id": i,
        "terminal_id": 0xABCD,
        "journal_id": 0x5EED,
        "seq": i,
        "fork": 0,
        "level": 5,
        "reason": 0,
        "flags": 1,
        "session": 9,
        "case_id": 7,
        "device_time": 1_764_050_001,
        "uptime_ms": 1000,
        "boot": 2,
        "received_ms": 1_764_050_001_500,
        "assess_ms": 1_764_050_001_000,
        "time_quality": "synced",
    }
    r.update(kw)
    r["chain"] = chain.next_hash(prev, r)
    return r


def test_record_national_fields():
    rec = batch.build_record(rating(), CASE, ["too_fast"], batch.RecordConfig())
    schema.validate_record(rec)
    assert rec["projectNo"] == "QD2026112500001" and rec["taskCode"] == CASE["item_code"]
    assert rec["taskHandleItem"] == "001" and rec["proDepart"] == "青岛市行政审批服务局"
    assert rec["winNo"] == "W12" and rec["proManager"] == "张三"
    assert rec["pf"] == "5" and rec["satisfaction"] == "5" and rec["assessNumber"] == 1
    # 1_764_050_001_000 ms = 2025-11-25 05:53:21 UTC = 13:53:21 in Asia/Shanghai
    assert rec["assessTime"] == "2025-11-25 13:53:21"
    assert rec["serviceTime"] == "2025-11-25 13:53:20"
    assert rec["terminalId"] == "0000abcd" and rec["flags"] == ["too_fast"]
    assert rec["serviceNumber"] is None  # personal-ish data only where configured
    assert "contact" not in json.dumps(rec)


def test_record_config_personal_data_and_pf():
    cfg = batch.RecordConfig(pf="4", send_staff_name=False, send_service_number=True)
    rec = batch.build_record(rating(), CASE, [], cfg)
    assert rec["pf"] == "4" and rec["proManager"] is None and rec["serviceNumber"] == "A012"


def test_bad_rating_without_reason_gets_the_default():
    cfg = batch.RecordConfig(default_eval_detail="599", default_writing="")
    rec = batch.build_record(rating(level=1), CASE, [], cfg)
    assert rec["evalDetail"] == "599" and "default_reason" in rec["flags"]
    rec = batch.build_record(rating(level=2), CASE, [], batch.RecordConfig())
    assert rec["evalDetail"] == "" and rec["writingEvaluation"]
    rec = batch.build_record(
        rating(level=2, reason=3), CASE, [], batch.RecordConfig(reason_codes={3: "303"})
    )
    assert rec["evalDetail"] == "303" and rec["writingEvaluation"] == ""
    with pytest.raises(ValueError):
        batch.RecordConfig(default_eval_detail="", default_writing="").check()


def test_assess_time_is_clamped_to_the_service_time():
    r = rating(assess_ms=CASE["service_ms"] - 3_600_000)  # terminal clock an hour behind
    rec = batch.build_record(r, CASE, [], batch.RecordConfig())
    assert rec["assessTime"] == rec["serviceTime"] and "clock_clamped" in rec["flags"]
    rec = batch.build_record(rating(), CASE, [], batch.RecordConfig())
    assert "clock_clamped" not in rec["flags"]


def test_rating_without_case_is_sent_as_such():
    rec = batch.build_record(rating(case_id=None, flags=5), None, [], batch.RecordConfig())
    assert rec["projectNo"] is None and rec["taskCode"] is None and rec["serviceTime"] is None
    assert "no_case" in rec["flags"]


# ------------------------------------------------------------------ batches


def rows(n: int, prev: bytes = chain.GENESIS, start: int = 1) -> list[dict]:
    out = []
    for i in range(start, start + n):
        r = rating(i, prev, level=1 + i % 5)
        out.append(r)
        prev = r["chain"]
    return out


def build(key, rs, seq=1, prev_hash=batch.GENESIS_HASH, chain_prev=chain.GENESIS):
    return batch.build(
        hall_id="hall-1", seq=seq, prev_hash=prev_hash, chain_prev=chain_prev, rows=rs,
        cases={7: CASE}, flags={}, key=key, now_ms=1_764_050_009_000, cfg=batch.RecordConfig(),
    )  # fmt: skip


@pytest.fixture()
def keydir(tmp_path):
    keys.init(tmp_path / "k")
    return tmp_path / "k"


def test_build_verify_roundtrip_and_hash_chain(keydir):
    key = keys.load_private(keydir)
    ring = keys.Keyring.load(keydir)
    rs = rows(30)
    b1 = build(key, rs[:10])
    b2 = build(key, rs[10:], seq=2, prev_hash=b1.hash, chain_prev=bytes.fromhex(b1.chain_end))
    v1, v2 = batch.verify(b1.body, ring), batch.verify(b2.body, ring)
    assert v1.hash == b1.hash and v2.header["prevBatchHash"] == v1.hash
    assert v2.header["chainPrev"] == v1.chain_end == rs[9]["chain"].hex()
    assert canonical.dumps(json.loads(b1.body)) == b1.body  # the body is canonical


def test_verify_refuses_any_change(keydir):
    key = keys.load_private(keydir)
    ring = keys.Keyring.load(keydir)
    body = build(key, rows(5)).body
    rng = random.Random(5)
    doc = json.loads(body)
    for _ in range(50):
        d = json.loads(body)
        rec = d["records"][rng.randrange(5)]
        field = rng.choice(["satisfaction", "assessTime", "projectNo", "seq", "evalDetail"])
        rec[field] = {"satisfaction": "4" if rec["satisfaction"] != "4" else "3",
                      "assessTime": "2020-01-01 00:00:00", "projectNo": "X",
                      "seq": rec["seq"] + 1, "evalDetail": "9"}[field]  # fmt: skip
        with pytest.raises(batch.BatchError) as e:
            batch.verify(canonical.dumps(d), ring)
        assert e.value.code in ("signature", "record")
    d = dict(doc, signature=base64.b64encode(bytes(64)).decode())
    with pytest.raises(batch.BatchError, match="signature"):
        batch.verify(canonical.dumps(d), ring)
    with pytest.raises(batch.BatchError) as e:
        batch.verify(body, keys.Keyring())
    assert e.value.code == "key"


def test_builder_refuses_a_broken_local_chain(keydir):
    rs = rows(3)
    rs[1] = dict(rs[1], level=4)  # altered after its chain value was computed
    with pytest.raises(batch.BatchError, match="rating id 2"):
        build(keys.load_private(keydir), rs)


def test_rotation_keeps_old_batches_verifiable(keydir, tmp_path):
    old_body = build(keys.load_private(keydir), rows(3)).body
    old, new = keys.rotate(keydir)
    assert old.key_id != new.key_id
    new_body = build(keys.load_private(keydir), rows(3)).body
    ring = keys.Keyring.load(keydir)
    assert len(ring) == 2
    assert batch.verify(old_body, ring).header["keyId"] == old.key_id
    assert batch.verify(new_body, ring).header["keyId"] == new.key_id
    assert stat.S_IMODE(os.stat(keydir / "signing.key").st_mode) == 0o600


def test_key_files_mode_and_refusals(tmp_path):
    info = keys.init(tmp_path / "k")
    p = tmp_path / "k" / "signing.key"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(info.fingerprint) == 64 and info.key_id == info.fingerprint[:16]
    assert "PRIVATE" not in info.public_pem
    with pytest.raises(keys.KeyFileError, match="exists"):
        keys.init(tmp_path / "k")
    os.chmod(p, 0o644)
    with pytest.raises(keys.KeyFileError, match="chmod 600"):
        keys.load_private(p)


@pytest.mark.parametrize(
    "mutate,path",
    [
        (lambda d: d["header"].pop("keyId"), "$.header: missing keyId"),
        (lambda d: d["header"].update(batchSeq=0), "$.header.batchSeq: outside"),
        (lambda d: d["header"].update(batchSeq=True), "$.header.batchSeq: expected integer"),
        (lambda d: d["header"].update(format="hcp-uplink/1"), "$.header.format: must be"),
        (lambda d: d["records"][0].update(satisfaction="6"), "$.records[0].satisfaction: must be"),
        (
            lambda d: d["records"][0].update(assessTime="2025-11-25T10:00:00"),
            "$.records[0].assessTime: does not match",
        ),
        (lambda d: d["records"][0].update(extra=1), "$.records[0]: unexpected member extra"),
        (lambda d: d["records"][0].update(assessNumber=2), "$.records[0].assessNumber: must be 1"),
        (lambda d: d["records"][0]["origin"].update(seq=-1), "$.records[0].origin.seq: outside"),
        (lambda d: d["records"][0].update(flags=["x"] * 17), "$.records[0].flags: number of items"),
        (lambda d: d["records"].append(1), "$.records[2]: expected object"),
        (lambda d: d.update(annotations=[]), "$.annotations: number of items"),
        (lambda d: d.update(signature="abc"), "$.signature: does not match"),
    ],
)
def test_schema_names_the_offending_member(keydir, mutate, path):
    doc = json.loads(build(keys.load_private(keydir), rows(2)).body)
    schema.validate(doc)
    mutate(doc)
    with pytest.raises(schema.SchemaError) as e:
        schema.validate(doc)
    assert str(e.value).startswith(path)


def test_backoff_is_capped_exponential_with_jitter():
    from haochaping.daemon.uplink.delivery import Backoff

    b = Backoff(0.5, 60.0, random.Random(1))
    delays = [b.next() for _ in range(12)]
    for n, d in enumerate(delays):
        hi = min(60.0, 0.5 * 2**n)
        assert hi / 2 <= d <= hi
    assert delays[-1] <= 60.0 and len(set(delays)) == len(delays)  # jittered, capped
    b.reset()
    assert b.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, random.Random(1))


def _mutations(rng: random.Random, body: bytes) -> bytes:
    """One random change: a byte flipped, cut short, a value swapped for another type."""
    k = rng.randrange(4)
    if k == 0:
        b = bytearray(body)
        b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 1:
        return body[: rng.randrange(len(body))]
    doc = json.loads(body)
    target = doc["header"] if k == 2 else rng.choice(doc["records"])
    if k == 3 and rng.random() < 0.5:
        target = target["origin"]
    key = rng.choice(sorted(target))
    target[key] = rng.choice([None, -1, 2**60, 1.5, "", "x" * 300, [], {}, True, "0" * 64])
    return json.dumps(doc, ensure_ascii=False).encode()


def test_only_batch_errors_escape_verify(keydir):
    """Fuzz: 3,000 seeded mutations of a valid batch; verify raises BatchError or passes."""
    ring = keys.Keyring.load(keydir)
    body = build(keys.load_private(keydir), rows(4)).body
    rng = random.Random(4242)
    passed = 0
    for i in range(3000):
        m = _mutations(rng, body)
        try:
            batch.verify(m, ring)
            # only a no-op change (a byte replaced by itself, a key set to its value) passes
            assert json.loads(m) == json.loads(body), f"mutation {i} accepted"
            passed += 1
        except batch.BatchError:
            pass
        except Exception as e:  # pragma: no cover - the failure report
            raise AssertionError(f"mutation {i} (seed 4242): {type(e).__name__}: {e}") from e
    assert (
        passed < 3000 * 0.05
    )  # nearly every change is refused (a few flips hit spaces-free no-ops)


def test_the_example_in_docs_verifies():
    """docs/uplink.md's example batch is real: schema, signature, chain, rules, hash."""
    import re

    text = (ROOT / "docs" / "uplink.md").read_text("utf-8")
    example = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    pem = re.search(r"```pem\n(.*?)```", text, re.S).group(1)
    doc = json.loads(example)
    pub = keys.serialization.load_pem_public_key(pem.encode())
    ring = keys.Keyring()
    kid = ring.add(pub)
    v = batch.verify(canonical.dumps(doc), ring)
    assert v.header["keyId"] == kid and f"Key id `{kid}`" in text
    assert f"`{v.hash}`" in text
    rec = v.records[0]
    assert (
        rec["satisfaction"] == "1"
        and rec["writingEvaluation"]
        and rec["assessTime"] == rec["serviceTime"]
    )
    # and it is byte for byte what the code builds today from these inputs
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    service_ms = 1_764_050_000_000
    case = dict(
        CASE, id=1, case_no="QD20251125000123", handle_item=None, staff_id="S012",
        service_ms=service_ms,
    )  # fmt: skip
    row = {
        "id": 1, "terminal_id": 0xA1, "journal_id": 0x5EED0041, "seq": 41, "fork": 0,
        "level": 1, "reason": 0, "flags": 1,
        "session": 5, "case_id": 1, "device_time": 1_764_049_910, "uptime_ms": 123456,
        "boot": 3, "received_ms": service_ms + 10_000, "assess_ms": service_ms - 90_000,
        "time_quality": "synced",
    }  # fmt: skip
    row["chain"] = chain.next_hash(chain.GENESIS, row)
    built = batch.build(
        hall_id="qd-hall-01", seq=1, prev_hash=batch.GENESIS_HASH, chain_prev=chain.GENESIS,
        rows=[row], cases={1: case}, flags={}, key=key, now_ms=service_ms + 11_000,
        cfg=batch.RecordConfig(), batch_id="2933891a-487b-4dee-ad23-9eb4ddb45381",
    )  # fmt: skip
    assert built.body == canonical.dumps(doc)
