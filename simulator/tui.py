"""``hcp sim --ui``: press the virtual terminals' buttons yourself.

A terminal UI (rich) over a running hall (simulator/hall/): each virtual
terminal's five buttons and their LEDs as the firmware shows them, its
evaluator state, and the last rating followed hop by hop -- journal, the
daemon's SQLite, the uplink's signed batch, the provincial receiver.

Keys: ←/→ (or Tab) pick a terminal, ``c`` the window's business system
finishes a case (arms the terminal), ``1``..``5`` press its buttons left to
right (非常满意 .. 非常不满意; in the reason step they pick a reason), ``q``
ends the run and prints the summary.

Keys come from a function (``keys(timeout) -> str | None``) so a test can
drive the UI; ``stdin_keys`` reads a real terminal in cbreak mode.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import sqlite3
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from haochaping.firmware import ui
from haochaping.simulator import hall as hallmod
from haochaping.simulator.hall import summary as hall_summary
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

LABELS = ("非常满意", "满意", "基本满意", "不满意", "非常不满意")
REASONS = ("态度", "效率", "规范", "环境", "其他")  # printed under the buttons in the reason step
DRAIN_S = 15.0


class Tui:
    def __init__(self, h: hallmod.Hall, seed: int = 1) -> None:
        self.h = h
        self.sel = 0
        self.rng = random.Random(seed)
        self.log: deque[str] = deque(maxlen=8)

    # ------------------------------------------------------------ keys

    def key(self, k: str) -> bool:
        """Act on one key; False to quit."""
        vts = self.h.vts
        if k == "q":
            return False
        if k in ("\t", "RIGHT"):
            self.sel = (self.sel + 1) % len(vts)
        elif k == "LEFT":
            self.sel = (self.sel - 1) % len(vts)
        elif k in "12345" and len(k) == 1:
            vt = vts[self.sel]
            b = int(k) - 1
            self.log.append(f"{vt.window_no}: button {k} ({LABELS[b]}) pressed")
            threading.Thread(target=vt.press, args=(b,), daemon=True).start()
        elif k == "c":
            vt = vts[self.sel]
            threading.Thread(target=self._case, args=(vt,), daemon=True).start()
        return True

    def _case(self, vt: Any) -> None:
        case_no = self.h.post_case(vt, self.rng)
        if case_no is None:
            self.log.append(
                f"{vt.window_no}: case refused ({self.h.errors[-1] if self.h.errors else '?'})"
            )
        else:
            self.log.append(f"{vt.window_no}: case {case_no} finished, terminal armed")

    # ------------------------------------------------------------ screen

    def _leds(self, vt: Any) -> Text:
        t = Text()
        board = getattr(vt, "board", None)
        pattern = board.last_pattern if board is not None else ui.P_IDLE
        pressed = board.last_button if board is not None else -1
        for i in range(5):
            if pattern == ui.P_ARMED:
                t.append(" ● ", style="bold yellow")
            elif pattern == ui.P_THANKS and i == pressed:
                t.append(" ● ", style="bold green")
            elif pattern == ui.P_REASON:
                t.append(
                    " ● " if i == pressed else REASONS[i],
                    style="bold red" if i == pressed else "red",
                )
            elif pattern == ui.P_FAULT:
                t.append(" ✖ ", style="bold red blink")
            else:
                t.append(" ○ ", style="dim")
            t.append(" ")
        return t

    def _trail(self, vt: Any) -> str:
        if not vt.confirmed:
            return ""
        c = vt.confirmed[-1]
        steps = [f"★{c.level} seq {c.seq} journaled"]
        with contextlib.suppress(sqlite3.Error), contextlib.closing(hall_summary.hall_db(self.h)) as db:
            row = db.execute(
                "SELECT id FROM ratings WHERE terminal_id = ? AND seq = ?", (c.tid, c.seq)
            ).fetchone()
            if row is not None:
                steps.append(f"stored #{row[0]}")
                b = db.execute(
                    "SELECT seq, state FROM uplink_batches WHERE ? BETWEEN first_rating_id AND last_rating_id",
                    (row[0],),
                ).fetchone()
                if b is not None:
                    steps.append(f"batch {b[0]} signed ({b[1]})")
        with contextlib.suppress(sqlite3.Error), contextlib.closing(hall_summary.province_db(self.h)) as p:
            r = p.execute(
                "SELECT batch_id FROM records WHERE terminal_id = ? AND seq = ?",
                (f"{c.tid:08x}", c.seq),
            ).fetchone()
            if r is not None:
                steps.append("at the province ✔")
        return " → ".join(steps)

    def render(self) -> Group:
        head = Text.from_markup(
            "[bold]haochaping hall[/bold]   ←/→ pick a terminal · [bold]c[/bold] case finished · "
            "[bold]1-5[/bold] press · [bold]q[/bold] quit"
        )
        t = Table(box=None, pad_edge=False)
        for col in (
            "",
            "window",
            "link",
            "state",
            "buttons 1-5: 非常满意 … 非常不满意",
            "last rating",
        ):
            t.add_column(col)
        for i, vt in enumerate(self.h.vts):
            term = getattr(vt, "term", None)
            state = ui.STATE_NAMES[term.ev.state] if term is not None else "(MicroPython)"
            t.add_row("▶" if i == self.sel else "", vt.window_no, vt.transport_kind, state,
                      self._leds(vt), self._trail(vt))  # fmt: skip
        s = self.h.snapshot("ui")
        foot = Text(
            f"pressed {s.pressed} · stored {s.stored} · at the province {s.acknowledged} · cases {s.cases}"
        )
        return Group(head, t, foot, Text("\n".join(self.log), style="dim"))


@contextlib.contextmanager
def stdin_keys() -> Iterator[Callable[[float], str | None]]:
    """A key reader for a real terminal (cbreak mode, restored afterwards)."""
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return None
        ch = os.read(fd, 1).decode(errors="replace")
        if ch == "\x1b":
            seq = (
                os.read(fd, 2).decode(errors="replace")
                if select.select([fd], [], [], 0.01)[0]
                else ""
            )
            return {"[C": "RIGHT", "[D": "LEFT"}.get(seq)
        return ch

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def run(
    opts: hallmod.HallOptions,
    keys: Callable[[float], str | None],
    console: Console | None = None,
) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Start a hall, run the UI until ``q``, drain, and return the summary."""
    h = hallmod.Hall(opts)
    try:
        h.start()
        tui = Tui(h, opts.seed)
        with Live(tui.render(), console=console, auto_refresh=False, transient=False) as live:
            while True:
                k = keys(0.1)
                if k is not None and not tui.key(k):
                    break
                live.update(tui.render(), refresh=True)
            pressed = sum(len(vt.confirmed) for vt in h.vts)
            end = time.monotonic() + DRAIN_S
            while time.monotonic() < end:
                snap = h.snapshot("draining")
                if snap.acknowledged >= pressed and snap.stored >= pressed:
                    break
                live.update(tui.render(), refresh=True)
                time.sleep(0.1)
            live.update(tui.render(), refresh=True)
        s = h.summary()
        return s, h.details, h.ok(s) or s["pressed"] == 0 and not h.details["errors"]
    finally:
        h.close()
