"""CPython lane: round trips, streaming decode, fuzz, refusals and every bound."""

from __future__ import annotations

import hmac
import random

import pytest
from haochaping.protocol import auth, cobs, crc, errors, fields, frame, link, mqtt, serial
from haochaping.protocol import messages as m
from hypothesis import given, settings
from hypothesis import strategies as st

KEY = auth.Key(bytes(range(1, 33)))
TID = 0x12345678

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def ratings(draw: st.DrawFn, journal: int | None = None) -> m.Rating:
    level = draw(st.integers(1, 5))
    reason = draw(st.integers(0, m.REASON_MAX)) if level <= m.BAD_MAX else 0
    return m.Rating(
        seq=draw(st.integers(1, 0xFFFFFFFF)), level=level, reason=reason, flags=draw(u8),
        session=draw(u32), time=draw(u32), uptime_ms=draw(u32), boot=draw(u16),
        journal=draw(u32) if journal is None else journal,
    )


@st.composite
def ratings_frames(draw: st.DrawFn) -> m.Ratings:
    j = draw(u32)
    return m.Ratings(draw(st.lists(ratings(j), min_size=1, max_size=m.MAX_RECORDS)))


@st.composite
def hellos(draw: st.DrawFn) -> m.Hello:
    head = draw(st.integers(1, 0xFFFFFFFF))
    tail = draw(st.integers(1, head))
    return m.Hello(
        fw=(draw(u8), draw(u8), draw(u8)),
        board=draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=m.BOARD_MAX)),
        boot=draw(u16), reset_cause=draw(u8), head=head, tail=tail,
        acked=draw(st.integers(0, tail - 1)), capacity=draw(u16), uptime_ms=draw(u32), flags=draw(u8),
        journal=draw(u32),
    )


@st.composite
def statuses(draw: st.DrawFn) -> m.Status:
    cap = draw(u16)
    return m.Status(
        used=draw(st.integers(0, cap)), capacity=cap, free_heap=draw(u32), uptime_ms=draw(u32),
        last_error=draw(u8), alarms=draw(u8), ignored=draw(u16), state=draw(u8),
    )


def _text(draw: st.DrawFn) -> str:
    t = draw(st.text(max_size=m.ERROR_TEXT_MAX))
    while len(t.encode()) > m.ERROR_TEXT_MAX:
        t = t[:-1]
    return t


@st.composite
def errors_(draw: st.DrawFn) -> m.Error:
    cls = draw(st.sampled_from([m.Error, m.ErrorDown]))
    return cls(code=draw(u8), ref=draw(u32), text=_text(draw))


any_message = st.one_of(
    hellos(),
    ratings(),
    ratings_frames(),
    statuses(),
    errors_(),
    st.integers(0, 2**64 - 1).map(m.Time),
    st.builds(m.Arm, st.integers(1, 0xFFFFFFFF), st.integers(1, 0xFFFF), st.binary(min_size=4, max_size=4)),
    u32.map(m.Disarm),
    st.builds(m.Ack, u32, u32),
    st.lists(st.tuples(u8, u32), max_size=m.CONFIG_MAX).map(m.Config),
    st.builds(m.Test, st.integers(m.T_END, m.T_ECHO), st.integers(0, 4)),
    st.builds(m.Echo, st.integers(m.T_END, m.T_BUSY), st.integers(0, 4)),
)


@settings(max_examples=400)
@given(any_message, u32, u32)
def test_every_message_round_trips(msg: m.Message, tid: int, counter: int) -> None:
    f = frame.seal(KEY, msg, tid, counter)
    assert len(f) <= frame.MAX_FRAME
    got = frame.unseal(KEY, f)
    assert (got.msg, got.terminal_id, got.counter, got.type) == (msg, tid, counter, msg.TYPE)
    assert fields.from_dict(msg.NAME, fields.to_dict(got.msg)) == msg
    # and through the serial framing
    dec = serial.Decoder()
    dec.receive_data(serial.encode(f))
    assert dec.next_event() == f
    assert dec.next_event() is None


def _stream(n: int, rng: random.Random) -> tuple[list[bytes], bytes]:
    t = link.Link(link.TERMINAL, TID, KEY, epoch=1)
    frames = []
    for i in range(n):
        recs = [m.Rating(seq=i * 20 + j + 1, level=rng.randint(1, 5), session=rng.getrandbits(32),
                         uptime_ms=rng.getrandbits(32), boot=1) for j in range(rng.randint(1, m.MAX_RECORDS))]
        frames.append(t.send(m.Ratings(recs) if len(recs) > 1 else recs[0]))
    return frames, b"".join(serial.encode(f) for f in frames)


def _drain(dec: serial.Decoder) -> list[bytes]:
    out = []
    while (ev := dec.next_event()) is not None:
        out.append(ev)
    return out


@pytest.mark.parametrize("mode", ["whole", "byte", "random"])
def test_decoder_whole_byte_by_byte_and_random_chunks(mode: str) -> None:
    rng = random.Random(7)
    frames, wire = _stream(50, rng)
    dec = serial.Decoder()
    got: list[bytes] = []
    if mode == "whole":
        dec.receive_data(wire)
        got = _drain(dec)
    else:
        i = 0
        while i < len(wire):
            n = 1 if mode == "byte" else rng.randint(1, 300)
            dec.receive_data(wire[i : i + n])
            got += _drain(dec)
            assert dec.buffered <= serial.MAX_WIRE
            i += n
    assert got == frames
    d = link.Link(link.DAEMON, TID, KEY, epoch=1)
    assert [d.receive(f).counter & 0xFFFF for f in got] == list(range(1, 51))


def test_random_garbage_raises_only_protocol_errors_and_never_hides_a_good_frame() -> None:
    """100,000 seeded random inputs, each followed by a delimiter and a good frame."""
    rng = random.Random(20261125)
    good = frame.seal(KEY, m.Rating(seq=9, level=4, boot=2), TID, (2 << 16) | 1)
    good_wire = serial.encode(good)
    kinds: dict[str, int] = {}
    for i in range(100_000):
        r = rng.random()
        if r < 0.4:
            junk = rng.randbytes(rng.randint(0, 80))
        elif r < 0.6:
            junk = rng.randbytes(rng.randint(200, 700))  # around and over MAX_WIRE
        elif r < 0.9:
            # a real frame, damaged: flipped bits, cut short, or extended
            w = bytearray(good_wire[:-1])
            for _ in range(rng.randint(1, 3)):
                if w:
                    w[rng.randrange(len(w))] ^= 1 << rng.randrange(8)
            if rng.random() < 0.3:
                w = w[: rng.randrange(len(w) + 1)]
            junk = bytes(w)
        else:
            # valid COBS with a valid CRC around random content (reaches unseal)
            body = rng.randbytes(rng.randint(0, 300))
            c = crc.crc16(body)
            junk = cobs.encode(body + bytes((c >> 8, c & 0xFF)))
        dec = serial.Decoder()
        stream = junk + b"\x00" + good_wire
        chunk = rng.choice([1, 7, 64, len(stream)])
        found = []
        for off in range(0, len(stream), chunk):
            dec.receive_data(stream[off : off + chunk])
            while True:
                try:
                    ev = dec.next_event()
                except errors.ProtocolError as e:
                    kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
                    continue
                if ev is None:
                    break
                try:
                    f = frame.unseal(KEY, ev)
                except errors.ProtocolError as e:
                    kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
                    continue
                found.append(f)
        assert found and found[-1].msg == m.Rating(seq=9, level=4, boot=2), (i, junk.hex())
    # The fuzz reached every layer: framing, CRC, length, authentication.
    assert {"FrameError", "ChecksumError", "FrameTooLong", "AuthError"} <= set(kinds), kinds


def test_bad_tag_wrong_key_and_replay_are_refused() -> None:
    t = link.Link(link.TERMINAL, TID, KEY, epoch=3)
    d = link.Link(link.DAEMON, TID, KEY, epoch=1)
    f1 = t.send(m.Rating(seq=1, level=5, boot=3))
    bad = bytearray(f1)
    bad[-1] ^= 0x80
    with pytest.raises(errors.AuthError):
        d.receive(bytes(bad))
    other = link.Link(link.DAEMON, TID, auth.Key(bytes(32)), epoch=1)
    with pytest.raises(errors.AuthError):
        other.receive(f1)
    assert d.receive(f1).msg.seq == 1
    with pytest.raises(errors.ReplayError):
        d.receive(f1)
    assert d.rx_last == (3 << 16) | 1
    # a refused frame leaves the state as it was
    f2 = t.send(m.Rating(seq=2, level=5, boot=3))
    assert d.open(f2).counter == (3 << 16) | 2
    assert d.rx_last == (3 << 16) | 1
    d.accept(d.open(f2))
    with pytest.raises(errors.ReplayError):
        d.receive(f2)


def test_counters_survive_reboots_through_the_epoch() -> None:
    d = link.Link(link.DAEMON, TID, KEY, epoch=1)
    before = link.Link(link.TERMINAL, TID, KEY, epoch=4)
    for _ in range(100):
        d.receive(before.send(m.Status()))
    after_reboot = link.Link(link.TERMINAL, TID, KEY, epoch=5)
    assert d.receive(after_reboot.send(m.Status())).counter == (5 << 16) | 1
    # the old boot's next frame is now a replay
    with pytest.raises(errors.ReplayError):
        d.receive(before.send(m.Status()))


def test_counter_exhaustion_at_the_bound() -> None:
    t = link.Link(link.TERMINAL, TID, KEY, epoch=1)
    t._n = link.N_MAX - 1
    assert frame.peek(t.send(m.Status()))[3] == (1 << 16) | 0xFFFF
    with pytest.raises(errors.CounterExhausted):
        t.send(m.Status())
    t.new_epoch(2)
    assert frame.peek(t.send(m.Status()))[3] == (2 << 16) | 1
    with pytest.raises(ValueError):
        t.new_epoch(2)


def test_direction_is_enforced_both_ways() -> None:
    t = link.Link(link.TERMINAL, TID, KEY, epoch=1)
    d = link.Link(link.DAEMON, TID, KEY, epoch=1)
    with pytest.raises(errors.DirectionError):
        t.send(m.Ack(1))
    with pytest.raises(errors.DirectionError):
        d.send(m.Rating(seq=1, level=5))
    # a down frame reflected back upstream
    down = d.send(m.Ack(1))
    with pytest.raises(errors.DirectionError):
        link.Link(link.DAEMON, TID, KEY, epoch=1).receive(down)
    assert t.receive(down).msg == m.Ack(1)


# ------------------------------------------------------------------ bounds


def _raw_frame(payload_len: int) -> bytes:
    body = bytes([1, m.Config.TYPE]) + TID.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(payload_len)
    return body + KEY.tag(body)


def test_frame_length_bound() -> None:
    # A CONFIG payload is 5-byte settings: MAX_PAYLOAD=238 is not a multiple,
    # so check the frame layer with peek and the message layer separately.
    assert len(_raw_frame(frame.MAX_PAYLOAD)) == frame.MAX_FRAME
    frame.peek(_raw_frame(frame.MAX_PAYLOAD))
    with pytest.raises(errors.FrameTooLong):
        frame.peek(_raw_frame(frame.MAX_PAYLOAD + 1))
    with pytest.raises(errors.FrameError):
        frame.peek(bytes(frame.MIN_FRAME - 1))
    frame.peek(bytes(frame.MIN_FRAME))


def test_wire_length_bound() -> None:
    # The longest legal frame fits MAX_WIRE exactly or under; one byte more is refused.
    longest = frame.seal(KEY, m.Ratings([m.Rating(seq=i + 1, level=5) for i in range(m.MAX_RECORDS)]), TID, 1)
    assert len(serial.encode(longest)) - 1 <= serial.MAX_WIRE
    dec = serial.Decoder()
    dec.receive_data(b"\x01" * serial.MAX_WIRE)
    assert dec.next_event() is None
    dec.receive_data(b"\x01")
    with pytest.raises(errors.FrameTooLong):
        dec.next_event()
    assert dec.buffered == 0
    dec.receive_data(b"\x01" * 5000 + b"\x00" + serial.encode(longest))
    assert dec.next_event() == longest  # the over-long run was reported once, then skipped
    assert dec.dropped_bytes >= 5000


def test_a_large_read_loses_no_frame() -> None:
    """Hundreds of frames in one read (a 4 KiB pyserial read holds ~100):
    every one comes out, in order; only the incomplete tail is bounded."""
    t = link.Link(link.TERMINAL, TID, KEY, epoch=1)
    frames = [t.send(m.Rating(seq=i + 1, level=5)) for i in range(500)]
    dec = serial.Decoder()
    dec.receive_data(b"".join(serial.encode(f) for f in frames) + b"\x05\x01")
    assert dec.pending == 500 and dec.buffered == 2
    assert _drain(dec) == frames
    assert dec.pending == 0


@pytest.mark.parametrize(
    "make, ok",
    [
        (lambda: m.Ratings([m.Rating(seq=i + 1) for i in range(m.MAX_RECORDS)]), True),
        (lambda: m.Ratings([m.Rating(seq=i + 1) for i in range(m.MAX_RECORDS + 1)]), False),
        (lambda: m.Ratings([]), False),
        (lambda: m.Hello(board="x" * m.BOARD_MAX), True),
        (lambda: m.Hello(board="x" * (m.BOARD_MAX + 1)), False),
        (lambda: m.Hello(board="板"), False),
        (lambda: m.Hello(head=5, tail=6), False),
        (lambda: m.Error(text="x" * m.ERROR_TEXT_MAX), True),
        (lambda: m.Error(text="x" * (m.ERROR_TEXT_MAX + 1)), False),
        (lambda: m.Error(text="差" * (m.ERROR_TEXT_MAX // 3)), True),
        (lambda: m.Error(text="差" * (m.ERROR_TEXT_MAX // 3 + 1)), False),
        (lambda: m.Config([(1, 0xFFFFFFFF)] * m.CONFIG_MAX), True),
        (lambda: m.Config([(1, 0)] * (m.CONFIG_MAX + 1)), False),
        (lambda: m.Config([(256, 0)]), False),
        (lambda: m.Config([(1, 2**32)]), False),
        (lambda: m.Rating(seq=1, level=1), True),
        (lambda: m.Rating(seq=1, level=0), False),
        (lambda: m.Rating(seq=1, level=5), True),
        (lambda: m.Rating(seq=1, level=6), False),
        (lambda: m.Rating(seq=0, level=5), False),
        (lambda: m.Rating(seq=2**32 - 1, level=5), True),
        (lambda: m.Rating(seq=2**32, level=5), False),
        (lambda: m.Rating(seq=1, level=2, reason=m.REASON_MAX), True),
        (lambda: m.Rating(seq=1, level=2, reason=m.REASON_MAX + 1), False),
        (lambda: m.Rating(seq=1, level=3, reason=1), False),
        (lambda: m.Rating(seq=1, level=5, boot=0xFFFF), True),
        (lambda: m.Rating(seq=1, level=5, boot=0x10000), False),
        (lambda: m.Arm(session=0), False),
        (lambda: m.Arm(session=1, timeout_s=0), False),
        (lambda: m.Arm(session=1, timeout_s=0xFFFF), True),
        (lambda: m.Arm(session=1, digest=b"abc"), False),
        (lambda: m.Status(used=11, capacity=10), False),
        (lambda: m.Time(2**64 - 1), True),
        (lambda: m.Time(2**64), False),
        (lambda: m.Test(m.T_LED, 4), True),
        (lambda: m.Test(m.T_LED, 5), False),  # five buttons: 0..4
        (lambda: m.Test(m.T_ECHO, 0), True),
        (lambda: m.Test(m.T_PRESS, 0), False),  # an answer, never a command
        (lambda: m.Test(m.T_BUSY, 0), False),
        (lambda: m.Test(-1, 0), False),
        (lambda: m.Echo(m.T_PRESS, 4), True),
        (lambda: m.Echo(m.T_BUSY, 0), True),
        (lambda: m.Echo(m.T_BUSY + 1, 0), False),
        (lambda: m.Echo(m.T_PRESS, 5), False),
    ],
)
def test_message_bounds(make, ok: bool) -> None:  # type: ignore[no-untyped-def]
    msg = make()
    if ok:
        f = frame.seal(KEY, msg, TID, 1)
        assert frame.unseal(KEY, f).msg == msg
    else:
        with pytest.raises(errors.MessageError):
            frame.seal(KEY, msg, TID, 1)


def test_size_targets() -> None:
    t = link.Link(link.TERMINAL, TID, KEY, epoch=1)
    one = serial.encode(t.send(m.Rating(seq=2**32 - 1, level=1, reason=5, flags=0xFF, session=2**32 - 1,
                                         time=2**32 - 1, uptime_ms=2**32 - 1, boot=0xFFFF)))
    assert len(one) <= 48
    full = serial.encode(t.send(m.Ratings([m.Rating(seq=i + 1, level=5, session=0xFFFFFFFF)
                                             for i in range(m.MAX_RECORDS)])))
    assert len(full) / m.MAX_RECORDS <= 24


# ------------------------------------------------------------- primitives


@given(st.binary(max_size=1200))
def test_cobs_round_trip_and_no_zero(data: bytes) -> None:
    enc = cobs.encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert cobs.decode(enc) == data


@given(st.binary(max_size=600))
def test_cobs_decode_raises_only_frame_error(data: bytes) -> None:
    try:
        cobs.decode(data)
    except errors.FrameError:
        pass


@given(st.binary(max_size=300))
def test_crc_fast_and_portable_agree(data: bytes) -> None:
    assert crc.crc16(data) == crc.crc16_portable(data)


def test_crc_check_value() -> None:
    assert crc.crc16(b"123456789") == 0x29B1
    assert crc.crc16_portable(b"123456789") == 0x29B1


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key: bytes, data: bytes) -> None:
    k = auth.Key(key)
    want = hmac.new(key, data, "sha256").digest()
    assert k.mac(data) == want
    assert k.mac_portable(data) == want
    assert k.tag(data) == want[: auth.TAG_LEN]


def test_key_validation_and_no_key_in_repr() -> None:
    with pytest.raises(ValueError):
        auth.Key(bytes(31))
    assert "0102" not in repr(KEY) and repr(KEY) == "<Key>"


def test_mqtt_topics() -> None:
    assert mqtt.up_topic(0xA1, "hall/qd") == "hall/qd/t/000000a1/up"
    assert mqtt.down_topic(0xA1) == "hcp/t/000000a1/down"
    assert mqtt.up_filter("hcp") == "hcp/t/+/up"
    assert mqtt.parse_topic("hcp/t/000000a1/up") == (0xA1, "up")
    assert mqtt.parse_topic("hcp/t/000000A1/up") is None  # not canonical
    assert mqtt.parse_topic("hcp/t/a1/up") is None
    assert mqtt.parse_topic("other/t/000000a1/up") is None
    for bad in ("", "a/+", "a/#", "/a", "a/", "x" * 65):
        with pytest.raises(ValueError):
            mqtt.up_filter(bad)
