"""Memory of the running firmware on MicroPython (numbers for boards.md).

Live heap = gc.mem_alloc() right after a collection: what the firmware holds
(sampled after the 100th, 500th and 1,000th rating of the session and at
the 4th, 12th and 20th of the drain's ~25 turns; the firmware's data is flat
between samples, and few samples keep the port's per-await residue small).
Figures are absolute (interpreter state, the loaded modules' bytecode, the
test harness and the O(1) "compact" daemon peer included) and as a delta
from the heap before any firmware or protocol module was imported.
"firmware_code" is every module the terminal holds on a board with the
simulator's adapter: the firmware's, and the protocol's it uses (messages,
errors, crc, and the link's: link, frame, auth).
"board_modules": what the modules a board adds (board_common, links,
config, mqtt) cost to import, measured last.

Press path: the heap is locked (micropython.heap_lock) around one press
step (buttons -> evaluator -> journal write + sync -> THANKS) with the link
down; an allocation there raises MemoryError, so "press_path_alloc_free"
True proves the path allocates nothing.
"""

import gc

try:
    import asyncio
except ImportError:
    asyncio = None


_awaits = 0
_leak = 0  # bytes the port's asyncio keeps per await (calibrated below)


async def live():
    # The WebAssembly port defers a collection until control returns to
    # JavaScript (it cannot scan the C stack), so yield after collecting.
    # Each such await leaves ~30 bytes behind in the port's JS bridge (not
    # ours); the figures keep that residue (they are upper bounds) and we
    # sample sparsely so it stays small: ``awaits`` x ``await_leak_bytes``.
    global _awaits
    gc.collect()
    if asyncio is not None:
        await asyncio.sleep(0)
        _awaits += 1
    return gc.mem_alloc()


async def sample():
    """The live heap at this point: the port's residue only ever adds bytes,
    so the smaller of two back-to-back readings of the same state is the
    better one."""
    a = await live()
    b = await live()
    return a if a < b else b


async def calibrate(k=20):
    """Bytes the port keeps per await (reported, not subtracted)."""
    global _leak, _awaits
    a = await live()
    for _ in range(k):
        await live()
    b = await live()
    _leak = (b - a) // (k + 1)
    _awaits = 0
    return _leak


def _drain_turn(r, tr):
    # A plain function: its frame (and the loop's iterators) is gone when it
    # returns, as in a board's main loop.  A coroutine's frame lives on the
    # heap and keeps stale pointers in its value stack, which would count
    # the harness's temporaries as firmware memory.
    r.now += 10
    r.board.now = r.now
    r.t.step(r.now)
    replies = []
    for fr in tr.take_up():
        for d in r.peer.handle(fr, r.now):
            replies.append(d)
    return replies


async def measure(n):
    leak = await calibrate()
    b0 = await live()
    from haochaping.firmware import board_sim, terminal, ui  # noqa: F401

    # Terminal() imports the link (link, frame, auth: framing, counters and
    # the MAC) when it is built; load it here, with the firmware, or the
    # daemon peer below imports it first and it counts as harness code.
    from haochaping.protocol import auth, link  # noqa: F401

    c = await live()
    from fw_scenarios import Rig

    h = await live()
    # The daemon peer lives in this heap too; weigh one (its state only).
    from fw_peer import Peer
    from fw_scenarios import KEY, TID

    p0 = await live()
    spare = Peer(TID, KEY, compact=True)
    peer_state = await live() - p0
    spare = None  # noqa: F841
    h = h + peer_state
    # Deltas below are from the interpreter's own heap plus the test
    # harness's code (fw_scenarios, fw_peer) and one peer's state: what is
    # left is firmware code + firmware data (+ the port's await residue).
    base = b0 + (h - c)
    out = {"n": n, "interpreter": b0, "firmware_code": c - b0, "harness_code": h - c}
    out["await_leak_bytes"] = leak
    out["peer_state"] = peer_state
    r = Rig(open("/journal.bin", "w+b"), capacity=n + 16, compact=True, policy=ui.RECORD)
    r.track = False
    s = r.t.ev.settings
    s.thanks_ms = 50
    s.min_interval_ms = 0
    r.run(100)
    out["after_boot"] = await sample()
    # A session of n ratings, each ARMed and acknowledged at once.
    peak = 0
    for i in range(n):
        r.arm(1000 + i)
        r.press(i % 3, 20)
        r.idle()
        if i in (99, 499, 999):
            a = await sample()
            if a > peak:
                peak = a
    r.run(200)
    if r.peer.count != n:
        raise Exception("session stored %d of %d" % (r.peer.count, n))
    out["session_peak"] = peak
    # Press path with the heap locked (link down: no frames).
    import micropython

    r.board.transport.connected = False
    r.step(10)
    r.arm(5)
    r.step(10)
    free_press = True
    r.board.mask = 1
    now = r.now + 10
    r.board.now = now
    await live()
    micropython.heap_lock()
    try:
        r.t.step(now)
    except MemoryError:
        free_press = False
    micropython.heap_unlock()
    r.board.mask = 0
    if r.t.ev.state not in (ui.S_THANKS, ui.S_ARMED):
        raise Exception("press path left state %s" % r.state())
    out["press_path_alloc_free"] = free_press
    if not free_press:
        r.now = now
        r.idle()
        r.arm(6)
        r.step(10)
        r.board.mask = 1
        now = r.now + 10
        r.board.now = now
        a0 = await live()
        r.t.step(now)
        out["press_path_bytes"] = gc.mem_alloc() - a0  # no collection in between
        r.board.mask = 0
    r.now = now
    r.idle()
    # A drain of n records after an outage.
    for i in range(n):
        r.press(i % 3, 20)
        r.idle()
    if r.t.journal.used != n + 1:
        raise Exception("journal holds %d" % r.t.journal.used)
    out["journal_full_of_n"] = await sample() - base
    tr = r.board.transport
    tr.connected = True
    peak = 0
    steps = 0
    while r.t.journal.used and steps < 10000:
        # One turn of the drain by hand: the terminal sends its window, the
        # daemon takes the frames off the line (as a UART or the TCP stack
        # would: outside the heap on a board) and its ACKs are on their way
        # back while we sample.
        replies = _drain_turn(r, tr)
        steps += 1
        if steps in (4, 12, 20):
            a = await sample()
            if a > peak:
                peak = a
        for d in replies:
            tr.deliver(d)
        replies = None
    if r.t.journal.used:
        raise Exception("drain did not finish")
    out["drain_peak"] = peak
    out["awaits"] = _awaits
    # What a board loads instead of board_sim: each module's import cost,
    # taken after the run so the figures above stay as they were.  The
    # interpreter's table of interned names is past its 620-name step by
    # then (the firmware alone passes it, boards.md), so these are code and
    # names only.  board_esp32 / board_rp2 need `machine` and are left out
    # (their .mpy files are 576 and 517 bytes).
    hw = {}
    a = await sample()
    for name in ("board_common", "links", "config", "mqtt"):
        __import__("haochaping.firmware." + name)
        b = await sample()
        hw[name] = b - a
        a = b
    out["board_modules"] = hw
    out["drain_steps"] = steps
    out["drained_frames"] = r.t.session.frames_sent
    for k in ("after_boot", "session_peak", "drain_peak"):
        out[k] = out[k] - base
    return out
