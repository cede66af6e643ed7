"""No HELLO, RATING, RATINGS or STATUS that passes authentication can raise out
of ``Core.receive`` or stop the daemon (issue #11: a HELLO with tail 0 made
``Core.receive`` raise, and the daemon exited on every start while the
terminal kept saying it).  Every value a terminal can put in a field is
accepted or refused with a named reason and counted.

The payloads are packed by hand, field by field, so values the message
classes would refuse to build (0, 1, the maximum, and one past it where the
wire can carry it) reach the daemon exactly as a broken or hostile terminal
would send them."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from haochaping.daemon import core as coremod
from haochaping.daemon.store import Store
from haochaping.protocol import frame, messages
from haochaping.protocol.auth import Key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TID = 0x0B0B0B0B
KEY = bytes(range(100, 132))

U8 = (0, 1, 0xFE, 0xFF)
U16 = (0, 1, 0xFFFE, 0xFFFF)
U32 = (0, 1, 0xFFFFFFFE, 0xFFFFFFFF)
u8, u16, u32 = (st.sampled_from(v) for v in (U8, U16, U32))

# a RATING record: seq, level|reason<<3 (every byte value: levels 0..7, reasons 0..31), flags,
# session, time, uptime, boot
record = st.tuples(u32, st.integers(0, 255), u8, u32, u32, u32, u16).map(
    lambda v: struct.pack(">IBBIIIH", *v)
)
hello = st.builds(
    lambda fw, blen, board, rest: bytes(fw) + bytes((blen,)) + board + struct.pack(">HBIIIIHIB", *rest),
    st.tuples(u8, u8, u8),
    st.sampled_from((0, 1, 16, 17, 255)),
    st.sampled_from((b"", b"x", b"\x00", b"\x7f", b"esp32s3", b"\xff" * 16, b"a" * 17)),
    st.tuples(u16, u8, u32, u32, u32, u32, u16, u32, u8),
)  # board length and board bytes may disagree: a wrong length is a refusal too
rating = st.builds(lambda j, r: struct.pack(">I", j) + r, u32, record)
ratings = st.builds(
    lambda j, n, recs: struct.pack(">IB", j, n) + b"".join(recs),
    u32, st.sampled_from((0, 1, 11, 12, 255)), st.lists(record, min_size=0, max_size=12),
)  # fmt: skip
status = st.tuples(u16, u16, u32, u32, u8, u8, u16, u8).map(lambda v: struct.pack(">HHIIBBHB", *v))
up_message = st.one_of(
    st.tuples(st.just(messages.Hello.TYPE), hello),
    st.tuples(st.just(messages.Rating.TYPE), rating),
    st.tuples(st.just(messages.Ratings.TYPE), ratings),
    st.tuples(st.just(messages.Status.TYPE), status),
    st.tuples(st.sampled_from((0x00, 0x05, 0x0E, 0x10, 0x7F)), st.binary(max_size=40)),  # unknown types
)


def seal(msg_type: int, payload: bytes, counter: int) -> bytes:
    body = struct.pack(">BBII", frame.VERSION, msg_type, TID, counter) + payload[: frame.MAX_PAYLOAD]
    return body + Key(KEY).tag(body)


@pytest.fixture(scope="module")
def hall(tmp_path_factory):
    d = tmp_path_factory.mktemp("bounds")
    store = Store(Path(d) / "hall.db")
    store.add_terminal(TID, KEY, "W01", 0)
    core = coremod.Core(store.start_terminals())
    return store, core, itertools.count(1 << 16)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(up_message, min_size=1, max_size=6))
def test_any_authenticated_up_message_is_taken_or_refused_by_name(hall, msgs) -> None:
    store, core, counter = hall
    now = 1_795_600_000_000
    group = []
    for t, payload in msgs:
        out = core.receive("pty0", seal(t, payload, next(counter)), now, bound=True)  # never raises
        assert out.refused is None or out.refused in coremod.REFUSAL_REASONS, out.refused
        if out.refused is None:
            assert out.kind in ("HELLO", "RATING", "RATINGS", "STATUS")
        group.extend(out.store)
    stored = store.commit(group, now, core.take_updates())  # the store takes whatever the core took
    core.committed(stored, now)
    c = core.counters
    assert c["frames_in"] == c.get("frames_ok", 0) + sum(v for k, v in c.items() if k.startswith("refused_"))
    assert store.verify_chain() is None


def test_the_boundaries_were_both_taken_and_refused(hall) -> None:
    """The property run above is not vacuous: it had frames of every kind
    taken, and refusals of several named kinds (run after it, same core)."""
    from .conftest import lane_report

    _, core, _ = hall
    c = core.counters
    taken = c.get("frames_ok", 0)
    reasons = {k[8:]: v for k, v in c.items() if k.startswith("refused_")}
    lane_report("boundary frames through the real core (taken / refused)",
                f"{taken} / {sum(reasons.values())} ({', '.join(sorted(reasons))})")  # fmt: skip
    assert taken > 50 and c.get("ratings_in", 0) > 50
    assert {"malformed_hello", "malformed_rating", "malformed_ratings", "malformed_status",
            "unknown_type"} <= set(reasons)


def boundary_payloads() -> list[tuple[int, bytes]]:
    """Every field of every up message at 0, 1, max-1 and max (one past it
    where the field's bits can carry it), the others at sane values."""
    out: list[tuple[int, bytes]] = []
    hello = [1, 0, 0, 4, b"test", 1, 1, 7, 5, 5, 4, 64, 1000, 0]  # fw, blen, board, boot..flags
    hello_fmt = ">HBIIIIHIB"
    names = ["boot", "reset", "journal", "head", "tail", "acked", "cap", "uptime", "flags"]
    widths = {"boot": U16, "reset": U8, "journal": U32, "head": U32, "tail": U32, "acked": U32,
              "cap": U16, "uptime": U32, "flags": U8}  # fmt: skip
    for i, name in enumerate(names):
        for v in widths[name]:
            rest = hello[5:]
            rest[i] = v
            out.append((messages.Hello.TYPE, bytes(hello[:3]) + bytes((hello[3],)) + hello[4]
                        + struct.pack(hello_fmt, *rest)))  # fmt: skip
    for blen in (0, 16, 17, 255):
        out.append((messages.Hello.TYPE, bytes((1, 0, 0, blen)) + b"b" * min(blen, 16)
                    + struct.pack(hello_fmt, *hello[5:])))  # fmt: skip
    rec = [3, 5, 1, 0, 1_795_600_000, 1000, 1]
    fmts = ("I", "B", "B", "I", "I", "I", "H")
    for i, f in enumerate(fmts):
        for v in {"I": U32, "B": tuple(range(256)) if i == 1 else U8, "H": U16}[f]:
            r = list(rec)
            r[i] = v
            out.append((messages.Rating.TYPE, struct.pack(">I", 5) + struct.pack(">IBBIIIH", *r)))
    for n in (0, 1, 11, 12, 255):
        body = struct.pack(">IBBIIIH", *rec) * min(n, 11)
        out.append((messages.Ratings.TYPE, struct.pack(">IB", 5, n) + body))
    st_ = [1, 64, 1000, 1000, 0, 0, 0, 0]
    for i, w in enumerate((U16, U16, U32, U32, U8, U8, U16, U8)):
        for v in w:
            s = list(st_)
            s[i] = v
            out.append((messages.Status.TYPE, struct.pack(">HHIIBBHB", *s)))
    return out


@pytest.mark.slow
def test_a_running_daemon_survives_every_boundary_frame_and_serves_the_others(tmp_path: Path) -> None:
    from haochaping.daemon.bench.harness import DaemonProcess, free_port, provision, write_config
    from haochaping.daemon.bench.peers import FakeTerminal, PtyPeer, drive, make_key
    from haochaping.protocol import serial as wire

    ports = tmp_path / "ports"
    ports.mkdir()
    db = tmp_path / "hall.db"
    api = free_port()
    cfg = write_config(tmp_path / "hcp.toml", db, [{"url": f"serial://{ports}/term-*"}], api)
    good = FakeTerminal(0x0C0C0C0C, make_key(1, 11))
    bad = FakeTerminal(TID, KEY)
    provision(db, [good, bad])
    gp, bp = PtyPeer(good, ports), PtyPeer(bad, ports)
    d = DaemonProcess(cfg, tmp_path).start()
    try:
        gp.hello()
        frames = boundary_payloads()
        counter = itertools.count((1 << 16) | 1)
        for i in range(0, len(frames), 20):
            bp.write_raw(b"".join(wire.encode(seal(t, p, next(counter))) for t, p in frames[i : i + 20]))
            assert d.alive(), f"the daemon died at boundary frame {i}"
            good.press(5)
            gp.send_new()
        assert drive([gp], 30, alive=d.alive), "the other terminal was not served"
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read().decode()
        refused = sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                      if x.startswith("hcp_frames_refused_total{"))  # fmt: skip
        assert refused >= 100, refused
        assert d.stop() == 0
    finally:
        if d.alive():
            d.kill9()
        gp.close()
        bp.close()
