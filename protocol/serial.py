"""Serial framing: COBS(frame + CRC-16 big-endian) followed by one 0x00.

``encode(frame)`` gives the bytes for the line.  ``Decoder`` is the streaming
receiver (h11 style): ``receive_data(bytes)`` any number of times, then
``next_event()`` until it returns None (needs more data).  It returns one
frame's bytes (not yet authenticated: see frame.unseal) or raises a FrameError
subclass for one damaged or over-long chunk, after which it is ready for the
next call: garbage costs at most the chunk it is in, and a good frame after
the next 0x00 always decodes.  Memory is bounded as in h11: the incomplete
chunk never grows past MAX_WIRE bytes (longer runs are dropped up to the next
delimiter and reported once as FrameTooLong); complete chunks wait for
next_event and are never dropped, so they take no more room than the reads the
caller fed in since it last drained the decoder.
"""

from haochaping.protocol import cobs
from haochaping.protocol.crc import crc16
from haochaping.protocol.errors import ChecksumError, FrameError, FrameTooLong
from haochaping.protocol.frame import MAX_FRAME, MIN_FRAME

CRC_LEN = 2
DELIMITER = 0
# COBS adds one byte per started 254; +1 for the block code at the end.
MAX_WIRE = MAX_FRAME + CRC_LEN + (MAX_FRAME + CRC_LEN) // 254 + 1  # without the delimiter


def encode(frame):
    c = crc16(frame)
    return cobs.encode(bytes(frame) + bytes(((c >> 8) & 0xFF, c & 0xFF))) + b"\x00"


def unwrap(chunk):
    """Decode one COBS chunk (without its delimiter) into a frame's bytes."""
    if len(chunk) > MAX_WIRE:
        raise FrameTooLong("serial chunk of %d bytes exceeds %d" % (len(chunk), MAX_WIRE))
    data = cobs.decode(chunk)
    if len(data) < MIN_FRAME + CRC_LEN:
        raise FrameError("serial frame of %d bytes is too short" % len(data))
    n = len(data) - CRC_LEN
    if crc16(data[:n]) != (data[n] << 8 | data[n + 1]):
        raise ChecksumError("CRC mismatch")
    return data[:n]


class Decoder:
    def __init__(self):
        self._partial = bytearray()
        self._discarding = False  # inside an over-long run, until the next 0x00
        self._ready = []  # complete chunks, or FrameTooLong markers
        self.dropped_bytes = 0  # bytes thrown away inside over-long runs

    def receive_data(self, data):
        start = 0
        n = len(data)
        while start < n:
            z = data.find(b"\x00", start)
            end = n if z < 0 else z
            if self._discarding:
                self.dropped_bytes += end - start
            else:
                self._partial.extend(data[start:end])
                if len(self._partial) > MAX_WIRE:
                    self.dropped_bytes += len(self._partial)
                    self._partial = bytearray()
                    self._discarding = True
                    self._ready.append(FrameTooLong("no delimiter within %d bytes" % MAX_WIRE))
            if z < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._partial:
                self._ready.append(bytes(self._partial))
                self._partial = bytearray()
            start = z + 1

    def next_event(self):
        """One frame's bytes, or None when more data is needed."""
        if not self._ready:
            return None
        item = self._ready.pop(0)
        if isinstance(item, Exception):
            raise item
        return unwrap(item)

    @property
    def buffered(self):
        """Bytes of the incomplete chunk (never more than MAX_WIRE)."""
        return len(self._partial)

    @property
    def pending(self):
        """Complete chunks waiting for next_event."""
        return len(self._ready)
