"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout).

Check value: crc16(b"123456789") == 0x29B1.  ``binascii.crc32`` is not in
every MicroPython build, so the serial framing uses this table-driven CRC,
which needs only a 512-byte table, built on first use.  On CPython ``binascii.crc_hqx`` computes
the same function in C and is used when present.
"""

from array import array

try:
    from binascii import crc_hqx as _crc_hqx
except ImportError:
    _crc_hqx = None


def _make_table():
    # array('H'): 512 bytes, where a list of 256 ints costs twice that on a board.
    t = array("H", bytes(512))
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t[i] = c & 0xFFFF
    return t


_TABLE = None


def crc16(data, crc=0xFFFF):
    if _crc_hqx is not None:
        return _crc_hqx(data, crc)
    return crc16_portable(data, crc)


def crc16_portable(data, crc=0xFFFF):
    """The table-driven path even on CPython (tests compare both)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _make_table()
    t = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[((crc >> 8) ^ b) & 0xFF]
    return crc
