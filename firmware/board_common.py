"""What the ESP32 and RP2 adapters share: feedback rendering (LEDs and the
buzzer, driven from the main loop's tick without blocking), button reading
with the IRQ hand-off, the transport choice and Wi-Fi bring-up.

Hardware only through ``machine`` objects passed in, so the logic is the
same on both families.  A hard IRQ handler cannot allocate: the pin IRQ only
calls ``micropython.schedule`` with a bound method made once at start; the
scheduled call reads the pins into the buttons' debouncer.
"""

import gc

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


from haochaping.firmware import ui

BEEP_HZ = const(2700)
LOW_HZ = const(600)
BLINK_MS = const(150)


class Feedback:
    """Renders ui.P_* patterns.  ``leds``: 5 machine.Pin outputs (1 = on);
    ``buzzer``: a machine.PWM or None."""

    def __init__(self, leds, buzzer):
        self.leds = leds
        self.buzzer = buzzer
        self.pattern = ui.P_IDLE
        self.button = 0
        self.since = 0
        self.beeps = 0  # beeps left in the current pattern
        self.beep_on = False
        self.next_at = 0
        self.now = 0

    def _all(self, v):
        for p in self.leds:
            p.value(v)

    def _tone(self, hz, on):
        b = self.buzzer
        if b is None:
            return
        if on:
            b.freq(hz)
            b.duty_u16(32768)
        else:
            b.duty_u16(0)
        self.beep_on = on

    def show(self, pattern, button, now):
        self.pattern = pattern
        self.button = button
        self.since = now
        self._tone(BEEP_HZ, False)
        self._all(0)
        if pattern == ui.P_ARMED:
            self._all(1)
        elif pattern in (ui.P_THANKS, ui.P_REASON, ui.P_IGNORED, ui.P_TEST_LED):
            self.leds[button].value(1)
            self.beeps = 2 if pattern == ui.P_THANKS else (1 if pattern == ui.P_REASON else 0)
            if pattern == ui.P_REASON:
                # the two bad-level LEDs mark "pick a reason"
                self.leds[3].value(1)
                self.leds[4].value(1)
        elif pattern == ui.P_REFUSED:
            self.beeps = 1
        elif pattern == ui.P_FAULT:
            self.beeps = 1
        elif pattern == ui.P_TEST_BUZZ:
            self.beeps = 3  # three clear beeps at BEEP_HZ
        self.next_at = now
        self.tick(now)

    def tick(self, now):
        """Advance blinking and beeping; never waits."""
        if ui.ticks_diff(now, self.next_at) < 0:
            return
        p = self.pattern
        if self.beep_on:
            self._tone(BEEP_HZ, False)
            self.next_at = now + 80
            return
        if self.beeps:
            self.beeps -= 1
            self._tone(LOW_HZ if p in (ui.P_REFUSED, ui.P_FAULT) else BEEP_HZ, True)
            self.next_at = now + (300 if p == ui.P_FAULT else 80)
            return
        if p == ui.P_FAULT or p == ui.P_TECH:
            v = (ui.ticks_diff(now, self.since) // BLINK_MS) & 1
            self._all(v)
            self.next_at = now + BLINK_MS
            if p == ui.P_FAULT and ui.ticks_diff(now, self.since) % 5000 < BLINK_MS:
                self.beeps = 1


class PinButtons:
    """Reads 5 active-low machine.Pin inputs into a mask; IRQ hand-off."""

    def __init__(self, pins, machine):
        self.pins = pins
        self.pending = False
        try:
            import micropython

            self._schedule = micropython.schedule
        except ImportError:
            self._schedule = None
        self._cb = self._scheduled  # bound once: the IRQ must not allocate
        for p in pins:
            p.irq(handler=self._irq, trigger=machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)

    def _irq(self, pin):
        if self._schedule is not None and not self.pending:
            self.pending = True
            try:
                self._schedule(self._cb, 0)
            except RuntimeError:  # schedule queue full: the loop polls anyway
                self.pending = False

    def _scheduled(self, _):
        self.pending = False  # the main loop reads the pins right after

    def mask(self):
        m = 0
        i = 0
        for p in self.pins:
            if not p.value():
                m |= 1 << i
            i += 1
        return m


def wifi(cfg):
    """Start Wi-Fi without waiting; return a callable 'is it up?'."""
    import network

    w = network.WLAN(network.STA_IF)
    w.active(True)
    if not w.isconnected():
        w.connect(cfg["wifi"]["ssid"], cfg["wifi"]["password"])
    return w.isconnected


def transport(cfg, machine, uart_default=None):
    """The link the config names.  ``uart_default``: (id, tx, rx) of the
    board's pin map, used when the config gives no UART pins."""
    link = cfg["link"]
    if link == "mqtt":
        from haochaping.firmware.mqtt import MQTTTransport

        m = cfg["mqtt"]
        return MQTTTransport(
            m["host"],
            m.get("port", 1883),
            cfg["terminal_id"],
            m.get("prefix", "hcp"),
            user=m.get("user"),
            password=m.get("password"),
            net_up=wifi(cfg),
        )
    from haochaping.firmware.links import SerialTransport, StdioPort

    if link == "usb":
        return SerialTransport(StdioPort())
    u = cfg["uart"]
    uid, tx, rx = u.get("id", 1), u.get("tx"), u.get("rx")
    if tx is None and uart_default is not None:
        uid, tx, rx = uart_default
    if tx is None:
        raise ValueError("this board has no UART pins left: use link usb or mqtt")
    kw = {
        "baudrate": u.get("baud", 115200),
        "timeout": 0,
        "tx": machine.Pin(tx),
        "rx": machine.Pin(rx),
    }
    return SerialTransport(machine.UART(uid, **kw))


def free_heap():
    return gc.mem_free()


class MachineBoard:
    """The board interface (as board_sim.SimBoard) on ``machine`` pins: what
    the ESP32 and RP2 adapters share once they have chosen pins, a buzzer and
    the watchdog time-out."""

    def __init__(self, machine, cfg, name, pins, buzzer, wdt_ms, journal_path):
        self._machine = machine
        self.name = name
        P = machine.Pin
        self._buttons = PinButtons([P(n, P.IN, P.PULL_UP) for n in pins["buttons"]], machine)
        leds = [P(n, P.OUT, value=0) for n in pins["leds"]]
        self.feedback = Feedback(leds, buzzer)
        self.transport = transport(cfg, machine, pins.get("uart"))
        self._journal_path = journal_path
        self._now = 0
        self.wdt = machine.WDT(timeout=wdt_ms)

    def reset_cause(self):
        return self._machine.reset_cause()

    def journal_file(self):
        from haochaping.firmware.journal import open_file

        return open_file(self._journal_path)

    def read_buttons(self):
        return self._buttons.mask()

    def show(self, pattern, button, terminal):
        self.feedback.show(pattern, button, self._now)

    def tick(self, now):
        self._now = now
        self.feedback.tick(now)

    def feed(self):
        self.wdt.feed()

    def free_heap(self):
        return free_heap()
