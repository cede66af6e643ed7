"""The published test vectors: current, complete, and passing on CPython."""

from __future__ import annotations

import json

import pytest
from haochaping.protocol import messages, vectors

from .conftest import ROOT, lane_report
from .vector_gen import build, dumps

VECTORS = ROOT / "protocol" / "vectors.json"


def load() -> dict:
    return json.loads(VECTORS.read_text("utf-8"))


def test_checked_in_vectors_match_the_generator() -> None:
    # If this fails, run `python tests/vector_gen.py --write` and review the diff
    # together with SPEC.md: the wire format changed.
    assert VECTORS.read_text("utf-8") == dumps(build())


def test_every_message_type_has_a_vector() -> None:
    doc = load()
    covered = {v["type"] for v in doc["valid"]}
    assert covered == {cls.NAME for cls in messages.TYPES.values()}


def test_invalid_vectors_cover_every_kind_of_refusal() -> None:
    doc = load()
    errors = {v["error"] for v in doc["invalid"]}
    assert len(doc["invalid"]) >= 6
    assert {
        "AuthError",
        "ReplayError",
        "FrameError",
        "FrameTooLong",
        "ChecksumError",
        "MessageError",
        "VersionError",
        "UnknownType",
        "DirectionError",
    } <= errors


def test_all_vectors_pass_on_cpython() -> None:
    passed, failures = vectors.run(load())
    assert failures == []
    total = len(load()["valid"]) + len(load()["invalid"])
    assert passed == total
    lane_report("cpython vectors passed", f"{passed}/{total}")


@pytest.mark.parametrize("name", [v["name"] for v in json.loads(VECTORS.read_text("utf-8"))["invalid"]])
def test_each_invalid_vector_fails_when_its_check_is_removed(name: str) -> None:
    """A vector that would 'pass' with no error is reported as a failure."""
    doc = load()
    v = next(x for x in doc["invalid"] if x["name"] == name)
    wrong = dict(v, error="NoSuchError")
    key = vectors.auth.Key(bytes.fromhex(doc["key"]))
    assert vectors.check_invalid(key, wrong) is not None


def test_spec_lists_every_vector() -> None:
    spec = (ROOT / "protocol" / "SPEC.md").read_text("utf-8")
    doc = load()
    for v in doc["valid"]:
        assert v["wire"] in spec.replace(" ", "").replace("\n", ""), v["name"]


def test_spec_section_10_is_what_the_generator_writes() -> None:
    """SPEC.md's vectors are generated from vectors.json, never edited by hand."""
    from . import vector_gen

    spec = (ROOT / "protocol" / "SPEC.md").read_text("utf-8")
    assert spec.endswith(vector_gen.spec_vectors(load())), "run: python tests/vector_gen.py --write"
