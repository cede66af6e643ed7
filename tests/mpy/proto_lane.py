# MicroPython lane for protocol/: run on the WebAssembly port by
# tests/test_mpy_protocol.py.  Prints result lines "JSON {...}".
import json
import sys

from haochaping.protocol import auth, errors, fields, frame, serial, vectors


def unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


def hexs(b):
    return "".join("%02x" % x for x in b)


out = {"implementation": sys.implementation.name}

# 1. the published vectors
doc = json.load(open("/vectors.json"))
passed, failures = vectors.run(doc)
out["vectors_passed"] = passed
out["vectors_failed"] = [n + ": " + r for (n, r) in failures]

# 2. round trips generated on CPython: byte-identical encodings
cases = json.load(open("/cases.json"))
key = auth.Key(unhex(cases["key"]))
bad = []
for c in cases["cases"]:
    msg = fields.from_dict(c["type"], c["fields"])
    f = frame.seal(key, msg, c["terminal_id"], c["counter"])
    if hexs(f) != c["frame"]:
        bad.append(c["type"] + " seal")
        continue
    if hexs(serial.encode(f)) != c["wire"]:
        bad.append(c["type"] + " wire")
        continue
    got = frame.unseal(key, f)
    if got.msg != msg or fields.to_dict(got.msg) != c["fields"]:
        bad.append(c["type"] + " unseal")
out["round_trips"] = len(cases["cases"])
out["round_trip_failures"] = bad

# 3. seeded garbage: only ProtocolError escapes; a good frame after it decodes
seed = cases["fuzz_seed"]


def rnd():
    global seed
    seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    return seed


good = unhex(cases["good_wire"])
others = 0
missed = 0
n = cases["fuzz_count"]
for _i in range(n):
    k = rnd() % 4
    if k == 0:
        junk = bytes(rnd() & 0xFF for _ in range(rnd() % 80))
    elif k == 1:
        junk = bytes(rnd() & 0xFF for _ in range(200 + rnd() % 400))
    else:
        w = bytearray(good[:-1])
        for _ in range(1 + rnd() % 3):
            w[rnd() % len(w)] ^= 1 << (rnd() % 8)
        junk = bytes(w)
    dec = serial.Decoder()
    stream = junk + b"\x00" + good
    step = (1, 7, 64, len(stream))[rnd() % 4]
    found = False
    for off in range(0, len(stream), step):
        dec.receive_data(stream[off : off + step])
        while True:
            try:
                ev = dec.next_event()
            except errors.ProtocolError:
                continue
            except Exception:
                others += 1
                continue
            if ev is None:
                break
            try:
                frame.unseal(key, ev)
                found = True
            except errors.ProtocolError:
                pass
            except Exception:
                others += 1
    if not found:
        missed += 1
out["fuzz_inputs"] = n
out["fuzz_other_exceptions"] = others
out["fuzz_missed_good_frames"] = missed
print("JSON " + json.dumps(out))
