"""Build protocol/vectors.json from the definitions below.

Run ``python tests/vector_gen.py --write`` after a deliberate change to the
wire format; tests/test_vectors.py fails while the checked-in file differs from
what this produces, so SPEC.md, the file and the code cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from haochaping.protocol import auth, fields, frame, serial
from haochaping.protocol import messages as m

KEY = bytes(range(0x40, 0x60))  # a test key; never a real terminal's
TID = 0x0A0B0C0D
JID = 0x5EED1234  # a test journal id
OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors.json"

VALID: list[tuple[str, m.Message, int]] = [
    (
        "hello",
        m.Hello(
            fw=(1, 2, 3), board="esp32s3", boot=7, reset_cause=1, head=120, tail=101,
            acked=100, capacity=4096, uptime_ms=1500, flags=0, journal=JID,
        ),
        (7 << 16) | 1,
    ),
    ("hello-empty-board", m.Hello(fw=(0, 1, 0), board="", boot=0, head=1, tail=1, journal=1), 1),
    (
        "hello-legacy-journal",
        m.Hello(fw=(0, 1, 0), board="rp2-picow", boot=3, reset_cause=2, head=9, tail=4, acked=3,
                capacity=2000, uptime_ms=77, flags=1, journal=0),
        (3 << 16) | 1,
    ),
    (
        "rating-bad-with-reason",
        m.Rating(seq=101, level=1, reason=3, flags=m.F_TIME_SYNCED, session=0xDEADBEEF,
                 time=1764000000, uptime_ms=123456, boot=7, journal=JID),
        (7 << 16) | 2,
    ),
    (
        "rating-good-unsynced-no-case",
        m.Rating(seq=102, level=5, flags=m.F_NO_CASE, session=0, time=0, uptime_ms=99, boot=7,
                 journal=JID),
        (7 << 16) | 3,
    ),
    (
        "ratings-three",
        m.Ratings([
            m.Rating(seq=103, level=4, flags=1, session=11, time=1764000100, uptime_ms=200000, boot=7,
                     journal=JID),
            m.Rating(seq=104, level=2, reason=0, flags=1 | m.F_REASON_TIMEOUT, session=12,
                     time=1764000200, uptime_ms=300000, boot=7, journal=JID),
            m.Rating(seq=105, level=3, flags=1, session=13, time=1764000300, uptime_ms=400000, boot=7,
                     journal=JID),
        ]),
        (7 << 16) | 4,
    ),
    (
        "ratings-max",
        m.Ratings([m.Rating(seq=200 + i, level=1 + i % 5, session=i, boot=8, journal=0xFFFFFFFF)
                   for i in range(m.MAX_RECORDS)]),
        (8 << 16) | 1,
    ),
    (
        "status",
        m.Status(used=19, capacity=4096, free_heap=81234, uptime_ms=3600000, last_error=0,
                 alarms=m.A_CLOCK_UNSYNCED, ignored=2, state=1),
        (7 << 16) | 5,
    ),
    ("error-up", m.Error(code=m.E_JOURNAL_FULL, ref=0, text="journal full"), (7 << 16) | 6),
    ("time", m.Time(utc_ms=1764000000123), (3 << 16) | 1),
    ("arm", m.Arm(session=0xDEADBEEF, timeout_s=120, digest=bytes.fromhex("9f86d081")), (3 << 16) | 2),
    ("disarm", m.Disarm(session=0xDEADBEEF), (3 << 16) | 3),
    ("ack", m.Ack(seq=105, journal=JID), (3 << 16) | 4),
    (
        "config",
        m.Config([(m.C_NO_CASE_POLICY, 1), (m.C_MIN_INTERVAL_S, 30), (m.C_REASON_TIMEOUT_S, 10)]),
        (3 << 16) | 5,
    ),
    ("error-down", m.ErrorDown(code=m.E_UNKNOWN_TERMINAL, ref=(7 << 16) | 1, text="未登记的终端"), (3 << 16) | 6),
    (
        "error-down-replay",
        m.ErrorDown(code=m.E_REPLAY, ref=(9 << 16) | 300, text="counter behind: start epoch 10"),
        (3 << 16) | 7,
    ),
    ("test-led", m.Test(op=m.T_LED, arg=3), (3 << 16) | 8),
    ("test-end", m.Test(op=m.T_END), (3 << 16) | 9),
    ("echo-led", m.Echo(op=m.T_LED, arg=3), (7 << 16) | 7),
    ("echo-press", m.Echo(op=m.T_PRESS, arg=4), (7 << 16) | 8),
    ("echo-timeout", m.Echo(op=m.T_TIMEOUT), (7 << 16) | 9),
]


def _seal(msg: m.Message, counter: int, tid: int = TID, key: bytes = KEY) -> bytes:
    return frame.seal(auth.Key(key), msg, tid, counter)


def _raw(body: bytes, key: bytes = KEY) -> bytes:
    """A frame from raw header+payload bytes, tagged correctly."""
    return body + auth.Key(key).tag(body)


def invalid() -> list[dict]:
    good = _seal(m.Ack(seq=5, journal=JID), (3 << 16) | 9)
    rating = _seal(m.Rating(seq=1, level=5, boot=1, journal=JID), (1 << 16) | 5)
    wire = serial.encode(rating)
    flipped = bytearray(rating)
    flipped[12] ^= 0x01
    out = [
        {"name": "bad-tag", "frame": flipped.hex(), "error": "AuthError", "terminal_id": TID},
        {
            "name": "wrong-key",
            "frame": _seal(m.Rating(seq=1, level=5, journal=JID), 1, key=bytes(32)).hex(),
            "error": "AuthError",
            "terminal_id": TID,
        },
        {
            "name": "replay",
            "frame": rating.hex(),
            "rx_last": (1 << 16) | 5,
            "error": "ReplayError",
            "terminal_id": TID,
        },
        {
            "name": "counter-below-last",
            "frame": rating.hex(),
            "rx_last": (2 << 16) | 1,
            "error": "ReplayError",
            "terminal_id": TID,
        },
        {
            "name": "down-frame-sent-up",
            "frame": good.hex(),
            "receiver": "daemon",
            "error": "DirectionError",
            "terminal_id": TID,
        },
        {
            "name": "bad-crc",
            "wire": serial.cobs.encode(rating + b"\x00\x00").hex() + "00",
            "error": "ChecksumError",
            "terminal_id": TID,
        },
        {
            "name": "bad-cobs",
            "wire": (bytes([0x30]) + wire[1:]).hex(),
            "error": "FrameError",
            "terminal_id": TID,
        },
        {"name": "too-short", "frame": "02840a0b0c0d", "error": "FrameError", "terminal_id": TID},
        {
            "name": "too-long",
            "frame": _raw(bytes.fromhex("0204") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(239)).hex(),
            "error": "FrameTooLong",
            "terminal_id": TID,
        },
        {
            "name": "wire-too-long",
            "wire": ("01" * 300) + "00",
            "error": "FrameTooLong",
            "terminal_id": TID,
        },
        {
            # a protocol v1 ACK (no journal id): a v2 receiver refuses the version
            "name": "version-1",
            "frame": _raw(bytes.fromhex("0184") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(4)).hex(),
            "receiver": "terminal",
            "error": "VersionError",
            "terminal_id": TID,
        },
        {
            "name": "unknown-type",
            "frame": _raw(bytes.fromhex("0270") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")).hex(),
            "error": "UnknownType",
            "terminal_id": TID,
        },
        {
            "name": "level-out-of-range",
            "frame": _raw(
                bytes.fromhex("0202") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                + JID.to_bytes(4, "big")
                + bytes.fromhex("00000001" "06" "00" "00000000" "00000000" "00000000" "0000")
            ).hex(),
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            "name": "reason-on-good-rating",
            "frame": _raw(
                bytes.fromhex("0202") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                + JID.to_bytes(4, "big")
                + bytes.fromhex("00000001" "0d" "00" "00000000" "00000000" "00000000" "0000")
            ).hex(),
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            "name": "ratings-count-mismatch",
            "frame": _raw(
                bytes.fromhex("0203") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                + JID.to_bytes(4, "big") + bytes([2]) + m.Rating(seq=1, level=5).payload()[4:]
            ).hex(),
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            "name": "arm-session-zero",
            "frame": _raw(
                bytes.fromhex("0282") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                + bytes.fromhex("00000000" "0078" "9f86d081")
            ).hex(),
            "receiver": "terminal",
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            "name": "other-terminal",
            "frame": _seal(m.Rating(seq=1, level=5, journal=JID), 1, tid=TID + 1).hex(),
            "error": "FrameError",
            "terminal_id": TID,
        },
        {
            # PRESS is an answer, never a command: a terminal refuses it down
            "name": "test-press-sent-down",
            "frame": _raw(bytes.fromhex("0286") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                          + bytes((m.T_PRESS, 0))).hex(),
            "receiver": "terminal",
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            "name": "test-led-button-5",
            "frame": _raw(bytes.fromhex("0286") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                          + bytes((m.T_LED, 5))).hex(),
            "receiver": "terminal",
            "error": "MessageError",
            "terminal_id": TID,
        },
        {
            # the HELLO that stopped the daemon in v1 (issue #11): tail 0 is no seq
            "name": "hello-tail-zero",
            "frame": _raw(
                bytes.fromhex("0201") + TID.to_bytes(4, "big") + (1).to_bytes(4, "big")
                + bytes.fromhex("000100" "00" "0001" "01") + JID.to_bytes(4, "big")
                + bytes.fromhex("00000000" "00000000" "00000000" "0010" "00000000" "00")
            ).hex(),
            "error": "MessageError",
            "terminal_id": TID,
        },
    ]
    return out


def build() -> dict:
    key = auth.Key(KEY)
    valid = []
    for name, msg, counter in VALID:
        f = frame.seal(key, msg, TID, counter)
        valid.append({
            "name": name,
            "type": msg.NAME,
            "terminal_id": TID,
            "counter": counter,
            "fields": fields.to_dict(msg),
            "frame": f.hex(),
            "wire": serial.encode(f).hex(),
        })
    return {
        "comment": "protocol v2 test vectors; see SPEC.md. Generated by tests/vector_gen.py.",
        "key": KEY.hex(),
        "valid": valid,
        "invalid": invalid(),
    }


def dumps(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


SPEC = OUT.parent / "SPEC.md"
SPEC_MARK = "### "  # the vectors' part of section 10 starts at its first sub-heading


def _block(hexstr: str) -> str:
    return "\n".join(hexstr[i : i + 64] for i in range(0, len(hexstr), 64))


def spec_vectors(doc: dict) -> str:
    """Section 10's vectors as SPEC.md shows them (generated, never edited by hand)."""
    out = []
    for v in doc["valid"]:
        out.append(
            f"### {v['name']} ({v['type']}, terminal {v['terminal_id']:08x}, counter 0x{v['counter']:08x})\n\n"
            f"Fields: `{json.dumps(v['fields'], ensure_ascii=False)}`\n\n"
            f"Frame ({len(v['frame']) // 2} bytes):\n\n```\n{_block(v['frame'])}\n```\n\n"
            f"Serial wire ({len(v['wire']) // 2} bytes):\n\n```\n{_block(v['wire'])}\n```\n"
        )
    rows = ["### Invalid inputs\n", "| name | given as | receiver | must raise |", "|---|---|---|---|"]
    for v in doc["invalid"]:
        given = "wire" if "wire" in v else "frame"
        recv = v.get("receiver", "daemon")
        if "rx_last" in v:
            recv += f", rx_last 0x{v['rx_last']:08x}"
        rows.append(f"| {v['name']} | {given} | {recv} | `{v['error']}` |")
    out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def write_spec(doc: dict) -> None:
    text = SPEC.read_text("utf-8")
    head, sep, _ = text.partition("## 10. Test vectors")
    intro = _.split(SPEC_MARK, 1)[0]
    SPEC.write_text(head + sep + intro + spec_vectors(doc), "utf-8")


if __name__ == "__main__":
    text = dumps(build())
    if "--write" in sys.argv:
        OUT.write_text(text, encoding="utf-8")
        write_spec(json.loads(text))
        print(f"wrote {OUT} and section 10 of {SPEC}")
    else:
        sys.stdout.write(text)
