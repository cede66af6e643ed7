"""What every part of the simulated hall shares: its limits, its error, and
two small helpers (a free loopback port, a JSON HTTP call)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HALL_ID = "demo-hall"
MPY_HOST = Path(__file__).resolve().parent.parent / "mpy" / "vterm.mjs"
MPY_PACKAGE = (
    Path(__file__).resolve().parent.parent.parent / "tests" / "mpy" / "node_modules" / "@micropython"
    / "micropython-webassembly-pyscript" / "micropython.mjs"
)  # fmt: skip
LOOP_MS = 5  # the terminals' main loop period
PRESS_MS = 80  # a citizen holds a button this long
START_TIMEOUT_S = 30.0  # a part that is not up by then fails the run
DRAIN_TIMEOUT_S = 30.0
CHAOS_RETRY_S = 30.0  # with --chaos the business system retries a case this long  # after the last press, everything reaches the province within this
THANKS_MS = 400  # CONFIG C_THANKS_MS in the demo (the factory default is 2000)
REASON_TIMEOUT_S = 2
ARM_TIMEOUT_S = 5  # a citizen who walks away frees the window this soon


class HallError(Exception):
    """A part of the hall did not start or the run could not finish."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    what: str, ok: Callable[[], bool], timeout: float, proc: subprocess.Popen[Any] | None = None
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        if proc is not None and proc.poll() is not None:
            raise HallError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.05)
    raise HallError(f"{what} did not come up within {timeout:.0f} s")


def _http(url: str, body: dict[str, Any] | None = None, token: str | None = None,
          timeout: float = 5.0) -> tuple[int, Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
