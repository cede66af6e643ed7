"""The daemon's wall clock, in one place: the shell reads it and hands the
time to the sans-IO core (core.py never reads a clock).  UTC milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


STEP_MIN_MS = 1_000  # a jump of the wall clock against the monotonic one larger than this is a step


class StepWatch:
    """Notices steps of the wall clock (NTP, an operator): the shell feeds it
    wall and monotonic time and passes a step to ``Core.clock_stepped``.
    Sans-IO: it reads no clock itself."""

    def __init__(self) -> None:
        self.offset: int | None = None

    def observe(self, wall_ms: int, mono_ms: int) -> int:
        """The step since the last observation in ms (0: none)."""
        off = wall_ms - mono_ms
        if self.offset is None:
            self.offset = off
            return 0
        d = off - self.offset
        if abs(d) <= STEP_MIN_MS:
            return 0
        self.offset = off
        return d
