"""Run the protocol test vectors (vectors.json) on whatever runtime imports it.

The same function runs under CPython (pytest, ``hcp selfcheck``) and under
MicroPython (tests/mpy runner), so both prove the same bytes.  It returns
(passed, failures) where failures is a list of (name, reason) strings; it
never raises for a failing vector.
"""

from haochaping.protocol import auth, errors, fields, frame, link, serial


def _unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def _hex(b):
    return "".join("%02x" % x for x in b)


def check_valid(key, v):
    msg = fields.from_dict(v["type"], v["fields"])
    got = frame.seal(key, msg, v["terminal_id"], v["counter"])
    if _hex(got) != v["frame"]:
        return "frame differs: got %s" % _hex(got)
    wire = serial.encode(got)
    if _hex(wire) != v["wire"]:
        return "wire differs: got %s" % _hex(wire)
    # Decode the wire form, whole and a byte at a time.
    for step in (len(wire), 1):
        dec = serial.Decoder()
        out = []
        for i in range(0, len(wire), step):
            dec.receive_data(wire[i : i + step])
            while True:
                ev = dec.next_event()
                if ev is None:
                    break
                out.append(ev)
        if len(out) != 1 or out[0] != got:
            return "decoder (step %d) returned %r" % (step, out)
    f = frame.unseal(key, got)
    if f.msg != msg or f.terminal_id != v["terminal_id"] or f.counter != v["counter"]:
        return "unseal returned %r" % (f,)
    if fields.to_dict(f.msg) != v["fields"]:
        return "to_dict differs: %r" % (fields.to_dict(f.msg),)
    return None


def check_invalid(key, v):
    want = v["error"]
    try:
        if "wire" in v:
            dec = serial.Decoder()
            dec.receive_data(_unhex(v["wire"]))
            data = dec.next_event()
            if data is None:
                return "decoder wants more data"
        else:
            data = _unhex(v["frame"])
        # The receiving end of the link: the daemon unless the vector says so.
        end = link.Link(
            v.get("receiver", link.DAEMON), v["terminal_id"], key, 0, v.get("rx_last", 0)
        )
        end.receive(data)
    except errors.ProtocolError as e:
        name = type(e).__name__
        if name != want:
            return "raised %s, want %s" % (name, want)
        return None
    return "no error, want %s" % want


def run(doc):
    key = auth.Key(_unhex(doc["key"]))
    passed = 0
    failures = []
    for v in doc["valid"]:
        r = check_valid(key, v)
        if r is None:
            passed += 1
        else:
            failures.append((v["name"], r))
    for v in doc["invalid"]:
        r = check_invalid(key, v)
        if r is None:
            passed += 1
        else:
            failures.append((v["name"], r))
    return passed, failures
