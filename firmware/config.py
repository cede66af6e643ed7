"""The terminal's configuration file (/config.json on the board).

Written by the technician's provisioning step, never committed (it holds
the terminal key).  ``load`` checks it and fills defaults; a missing or bad
file raises ConfigError, and main.py then shows the FAULT pattern.
See config.template.json in the bundle for every key.
"""

import json

DEFAULTS = {
    "board": "esp32",
    "link": "serial",  # serial | usb | mqtt
    "capacity": 2000,
    "debounce_ms": 30,
    "wdt_ms": 8000,
    "loop_ms": 5,
    "uart": {"id": 1, "tx": None, "rx": None, "baud": 115200},
    "wifi": {"ssid": "", "password": ""},
    "mqtt": {"host": "", "port": 1883, "prefix": "hcp", "user": None, "password": None},
    "pins": None,  # None: the board adapter's default pin map
}


class ConfigError(Exception):
    """The configuration is missing or invalid (the message never holds the key)."""


def parse(text):
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("config is not JSON") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config is a JSON object")
    out = {}
    for k in DEFAULTS:
        out[k] = DEFAULTS[k]
    for k in cfg:
        out[k] = cfg[k]
    try:
        tid = int(out.get("terminal_id", ""), 16)
    except (TypeError, ValueError):
        raise ConfigError("terminal_id is 8 hex digits") from None
    if not 0 < tid <= 0xFFFFFFFF:
        raise ConfigError("terminal_id is 8 hex digits")
    out["terminal_id"] = tid
    key = out.get("key", "")
    if not isinstance(key, str) or len(key) != 64:
        raise ConfigError("key is 64 hex digits")
    try:
        out["key"] = bytes(int(key[i : i + 2], 16) for i in range(0, 64, 2))
    except ValueError:
        raise ConfigError("key is 64 hex digits") from None
    if out["link"] not in ("serial", "usb", "mqtt"):
        raise ConfigError("link is serial, usb or mqtt")
    if out["link"] == "mqtt" and not out["mqtt"].get("host"):
        raise ConfigError("link mqtt needs mqtt.host")
    return out


def load(path="/config.json"):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("no config file at %s" % path) from None
    return parse(text)


def template():
    """The text of config.template.json (placeholders, no secret)."""
    t = {}
    for k in DEFAULTS:
        t[k] = DEFAULTS[k]
    t["terminal_id"] = "00000000"
    t["key"] = "REPLACE_WITH_64_HEX_DIGITS_FROM_hcp_provision"
    return json.dumps(t)
