"""The terminal's main loop (copied to the board as /main.py).

One turn: read the time, step the terminal (buttons, evaluator, journal,
link: every operation bounded), advance the LED/buzzer patterns, feed the
watchdog, sleep LOOP_MS.  The watchdog (8 s; the RP2040 allows 8.388 s) is
longer than the worst bounded turn (a journal write + sync is tens of ms; an
MQTT connect attempt never waits; only a DNS lookup can take a few seconds,
and it happens once per address) and short enough that a hung turn resets
the board, after which the journal's boot scan recovers every rating.

Any exception: log one line to /error.log (bounded) and reset.  A missing or
bad configuration: the FAULT pattern until a technician provisions it.
"""

import sys
import time

import machine

LOG = "/error.log"
LOG_MAX = 4096


def log(text):
    try:
        import os

        try:
            if os.stat(LOG)[6] > LOG_MAX:
                os.remove(LOG)
        except OSError:
            pass
        with open(LOG, "a") as f:
            f.write(text + "\n")
    except OSError:
        pass


def board_for(cfg):
    name = cfg["board"]
    if name.startswith("esp32"):
        from haochaping.firmware import board_esp32

        return board_esp32.Board(cfg, "esp32c3" if name == "esp32c3" else "esp32s3")
    from haochaping.firmware import board_rp2

    return board_rp2.Board(cfg)


def fault_forever(why):
    """No usable configuration: blink all LEDs of the family's default pin
    map (the FAULT pattern), feed the dog, wait for a technician."""
    log("config: " + why)
    leds = []
    try:
        if sys.platform == "rp2":
            from haochaping.firmware.board_rp2 import PINS
        else:
            from haochaping.firmware.board_esp32 import PINS_S3 as PINS
        leds = [machine.Pin(n, machine.Pin.OUT) for n in PINS["leds"]]
    except (ImportError, ValueError, OSError):
        pass
    wdt = machine.WDT(timeout=8000)
    on = 0
    while True:
        wdt.feed()
        on ^= 1
        for p in leds:
            p.value(on)
        time.sleep_ms(150)


def run():
    from haochaping.firmware import config

    try:
        cfg = config.load("/config.json")
    except config.ConfigError as e:
        fault_forever(str(e))
        return
    if cfg["link"] == "usb":
        import micropython

        micropython.kbd_intr(-1)  # 0x03 is data on the protocol line
    board = board_for(cfg)
    from haochaping.firmware.terminal import Terminal

    t = Terminal(board, cfg["terminal_id"], _key(cfg), cfg["capacity"], None, cfg["debounce_ms"])
    loop_ms = cfg["loop_ms"]
    while True:
        now = time.ticks_ms()
        t.step(now)
        board.tick(now)
        board.feed()
        time.sleep_ms(loop_ms)


def _key(cfg):
    from haochaping.protocol.auth import Key

    return Key(cfg["key"])


try:
    run()
except Exception as e:  # noqa: BLE001 - last resort: log and reset
    log("%s: %s" % (type(e).__name__, e))
    try:
        sys.print_exception(e)
    except AttributeError:
        pass
    time.sleep_ms(100)
    machine.reset()
