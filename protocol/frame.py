"""The authenticated frame, the unit both transports carry.

    offset  size  field
    0       1     version (2)
    1       1     message type (bit 7: 1 = daemon -> terminal)
    2       4     terminal id, big-endian
    6       4     counter, big-endian: epoch << 16 | n (SPEC.md "Counters")
    10      n     payload (messages.py), 0 <= n <= MAX_PAYLOAD
    10+n    8     tag: HMAC-SHA256(terminal key, bytes 0 .. 10+n)[:8]

``seal`` builds a frame; ``peek`` reads the header without the key (to find
the key); ``unseal`` checks version, tag and type before it parses anything.
Replay protection needs state and lives in link.py.
"""

import struct

from haochaping.protocol import messages
from haochaping.protocol.auth import TAG_LEN
from haochaping.protocol.errors import AuthError, FrameError, FrameTooLong, VersionError

VERSION = 2  # v2: journal identity in HELLO, RATING, RATINGS and ACK
HEADER_LEN = 10
MAX_FRAME = 256  # header + payload + tag
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN - TAG_LEN  # 238
MIN_FRAME = HEADER_LEN + TAG_LEN

_HDR = ">BBII"


class Frame:
    """A checked frame: who sent it, its counter and the decoded message."""

    def __init__(self, msg_type, terminal_id, counter, msg):
        self.type = msg_type
        self.terminal_id = terminal_id
        self.counter = counter
        self.msg = msg

    def __repr__(self):
        return "Frame(terminal=%08x, counter=%d, %r)" % (self.terminal_id, self.counter, self.msg)


def seal(key, msg, terminal_id, counter):
    """Encode ``msg`` as an authenticated frame.  ``key`` is an auth.Key."""
    payload = msg.payload()
    if len(payload) > MAX_PAYLOAD:
        raise FrameTooLong("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD))
    if not 0 <= terminal_id <= 0xFFFFFFFF or not 0 <= counter <= 0xFFFFFFFF:
        raise FrameError("terminal id and counter are 32-bit")
    body = struct.pack(_HDR, VERSION, msg.TYPE, terminal_id, counter) + payload
    return body + key.tag(body)


def peek(frame):
    """(version, type, terminal_id, counter) of an unverified frame."""
    if len(frame) < MIN_FRAME:
        raise FrameError("frame of %d bytes is shorter than %d" % (len(frame), MIN_FRAME))
    if len(frame) > MAX_FRAME:
        raise FrameTooLong("frame of %d bytes exceeds %d" % (len(frame), MAX_FRAME))
    return struct.unpack_from(_HDR, frame, 0)


def unseal(key, frame):
    """Check and decode a frame; return a Frame.  Raises ProtocolError subclasses."""
    version, msg_type, terminal_id, counter = peek(frame)
    if version != VERSION:
        raise VersionError("frame version %d, this implementation speaks %d" % (version, VERSION))
    n = len(frame) - TAG_LEN
    if key is None or not key.verify(frame[:n], frame[n:]):
        raise AuthError("authentication tag does not match")
    msg = messages.decode(msg_type, frame[HEADER_LEN:n])
    return Frame(msg_type, terminal_id, counter, msg)
