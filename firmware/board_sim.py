"""The simulator board: the same interface as board_esp32 / board_rp2, with
fakes only where no real part exists here (GPIO pins, the radio, the
watchdog timer, the reset-cause register).  The journal file is a real file
(or any injected file object), so flash behaviour is real.

Interface every board provides (Terminal uses nothing else):
    name                 board name for HELLO (<= 16 printable ASCII)
    reset_cause()        int, as machine.reset_cause()
    journal_file()       binary file opened r+b (created if missing)
    read_buttons()       bitmask, bit i = button i is down
    show(pattern, button, terminal)   render a ui.P_* feedback pattern
    transport            .poll(now) .connected .recv() -> bytes|None .send(bytes)
    feed()               feed the watchdog
    free_heap()          bytes free (gc.mem_free())
    new_id               optional: () -> random u32 for a newly formatted journal
                         (default: os.urandom)
"""

from haochaping.firmware import ui
from haochaping.firmware.journal import open_file as open_journal

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_QUEUE_MAX = const(64)  # frames buffered per direction in the fake radio/UART


class QueueFull(Exception):
    """The simulated link's buffer is full (a real UART would drop)."""


class SimTransport:
    """A frame pipe between a terminal and a test's daemon peer.  ``up``
    holds frames the terminal sent, ``down`` frames for the terminal.
    ``connected`` is set by the test (cable pulled, Wi-Fi lost).  Frames sent
    while disconnected are lost, as on a real link."""

    def __init__(self):
        self.connected = True
        self.up = []
        self.down = []
        self.lost = 0

    def poll(self, now):
        pass

    def recv(self):
        if not self.connected or not self.down:
            return None
        return self.down.pop(0)

    def send(self, frame):
        if not self.connected:
            self.lost += 1
            return False
        if len(self.up) >= _QUEUE_MAX:
            raise QueueFull("simulated link holds at most %d frames" % _QUEUE_MAX)
        self.up.append(frame)
        return True

    def deliver(self, frame):
        """The daemon side puts a frame on the line."""
        if self.connected:
            self.down.append(frame)
        else:
            self.lost += 1

    def take_up(self):
        out = self.up
        self.up = []
        return out


class WatchdogReset(Exception):
    """The simulated watchdog expired (the main loop stalled)."""


class SimWDT:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.fed_at = None
        self.feeds = 0

    def feed(self, now):
        self.fed_at = now
        self.feeds += 1

    def check(self, now):
        if self.fed_at is not None and ui.ticks_diff(now, self.fed_at) > self.timeout_ms:
            raise WatchdogReset("watchdog not fed for %d ms" % ui.ticks_diff(now, self.fed_at))


class SimBoard:
    def __init__(self, journal, name="sim", reset_cause=1, wdt_ms=8000, new_id=None):
        """``journal``: a path, or an open binary file object (power-cut tests
        inject a writer that tears writes)."""
        self.name = name
        self._journal = journal
        self._reset_cause = reset_cause
        self.mask = 0
        self.now = 0
        self.transport = SimTransport()
        self.wdt = SimWDT(wdt_ms)
        self.shown = [0] * len(ui.PATTERN_NAMES)  # count per pattern
        self.lit = [0] * 5  # per button: times the self-test lit its LED alone (P_TEST_LED)
        self.last_pattern = ui.P_IDLE
        self.last_button = 0
        self.tech_text = ""
        self.new_id = new_id  # None: the journal's default (os.urandom)

    def reset_cause(self):
        return self._reset_cause

    def journal_file(self):
        if isinstance(self._journal, str):
            return open_journal(self._journal)
        return self._journal

    def read_buttons(self):
        return self.mask

    def show(self, pattern, button, terminal):
        self.shown[pattern] += 1
        self.last_pattern = pattern
        self.last_button = button
        if pattern == ui.P_TEST_LED:
            self.lit[button] += 1
        elif pattern == ui.P_TECH:
            self.tech_text = terminal.tech_info()

    def feed(self):
        self.wdt.feed(self.now)

    def free_heap(self):
        try:
            import gc

            return gc.mem_free()
        except (ImportError, AttributeError):
            return 0
