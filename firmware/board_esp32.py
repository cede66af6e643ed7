"""ESP32 family adapter (ESP32-S3 DevKitC-1 default pin map; C3 map below).

Same interface as board_sim.SimBoard.  Pins from config "pins" override the
defaults: {"buttons": [5 GPIOs, left to right], "leds": [5], "buzzer": GPIO}.
Buttons are active-low with the internal pull-ups; LEDs active-high through
330 ohm resistors; a passive buzzer on PWM.  See boards.md for the wiring.
"""

import machine
from haochaping.firmware import board_common
from haochaping.firmware.journal import open_file as open_journal

# ESP32-S3-DevKitC-1: no strapping pins (0, 3, 45, 46) and not the USB or
# UART0 pins.  UART1 on 12 (TX) / 13 (RX) for an auto-direction RS-485 module.
PINS_S3 = {
    "buttons": (4, 5, 6, 7, 15),
    "leds": (16, 17, 18, 8, 9),
    "buzzer": 10,
    "uart": (1, 12, 13),
}
# ESP32-C3-DevKitM-1: too few free pins for a UART beside 11 I/O, so the C3
# talks over USB-CDC (link "usb") or Wi-Fi (link "mqtt"); its REPL is on the
# built-in USB-Serial-JTAG, which frees 20/21.  Avoids strapping 8 and 9.
PINS_C3 = {"buttons": (0, 1, 3, 4, 5), "leds": (6, 7, 10, 20, 21), "buzzer": 2, "uart": None}
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
        self.transport = board_common.transport(cfg, machine, pins.get("uart"))
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
