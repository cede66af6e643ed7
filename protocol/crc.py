"""CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout).

Check value: crc16(b"123456789") == 0x29B1.  ``binascii.crc32`` is not in
every MicroPython build, so the serial framing uses this table-driven CRC,
which needs only 512 bytes of table.  On CPython ``binascii.crc_hqx`` computes
the same function in C and is used when present.
"""

try:
    from binascii import crc_hqx as _crc_hqx
except ImportError:
    _crc_hqx = None


def _make_table():
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
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
