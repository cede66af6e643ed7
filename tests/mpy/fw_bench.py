"""Firmware timing figures for docs/benchmarks.md (not a test: tests never
assert timings).  Runs on CPython and MicroPython:

    .venv/bin/python tests/mpy/fw_bench.py 1000
    node tests/mpy/run.mjs --file tests/mpy/fw_peer.py:/lib/fw_peer.py \\
        --file tests/mpy/fw_scenarios.py:/lib/fw_scenarios.py \\
        --file tests/mpy/fw_bench.py:/lib/fw_bench.py tests/mpy/fw_lane.py bench 1000

Press path: the ms from the debounced press to the THANKS pattern (journal
write + flush + sync on the runtime's real file included).  Drain: records
per second through the terminal's session and the daemon peer (frames sealed,
opened, ACKed) with the link as fast as the CPU allows.
"""

import time

try:
    ticks = time.ticks_ms
    diff = time.ticks_diff
except AttributeError:  # CPython

    def ticks():
        return int(time.monotonic() * 1000)

    def diff(a, b):
        return a - b


def run(n, path="/tmp/fw_bench_journal.bin"):
    from fw_scenarios import Rig
    from haochaping.firmware import ui

    r = Rig(open(path, "w+b"), capacity=n + 16, compact=True, policy=ui.RECORD)
    r.track = False
    r.t.ev.settings.thanks_ms = 10
    r.t.ev.settings.min_interval_ms = 0
    r.run(100)
    r.board.transport.connected = False
    r.step(10)
    t = r.t
    total = 0
    for _ in range(n):
        r.board.mask = 1
        r.now += 10
        r.board.now = r.now
        t0 = ticks()
        t.step(r.now)
        total += diff(ticks(), t0)
        r.board.mask = 0
        r.run(80)  # past the debounce lock-out of the release
        r.idle()
    if t.journal.used != n:
        raise Exception("%d of %d presses became ratings" % (t.journal.used, n))
    r.board.transport.connected = True
    t0 = ticks()
    steps = 0
    while t.journal.used and steps < 100000:
        r.step(10)
        steps += 1
    dt = diff(ticks(), t0)
    if r.peer.count != n:
        raise Exception("peer stored %d of %d" % (r.peer.count, n))
    return {
        "n": n,
        "press_path_ms_mean": total / n,
        "drain_ms": dt,
        "drain_records_per_s": (n * 1000 // dt) if dt else -1,
        "frames": t.session.frames_sent,
    }


if __name__ == "__main__":
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
