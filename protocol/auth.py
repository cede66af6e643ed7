"""Frame authentication: HMAC-SHA256 (RFC 2104) truncated to TAG_LEN bytes.

Built on ``hashlib.sha256``, which every MicroPython port ships; the ``hmac``
module is a micropython-lib package that boards do not have.  Where the hash
objects can be copied (CPython), the two pad states are hashed once per key and
copied per frame: the same bytes, about 0.5 us a frame, and unlike the one-shot
``hmac.digest`` it keeps the GIL for small inputs (a re-acquire beside the
daemon's MQTT thread cost 27 us a frame).
"""

import hashlib
import sys

TAG_LEN = 8  # bytes of HMAC-SHA256 kept in a frame
KEY_LEN = 32  # every terminal key is 32 random bytes

_BLOCK = 64  # SHA-256 block size

# MicroPython's hash objects have no copy(); CPython's do.
_COPY = sys.implementation.name != "micropython" and hasattr(hashlib.sha256(), "copy")


class Key:
    """A terminal key with its HMAC pads computed once."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
            raise ValueError("a terminal key is exactly %d bytes" % KEY_LEN)
        self._key = bytes(key)
        self._ipad = bytes((b ^ 0x36) for b in self._key) + b"\x36" * (_BLOCK - KEY_LEN)
        self._opad = bytes((b ^ 0x5C) for b in self._key) + b"\x5c" * (_BLOCK - KEY_LEN)
        if _COPY:
            self._inner = hashlib.sha256(self._ipad)
            self._outer = hashlib.sha256(self._opad)

    def mac(self, data):
        """The full 32-byte HMAC-SHA256 of ``data``."""
        if _COPY:
            h = self._inner.copy()
            h.update(data)
            o = self._outer.copy()
            o.update(h.digest())
            return o.digest()
        return self.mac_portable(data)

    def mac_portable(self, data):
        h = hashlib.sha256(self._ipad)
        h.update(data)
        inner = h.digest()
        h = hashlib.sha256(self._opad)
        h.update(inner)
        return h.digest()

    def tag(self, data):
        return self.mac(data)[:TAG_LEN]

    def verify(self, data, tag):
        return equal(self.tag(data), tag)

    def __repr__(self):
        # Never print key material.
        return "<Key>"


def equal(a, b):
    """Compare in time independent of where the inputs differ."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0
