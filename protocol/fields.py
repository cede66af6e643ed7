"""The JSON form of messages, as the test vectors write them.

Host and test-lane code only: it is left out of the board bundle so that
terminals do not carry it in RAM.  Runs on MicroPython (the vector lane) and
CPython.  ``to_dict(msg)`` gives plain JSON values (bytes as lower-case hex,
tuples as lists, RATINGS records as a list of dicts); ``from_dict(name, d)``
builds the message named ``name`` (``BY_NAME``) back from it.
"""

from haochaping.protocol import messages
from haochaping.protocol.errors import MessageError

BY_NAME = {}  # message name -> class; here, not in messages, so boards do not hold it
for _cls in messages.TYPES.values():
    BY_NAME[_cls.NAME] = _cls


def _hex(b):
    return "".join("%02x" % x for x in b)


def _unhex(s):
    if len(s) % 2:
        raise MessageError("odd-length hex")
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def to_dict(msg):
    if isinstance(msg, messages.Ratings):
        return {"records": [to_dict(r) for r in msg.records]}
    if isinstance(msg, messages.Config):
        return {"settings": [[k, v] for (k, v) in msg.settings]}
    d = {}
    for f in msg.FIELDS:
        v = getattr(msg, f)
        if isinstance(v, (bytes, bytearray)):
            v = _hex(v)
        elif isinstance(v, tuple):
            v = list(v)
        d[f] = v
    return d


def from_dict(name, d):
    cls = BY_NAME[name]
    if cls is messages.Ratings:
        return cls([from_dict("RATING", r) for r in d["records"]])
    if cls is messages.Config:
        return cls([(p[0], p[1]) for p in d["settings"]])
    kw = {}
    for k in d:
        kw[str(k)] = d[k]
    if cls is messages.Arm:
        kw["digest"] = _unhex(kw["digest"])
    return cls(**kw)
