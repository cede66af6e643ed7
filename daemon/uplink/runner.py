"""The uplink loop: cut batches from new ratings, deliver the oldest, record acks.

Rules (the uplink's state machine, one place):

* A batch is cut when ``batch_size`` ratings wait, or when the outbox is
  empty and the oldest waiting rating -- or annotation (a review outcome
  written after its rating was batched) -- is ``max_age`` old.  While a batch
  waits for the province (outage), new ratings are cut only into full
  batches, so a long outage yields few, full batches, not one per second.
* Exactly one batch is in flight, always the oldest pending one: the
  province checks batch order and chain continuity, and a catch-up after an
  outage goes oldest first, back to back, with no delay between successes.
* Success -> state 'acked' (or 'spooled') with the province's answer stored
  and the backoff reset.  Retryable failure -> attempts+1, wait
  ``Backoff.next()``.  Rejection that blames records (400/422 naming
  ``records[i]``, or a single-record batch) -> the record is held (withheld
  from every batch, alarm 'records_held' until a person releases or dismisses
  it), the batch is kept in uplink_rejected and its range cut again at once
  (a refusal that names nothing: cut in halves until it does).  Rejection
  that blames no record (key, signature, order) -> alarm 'batch_rejected' and
  retry at the backoff cap.  docs/uplink.md, "When the province refuses".
* A row that cannot be built into a record is held the same way
  ('unbuildable'): one bad row never stops the uplink.
* A local chain that does not recompute -> alarm 'chain_broken': nothing
  more is signed (``hcp audit verify`` names the row), what was signed is
  still delivered.  A database error while cutting -> alarm 'db_error',
  retried after the backoff delay.  The loop itself never dies of either.
* Alarms (checked every ``ALARM_EVERY_S``): 'disk_low' when the database's
  file system has less than ``min_free_bytes`` free, 'outbox_large' when
  pending batches hold more than ``max_outbox_bytes``.  They are logged,
  written to uplink_meta and shown by ``hcp uplink status``; nothing stops.

The loop reads the wall clock through ``clock`` (timestamps: a batch's
createdMs, a rating's age) and times its own waits (backoff, the next cut,
alarm checks) on ``mono``, a monotonic clock, so a step of the wall clock
never delays a delivery; it sleeps through ``stop.wait``, so a test can run
it in a thread and stop it at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haochaping.daemon import keys, sdnotify
from haochaping.daemon.uplink import batch as batchmod
from haochaping.daemon.uplink import delivery, profiles
from haochaping.daemon.uplink.outbox import Outbox, OutboxError, connect

log = logging.getLogger("haochaping.uplink")

BATCH_SIZE = 200  # ratings per batch
MAX_AGE_S = 1.0  # a waiting rating is batched after at most this long (outbox empty)
POLL_S = 0.1  # idle poll for new ratings
CUTS_PER_ROUND = 8  # batches cut between two deliveries during a catch-up
ALARM_EVERY_S = 10.0
DB_RETRY_S = 1.0  # pause after a database error in the loop
STATUS_EVERY_S = 5.0  # systemd STATUS= line
MIN_FREE_BYTES = 512 * 1024 * 1024
MAX_OUTBOX_BYTES = 2 * 1024 * 1024 * 1024


class UplinkError(Exception):
    pass


@dataclass
class UplinkConfig:
    db: str
    hall_id: str
    keys_dir: str
    url: str | None = None
    spool_dir: str | None = None
    batch_size: int = BATCH_SIZE
    max_age_s: float = MAX_AGE_S
    poll_s: float = POLL_S
    connect_timeout_s: float = delivery.CONNECT_TIMEOUT_S
    read_timeout_s: float = delivery.READ_TIMEOUT_S
    backoff_base_s: float = delivery.BACKOFF_BASE_S
    backoff_cap_s: float = delivery.BACKOFF_CAP_S
    tls: delivery.TLS = field(default_factory=delivery.TLS)
    min_free_bytes: int = MIN_FREE_BYTES
    max_outbox_bytes: int = MAX_OUTBOX_BYTES
    record: batchmod.RecordConfig = field(default_factory=batchmod.RecordConfig)
    seed: int | None = None  # jitter seed (tests); None = from os.urandom
    profile: str = profiles.DEFAULT  # provincial profile (daemon/uplink/profiles.py)

    def check(self) -> None:
        if (self.url is None) == (self.spool_dir is None):
            raise UplinkError("give exactly one of a province URL or a spool directory")
        if not 1 <= self.batch_size <= batchmod.schema.MAX_RECORDS:
            raise UplinkError(f"batch size must be 1..{batchmod.schema.MAX_RECORDS}")
        self.record.check()
        try:
            profiles.get(self.profile)
        except ValueError as e:
            raise UplinkError(str(e)) from e


def make_sink(cfg: UplinkConfig) -> delivery.Sink:
    if cfg.spool_dir is not None:
        return delivery.SpoolSink(cfg.spool_dir)
    if cfg.url is None:
        raise UplinkError("no province URL")
    return profiles.get(cfg.profile).http_sink(
        cfg.url,
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        tls=cfg.tls,
    )


class _Lock:
    """One uplink per database: an flock the kernel drops when the process dies."""

    def __init__(self, db: str) -> None:
        self.path = db + ".uplink.lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self.fd)
            raise UplinkError(f"another uplink is running on {db}") from e

    def release(self) -> None:
        os.close(self.fd)


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        *,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] | None = None,
        stop: threading.Event | None = None,
        sink: delivery.Sink | None = None,
        notifier: sdnotify.Notifier | None = None,
    ) -> None:
        cfg.check()
        self.notifier = notifier
        self.next_watchdog = self.next_status = 0.0
        self.cfg = cfg
        self.clock = clock
        # A test that injects a virtual wall clock times its waits on it too.
        self.mono = mono if mono is not None else (time.monotonic if clock is time.time else clock)
        self.stop = stop or threading.Event()
        self.key = keys.load_private(cfg.keys_dir)
        self.conn = connect(cfg.db)
        self.outbox = Outbox(self.conn, cfg.hall_id)
        self.sink = sink or make_sink(cfg)
        rng = random.Random(cfg.seed if cfg.seed is not None else os.urandom(16))
        self.backoff = delivery.Backoff(cfg.backoff_base_s, cfg.backoff_cap_s, rng)
        self.next_try = 0.0
        self.next_cut = 0.0
        self.next_alarm_check = 0.0
        self.alarms: list[str] = []
        self.delivered = 0

    def close(self) -> None:
        self.sink.close()
        self.conn.close()

    def cut_ready(self, now: float, t: float | None = None) -> int:
        """Cut what the rules allow, never failing the loop: a broken local chain or a
        database error raises an alarm and cutting pauses until ``next_cut``, while
        batches already signed keep being delivered.  ``now``: wall seconds; ``t``:
        monotonic seconds (default: now on ``mono``)."""
        t = self.mono() if t is None else t
        if t < self.next_cut:
            return 0
        try:
            n = self._cut(now)
        except OutboxError as e:
            self._alarm("chain_broken", str(e))
            self.next_cut = t + self.cfg.backoff_cap_s
            return 0
        except sqlite3.Error as e:
            self._alarm("db_error", f"cutting a batch failed: {e}")
            self.next_cut = t + self.backoff.next()
            return 0
        for a in ("chain_broken", "db_error"):
            if a in self.alarms:
                self.alarms.remove(a)
                self.outbox.set_meta("alarms", self.alarms)
        return n

    def _cut(self, now: float) -> int:
        n = 0
        while n < CUTS_PER_ROUND:
            force = False
            if self.outbox.pending_count() == 0:
                due = now * 1000 - self.cfg.max_age_s * 1000
                oldest = self.outbox.oldest_unbatched_ms()
                oldest_ann = self.outbox.oldest_waiting_annotation_ms()
                # A waiting row stamped after "now" means the wall clock
                # stepped back since: it is due (never wait for the clock).
                force = any(
                    t is not None and (t <= due or t > now * 1000)
                    for t in (oldest, oldest_ann)
                )
            built = self.outbox.cut(
                key=self.key,
                cfg=self.cfg.record,
                now_ms=int(now * 1000),
                max_records=self.cfg.batch_size,
                force=force,
            )
            if built is None:
                break
            if built.unbuildable:
                ids = ", ".join(str(i) for i in sorted(built.unbuildable))
                self._alarm("records_held", f"batch {built.seq}: rating(s) {ids} cannot be built,"
                            f" held (hcp uplink held): {next(iter(built.unbuildable.values()))}")  # fmt: skip
            log.debug("cut batch %d (%d ratings)", built.seq, built.count)
            n += 1
        return n

    def deliver_one(self, t: float) -> bool:
        """Try the oldest pending batch if its time (``t``, monotonic) has come;
        True if it was delivered."""
        p = self.outbox.oldest_pending()
        if p is None or t < self.next_try:
            return False
        try:
            ack = self.sink.deliver(p.batch_id, p.body)
        except delivery.Rejected as e:
            done = self.outbox.isolate(p.seq, e.status, e.body, int(self.clock() * 1000))
            if done is not None:
                # the refused part is out; the rest is cut again and goes at once
                self._alarm("records_held", f"batch {p.seq} refused ({e}): {done}")
                self.next_try = 0.0
                self.next_cut = 0.0
                return False
            self.outbox.mark_failed(p.seq, str(e))
            self._alarm("batch_rejected", f"batch {p.seq} rejected: {e}")
            self.next_try = t + self.cfg.backoff_cap_s
            return False
        except delivery.Retryable as e:
            self.outbox.mark_failed(p.seq, str(e))
            delay = self.backoff.next()
            log.warning("batch %d not delivered (%s); retry in %.1f s", p.seq, e, delay)
            self.next_try = t + delay
            return False
        self.outbox.mark_delivered(p.seq, ack, int(self.clock() * 1000), self.sink.state)
        self.backoff.reset()
        self.next_try = 0.0
        self.delivered += p.count
        if "batch_rejected" in self.alarms:
            self.alarms.remove("batch_rejected")
            self.outbox.set_meta("alarms", self.alarms)
        return True

    def _alarm(self, name: str, msg: str) -> None:
        log.error("ALARM %s: %s", name, msg)
        if name not in self.alarms:
            self.alarms.append(name)
            try:
                self.outbox.set_meta("alarms", self.alarms)
            except sqlite3.Error as e:  # the log line above is the alarm then
                log.error("cannot record alarm %s: %s", name, e)

    def check_alarms(self, t: float) -> list[str]:
        if t < self.next_alarm_check:
            return self.alarms
        self.next_alarm_check = t + ALARM_EVERY_S
        new = [a for a in self.alarms if a in ("batch_rejected", "chain_broken", "db_error")]
        st = self.outbox.status()
        if st["held"]["held"] or st["withheldAnnotations"]:
            new.append("records_held")  # until a person releases or dismisses them
        free = shutil.disk_usage(Path(self.cfg.db).resolve().parent).free
        if free < self.cfg.min_free_bytes:
            new.append("disk_low")
            log.error("ALARM disk_low: %d MiB free beside %s", free >> 20, self.cfg.db)
        pending_bytes = st["pendingBytes"]
        if pending_bytes > self.cfg.max_outbox_bytes:
            new.append("outbox_large")
            log.error("ALARM outbox_large: %d MiB of batches wait", pending_bytes >> 20)
        if new != self.alarms:
            self.alarms = new
            self.outbox.set_meta("alarms", new)
        return self.alarms

    def step(self) -> bool:
        """One round; True if something was cut or delivered."""
        now, t = self.clock(), self.mono()
        self.check_alarms(t)
        cut = self.cut_ready(now, t)
        try:
            sent = self.deliver_one(t)
        except sqlite3.Error as e:  # e.g. disk full while recording an ack: resend later
            self._alarm("db_error", f"recording a delivery failed: {e}")
            self.next_try = t + self.backoff.next()
            sent = False
        return bool(cut or sent)

    def _tell_systemd(self, now: float) -> None:
        """WATCHDOG=1 at the interval systemd asked for, STATUS= every STATUS_EVERY_S."""
        n = self.notifier
        if n is None or not n.enabled:
            return
        if n.watchdog_s is not None and now >= self.next_watchdog:
            n.watchdog()
            self.next_watchdog = now + n.watchdog_s
        if now >= self.next_status:
            self.next_status = now + STATUS_EVERY_S
            st = self.outbox.status()
            n.status(
                f"{st['batches']['pending']} batches ({st['pendingRatings']} ratings) pending,"
                f" {st['unbatchedRatings']} waiting; alarms: {','.join(self.alarms) or 'none'}"
            )

    def run(self, until_idle: bool = False) -> None:
        """Loop until ``stop`` is set (or, with ``until_idle``, until nothing is left).

        A database error anywhere in a round (locked past the busy time-out, disk
        full) is logged and the round retried after ``DB_RETRY_S``: the loop is
        the uplink's supervisor and does not die of it.
        """
        if self.notifier is not None:
            self.notifier.ready(f"uplink for hall {self.cfg.hall_id}")
        while not self.stop.is_set():
            try:
                self._tell_systemd(time.monotonic())
                if self.step():
                    continue
                if until_idle:
                    st = self.outbox.status()
                    if st["batches"]["pending"] == 0 and st["unbatchedRatings"] == 0:
                        return
                wait = self.cfg.poll_s
                if self.outbox.pending_count():
                    wait = min(wait, self.next_try - self.mono())
            except sqlite3.Error as e:
                log.error("database error in the uplink loop: %s", e)
                wait = DB_RETRY_S
            self.stop.wait(max(wait, 0.001))
        if self.notifier is not None:
            self.notifier.stopping()


def run(cfg: UplinkConfig, stop: threading.Event | None = None, until_idle: bool = False) -> int:
    """Run the uplink on ``cfg`` (holding the one-uplink-per-database lock).

    Under systemd (``$NOTIFY_SOCKET``) it reports READY=1 once running,
    WATCHDOG=1 at half ``WatchdogSec`` and a STATUS line; elsewhere that is a no-op.
    """
    lock = _Lock(cfg.db)
    notifier = sdnotify.Notifier()
    try:
        up = Uplink(cfg, stop=stop, notifier=notifier)
        try:
            up.run(until_idle=until_idle)
            return up.delivered
        finally:
            up.close()
    finally:
        notifier.close()
        lock.release()


def status(db: str, hall_id: str | None = None) -> dict[str, Any]:
    conn = connect(db)
    try:
        row = conn.execute("SELECT value FROM uplink_meta WHERE key='hall_id'").fetchone()
        if row is None:
            raise UplinkError(f"no uplink outbox in {db}")
        return Outbox(conn, hall_id or row[0]).status()
    finally:
        conn.close()


def held(db: str) -> list[dict[str, Any]]:
    """The held ratings of ``db``'s outbox (``hcp uplink held``)."""
    conn = connect(db)
    try:
        row = conn.execute("SELECT value FROM uplink_meta WHERE key='hall_id'").fetchone()
        if row is None:
            raise UplinkError(f"no uplink outbox in {db}")
        return Outbox(conn, row[0]).held()
    finally:
        conn.close()


def act(db: str, rating_ids: list[int], action: str, note: str) -> list[int]:
    """``hcp uplink release|dismiss``: a person acts on held ratings."""
    conn = connect(db)
    try:
        row = conn.execute("SELECT value FROM uplink_meta WHERE key='hall_id'").fetchone()
        if row is None:
            raise UplinkError(f"no uplink outbox in {db}")
        return Outbox(conn, row[0]).act(rating_ids, action, note, int(time.time() * 1000))
    finally:
        conn.close()
