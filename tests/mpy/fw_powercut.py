"""Power-cut sweep over a scripted terminal session (CPython and MicroPython).

The script runs once uncut to learn every write the journal makes; then, for
each cut point, it runs again on fresh flash whose writer stops at that byte
(MemFile: what was written before the cut stays, the write in progress is
torn).  After each cut the terminal reboots on the same flash and the
invariants are checked:

- every rating whose THANKS was shown is in the daemon peer or in the
  journal, byte for byte;
- the recovered journal has no torn or damaged record in its unacknowledged
  range, every record there is one that was confirmed, and its head is above every seq ever shown or sent (no reuse);
- after the reboot the terminal drains, takes new ratings, and the peer ends
  with every THANKS'd rating exactly once and nothing else (a reused seq
  with new content would raise Conflict in the peer).

Cut points: ``every_write_points`` gives 4 per write (before it, after its
first byte, in its middle, before its last byte); ``random_points`` gives N
seeded points over all written bytes.
"""

from fw_peer import Peer
from fw_scenarios import KEY, TID, Failed, MemFile, PowerCut, Rig, check
from haochaping.firmware import ui

CAPACITY = 8


def script(r):
    """A session touching every write path: format, boot count, ratings
    with and without a case, the reason step, ACKs, a ring wrap, an outage."""
    r.t.ev.settings.thanks_ms = 200
    r.t.ev.settings.min_interval_ms = 0
    r.run(60)
    for i in range(4):
        r.arm(100 + i)
        r.press(i % 5, 20)
        if i % 5 >= 3:
            r.press(1, 20)  # reason
        r.idle()
        r.run(30)
    r.board.transport.connected = False
    r.step(10)
    for i in range(6):
        r.press((i * 2) % 5, 20)
        if (i * 2) % 5 >= 3:
            r.run(r.t.ev.settings.reason_ms + 50, 500)  # reason time-out
        r.idle()
    r.board.transport.connected = True
    r.run(300)
    for i in range(5):
        r.press(i % 3, 20)
        r.idle()
    r.run(300)


def _rig(f, peer):
    return Rig(f, CAPACITY, peer, policy=ui.RECORD, start=False)


def uncut():
    """Run the script uncut; return the list of (start, length) of writes."""
    marks = []

    class Recorder(MemFile):
        def write(self, b):
            marks.append((self.written, len(b)))
            return MemFile.write(self, b)

    f = Recorder()
    peer = Peer(TID, KEY)
    r = _rig(f, peer)
    r.boot()
    script(r)
    return marks, f.written, len(r.thanked)


def one_cut(budget):
    """Run to the cut at ``budget`` bytes, reboot, check; return True if the
    cut happened (False: the script finished first)."""
    flash = MemFile(budget=budget)
    peer = Peer(TID, KEY)
    r = _rig(flash, peer)
    cut = False
    try:
        r.boot()
        script(r)
    except PowerCut:
        cut = True
    thanked = r.thanked
    top = 0
    for rec in thanked:
        if rec[0] > top:
            top = rec[0]
    for s in peer.stored:
        if s > top:
            top = s
    # Power back on: same bytes, a healthy writer.
    r.f = MemFile(flash.data)
    r.now += 5000
    r.boot()
    j = r.t.journal
    check(j.torn == 0, "cut %d: %d torn records in the unacked range" % (budget, j.torn))
    check(j.head > top, "cut %d: head %d would reuse seq <= %d" % (budget, j.head, top))
    by_seq = {}
    for rec in thanked:
        by_seq[rec[0]] = rec
    for seq in range(j.tail, j.head):
        # Only whole records exist, and each is one whose THANKS was shown.
        rec = j.record(seq)
        check(rec is not None, "cut %d: record %d damaged" % (budget, seq))
        check(by_seq.get(seq) == rec, "cut %d: record %r was never confirmed" % (budget, rec))
    for rec in thanked:
        if rec[0] <= j.acked:
            check(
                peer.stored.get(rec[0]) == rec, "cut %d: acked %r not at the daemon" % (budget, rec)
            )
        else:
            check(j.record(rec[0]) == rec, "cut %d: THANKS'd %r lost" % (budget, rec))
    # Carry on: drain and rate again.
    r.thanked = []
    r.t.ev.settings.thanks_ms = 200
    r.t.ev.settings.min_interval_ms = 0
    r.run(300)
    r.press(0, 20)
    r.idle()
    r.run(300)
    for rec in thanked + r.thanked:
        check(peer.stored.get(rec[0]) == rec, "cut %d: %r missing at the daemon" % (budget, rec))
    check(r.t.journal.used == 0, "cut %d: not drained" % budget)
    for rec in r.thanked:
        by_seq[rec[0]] = rec
    for seq in peer.stored:
        check(
            by_seq.get(seq) == peer.stored[seq],
            "cut %d: daemon got unconfirmed %r" % (budget, peer.stored[seq]),
        )
    return cut


def every_write_points(marks):
    pts = []
    for start, n in marks:
        for p in (start, start + 1, start + n // 2, start + n - 1):
            if p not in pts and p >= 0:
                pts.append(p)
    return pts


def random_points(n, seed, total):
    x = seed & 0x7FFFFFFF
    pts = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        pts.append(x % (total + 1))
    return pts


def sweep(n_random, seed):
    """Every write point, plus ``n_random`` seeded points (0: none)."""
    marks, total, thanked = uncut()
    pts = every_write_points(marks)
    if n_random:
        pts = pts + random_points(n_random, seed, total)
    cuts = 0
    for p in pts:
        if one_cut(p):
            cuts += 1
    if cuts == 0:
        raise Failed("no cut happened")
    return {
        "writes": len(marks),
        "bytes": total,
        "ratings": thanked,
        "points": len(pts),
        "cuts": cuts,
        "seed": seed,
    }
