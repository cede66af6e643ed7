"""`hcp sim --ui`: the terminal UI over a real hall, driven by scripted keys.

The keys go through the same handler a person's keyboard does; the hall is
real (daemon, uplink and receiver processes, a pty-linked terminal).
"""

from __future__ import annotations

import io
import time

from haochaping.simulator import hall, tui
from rich.console import Console


class Script:
    """Keys with a condition to wait for before each (no fixed sleeps)."""

    def __init__(self, h_ref: list[hall.Hall], steps: list[tuple[str, str]]) -> None:
        self.h_ref = h_ref
        self.steps = list(steps)
        self.deadline = time.monotonic() + 60

    def ready(self, cond: str) -> bool:
        vt = self.h_ref[0].vts[0] if self.h_ref else None
        if cond == "now":
            return True
        if vt is None:
            return False
        if cond == "armed":
            return vt.board.last_pattern == tui.ui.P_ARMED
        if cond == "thanks":
            return len(vt.confirmed) >= 1
        if cond == "at_province":
            return self.h_ref[0].snapshot("t").acknowledged >= 1
        raise ValueError(cond)

    def __call__(self, timeout: float) -> str | None:
        if time.monotonic() > self.deadline:
            return "q"
        if self.steps and self.ready(self.steps[0][0]):
            return self.steps.pop(0)[1]
        time.sleep(timeout)
        return None


def test_ui_press_follows_the_rating_to_the_province(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    captured: list[hall.Hall] = []
    real_init = hall.Hall.__init__

    def init(self, opts):  # type: ignore[no-untyped-def]
        real_init(self, opts)
        captured.append(self)

    monkeypatch.setattr(hall.Hall, "__init__", init)
    keys = Script(
        captured, [("now", "c"), ("armed", "1"), ("thanks", "RIGHT"), ("at_province", "q")]
    )
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    opts = hall.HallOptions(terminals=2, cases=0, seed=2, state_dir=str(tmp_path / "h"), keep=True)
    s, d, ok = tui.run(opts, keys, console)
    assert ok, (s, d)
    assert s["pressed"] == 1 and s["acknowledged"] == 1 and s["lost"] == 0
    assert keys.steps == []  # every scripted key was used, none by the time-out
    screen = out.getvalue()
    assert "W01" in screen and "W02" in screen
    assert "at the province ✔" in screen  # the rating was followed to the receiver on screen
    assert "button 1 (非常满意) pressed" in screen


def test_key_handler_selection_wraps() -> None:
    class H:
        vts = [object(), object(), object()]

    t = tui.Tui(H())  # type: ignore[arg-type]
    assert t.key("LEFT") and t.sel == 2
    assert t.key("\t") and t.sel == 0
    assert t.key("RIGHT") and t.sel == 1
    assert t.key("x") and t.sel == 1
    assert not t.key("q")
