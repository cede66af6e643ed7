"""Firmware scenarios that run unchanged on CPython (tests/test_firmware*.py
import them) and on real MicroPython (tests/mpy/fw_lane.py runs them).

Each scenario drives a real Terminal on the simulator board against the
daemon-side Peer and raises Failed on any broken rule.  Time is simulated
(board.now), everything is deterministic; random cut points come from a
seeded LCG so both runtimes use the same points.
"""

from fw_peer import Peer
from haochaping.firmware import ui
from haochaping.firmware.board_sim import SimBoard
from haochaping.firmware.journal import JournalFull
from haochaping.firmware.terminal import Terminal
from haochaping.protocol import messages as m
from haochaping.protocol.auth import Key

TID = 0x00C0FFEE
KEY = Key(bytes(range(32)))


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class PowerCut(Exception):
    """The simulated supply died during a write."""


class MemFile:
    """A file over a bytearray ("flash") that can tear: after ``budget``
    more bytes have been written, the write in progress stops part-way and
    PowerCut is raised.  Everything written before the cut stays (no
    rollback), the worst case for a journal."""

    def __init__(self, data=None, budget=-1):
        self.data = data if data is not None else bytearray()
        self.pos = 0
        self.budget = budget
        self.written = 0
        self.writes = 0
        self.syncs = 0
        self.dead = False

    def seek(self, off, whence=0):
        if whence == 2:
            off = len(self.data) + off
        elif whence == 1:
            off = self.pos + off
        self.pos = off
        return off

    def tell(self):
        return self.pos

    def write(self, b):
        if self.dead:
            raise PowerCut("write after the cut")
        n = len(b)
        cut = False
        if self.budget >= 0 and self.written + n > self.budget:
            n = self.budget - self.written
            cut = True
        end = self.pos + n
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[self.pos : end] = b[:n]
        self.pos = end
        self.written += n
        self.writes += 1
        if cut:
            self.dead = True
            raise PowerCut("power cut after %d bytes" % self.written)
        return n

    def readinto(self, mv):
        n = len(mv)
        avail = len(self.data) - self.pos
        if avail < n:
            n = avail if avail > 0 else 0
        mv[0:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def flush(self):
        if self.dead:
            raise PowerCut("flush after the cut")
        self.syncs += 1

    def close(self):
        pass


class Rig:
    """A terminal on the sim board, wired to a daemon peer."""

    def __init__(self, f=None, capacity=64, peer=None, compact=False, policy=ui.REFUSE, start=True):
        self.f = f if f is not None else MemFile()
        self.capacity = capacity
        self.peer = peer if peer is not None else Peer(TID, KEY, compact=compact)
        self.board = SimBoard(self.f)
        self.now = 1000
        self.policy = policy
        self.thanked = []  # records whose THANKS was shown: tuples
        self.track = True
        self.rounds = 8  # request/answer rounds per step
        if start:
            self.boot()

    def boot(self, keep_rx=False):
        """Power on.  ``keep_rx``: the peer keeps its replay guard (as the
        daemon does); otherwise it forgets it, since a test's reboot starts a
        higher epoch anyway."""
        self.board = SimBoard(self.f)
        self.board.now = self.now
        self.t = Terminal(self.board, TID, KEY, self.capacity)
        self.t.ev.settings.no_case_policy = self.policy
        self.t.link_fault_ms = 0
        if not keep_rx:
            self.peer.link.rx_last = 0
        self.board.transport.connected = True

    def step(self, ms=10):
        self.now += ms
        self.board.now = self.now
        before = self.board.shown[ui.P_THANKS]
        writes = self.t.journal.writes
        self.t.step(self.now)
        if self.track and self.board.shown[ui.P_THANKS] != before:
            check(self.t.journal.writes == writes + 1, "THANKS without a journal write")
            self.thanked.append(self.t.journal.record(self.t.last_seq))
        self.exchange()

    def exchange(self):
        tr = self.board.transport
        for _ in range(self.rounds):
            up = tr.take_up()
            if not up:
                return
            for fr in up:
                for d in self.peer.handle(fr, self.now):
                    tr.deliver(d)
            self.t.step(self.now)

    def run(self, ms, step=10):
        end = self.now + ms
        while self.now < end:
            self.step(step)

    def press(self, button, hold=60):
        self.board.mask |= 1 << button
        self.step(10)
        self.run(hold)
        self.board.mask &= ~(1 << button)
        self.step(10)

    def arm(self, session, timeout_s=120):
        self.board.transport.deliver(self.peer.send(m.Arm(session, timeout_s, b"abcd")))
        self.step(10)

    def idle(self):
        """Run until the evaluator is back in IDLE (or ARMED/FAULT)."""
        for _ in range(2000):
            if self.t.ev.state in (ui.S_IDLE, ui.S_ARMED, ui.S_FAULT):
                return
            self.step(50)
        raise Failed("evaluator stuck in %s" % ui.STATE_NAMES[self.t.ev.state])

    def state(self):
        return ui.STATE_NAMES[self.t.ev.state]


# ----------------------------------------------------------------- scenarios


def one_rating_per_arm():
    r = Rig()
    r.run(100)
    check(r.t.session.state == 2, "link not UP after HELLO")
    r.arm(7)
    check(r.state() == "ARMED", "ARM did not arm: %s" % r.state())
    r.press(0)
    check(r.state() == "THANKS", "no THANKS after the press")
    r.press(1)  # during THANKS: ignored, counted
    r.press(2)
    check(r.t.ev.ignored == 2, "THANKS presses not counted: %d" % r.t.ev.ignored)
    r.idle()
    check(r.state() == "IDLE", "not IDLE after THANKS")
    r.press(3)  # no case, policy refuse
    check(r.t.ev.refused == 1, "no-case press not refused")
    r.run(200)
    check(r.peer.count == 1, "peer stored %d ratings, want 1" % r.peer.count)
    rec = r.peer.stored[1]
    check(rec[1] == 5 and rec[4] == 7, "wrong rating %r" % (rec,))
    check(rec[3] & m.F_TIME_SYNCED, "synced flag missing")
    check(rec[5] >= m_utc_s(), "device time not set: %r" % (rec,))
    check(r.t.journal.used == 0, "journal not freed by ACK")
    # The daemon resends the ARM of the case already rated: nothing armed.
    r.arm(7)
    check(r.state() == "IDLE", "a resent ARM re-armed a rated case")
    # A second ARM allows exactly one more rating.
    r.arm(8)
    r.press(1)
    r.press(1)
    r.idle()
    r.run(200)
    check(r.peer.count == 2 and r.peer.stored[2][4] == 8, "second ARM")
    return {"ratings": r.peer.count, "ignored": r.t.ev.ignored}


def m_utc_s():
    return 1764000000


def reason_step():
    r = Rig()
    r.run(100)
    r.arm(11)
    r.press(4)  # 非常不满意 -> REASON
    check(r.state() == "REASON", "level 1 did not ask for a reason")
    r.press(2)  # reason 3
    r.idle()
    r.arm(12)
    r.press(3)  # 不满意 -> REASON, then time-out
    check(r.state() == "REASON", "level 2 did not ask for a reason")
    r.run(r.t.ev.settings.reason_ms + 100, 100)
    r.idle()
    r.arm(13)
    r.press(2)  # 基本满意: no reason step
    check(r.state() == "THANKS", "level 3 asked for a reason")
    r.idle()
    r.run(200)
    s = r.peer.stored
    check(s[1][1:4] == (1, 3, m.F_TIME_SYNCED), "reason press: %r" % (s[1],))
    check(
        s[2][1] == 2 and s[2][2] == 0 and s[2][3] & m.F_REASON_TIMEOUT,
        "reason timeout: %r" % (s[2],),
    )
    check(s[3][1] == 3 and s[3][2] == 0, "level 3: %r" % (s[3],))
    return {"ratings": len(s)}


def no_case_policy():
    r = Rig()
    r.peer.config = [(m.C_NO_CASE_POLICY, 1), (m.C_MIN_INTERVAL_S, 30)]
    r.run(100)
    check(r.t.ev.settings.no_case_policy == ui.RECORD, "CONFIG not applied")
    r.press(1)
    r.idle()
    r.press(0)  # within 30 s: recorded, flagged rapid
    r.idle()
    r.run(31000, 500)
    r.press(2)  # after the interval: not rapid
    r.idle()
    r.run(200)
    s = r.peer.stored
    check(len(s) == 3, "want 3 no-case ratings, got %d" % len(s))
    check(s[1][3] & m.F_NO_CASE and not s[1][3] & m.F_RAPID and s[1][4] == 0, "first: %r" % (s[1],))
    check(s[2][3] & m.F_NO_CASE and s[2][3] & m.F_RAPID, "rapid: %r" % (s[2],))
    check(s[3][3] & m.F_NO_CASE and not s[3][3] & m.F_RAPID, "third: %r" % (s[3],))
    # An ARMed rating, then a no-case press right after it: rapid.
    r.arm(9)
    r.press(0)
    r.idle()
    r.press(1)
    r.idle()
    r.run(200)
    check(s[4][4] == 9 and not s[4][3] & m.F_RAPID, "armed rating flagged: %r" % (s[4],))
    check(s[5][3] & m.F_NO_CASE and s[5][3] & m.F_RAPID, "no-case after armed: %r" % (s[5],))
    # Policy back to refuse: nothing recorded, refusal counted.
    r.t.configure([(m.C_NO_CASE_POLICY, 0)])
    r.press(1)
    r.run(200)
    check(len(r.peer.stored) == 5 and r.t.ev.refused == 1, "refuse policy recorded a rating")
    return {"ratings": len(s)}


def debounce():
    r = Rig()
    r.run(100)
    r.arm(21)
    b = r.board
    # A bouncing contact: 2 ms toggles for 20 ms, then held.
    for i in range(10):
        if i % 2 == 0:
            b.mask |= 1
        else:
            b.mask &= ~1
        r.step(2)
    b.mask |= 1
    r.run(100)
    b.mask &= ~1
    for i in range(6):  # bouncy release
        if i % 2 == 0:
            b.mask |= 1
        else:
            b.mask &= ~1
        r.step(2)
    b.mask &= ~1
    r.run(100)
    check(r.t.ev.ratings == 1, "bounces made %d ratings" % r.t.ev.ratings)
    check(r.t.buttons.bounces > 0, "no bounce seen")
    check(r.t.ev.ignored == 0, "bounce counted as an ignored press")
    r.idle()
    r.arm(22)
    r.press(0)  # a clean second press after release counts
    r.idle()
    r.run(200)
    check(r.peer.count == 2, "want 2 ratings, got %d" % r.peer.count)
    # Technician mode: both outer buttons held 3 s.
    b.mask = 0x11
    r.run(3100, 50)
    b.mask = 0
    r.step(10)
    check(b.shown[ui.P_TECH] == 1 and "00c0ffee" in b.tech_text, "tech mode: %r" % b.tech_text)
    return {"bounces": r.t.buttons.bounces}


def journal_full():
    r = Rig(capacity=5, policy=ui.RECORD)
    r.t.ev.settings.min_interval_ms = 0
    r.run(100)
    r.peer.answer = False  # daemon stops answering: nothing is ACKed
    for i in range(5):
        r.press(i % 3)
        r.idle()
    check(r.t.journal.full, "journal not full after 5 ratings")
    check(r.state() == "FAULT", "full journal not FAULT: %s" % r.state())
    check(r.board.last_pattern == ui.P_FAULT, "no FAULT pattern")
    before = r.t.journal.writes
    r.press(0)
    check(r.t.journal.writes == before, "a full journal took a rating")
    check(r.t.ev.refused == 1, "refusal not counted")
    r.peer.answer = True
    r.run(200)
    st = r.peer.statuses[-1]
    check(st.alarms & m.A_JOURNAL_FULL, "STATUS without A_JOURNAL_FULL")
    r.arm(31)
    r.run(50)
    check((m.E_JOURNAL_FULL, 31) in r.peer.errors, "ARM in FAULT not answered with ERROR")
    try:
        r.t.journal.append(5, 0, 0, 0, 0, 0, 1)
        raise Failed("append on a full journal did not raise")
    except JournalFull:
        pass
    # The daemon comes back: HELLO again, drain, ACK frees, fault clears.
    r.board.transport.connected = False
    r.step(10)
    r.board.transport.connected = True
    r.run(500)
    check(r.peer.count == 5, "drain stored %d" % r.peer.count)
    check(not r.t.journal.full and r.state() == "IDLE", "fault not cleared: %s" % r.state())
    r.press(4)
    check(r.state() == "REASON", "no rating after the fault cleared")
    return {"capacity": 5}


def reboot_recovery():
    f = MemFile()
    r = Rig(f, policy=ui.RECORD)
    r.t.ev.settings.min_interval_ms = 0
    r.run(100)
    r.board.transport.connected = False
    for i in range(3):
        r.press(i)
        r.idle()
    boot1 = r.t.journal.boot
    check(r.t.journal.used == 3, "3 unacked")
    # Power off and on: same flash, new terminal object.
    r.boot()
    j = r.t.journal
    check(j.boot == boot1 + 1, "boot count not bumped")
    check(
        j.head == 4 and j.tail == 1 and j.torn == 0, "recovered head %d tail %d" % (j.head, j.tail)
    )
    r.run(300)
    check(r.peer.count == 3, "after reboot peer has %d" % r.peer.count)
    check(r.peer.last_hello.head == 4 and r.peer.last_hello.boot == boot1 + 1, "HELLO content")
    r.press(0)
    r.idle()
    r.run(200)
    check(r.t.last_seq == 4 and r.peer.count == 4, "seq after reboot %d" % r.t.last_seq)
    r.boot()
    check(r.t.journal.head == 5 and r.t.journal.used == 0, "acked state not persisted")
    return {"boot": r.t.journal.boot}


def resend_after_reconnect(n=60):
    r = Rig(capacity=128, policy=ui.RECORD)
    r.t.ev.settings.min_interval_ms = 0
    r.t.ev.settings.thanks_ms = 100
    r.run(100)
    r.board.transport.connected = False
    for i in range(n):
        r.press(i % 3, 20)
        r.idle()
    check(r.t.journal.used == n, "used %d" % r.t.journal.used)
    # Reconnect; the daemon takes one round of frames, then the line drops.
    tr = r.board.transport
    tr.connected = True
    r.now += 10
    r.t.step(r.now)
    first = tr.take_up()
    check(len(first) == 1, "HELLO alone first, got %d frames" % len(first))
    for fr in first:
        for d in r.peer.handle(fr, r.now):
            tr.deliver(d)
    r.t.step(r.now)
    burst = tr.take_up()
    check(len(burst) == r.t.session.window, "window: %d frames in flight" % len(burst))
    per = []
    for fr in burst:
        per.append(len(r.peer.link.open(fr).msg.records))
    check(per[0] == m.MAX_RECORDS, "RATINGS not full: %r" % per)
    tr.connected = False  # those frames are lost
    r.step(10)
    got = r.peer.count
    tr.connected = True
    r.run(2000)
    check(r.peer.count == n, "after reconnect peer has %d of %d" % (r.peer.count, n))
    check(r.t.journal.used == 0, "journal not drained")
    seqs = sorted(r.peer.stored)
    check(seqs == list(range(1, n + 1)), "seqs not 1..n")
    # ACK time-out: the daemon swallows frames, then answers again.
    r.peer.answer = False
    for i in range(3):
        r.press(i, 20)
        r.idle()
    r.run(1000)
    r.peer.answer = True
    r.run(r.t.session.ack_timeout_ms + 500, 50)
    check(r.peer.count == n + 3 and r.t.session.resends >= 1, "no resend after ACK time-out")
    return {"before_drop": got, "resends": r.t.session.resends, "frames": r.t.session.frames_sent}


def unsynced_time():
    r = Rig(policy=ui.RECORD)
    r.peer.answer = False  # no TIME
    r.run(100)
    r.press(0)
    r.idle()
    rec = r.t.journal.record(1)
    check(rec[3] & m.F_TIME_SYNCED == 0 and rec[5] == 0, "unsynced rating: %r" % (rec,))
    check(rec[6] > 0 and rec[7] == r.t.journal.boot, "uptime/boot missing: %r" % (rec,))
    return {}


def daemon_restart_and_disarm():
    r = Rig()
    r.run(100)
    r.arm(41)
    r.board.transport.deliver(r.peer.send(m.Disarm(41)))
    r.step(10)
    check(r.state() == "IDLE", "DISARM did not disarm: %s" % r.state())
    r.press(0)
    check(r.t.ev.refused == 1 and r.t.journal.writes == 0, "press after DISARM rated")
    # The daemon restarts (new down epoch) and asks for HELLO.
    hellos = r.peer.hellos
    r.peer.restart()
    r.board.transport.deliver(r.peer.send(m.ErrorDown(m.E_HELLO_REQUIRED, 0, "hello?")))
    r.run(100)
    check(r.peer.hellos == hellos + 1, "no HELLO after E_HELLO_REQUIRED")
    r.arm(42)
    r.press(2)
    r.idle()
    r.run(200)
    check(r.peer.count == 1 and r.peer.stored[1][4] == 42, "rating after daemon restart")
    # A replayed old ARM (counter below the last accepted one) changes nothing.
    old = r.peer.send(m.Arm(43, 60, b"abcd"))
    r.board.transport.deliver(r.peer.send(m.Time(0)))
    r.step(10)
    r.board.transport.deliver(old)
    r.step(10)
    check(r.state() == "IDLE" and r.t.session.rx_errors == 1, "replayed ARM accepted")
    return {"hellos": r.peer.hellos}


def link_fault():
    r = Rig(policy=ui.RECORD)
    r.t.link_fault_ms = 5000
    r.run(100)
    r.board.transport.connected = False
    r.run(6000, 100)
    check(r.state() == "FAULT", "link down 6 s not FAULT: %s" % r.state())
    r.press(0)
    check(r.t.journal.writes == 0, "rating taken in link FAULT")
    r.board.transport.connected = True
    r.peer.statuses = []
    r.run(300)
    check(r.state() == "IDLE", "link back, still %s" % r.state())
    sts = r.peer.statuses
    check(sts and sts[0].alarms & m.A_LINK_DOWN, "the outage was not reported in STATUS")
    check(not sts[-1].alarms & m.A_LINK_DOWN, "A_LINK_DOWN not cleared after it was reported")
    r.press(0)
    r.idle()
    r.run(200)
    check(r.peer.count == 1, "no rating after the link came back")
    return {}


def replaced_board():
    """A board with the same terminal id and key but fresh flash (swapped or
    erased): its journal gets a new id, its boot count starts again below the
    daemon's replay guard, the daemon's REPLAY hint moves it to a higher epoch,
    and its ratings start a new sequence space: none is taken for one of the
    old board's, and an old ACK still on the wire frees nothing."""
    r = Rig(policy=ui.RECORD)
    r.peer.replay_hints = True
    r.t.ev.settings.min_interval_ms = 0
    r.run(100)
    for i in range(3):
        r.press(i)
        r.idle()
    r.run(200)
    check(r.peer.count == 3, "first board stored %d" % r.peer.count)
    old_journal = r.t.journal.id
    old_epoch = r.t.link.epoch
    stale_ack = r.peer.send(m.Ack(3, old_journal))
    r.f = MemFile()  # the new board
    r.boot(keep_rx=True)
    check(r.t.journal.id not in (0, old_journal), "new flash, same journal id %d" % r.t.journal.id)
    check(r.t.link.epoch <= old_epoch, "the test needs a boot count that went back")
    r.t.journal.append(5, 0, 0, 0, 0, 0, r.t.journal.boot)  # a press before the link is up
    r.board.transport.deliver(stale_ack)  # the old board's last ACK, still on the wire
    r.t.step(r.now)
    check(r.t.session.foreign_acks == 1, "an ACK of another journal was not ignored")
    check(r.t.journal.used == 1, "an ACK of another journal freed a record")
    r.run(300)
    check(r.t.link.epoch > old_epoch, "no epoch catch-up: epoch %d" % r.t.link.epoch)
    check(r.t.session.state == 2, "new board's link not UP")
    r.press(4)
    r.press(0)
    r.idle()
    r.run(200)
    check(r.peer.count == 5, "stored %d ratings, want 5" % r.peer.count)
    check(r.peer.journal == r.t.journal.id and r.peer.stored[2][1:3] == (1, 1),
          "new journal's seq 2: %r" % (r.peer.stored,))
    check(len(r.peer.journals[old_journal]) == 3, "the old board's ratings changed")
    return {"head": r.t.journal.head, "epoch": r.t.link.epoch}


def legacy_journal():
    """A journal written by firmware before journal identity (meta version 1)
    opens as journal 0 with its records, and its next meta write is version 2
    with the same id, so the daemon's legacy rows (journal 0) stay its own."""
    import struct

    from haochaping.firmware import journal as jm
    from haochaping.protocol.crc import crc16

    cap = 8
    flash = bytearray(jm.file_size(cap))
    meta = bytearray(jm.META_LEN)
    struct.pack_into(">2sBBIHIIH", meta, 0, b"HJ", 1, 0, 5, 3, 2, 0, cap)
    c = crc16(memoryview(meta)[:20])
    meta[20] = c >> 8
    meta[21] = c & 0xFF
    flash[0 : jm.META_LEN] = meta
    for seq in (3, 4):  # two unacknowledged records (acked = 2)
        rec = bytearray(jm.REC_LEN)
        struct.pack_into(">IBBIIIH", rec, 0, seq, 5, 0, 0, 0, 100 * seq, 3)
        c = crc16(memoryview(rec)[:22])
        rec[22] = c >> 8
        rec[23] = c & 0xFF
        off = jm.DATA_AT + ((seq - 1) % cap) * jm.REC_LEN
        flash[off : off + jm.REC_LEN] = rec
    f = MemFile(flash)
    j = jm.Journal(f, cap)
    check(j.id == 0, "legacy journal id %d" % j.id)
    check((j.acked, j.head, j.boot) == (2, 5, 3), "legacy state %r" % ((j.acked, j.head, j.boot),))
    check(j.record(3) is not None and j.record(4) is not None, "legacy records lost")
    j.ack(3)
    check(f.data[jm.META_LEN + 2] == 2 or f.data[2] == 2, "the meta was not rewritten as v2")
    j2 = jm.Journal(f, cap)
    check((j2.id, j2.acked, j2.head) == (0, 3, 5), "reopened: %r" % ((j2.id, j2.acked, j2.head),))
    return {}


def uptime_epoch():
    """Before uptime would wrap, the terminal starts a new boot epoch with
    uptime 0 and says HELLO; a rating after it carries the new boot and a
    device time that continues the old one."""
    r = Rig()
    r.t.epoch_uptime_s = 5
    r.run(200)
    check(r.t.session.clock.synced, "no TIME")
    boot = r.t.journal.boot
    hellos = r.peer.hellos
    r.run(5000, 50)
    check(r.t.journal.boot == boot + 1, "no new epoch: boot %d" % r.t.journal.boot)
    check(r.peer.hellos == hellos + 1, "no HELLO for the new epoch")
    check(r.peer.last_hello.boot == boot + 1 and r.peer.last_hello.uptime_ms < 1000,
          "HELLO %r" % (r.peer.last_hello,))
    t_before = (m.Time.TYPE, r.now)
    r.arm(9)
    r.press(0)
    r.idle()
    r.run(200)
    rec = r.peer.stored[1]
    check(rec[7] == boot + 1 and rec[6] < 2000, "rating (uptime, boot) %r" % (rec,))
    want = (1764000000000 + t_before[1]) // 1000
    check(abs(rec[5] - want) <= 2, "device time %d, want about %d" % (rec[5], want))
    return {}


def self_test():
    """The daemon's self-test over the link (issue 12): HELLO says the
    firmware speaks TEST; each LED and the buzzer are commanded, shown on the
    board and echoed; in echo mode a press on each button is echoed, never
    journaled; an ARM meanwhile is refused with ERROR E_SELF_TEST; END leaves
    the test and a normal rating works.  Then the 60 s time-out, and a TEST
    refused while a case is armed."""
    r = Rig()
    r.run(100)
    h = r.peer.last_hello
    check(h.flags & m.H_SELF_TEST and h.fw >= (0, 2, 0), "HELLO does not offer the self-test: %r" % (h,))
    b = r.board
    j = r.t.journal
    before = (j.writes, j.head, j.used)

    def cmd(op, arg=0):
        n = len(r.peer.echoes)
        r.board.transport.deliver(r.peer.send(m.Test(op, arg)))
        r.step(10)
        return r.peer.echoes[n:]

    for i in range(5):
        got = cmd(m.T_LED, i)
        check(got == [(m.T_LED, i)], "LED %d answered %r" % (i, got))
        check(b.last_pattern == ui.P_TEST_LED and b.last_button == i, "LED %d not shown" % i)
        check(b.lit == [1] * (i + 1) + [0] * (4 - i), "LEDs lit %r after LED %d" % (b.lit, i))
        check(r.state() == "TEST", "not in TEST: %s" % r.state())
    check(b.shown[ui.P_TEST_BUZZ] == 0, "buzzer before it was commanded")
    got = cmd(m.T_BUZZER)
    check(got == [(m.T_BUZZER, 0)] and b.shown[ui.P_TEST_BUZZ] == 1, "buzzer: %r" % (got,))
    got = cmd(m.T_ECHO)
    check(got == [(m.T_ECHO, 0)] and b.last_pattern == ui.P_ARMED, "echo mode: %r" % (got,))
    for i in range(5):
        n = len(r.peer.echoes)
        r.press(i)
        check(r.peer.echoes[n:] == [(m.T_PRESS, i)], "press %d echoed as %r" % (i, r.peer.echoes[n:]))
        check(b.lit[i] == 2 and b.last_button == i, "press %d did not light its LED" % i)
    r.arm(77)  # the business system arms the window mid-test: refused, clearly
    check((m.E_SELF_TEST, 77) in r.peer.errors and r.state() == "TEST", "ARM during the test")
    r.press(2)  # still an echo, not a rating for case 77
    check(r.peer.echoes[-1] == (m.T_PRESS, 2), "press after the refused ARM")
    after = (j.writes, j.head, j.used)
    check(after == before, "the test touched the journal: %r -> %r" % (before, after))
    check(r.t.ev.ratings == 0 and r.peer.count == 0 and not r.thanked, "a test press became a rating")
    got = cmd(m.T_END)
    check(got == [(m.T_END, 0)] and r.state() == "IDLE", "END: %r, %s" % (got, r.state()))
    r.arm(78)
    r.press(0)
    r.idle()
    r.run(200)
    check(r.peer.count == 1 and r.peer.stored[1][1] == 5 and r.peer.stored[1][4] == 78,
          "rating after the test: %r" % (r.peer.stored,))
    # Nobody ends it: the terminal leaves on its own test_ms after the last TEST.
    cmd(m.T_LED, 3)
    ms = r.t.ev.settings.test_ms
    check(ms == m.Test.TIMEOUT_S * 1000, "test time-out %d ms" % ms)
    n = len(r.peer.echoes)
    r.run(ms - 100, 100)
    check(r.state() == "TEST" and len(r.peer.echoes) == n, "left the test early")
    r.run(200, 100)
    check(r.state() == "IDLE" and r.peer.echoes[n:] == [(m.T_TIMEOUT, 0)],
          "time-out: %s %r" % (r.state(), r.peer.echoes[n:]))
    # A case waits: the test does not start, the case keeps its rating.
    r.arm(79)
    got = cmd(m.T_LED, 1)
    check(got == [(m.T_BUSY, 0)] and r.state() == "ARMED", "TEST while armed: %r" % (got,))
    r.press(1)
    r.idle()
    r.run(200)
    check(r.peer.count == 2 and r.peer.stored[2][4] == 79, "the armed case lost its rating")
    check(r.t.journal.writes == before[0] + 2, "writes %d" % r.t.journal.writes)
    return {"echoes": len(r.peer.echoes)}


SCENARIOS = (
    one_rating_per_arm,
    reason_step,
    no_case_policy,
    debounce,
    journal_full,
    reboot_recovery,
    resend_after_reconnect,
    unsynced_time,
    daemon_restart_and_disarm,
    link_fault,
    replaced_board,
    legacy_journal,
    uptime_epoch,
    self_test,
)
