"""The self-test of a terminal over its link (自检), through the running
daemon's local API (protocol/SPEC.md "Self-test"; docs/technician.md).

Steps: each of the five LEDs alone, the buzzer, then (when a person is at
the terminal) every LED glows and each button pressed is echoed back; the
test ends with END.  Each step is sent by the daemon (POST
/v1/terminals/ID/test) and counts as passed only when the terminal's ECHO of
it came back.  A press during the test is never a rating.

The API is reached at the config's ``api.listen`` with one of its
``api.tokens_file`` tokens (the one named ``technician`` when there is one).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import click

BUTTONS = ("非常满意", "满意", "基本满意", "不满意", "非常不满意")
STEP_WAIT_S = 5.0  # for each step's ECHO
PRESS_WAIT_S = 90.0  # for a person to press all five buttons
KEEP_ALIVE_S = 20.0  # the echo step is sent again this often (the terminal leaves a test after 60 s)
POLL_S = 0.2
SHOW_S = 0.4  # with a person watching: how long each LED stays lit before the next


class SelfTestError(click.ClickException):
    """The self-test could not run (no API, no token, the daemon refused)."""


@dataclass
class Result:
    leds: list[bool] = field(default_factory=lambda: [False] * 5)
    buzzer: bool = False
    buttons: list[bool] | None = None  # None: skipped
    ended: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.leds) and self.buzzer and (self.buttons is None or all(self.buttons)) and self.ended

    def summary(self) -> str:
        def mark(ok: bool) -> str:
            return "✓" if ok else "✗"

        parts = [f"LED {sum(self.leds)}/5", f"蜂鸣器 buzzer {mark(self.buzzer)}"]
        parts.append("按键 buttons " + ("跳过 skipped" if self.buttons is None else f"{sum(self.buttons)}/5"))
        head = "通过 passed" if self.ok else "未通过 FAILED"
        text = f"{head}: " + " · ".join(parts)
        if self.problems:
            text += " (" + "; ".join(self.problems) + ")"
        return text


class Api:
    """The daemon's local API, as the config names it."""

    def __init__(self, cfg: Any, timeout: float = STEP_WAIT_S + 5) -> None:
        host, _, port = cfg.listen.rpartition(":")
        if host in ("0.0.0.0", "", "::", "[::]"):
            host = "127.0.0.1"
        self.base = f"http://{host}:{port}"
        tokens = {name: tok for tok, name in cfg.api_tokens.items()}
        if not tokens:
            raise SelfTestError(
                "守护进程的接口没有令牌，无法自检 (the daemon's API has no tokens: set api.tokens_file;"
                " the self-test uses the one named 'technician', or any)")  # fmt: skip
        self.token = tokens.get("technician") or next(iter(tokens.values()))
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": "Bearer " + self.token,
                                              "Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {"error": e.reason}
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SelfTestError(
                f"无法连接守护进程接口 {self.base} (cannot reach the daemon's API: {reason}); is it running?"
            ) from None


def run(cfg: Any, tid: int, buttons: bool = True, say: Any = None,
        press_wait_s: float = PRESS_WAIT_S) -> Result:  # fmt: skip
    """Run the self-test of terminal ``tid``; ``say(line)`` tells the person
    what to watch and do.  Returns what passed."""
    say = say or click.echo
    api = Api(cfg)
    path = f"/v1/terminals/{tid:08x}"
    res = Result()
    started = False

    def step(name: str, button: int = 0) -> tuple[bool, dict[str, Any]]:
        nonlocal started
        code, body = api.call("POST", path + "/test", {"step": name, "button": button, "wait_s": STEP_WAIT_S})
        if code in (404, 409) and not started:
            raise SelfTestError(f"守护进程拒绝自检 (the daemon refused the self-test): {body.get('error')}")
        started = True
        if code != 200:
            res.problems.append(f"{name}{button + 1 if name == 'led' else ''}: {body.get('error', code)}")
            return False, body
        return True, body

    try:
        for b in range(5):
            ok, _ = step("led", b)
            res.leds[b] = ok
            say(f"  灯 LED {b + 1} ({BUTTONS[b]}) {'亮 lit ✓' if ok else '无回应 no echo ✗'}")
            if buttons and ok:
                time.sleep(SHOW_S)  # a person is watching: let them see each LED
        res.buzzer, _ = step("buzzer")
        say(f"  蜂鸣器 buzzer {'响 sounded ✓' if res.buzzer else '无回应 no echo ✗'}")
        if buttons:
            res.buttons = _buttons(api, path, step, say, press_wait_s)
    finally:
        if started:
            res.ended, _ = step("end")
    return res


def _buttons(api: Api, path: str, step: Any, say: Any, wait_s: float) -> list[bool]:
    ok, body = step("echo")
    pressed = [False] * 5
    if not ok:
        return pressed
    after = body["echo"]["n"]
    say(f"  请从左到右依次按下五个按键（{wait_s:g} 秒内） (press each of the five buttons, left to right)")
    end = time.monotonic() + wait_s
    alive = time.monotonic()
    while not all(pressed) and time.monotonic() < end:
        code, got = api.call("GET", f"{path}/echoes?after={after}")
        if code != 200:
            break
        for e in got["echoes"]:
            after = max(after, e["n"])
            if e["step"] == "press" and not pressed[e["button"]]:
                pressed[e["button"]] = True
                say(f"  按键 button {e['button'] + 1} ({BUTTONS[e['button']]}) ✓")
            elif e["step"] == "timeout":
                step("echo")  # the terminal left the test (no TEST for 60 s): back in
        if time.monotonic() - alive >= KEEP_ALIVE_S:
            alive = time.monotonic()
            step("echo")
        time.sleep(POLL_S)
    missing = [str(i + 1) for i, p in enumerate(pressed) if not p]
    if missing:
        say(f"  未收到按键 {', '.join(missing)} (no echo of button(s) {', '.join(missing)})")
    return pressed
