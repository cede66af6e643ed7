"""Raspberry Pi Pico W (RP2040) adapter.  Same interface as board_sim.SimBoard.

Default pins: buttons GP2..GP6 (active-low, internal pull-ups), LEDs
GP10..GP14, passive buzzer GP15 (PWM), UART0 on GP0 (TX) / GP1 (RX) for an
RS-485 transceiver or a USB-serial adapter.  The RP2040 watchdog allows at
most 8,388 ms.  See boards.md for the wiring.
"""

import machine
from haochaping.firmware import board_common
from haochaping.firmware.journal import open_file as open_journal

PINS = {"buttons": (2, 3, 4, 5, 6), "leds": (10, 11, 12, 13, 14), "buzzer": 15, "uart": (0, 0, 1)}
JOURNAL = "/journal.bin"
WDT_MAX_MS = 8388


class Board:
    def __init__(self, cfg, name="rp2-picow"):
        pins = cfg.get("pins") or PINS
        self.name = name
        P = machine.Pin
        self._buttons = board_common.PinButtons(
            [P(n, P.IN, P.PULL_UP) for n in pins["buttons"]], machine
        )
        leds = [P(n, P.OUT, value=0) for n in pins["leds"]]
        buz = machine.PWM(P(pins["buzzer"]))
        buz.freq(board_common.BEEP_HZ)
        buz.duty_u16(0)
        self.feedback = board_common.Feedback(leds, buz)
        self.transport = board_common.transport(cfg, machine, pins.get("uart"))
        self._now = 0
        self.wdt = machine.WDT(timeout=min(cfg.get("wdt_ms", 8000), WDT_MAX_MS))

    def reset_cause(self):
        return machine.reset_cause()

    def journal_file(self):
        return open_journal(JOURNAL)

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
        return board_common.free_heap()
