"""Sans-IO wire protocol shared by the terminal firmware and the hall daemon.

Runs unchanged on MicroPython and CPython.  It takes bytes and returns bytes
and messages; it never opens a port, a socket or a file and never reads a
clock.  Modules are imported lazily by their users to save RAM on boards:

- ``errors``   the ProtocolError family
- ``crc``      CRC-16/CCITT-FALSE
- ``cobs``     consistent overhead byte stuffing
- ``auth``     HMAC-SHA256 on hashlib (truncated tags)
- ``messages`` every message type and its payload layout
- ``frame``    the authenticated frame: header, payload, tag
- ``serial``   COBS+CRC wire framing and the streaming decoder
- ``mqtt``     topic layout for one-frame-per-message transport
- ``link``     one end of a terminal's link: counters, replay guard, roles

See SPEC.md beside this file for the byte-level definition.
"""

VERSION = 2  # v2: journal identity in HELLO, RATING, RATINGS and ACK
