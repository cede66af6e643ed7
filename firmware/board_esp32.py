"""ESP32 family adapter (ESP32-S3 DevKitC-1 default pin map; C3 map below).

Same interface as board_sim.SimBoard.  Pins from config "pins" override the
defaults: {"buttons": [5 GPIOs, left to right], "leds": [5], "buzzer": GPIO}.
Buttons are active-low with the internal pull-ups; LEDs active-high through
330 ohm resistors; a passive buzzer on PWM.  See boards.md for the wiring.
"""

import machine
from haochaping.firmware import board_common
from haochaping.firmware.journal import open_file as open_journal

PINS_S3 = {
    "buttons": (4, 5, 6, 7, 15),
    "leds": (16, 17, 18, 8, 3),
    "buzzer": 46,
    "uart": (1, 43, 44),
}
PINS_C3 = {"buttons": (0, 1, 2, 3, 4), "leds": (5, 6, 7, 8, 10), "buzzer": 9, "uart": (1, 21, 20)}
JOURNAL = "/journal.bin"


class Board:
    def __init__(self, cfg, name="esp32s3"):
        pins = cfg.get("pins") or (PINS_C3 if name == "esp32c3" else PINS_S3)
        self.name = name
        P = machine.Pin
        self._buttons = board_common.PinButtons(
            [P(n, P.IN, P.PULL_UP) for n in pins["buttons"]], machine
        )
        leds = [P(n, P.OUT, value=0) for n in pins["leds"]]
        buz = machine.PWM(P(pins["buzzer"]), freq=board_common.BEEP_HZ, duty_u16=0)
        self.feedback = board_common.Feedback(leds, buz)
        self.transport = board_common.transport(cfg, machine)
        self._now = 0
        self.wdt = machine.WDT(timeout=cfg.get("wdt_ms", 8000))

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
