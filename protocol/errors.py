"""The one exception family of the protocol.

Every error the protocol raises is a ProtocolError subclass; nothing else may
escape a decoder fed arbitrary bytes.  Each class carries the one-byte code
that an ERROR message uses to name it on the wire (SPEC.md, "Error codes").
Never use ``assert`` in this package: MicroPython drops it under -O.
"""


class ProtocolError(Exception):
    code = 1  # E_PROTOCOL


class FrameError(ProtocolError):
    """Framing is broken: bad COBS, bad length, missing bytes."""

    code = 2


class FrameTooLong(FrameError):
    """A frame exceeds MAX_FRAME (or its wire form MAX_WIRE)."""

    code = 3


class ChecksumError(FrameError):
    """The serial CRC does not match: the bytes were damaged on the line."""

    code = 4


class MessageError(ProtocolError):
    """The frame is authentic but its content is not a valid message."""

    code = 5


class VersionError(MessageError):
    """The frame's version byte is not one this implementation speaks."""

    code = 6


class UnknownType(MessageError):
    """The message type is not defined in this protocol version."""

    code = 7


class DirectionError(MessageError):
    """A message arrived in the wrong direction (e.g. a down-type frame upstream)."""

    code = 8


class AuthError(ProtocolError):
    """The authentication tag does not match, or the key is unknown."""

    code = 9


class ReplayError(ProtocolError):
    """The frame's counter is not above the last one accepted on this link."""

    code = 10


class CounterExhausted(ProtocolError):
    """The sender used every counter of its epoch; it must start a new epoch."""

    code = 11


# Error code -> class, for ERROR messages and vectors.
BY_CODE = {}
for _cls in (
    ProtocolError,
    FrameError,
    FrameTooLong,
    ChecksumError,
    MessageError,
    VersionError,
    UnknownType,
    DirectionError,
    AuthError,
    ReplayError,
    CounterExhausted,
):
    BY_CODE[_cls.code] = _cls
