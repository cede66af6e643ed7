# MicroPython lane (modules imported lazily so the memory figures start
# from a heap without firmware code): run the firmware scenarios (and, by argument, the power-cut
# sweep or the memory measurement) on the real interpreter.
#   fw_lane.py scenarios | powercut N SEED | memory N [--mpy] | bench N
import json
import sys

if len(sys.argv) > 2 and sys.argv[-1] == "--mpy":
    # Compiled modules (as in the bundle) under /mpylib win over the sources.
    sys.path.insert(0, "/mpylib")
    sys.argv.pop()
what = sys.argv[1] if len(sys.argv) > 1 else "scenarios"
if what == "scenarios":
    import fw_scenarios as s

    for fn in s.SCENARIOS:
        res = fn()
        print("JSON " + json.dumps({"scenario": fn.__name__, "ok": True, "result": res}))
elif what == "powercut":
    import fw_powercut as p

    res = p.sweep(int(sys.argv[2]), int(sys.argv[3]))
    print("JSON " + json.dumps(res))
elif what == "bench":
    import fw_bench

    print("JSON " + json.dumps(fw_bench.run(int(sys.argv[2]), "/bench.bin")))
elif what == "memory":
    import fw_memory as mm

    res = await mm.measure(int(sys.argv[2]))  # noqa: F704 (top-level await: runPythonAsync)
    print("JSON " + json.dumps(res))
