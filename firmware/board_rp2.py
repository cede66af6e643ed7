"""Raspberry Pi Pico W (RP2040) adapter.  Same interface as board_sim.SimBoard.

Default pins: buttons GP2..GP6 (active-low, internal pull-ups), LEDs
GP10..GP14, passive buzzer GP15 (PWM), UART0 on GP0 (TX) / GP1 (RX) for an
RS-485 transceiver or a USB-serial adapter.  The RP2040 watchdog allows at
most 8,388 ms.  See boards.md for the wiring.
"""

import machine
from haochaping.firmware import board_common

PINS = {"buttons": (2, 3, 4, 5, 6), "leds": (10, 11, 12, 13, 14), "buzzer": 15, "uart": (0, 0, 1)}
JOURNAL = "/journal.bin"
WDT_MAX_MS = 8388


class Board(board_common.MachineBoard):
    def __init__(self, cfg, name="rp2-picow"):
        pins = cfg.get("pins") or PINS
        buz = machine.PWM(machine.Pin(pins["buzzer"]))
        buz.freq(board_common.BEEP_HZ)
        buz.duty_u16(0)
        wdt_ms = min(cfg.get("wdt_ms", 8000), WDT_MAX_MS)
        board_common.MachineBoard.__init__(self, machine, cfg, name, pins, buz, wdt_ms, JOURNAL)
