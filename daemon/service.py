"""The daemon's I/O shell: transports in, core, group commit, ACKs out.

What it is for: run the hall unattended.  One asyncio loop owns the core;
transports hand it frames through the Inbox; every pass of the ingest loop
takes what has arrived (up to ``commit_max`` ratings), runs it through the
core, commits the whole group in ONE SQLite transaction (inserts on the loop
thread, BEGIN and COMMIT on the store's thread), and only then sends the ACKs
the core returns.  While a COMMIT syncs, the next group gathers: durability
costs one fsync per group.

What it must never do: send an ACK before the group's COMMIT returned; drop a
rating (on a full disk it stops acknowledging, raises the ``store_full``
alarm and tells terminals to keep their journals); log a key or a contact.

Signals: SIGTERM/SIGINT finish the commit in flight, stop the transports and
exit 0 within STOP_BOUND_S; SIGHUP reloads the config (terminals, alert
hooks, transports).  systemd: READY=1 when ingest runs, STATUS= with counts,
WATCHDOG=1 from the ingest loop itself (a stuck loop stops the pings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from haochaping.daemon import config as config_mod
from haochaping.daemon.alerts import AlertHub
from haochaping.daemon.api import Api
from haochaping.daemon.clock import StepWatch, now_ms
from haochaping.daemon.contact import ContactCipher
from haochaping.daemon.core import EVENT_KINDS, SESSION_KEEP_MS, Core, Session
from haochaping.daemon.sdnotify import Notifier
from haochaping.daemon.store import Store, StoreError, StoreFull
from haochaping.daemon.transport import Bad, Gone, Inbox, Received, Transport, redact
from haochaping.daemon.transport_mqtt import MqttTransport
from haochaping.daemon.transport_serial import SerialTransport

log = logging.getLogger("hcp.daemon")

STOP_BOUND_S = 10  # SIGTERM to exit, worst case (a commit plus transport shutdown)
TICK_S = 0.5  # housekeeping: supervise transports, watchdog, status
STATUS_EVERY_S = 10
REFUSAL_LOG_EVERY_MS = 60_000  # one refusals row per (source, reason) per minute
REFUSAL_KEYS_MAX = 10_000  # (source, reason) pairs remembered for that limit
SWITCH_INTERVAL_S = 0.001
DISK_FULL_BYTES = 1024 * 1024  # less free than this beside the store: an open failure is a full disk


class _JournalFormatter(logging.Formatter):
    """``<prio>logger: message``: journald reads the priority prefix and adds
    its own timestamp."""

    PRIO = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIO.get(record.levelno, 6)}>{record.name}: {record.getMessage()}"


def setup_logging(level: str) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_JournalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Daemon:
    def __init__(self, cfg: config_mod.Config, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.stopping = False
        self.reload_requested = False
        self.store_full = False
        self.metrics: dict[str, float] = {
            "commits": 0,
            "commit_seconds": 0.0,
            "commit_failures": 0,
            "store_full_events": 0,
            "send_failures": 0,
            "reloads": 0,
            "terminal_reloads": 0,
            "frames_waiting_for_store": 0,
        }
        self.store_down: str | None = None  # why the store could not be opened (a full disk)
        self.routes: dict[str, Transport] = {}
        self.transports: dict[str, Transport] = {}
        self._refusal_seen: dict[tuple[str, str], int] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        # One writer on the store's connection at a time: a group commit or
        # one _on_store call (API writes, reloads).
        self.write_lock = asyncio.Lock()
        self.store: Store | None = None
        self.reader: Store | None = None
        self.core: Core | None = None
        self.terminals_seen = 0  # meta 'terminals_version' the core holds
        self.cipher: ContactCipher | None = None
        self.inbox: Inbox | None = None
        self.alerts: AlertHub | None = None
        self.api: Api | None = None
        self.watch = StepWatch()  # steps of the wall clock against the monotonic one

    # ------------------------------------------------------------ setup

    def _max_pages(self) -> int | None:
        if self.cfg.max_db_mb is None:
            return None
        return self.cfg.max_db_mb * 1024 * 1024 // 4096

    async def _on_store(self, fn: Any, *args: Any) -> Any:
        """Run a store call on the store's thread, holding the write lock."""
        async with self.write_lock:
            return await self._store_thread(fn, *args)

    async def _store_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _open(self) -> None:
        cfg = self.cfg
        cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.db_path, max_pages=self._max_pages())
        self.reader = Store(cfg.db_path, readonly=True)
        self.cipher = ContactCipher(cfg.contact_key)
        terms = self.store.start_terminals()
        t = now_ms()
        sessions = [
            Session(tok, case, win or "", tid, armed, exp, cancelled is not None)
            for tok, case, win, tid, armed, exp, cancelled in self.store.sessions_since(
                t - SESSION_KEEP_MS
            )
        ]
        self.core = Core(terms, sessions, cfg.terminal_settings, self.store.clock_steps(),
                         sorted(self.store.retired_ids()))  # fmt: skip
        self.terminals_seen = self.store.terminals_version()[0]
        log.info(
            "store %s open: %d terminals, %d ratings",
            cfg.db_path,
            len(terms),
            self.store.count("ratings"),
        )
        if self.store.start_full:
            # Start anyway: refuse to acknowledge, say why, resume by itself.
            self.store_full = True
            log.error("STORE FULL at start: not acknowledging until there is room (docs/operations.md)")

    def _start_transports(self) -> None:
        assert self.inbox is not None
        want = {t.url: t for t in self.cfg.transports}
        for url in list(self.transports):
            if url not in want:
                log.info("transport %s removed", redact(url))
                self.transports.pop(url).stop()
        for url, tc in want.items():
            if url not in self.transports:
                tr = open_transport(url, self.inbox, tc.options)
                tr.start()
                self.transports[url] = tr
                log.info("transport %s started", redact(url))

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.inbox = Inbox(loop)
        await self._open_or_wait()
        self.alerts = AlertHub(self)
        self.api = Api(self)
        await self.api.start()
        self._start_transports()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError):
            pass
        self.notifier.ready(self._status())
        log.info("ready: api on http://%s", self.api.address)
        try:
            await self._ingest()
        finally:
            await self._shutdown()
        return 0

    async def _open_or_wait(self) -> bool:
        """Open the store; on a full disk (even too full to open SQLite's WAL)
        start anyway without it: READY, nothing acknowledged, the reason in
        /metrics and the API, and ``_ingest`` tries again every TICK_S.
        Anything else wrong with the store stops the start, named."""
        try:
            await self._on_store(self._open)
            self.store_down = None
            return True
        except (StoreError, sqlite3.Error, OSError) as e:
            if not isinstance(e, StoreFull) and not _disk_full(self.cfg.db_path, e):
                raise StoreError(f"{self.cfg.db_path}: {e}") from e
            self._close_partial()
            if self.store_down is None:
                log.error("STORE FULL at start (%s): running without it, not acknowledging;"
                          " trying again every %.1f s (docs/operations.md)", e, TICK_S)  # fmt: skip
            self.store_down = str(e)
            self.store_full = True
            return False

    def _close_partial(self) -> None:
        for s in (self.store, self.reader):
            if s is not None:
                try:
                    s.close()
                except sqlite3.Error:
                    pass
        self.store = self.reader = self.core = None

    def request_stop(self) -> None:
        self.stopping = True
        if self.inbox is not None:
            self.inbox._wake.set()

    def request_reload(self) -> None:
        self.reload_requested = True
        if self.inbox is not None:
            self.inbox._wake.set()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for tr in self.transports.values():
            tr.stop()
        if self.api is not None:
            await self.api.stop()
        if self.alerts is not None:
            await self.alerts.close()
        if self.store is not None:
            await self._on_store(self.store.close)
        if self.reader is not None:
            self.reader.close()
        self.executor.shutdown(wait=True)
        log.info("stopped")

    async def _ingest(self) -> None:
        assert self.inbox is not None
        last_tick = 0.0
        last_status = time.monotonic()
        while not self.stopping:
            events = await self.inbox.get(TICK_S, self.cfg.commit_max)
            if self.core is None:
                # no store yet (a full disk at start): frames wait in the
                # terminals' journals; try to open it again
                self.metrics["frames_waiting_for_store"] += len(events)
                if await self._open_or_wait():
                    log.warning("store open after a full start; acknowledging")
                    self.store_full = self.store.start_full if self.store is not None else False
                    self.notifier.status(self._status())
                continue
            self._watch_clock()
            await self._process(events)
            mono = time.monotonic()
            if mono - last_tick >= TICK_S:
                last_tick = mono
                if self.store_full and self.store is not None:
                    # Give the WAL back what a checkpoint can: its space is
                    # reused, so little freed room is enough to go on.
                    await self._on_store(self.store.checkpoint, "PASSIVE")
                await self._watch_terminals()
                for tr in list(self.transports.values()):
                    tr.supervise()
                if self.notifier.watchdog_s is not None:
                    self.notifier.watchdog()
                if mono - last_status >= STATUS_EVERY_S:
                    last_status = mono
                    self.notifier.status(self._status())
            if self.reload_requested:
                self.reload_requested = False
                await self._reload()

    async def _watch_terminals(self) -> None:
        """``hcp terminal`` changed the terminals table (provision, replace,
        retire, rekey: meta 'terminals_version'): take the change up now, with
        no restart, and record the version applied (the command waits for it)."""
        if self.reader is None or self.store is None or self.core is None:
            return
        try:
            version, applied = self.reader.terminals_version()
        except sqlite3.Error as e:
            log.warning("cannot read the terminals version: %s", e)
            return
        if version == self.terminals_seen and applied == version:
            return
        terms = await self._on_store(self.store.start_terminals, False)
        retired = await self._on_store(self.store.retired_ids)
        added = self.core.update_terminals(terms, sorted(retired))
        self.terminals_seen = version
        self.metrics["terminal_reloads"] += 1
        log.info("terminals changed (version %d): %d terminals, %d new, %d retired",
                 version, len(terms), added, len(retired))  # fmt: skip
        try:
            await self._on_store(self.store.set_terminals_applied, version)
        except StoreError as e:  # a full disk: applied anyway, the command is told later
            log.warning("cannot record the terminals version applied: %s", e)

    def _watch_clock(self) -> None:
        """A step of the wall clock (NTP, an operator) goes to the core, which
        moves what it remembers in wall time by it (SPEC.md section 5)."""
        assert self.core is not None
        wall = now_ms()
        step = self.watch.observe(wall, time.monotonic_ns() // 1_000_000)
        if step:
            log.warning("the wall clock stepped by %+d ms; terminals get TIME again", step)
            self.core.clock_stepped(step, wall)

    async def _process(self, events: list[Any]) -> None:
        core = self.core
        assert core is not None and self.store is not None
        t = now_ms()
        rows = []
        refusals: list[tuple[int, str, int | None, str]] = []
        for ev in events:
            if isinstance(ev, Received):
                if ev.source.startswith("mqtt:"):
                    # an MQTT source is the terminal its topic names
                    tid = int(ev.source[5:], 16)
                    if tid in core.peers:
                        core.source_of.setdefault(ev.source, tid)
                out = core.receive(ev.source, ev.data, t, ev.bound)
                if out.refused:
                    self._refusal(refusals, t, ev.source, out.terminal_id, out.refused)
                if out.authentic:
                    # only authenticated sources become routes (bounded by the
                    # terminals); a replayed authentic frame too, so its
                    # terminal can be told where its counters stand
                    self.routes[ev.source] = ev.transport
                rows.extend(out.store)
                self._send(out.send)
            elif isinstance(ev, Bad):
                core.count("refused_" + ev.reason)
                self._refusal(refusals, t, ev.source, None, ev.reason)
            elif isinstance(ev, Gone):
                core.drop_source(ev.source)
                self.routes.pop(ev.source, None)
        upd = core.take_updates()
        if not (rows or upd or refusals):
            return
        t0 = time.perf_counter()
        store = self.store
        try:
            async with self.write_lock:
                # BEGIN (which may wait for the uplink's write) and COMMIT
                # (the fsync) run on the store's thread, so a slow disk never
                # stalls the loop.  The inserts run here on the loop thread:
                # on the store's thread every sqlite3_step gave the GIL away
                # to the loop (paho, serial reads) and had to win it back,
                # which made the group commits of a drain 5x slower
                # (docs/benchmarks.md).
                await self._store_thread(store.begin)
                staged = store.stage(rows, t, upd, refusals)
                stored = await self._store_thread(store.finish, staged)
        except StoreFull:
            core.restore_updates(upd)
            self.metrics["store_full_events"] += 1
            if not self.store_full:
                log.error(
                    "STORE FULL: not acknowledging; terminals keep their ratings (see docs/operations.md)"
                )
                self.notifier.status("ALARM: store full, not acknowledging")
            self.store_full = True
            self._send(core.failed(rows))
            return
        except StoreError as e:
            core.restore_updates(upd)
            self.metrics["commit_failures"] += 1
            log.error("commit failed, not acknowledging: %s", e)
            self._send(core.failed(rows))
            return
        if self.store_full:
            log.warning("store writable again; acknowledging")
            self.store_full = False
        self.metrics["commits"] += 1
        self.metrics["commit_seconds"] += time.perf_counter() - t0
        self._send(core.committed(stored, now_ms()))
        bad = [s.id for s in stored if s.id is not None and s.rating.level <= 2]
        if bad and self.alerts is not None:
            self.alerts.fire(bad)

    def _refusal(self, out: list[Any], t: int, source: str, tid: int | None, reason: str) -> None:
        key = (source, reason)
        if len(self._refusal_seen) >= REFUSAL_KEYS_MAX:
            self._refusal_seen.clear()  # many bogus sources: forget, at worst log a little more
        if t - self._refusal_seen.get(key, -REFUSAL_LOG_EVERY_MS) >= REFUSAL_LOG_EVERY_MS:
            self._refusal_seen[key] = t
            out.append((t, source, tid, reason))
            log.warning(
                "refused from %s: %s%s",
                source,
                reason,
                "" if tid is None else f" (terminal {tid:08x})",
            )

    def _send(self, frames: list[tuple[int, bytes]]) -> None:
        core = self.core
        assert core is not None
        for tid, fr in frames:
            src = core.source(tid)
            tr = self.routes.get(src) if src else None
            if tr is None or not tr.send(src or "", tid, fr):
                self.metrics["send_failures"] += 1

    async def _reload(self) -> None:
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.cfg.path)
        except config_mod.ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            self.notifier.ready(self._status())
            return
        self.cfg = cfg
        if self.store is None or self.core is None:
            self.notifier.ready(self._status())
            return  # the store is not open yet: it reads the terminals when it opens
        terms = await self._on_store(self.store.start_terminals)
        added = self.core.update_terminals(terms, sorted(await self._on_store(self.store.retired_ids)))
        self.core.config = list(cfg.terminal_settings)
        self._start_transports()
        if self.alerts is not None:
            self.alerts.reconfigure()
        self.metrics["reloads"] += 1
        log.info("config reloaded: %d new terminals", added)
        self.notifier.ready(self._status())

    # ------------------------------------------------------------ views

    def _status(self) -> str:
        c = self.core.counters if self.core else {}
        return f"ratings stored {c.get('ratings_stored', 0)}, duplicates {c.get('ratings_duplicate', 0)}, refused {sum(v for k, v in c.items() if k.startswith('refused_'))}{', ALARM store full' if self.store_full else ''}"

    def metrics_text(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        core = self.core
        lines = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                lines.append(f"{name}{labels} {repr(float(v)) if isinstance(v, float) else int(v)}")

        c = core.counters if core is not None else {}
        metric("hcp_store_open", "gauge",
               "1 while the store is open (0: the daemon started on a full disk and waits for room).",
               [("", 0 if core is None else 1)])  # fmt: skip
        metric(
            "hcp_frames_received_total",
            "counter",
            "Frames received from terminals.",
            [("", c.get("frames_in", 0))],
        )
        metric("hcp_frames_refused_total", "counter", "Frames or chunks refused, by reason.",
               [(f'{{reason="{k[8:]}"}}', v) for k, v in sorted(c.items()) if k.startswith("refused_")])  # fmt: skip
        metric(
            "hcp_ratings_stored_total",
            "counter",
            "Ratings committed (new).",
            [("", c.get("ratings_stored", 0))],
        )
        metric("hcp_ratings_duplicate_total", "counter", "Ratings received again and already stored.",
               [("", c.get("ratings_duplicate", 0))])  # fmt: skip
        metric(
            "hcp_acks_sent_total",
            "counter",
            "ACK frames sent after a commit.",
            [("", c.get("acks_sent", 0))],
        )
        metric("hcp_time_drift_total", "counter", "TIME sent because a terminal clock drifted.",
               [("", c.get("time_drift", 0))])  # fmt: skip
        metric("hcp_terminal_events_total", "counter",
               "Terminal events: a new journal (wiped or replaced board), a switch back to a known one, "
               "an older journal image (journal_behind), a new key taken up (rekeyed).",
               [(f'{{kind="{k}"}}', c.get("event_" + k, 0)) for k in EVENT_KINDS])  # fmt: skip
        metric("hcp_ratings_forked_total", "counter",
               "Ratings stored as forks: other content under a held (terminal, journal, seq).",
               [("", c.get("ratings_forked", 0))])  # fmt: skip
        metric("hcp_frames_previous_key_total", "counter",
               "Frames accepted under a terminal's previous key, after a rekey, before it used the new one.",
               [("", c.get("frames_previous_key", 0))])  # fmt: skip
        metric("hcp_selftest_steps_total", "counter", "Self-test steps (TEST) sent to terminals.",
               [("", c.get("tests_sent", 0))])  # fmt: skip
        metric("hcp_selftest_echoes_total", "counter", "ECHOs of self-test steps and presses heard.",
               [("", c.get("echoes", 0))])  # fmt: skip
        metric("hcp_replay_hints_total", "counter",
               "ERROR REPLAY answers to authentic frames below the replay guard (epoch catch-up).",
               [("", c.get("replay_hints", 0))])  # fmt: skip
        metric("hcp_clock_steps_total", "counter", "Steps of the daemon's wall clock seen.",
               [("", c.get("daemon_clock_steps", 0))])  # fmt: skip
        metric("hcp_commits_total", "counter", "Group commits.", [("", self.metrics["commits"])])
        metric("hcp_commit_seconds_total", "counter", "Time spent in group commits.",
               [("", float(self.metrics["commit_seconds"]))])  # fmt: skip
        metric("hcp_commit_failures_total", "counter", "Commits that failed (nothing acknowledged).",
               [("", self.metrics["commit_failures"] + self.metrics["store_full_events"])])  # fmt: skip
        metric("hcp_store_full", "gauge", "1 while the store is full and ratings are not acknowledged.",
               [("", 1 if self.store_full else 0)])  # fmt: skip
        metric("hcp_send_failures_total", "counter", "Down frames that could not be handed to a transport.",
               [("", self.metrics["send_failures"])])  # fmt: skip
        t = now_ms()
        peers = core.peers if core is not None else {}
        metric("hcp_terminals", "gauge", "Provisioned terminals.", [("", len(peers))])
        metric("hcp_terminals_online", "gauge", "Terminals heard from recently.",
               [("", sum(1 for tid in peers if core is not None and core.online(tid, t)))])  # fmt: skip
        metric(
            "hcp_inbox_depth",
            "gauge",
            "Events waiting for the core.",
            [("", len(self.inbox or ()))],
        )
        metric(
            "hcp_inbox_dropped_total",
            "counter",
            "Frames dropped because the inbox was full (not acknowledged: resent by terminals).",
            [("", self.inbox.dropped if self.inbox else 0)],
        )
        metric("hcp_alerts_fired_total", "counter", "差评 alerts fired.",
               [("", self.alerts.fired if self.alerts else 0)])  # fmt: skip
        metric("hcp_alert_hook_failures_total", "counter", "Alert deliveries given up after retries.",
               [("", self.alerts.failures if self.alerts else 0)])  # fmt: skip
        health = [(redact(url), tr.health()) for url, tr in sorted(self.transports.items())]
        metric(
            "hcp_transport_up",
            "gauge",
            "Serial: ports open; MQTT: 1 while connected to the broker.",
            [
                (
                    f'{{transport="{u}"}}',
                    len(h["ports"]) if "ports" in h else int(bool(h.get("connected"))),
                )
                for u, h in health
            ],
        )
        metric(
            "hcp_transport_restarts_total",
            "counter",
            "Serial ports reopened after a failure; MQTT supervisor restarts.",
            [
                (f'{{transport="{u}"}}', h.get("restarts", h.get("loop_restarts", 0)))
                for u, h in health
            ],
        )
        metric(
            "hcp_send_dropped_total",
            "counter",
            "Down frames dropped because a serial port stopped draining (its queue was full).",
            [(f'{{transport="{u}"}}', h["out_dropped"]) for u, h in health if "out_dropped" in h],
        )
        metric(
            "hcp_serial_bytes_received_total",
            "counter",
            "Bytes read from serial ports.",
            [(f'{{transport="{u}"}}', h["bytes_in"]) for u, h in health if "bytes_in" in h],
        )
        metric(
            "hcp_config_reloads_total",
            "counter",
            "SIGHUP reloads applied.",
            [("", self.metrics["reloads"])],
        )
        metric("hcp_terminal_changes_applied_total", "counter",
               "Changes of the terminals (hcp terminal provision, replace, retire, rekey) taken up.",
               [("", self.metrics["terminal_reloads"])])  # fmt: skip
        return "\n".join(lines) + "\n"


def _disk_full(path: Any, e: BaseException) -> bool:
    """Is ``e`` (opening the store) the disk being full?  SQLite says 'disk I/O
    error' when it cannot even create its WAL and SHM files."""
    text = str(e).lower()
    if "full" in text or "no space" in text:
        return True
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free < DISK_FULL_BYTES
    except OSError:
        return False


def main(config_path: str) -> int:
    """``hcp daemon --config PATH``: run in the foreground until SIGTERM."""
    cfg = config_mod.load(config_path)
    setup_logging(cfg.log_level)
    os.umask(0o077)
    # The MQTT network thread must get the GIL back soon after each socket
    # read while the ingest loop works through a batch (docs/benchmarks.md).
    sys.setswitchinterval(float(os.environ.get("HCP_SWITCH_INTERVAL", SWITCH_INTERVAL_S)))
    d = Daemon(cfg)
    prof = os.environ.get("HCP_PROFILE")
    if prof:
        # developer aid for the benchmark: where the ingest time goes
        import cProfile

        p = cProfile.Profile()
        try:
            return p.runcall(asyncio.run, d.run())
        finally:
            p.dump_stats(prof)
    return asyncio.run(d.run())


def open_transport(url: str, inbox: Inbox, options: dict[str, Any]) -> Transport:
    """The transport a URL names (one module per scheme, pyserial style)."""
    scheme = urlsplit(url).scheme
    if scheme == "serial":
        return SerialTransport(url, inbox, options)
    if scheme in ("mqtt", "mqtts"):
        return MqttTransport(url, inbox, options)
    raise ValueError(f"unknown transport scheme {scheme!r} (serial, mqtt, mqtts)")
