"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).

``encode`` removes every 0x00 from a block so that 0x00 can delimit frames on
a serial line; the cost is one byte per started 254 bytes.  ``decode`` is the
inverse and raises FrameError on input no encoder can produce.  Both work a
block at a time (``bytes.find``), not a byte at a time, so they are fast on
both runtimes.
"""

from haochaping.protocol.errors import FrameError


def encode(data):
    out = bytearray()
    n = len(data)
    start = 0
    while True:
        z = data.find(b"\x00", start) if start < n else -1
        end = n if z < 0 else z
        # Split runs longer than 254 non-zero bytes into 0xFF blocks.
        while end - start >= 254:
            out.append(0xFF)
            out.extend(data[start : start + 254])
            start += 254
        out.append(end - start + 1)
        out.extend(data[start:end])
        if z < 0:
            break
        start = z + 1
    return bytes(out)


def decode(data):
    # Every code byte but the first stands where the decoded data has a zero,
    # except after a 0xFF block, which implies none: so the output is the
    # input with those code bytes zeroed and the rest dropped.  The loop runs
    # once per block, not per byte.
    n = len(data)
    if n == 0:
        return b""
    if b"\x00" in data:
        raise FrameError("COBS: zero byte inside a frame")
    out = bytearray(data)
    drop = [0]
    i = 0
    while True:
        nxt = i + data[i]
        if nxt > n:
            raise FrameError("COBS: block runs past the end of the frame")
        if nxt == n:
            break
        if data[i] == 0xFF:
            drop.append(nxt)
        else:
            out[nxt] = 0
        i = nxt
    if len(drop) == 1:
        return bytes(out[1:])
    drop.append(n)
    return b"".join(bytes(out[drop[k] + 1 : drop[k + 1]]) for k in range(len(drop) - 1))
