"""The flash journal: every rating is durable here before THANKS is shown,
and stays until the daemon's ACK says it is durably stored there.

A preallocated ring file on the board's filesystem (littlefs), opened once;
the file object is injected, so CPython files, MicroPython files and the
tests' power-cut writer all work.  Layout:

    offset  size        what
    0       32          meta slot A   } written alternately, the valid one
    32      32          meta slot B   } with the higher generation wins
    64      24 * cap    record slots; seq s lives in slot (s - 1) % cap

    meta   (big-endian) magic "HJ", version 2, 0, gen u32, boot u16,
           acked u32 (every seq <= acked is stored by the daemon),
           rx_last u32 (the daemon's last accepted down counter),
           capacity u16, journal id u32, CRC-16 of bytes 0..23 at 24..25,
           zero padding.  A version 1 meta (no journal id, CRC at 20..21) is
           read as journal id 0 and rewritten as version 2 at the next meta
           write.
    record bytes 0..19 are the protocol's RATING record (seq, level|reason<<3,
           flags, session, device time, uptime ms, boot), 20..21 zero,
           22..23 CRC-16/CCITT-FALSE of bytes 0..21

Rules:
- The journal id is random (from the board's ``new_id``), never 0, and new
  whenever the file is formatted: a wiped flash, a new board or a re-flash
  starts a new sequence space, so its seqs are never taken for the old
  journal's (SPEC.md section 5, "Journals").
- ``append`` writes one record, then flush + os.sync (littlefs commits only
  on sync/close; MicroPython's flush is lfs_file_sync, os.sync covers FAT),
  and only then returns the seq.  A write error propagates: no THANKS.
- A seq is never reused: the next seq is above every valid record and above
  the persisted ack point (and above any seq the daemon ACKs: a wiped or
  replaced board continues after what the daemon already holds).  A torn record (power cut mid-write) fails its CRC
  and is skipped; only the newest write can be torn, and its THANKS was never
  shown.
- A slot is free only when its seq <= acked; ``append`` on a full journal
  raises JournalFull and never overwrites an unacknowledged record.
- Meta updates (ACK, boot count) go to the older meta slot, so a torn meta
  write leaves the previous one valid: the worst case is an older ack point,
  i.e. records resent, which the daemon ignores as duplicates.

Capacity: 24 bytes a record, so 43,688 records per MiB of file (the protocol
counts capacity in 16 bits: at most 65,535).  littlefs needs about two free
blocks beside the file for copy-on-write.
"""

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.protocol.crc import crc16

META_LEN = const(32)
_META_AT = const(0)
DATA_AT = const(64)
REC_LEN = const(24)
_REC_BODY = const(22)  # bytes covered by the CRC
_CAP_MAX = const(65535)
_VERSION = const(2)
_META = ">2sBBIHIIHI"  # magic, version, 0, gen, boot, acked, rx_last, capacity, journal id
_META_V1 = ">2sBBIHIIH"  # version 1: no journal id
_META_BODY = const(24)
_META_BODY_V1 = const(20)
_REC = ">IBBIIIH"  # messages._REC: the wire record
# The same bytes with time and uptime as 16-bit halves: on 32-bit ports UTC
# seconds (> 2**30) are not small ints, and building them would allocate in
# the press path; the terminal computes the halves with small ints only.
_REC_W = ">IBBIHHHHH"
_ZEROS = const(256)


class JournalError(Exception):
    """The journal file is unusable (wrong size, unreadable meta)."""


class JournalFull(JournalError):
    """No free slot: every slot holds an unacknowledged rating."""


def file_size(capacity):
    return DATA_AT + REC_LEN * capacity


def capacity_for(nbytes):
    """How many records fit in a file of ``nbytes``."""
    n = (nbytes - DATA_AT) // REC_LEN
    return n if n < _CAP_MAX else _CAP_MAX


def open_file(path):
    """Open (creating if needed) a journal file for reading and writing."""
    try:
        return open(path, "r+b")
    except OSError:
        return open(path, "w+b")


def _new_id_default():
    """A random journal id other than 0 (os.urandom on boards and CPython)."""
    try:
        import os

        return struct.unpack(">I", os.urandom(4))[0]
    except (ImportError, AttributeError, NotImplementedError):
        import random

        return random.getrandbits(32)


def _sync_default():
    try:
        import os

        s = getattr(os, "sync", None)
    except ImportError:
        s = None
    return s


class Journal:
    def __init__(self, f, capacity=2000, sync=None, new_id=None):
        """``f``: a binary file opened for reading and writing (r+b / w+b).
        ``new_id``: returns a random u32 for a newly formatted journal."""
        if not 1 <= capacity <= _CAP_MAX:
            raise JournalError("capacity is 1..%d" % _CAP_MAX)
        self.f = f
        self.capacity = capacity
        self._sync = sync if sync is not None else _sync_default()
        self._new_id = new_id if new_id is not None else _new_id_default
        self.id = 0  # journal id (0: formatted before journal identity)
        self._buf = bytearray(REC_LEN)
        self._mv = memoryview(self._buf)
        self._body = self._mv[:_REC_BODY]
        self._meta = bytearray(META_LEN)
        self._mmv = memoryview(self._meta)
        self.gen = 0
        self.boot = 0
        self.acked = 0
        self.rx_last = 0
        self.head = 1  # next seq to write
        self.torn = 0  # invalid slots found in the unacknowledged range at boot
        self.writes = 0
        self.jumps = 0  # ACKs that moved the head forward (see ack)
        self._meta_slot = 0
        self._load()

    # ------------------------------------------------------------ state

    @property
    def tail(self):
        """Oldest unacknowledged seq (== head when nothing is pending)."""
        return self.acked + 1

    @property
    def used(self):
        return self.head - 1 - self.acked

    @property
    def full(self):
        return self.used >= self.capacity

    # ------------------------------------------------------------- boot

    def _read_at(self, off, mv):
        self.f.seek(off)
        n = self.f.readinto(mv)
        return n if n is not None else 0

    def _meta_valid(self, slot):
        mv = self._mmv
        if self._read_at(_META_AT + slot * META_LEN, mv) != META_LEN:
            return None
        m = self._meta
        if m[0:2] != b"HJ":
            return None
        if m[2] == _VERSION:
            c = crc16(mv[:_META_BODY])
            if c != (m[_META_BODY] << 8 | m[_META_BODY + 1]):
                return None
            return struct.unpack_from(_META, m, 0)
        if m[2] == 1:
            c = crc16(mv[:_META_BODY_V1])
            if c != (m[_META_BODY_V1] << 8 | m[_META_BODY_V1 + 1]):
                return None
            return struct.unpack_from(_META_V1, m, 0) + (0,)
        return None

    def _load(self):
        self.f.seek(0, 2)
        size = self.f.tell()
        metas = (self._meta_valid(0), self._meta_valid(1))
        if metas[0] is None and metas[1] is None:
            # Never formatted, or cut while formatting (records are written
            # only after the first meta): format, unless records exist.
            if size > DATA_AT:
                for i in range(
                    capacity_for(size) if capacity_for(size) < self.capacity else self.capacity
                ):
                    if self._read_slot(i):
                        raise JournalError("journal has records but no valid meta slot")
            self._format()
            return
        best = 0
        if metas[0] is None or (metas[1] is not None and metas[1][3] > metas[0][3]):
            best = 1
        m = metas[best]
        self._meta_slot = best
        self.gen, self.boot, self.acked, self.rx_last, cap = m[3], m[4], m[5], m[6], m[7]
        self.id = m[8]
        if cap != self.capacity:
            # The file's own capacity wins: resizing would need a migration.
            self.capacity = cap
        if size < file_size(self.capacity):
            # A cut during formatting: finish preallocating (no record can
            # have been written before the format completed).
            self._zero_fill(size, file_size(self.capacity))
        self._scan()

    def _scan(self):
        top = self.acked
        for i in range(self.capacity):
            seq = self._read_slot(i)
            if seq > top:
                top = seq
        self.head = top + 1
        # Only the newest write can be torn, and it is not counted above; a
        # missing record inside (acked, head) means damage beyond a power cut.
        torn = 0
        s = self.acked + 1
        while s < self.head:
            if self._read_slot((s - 1) % self.capacity) != s:
                torn += 1
            s += 1
        self.torn = torn

    def _read_slot(self, i):
        """The seq in slot i if the record there is whole and belongs there, else 0."""
        if self._read_at(DATA_AT + i * REC_LEN, self._mv) != REC_LEN:
            return 0
        b = self._buf
        if crc16(self._body) != (b[22] << 8 | b[23]):
            return 0
        seq = (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
        if seq == 0 or (seq - 1) % self.capacity != i:
            return 0
        return seq

    def _zero_fill(self, start, end):
        z = bytes(_ZEROS)
        self.f.seek(start)
        pos = start
        while pos < end:
            n = end - pos
            self.f.write(z if n >= _ZEROS else z[:n])
            pos += n if n < _ZEROS else _ZEROS
        self._commit()

    def _format(self):
        self._zero_fill(0, file_size(self.capacity))
        v = self._new_id() & 0xFFFFFFFF
        self.id = v if v else 1
        self.gen = 0
        self._meta_slot = 1  # so the first meta write goes to slot A
        self.head = 1
        self._write_meta()

    # ------------------------------------------------------------ writes

    def _commit(self):
        self.f.flush()
        if self._sync is not None:
            self._sync()

    def _write_meta(self):
        self.gen += 1
        m = self._meta
        struct.pack_into(
            _META,
            m,
            0,
            b"HJ",
            _VERSION,
            0,
            self.gen,
            self.boot,
            self.acked,
            self.rx_last,
            self.capacity,
            self.id,
        )
        c = crc16(self._mmv[:_META_BODY])
        m[_META_BODY] = c >> 8
        m[_META_BODY + 1] = c & 0xFF
        slot = 1 - self._meta_slot
        self.f.seek(_META_AT + slot * META_LEN)
        self.f.write(m)
        self._commit()
        self._meta_slot = slot

    def append(self, level, reason, flags, session, time_s, uptime_ms, boot):
        """Write one rating durably; return its seq.  Raises JournalFull."""
        return self.append_w(
            level,
            reason,
            flags,
            session,
            time_s >> 16,
            time_s & 0xFFFF,
            (uptime_ms >> 16) & 0xFFFF,
            uptime_ms & 0xFFFF,
            boot,
        )

    def append_w(self, level, reason, flags, session, t_hi, t_lo, up_hi, up_lo, boot):
        """``append`` with time and uptime in 16-bit halves (allocation-free)."""
        if self.used >= self.capacity:
            raise JournalFull("journal full: %d unacknowledged ratings" % self.used)
        seq = self.head
        b = self._buf
        struct.pack_into(
            _REC_W, b, 0, seq, level | (reason << 3), flags, session, t_hi, t_lo, up_hi, up_lo, boot
        )
        b[20] = 0
        b[21] = 0
        c = crc16(self._body)
        b[22] = c >> 8
        b[23] = c & 0xFF
        self.f.seek(DATA_AT + ((seq - 1) % self.capacity) * REC_LEN)
        self.f.write(b)
        self._commit()
        self.head = seq + 1
        self.writes += 1
        return seq

    def ack(self, seq, rx_last=None):
        """Free every slot up to ``seq`` (the daemon stored them); persist it
        with the daemon's last accepted down counter.  Returns True if the
        ack point moved.

        An ACK beyond what this journal wrote means the daemon holds seqs
        this flash has forgotten (erased, or a replacement board with the
        same terminal id): the head jumps past them, so no seq the daemon
        has is ever reused for a new rating."""
        if seq >= self.head:
            self.head = seq + 1
            self.jumps += 1
        moved = seq > self.acked
        if moved or (rx_last is not None and rx_last > self.rx_last):
            if moved:
                self.acked = seq
            if rx_last is not None and rx_last > self.rx_last:
                self.rx_last = rx_last
            self._write_meta()
        return moved

    def bump_boot(self):
        """Count a boot (or a new link epoch) durably before it is used."""
        if self.boot >= 0xFFFF:
            raise JournalError("boot count exhausted")
        self.boot += 1
        self._write_meta()
        return self.boot

    def raise_boot(self, epoch):
        """Continue at boot count ``epoch`` (the daemon saw higher counters:
        this journal's boot count went back); durable before it is used."""
        if not self.boot < epoch <= 0xFFFF:
            raise JournalError("boot count %d cannot move to %d" % (self.boot, epoch))
        self.boot = epoch
        self._write_meta()
        return self.boot

    # ------------------------------------------------------------- reads

    def record(self, seq):
        """Record ``seq`` as a tuple (seq, level, reason, flags, session,
        time, uptime_ms, boot), or None if it is not in the journal or not
        a whole record (torn or damaged)."""
        if not self.acked < seq < self.head:
            return None
        if self._read_slot((seq - 1) % self.capacity) != seq:
            return None
        seq, lr, fl, ses, t, up, boot = struct.unpack_from(_REC, self._buf, 0)
        return (seq, lr & 7, lr >> 3, fl, ses, t, up, boot)
