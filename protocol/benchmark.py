"""Protocol throughput and size figures (``hcp bench protocol``).

Portable (no time module beyond ticks): the CPython CLI passes a clock, the
MicroPython lane passes ``time.ticks_ms``-based one.  Reports frames encoded
and decoded per second for single RATING frames on the serial wire (seal +
COBS + CRC, and stream decode + unseal + replay check), the size of one framed
RATING, and the wire bytes per rating when a journal drains in full RATINGS
frames.
"""

from haochaping.protocol import auth, link, messages, serial


def _setup():
    key = auth.Key(bytes(range(32)))
    tid = 0x00C0FFEE
    return key, tid


def encode_loop(n, key, tid):
    t = link.Link(link.TERMINAL, tid, key, epoch=1)
    r = messages.Rating(seq=1, level=5, flags=1, session=42, time=1764000000, uptime_ms=1000, boot=1)
    out = []
    for i in range(n):
        r.seq = i + 1
        out.append(serial.encode(t.send(r)))
    return out


def decode_loop(wires, key, tid):
    d = link.Link(link.DAEMON, tid, key, epoch=1)
    dec = serial.Decoder()
    got = 0
    for w in wires:
        dec.receive_data(w)
        while True:
            f = dec.next_event()
            if f is None:
                break
            d.receive(f)
            got += 1
    return got


def sizes():
    key, tid = _setup()
    t = link.Link(link.TERMINAL, tid, key, epoch=1)
    one = serial.encode(t.send(messages.Rating(seq=1, level=1, reason=2, flags=1, session=7,
                                                 time=1764000000, uptime_ms=1000, boot=1)))
    total = 0
    count = 0
    seq = 1
    # Drain 1,100 ratings as a journal would: full RATINGS frames.
    while count < 1100:
        recs = [messages.Rating(seq=seq + i, level=5, flags=1, session=seq + i, time=1764000000 + i,
                                uptime_ms=1000 * i, boot=1) for i in range(messages.MAX_RECORDS)]
        seq += len(recs)
        total += len(serial.encode(t.send(messages.Ratings(recs))))
        count += len(recs)
    return len(one), total / count


def run(seconds=1.0, clock=None):
    if clock is None:
        import time

        clock = time.perf_counter
    key, tid = _setup()
    batch = 2000
    # encode
    n = 0
    t0 = clock()
    wires = []
    while True:
        wires = encode_loop(batch, key, tid)
        n += batch
        if clock() - t0 >= seconds:
            break
    enc = n / (clock() - t0)
    # decode (same wires, fresh receiver each pass)
    n = 0
    t0 = clock()
    while True:
        n += decode_loop(wires, key, tid)
        if clock() - t0 >= seconds:
            break
    dec = n / (clock() - t0)
    one, per = sizes()
    return {
        "encode_per_s": round(enc),
        "decode_per_s": round(dec),
        "rating_frame_bytes": one,
        "drain_bytes_per_rating": round(per, 2),
    }
