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
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise FrameError("COBS: zero byte inside a frame")
        end = i + code
        if end > n:
            raise FrameError("COBS: block runs past the end of the frame")
        block = data[i + 1 : end]
        if b"\x00" in block:
            raise FrameError("COBS: zero byte inside a frame")
        out.extend(block)
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
