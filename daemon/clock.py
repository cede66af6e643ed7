"""The daemon's wall clock, in one place: the shell reads it and hands the
time to the sans-IO core (core.py never reads a clock).  UTC milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
