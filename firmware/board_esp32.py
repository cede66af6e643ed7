"""ESP32 family adapter (ESP32-S3 DevKitC-1 default pin map; C3 map below).

Same interface as board_sim.SimBoard.  Pins from config "pins" override the
defaults: {"buttons": [5 GPIOs, left to right], "leds": [5], "buzzer": GPIO}.
Buttons are active-low with the internal pull-ups; LEDs active-high through
330 ohm resistors; a passive buzzer on PWM.  See boards.md for the wiring.
"""

import machine
from haochaping.firmware import board_common

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


class Board(board_common.MachineBoard):
    def __init__(self, cfg, name="esp32s3"):
        pins = cfg.get("pins") or (PINS_C3 if name == "esp32c3" else PINS_S3)
        buz = machine.PWM(machine.Pin(pins["buzzer"]), freq=board_common.BEEP_HZ, duty_u16=0)
        wdt_ms = cfg.get("wdt_ms", 8000)
        board_common.MachineBoard.__init__(self, machine, cfg, name, pins, buz, wdt_ms, JOURNAL)
