"""The status page (/status) and its JSON (/v1/status) of a running daemon,
in a real browser (issue #12): Debian's chromium, headless, driven by
selenium through Debian's chromedriver, loads the page from a real
``hcp daemon`` (real SQLite, a real Mosquitto, fake terminals in different
states) through the token flow, and the test reads what it shows.

Terminals: W01 online with one open 差评 alert (a case armed through the
API, then a 非常不满意), W02 online with its journal nearly full (HELLO head
96, tail 1, capacity 100), W03 online with its clock 10 minutes ahead, W04
provisioned and silent, W05 silent until the page is open (then it comes
online and the page must show it without a reload), W06 heard from two
hours ago by an earlier run of the daemon (its row as that run left it).

Screenshots (desktop and 360 px phone width) are kept under
build/test-artifacts/ and named in the lanes report.  Under CI=true a
missing chromium, chromedriver or selenium fails; elsewhere it skips.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from haochaping.daemon import config as config_mod
from haochaping.daemon import status_page
from haochaping.daemon.bench.harness import (
    DaemonProcess,
    Mosquitto,
    free_port,
    provision,
    write_config,
)
from haochaping.daemon.bench.peers import FakeTerminal, MqttHub, drive, make_key

from .conftest import ROOT, lane_report, missing

TOKEN = "window-system-token-0000000001"
STATUS_TOKEN = "status-wall-token-00000000001"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CLOCK_AHEAD_MS = 600_000

IDS = {"W01": 0x9101, "W02": 0x9102, "W03": 0x9103, "W04": 0x9104, "W05": 0x9105, "W06": 0x9106}


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``cond`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Hello:
    """A terminal's HELLO, sent again every HELLO_AGAIN_S until it is answered
    (as a terminal does: the daemon may not have subscribed yet): call it in a wait."""

    HELLO_AGAIN_S = 1.0

    def __init__(self, peer: Any) -> None:
        self.peer, self.last = peer, -1e9

    def __call__(self) -> None:
        if time.monotonic() - self.last >= self.HELLO_AGAIN_S:
            self.last = time.monotonic()
            self.peer.hello()


def req(api: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:  # fmt: skip
    """One request, redirects not followed."""
    c = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + tok}


def status_json(api: int, tok: str = TOKEN) -> dict[str, Any]:
    code, _, body = req(api, "GET", "/v1/status", bearer(tok))
    assert code == 200, (code, body)
    return json.loads(body)


def by_window(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["window_no"]: t for t in snap["terminals"]}


def good_case(window: str) -> dict[str, str]:
    return {"case_no": "QD2026000777", "item_code": "11370200MB0000000X-001",
            "item_name": "企业设立登记", "window_no": window, "staff_name": "张三"}  # fmt: skip


@pytest.fixture(scope="module")
def hall(tmp_path_factory, mosquitto_bin):
    tmp = tmp_path_factory.mktemp("status")
    broker = Mosquitto(mosquitto_bin, tmp / "broker").start()
    db = tmp / "hall.db"
    api = free_port()
    cfg = write_config(tmp / "hcp.toml", db, [{"url": f"mqtt://127.0.0.1:{broker.port}"}], api,
                       tokens={"window-system": TOKEN})  # fmt: skip
    sf = tmp / "status-tokens"
    sf.write_text(f"# read-only: the hall's wall display\nwall {STATUS_TOKEN}\n")
    sf.chmod(0o600)
    text = cfg.read_text()
    cfg.write_text(text.replace("tokens_file = ", f'status_tokens_file = "{sf}"\ntokens_file = ', 1))
    terms = {w: FakeTerminal(tid, make_key(tid, 12), capacity=100 if w == "W02" else 4096)
             for w, tid in IDS.items()}  # fmt: skip
    provision(db, terms.values(), {t.id: w for w, t in terms.items()})
    # W06 as an earlier run of the daemon left it: heard from two hours ago
    c = sqlite3.connect(db)
    with c:
        c.execute("UPDATE terminals SET last_seen_ms = ?, firmware = '1.0.0', journal_used = 3,"
                  " journal_capacity = 4096 WHERE id = ?",
                  (int(time.time() * 1000) - 2 * 3600_000, IDS["W06"]))  # fmt: skip
    c.close()
    d = DaemonProcess(cfg, tmp).start()
    hub = MqttHub(broker.port)
    peers = {w: hub.add(t) for w, t in terms.items()}
    try:
        # W01, W03 online; W02 online with 95 of 100 journal records unacknowledged
        terms["W02"].head = 96
        hellos = [Hello(peers[w]) for w in ("W01", "W02", "W03")]

        def answered() -> bool:
            for h in hellos:
                if h.peer.term.clock_offset_ms is None:  # TIME answers a HELLO
                    h()
            return all(h.peer.term.clock_offset_ms is not None for h in hellos)

        wait_until(answered, 20, "TIME (the answer to HELLO) at W01, W02 and W03")
        # W03's clock runs 10 minutes ahead: its next rating says so
        terms["W03"].clock_offset_ms += CLOCK_AHEAD_MS
        terms["W03"].press(5)
        peers["W03"].send_new()
        # a case at W01, then a 非常不满意 for it: an open 差评 alert
        code, _, body = req(api, "POST", "/v1/cases",
                             {**bearer(TOKEN), "Content-Type": "application/json"},
                             json.dumps(good_case("W01")).encode())  # fmt: skip
        assert code == 201, body
        wait_until(lambda: terms["W01"].session, 20, "ARM at W01")
        terms["W01"].press(1, reason=2)
        peers["W01"].send_new()
        assert drive([peers["W01"], peers["W03"]], 30)

        def settled() -> bool:
            t = by_window(status_json(api))
            return (t["W02"]["fill_pct"] == 95.0 and "clock_off" in t["W03"]["states"]
                    and status_json(api)["summary"]["open_alerts"] == 1)  # fmt: skip

        wait_until(settled, 30, "the hall's state in /v1/status")
        yield {"api": api, "db": db, "daemon": d, "peers": peers, "terms": terms}
    finally:
        hub.close()
        assert d.stop() == 0
        broker.stop()
        out = d.output()
        assert TOKEN not in out and STATUS_TOKEN not in out, "a token in the daemon's log"


# ------------------------------------------------------------------ the JSON and the auth


def test_v1_status_names_every_terminal_state(hall) -> None:
    api = hall["api"]
    snap = status_json(api, STATUS_TOKEN)
    t = by_window(snap)
    assert snap["daemon"]["store_open"] is True and snap["daemon"]["store_full"] is False
    assert snap["daemon"]["version"] and snap["daemon"]["started_ms"] <= snap["now_ms"]
    assert t["W01"]["online"] and t["W01"]["state"] == "ok"
    assert t["W02"]["online"] and t["W02"]["state"] == "buffer_high"
    assert (t["W02"]["journal_used"], t["W02"]["journal_capacity"]) == (95, 100)
    assert t["W03"]["online"] and "clock_off" in t["W03"]["states"]
    assert t["W03"]["clock_offset_ms"] > status_page.health.CLOCK_OFF_MS
    assert not t["W04"]["online"] and t["W04"]["state"] == "never_seen"
    # seen by the store two hours ago, not by this daemon: offline
    assert not t["W06"]["online"] and t["W06"]["state"] == "offline"
    assert snap["terminals"][0]["window_no"] == "W06"  # most urgent first
    assert snap["terminals"][-1]["window_no"] == "W01"
    (alert,) = snap["alerts"]
    assert (alert["window_no"], alert["level"], alert["case_no"]) == ("W01", 1, "QD2026000777")
    assert snap["summary"]["open_alerts"] == 1


def test_tokens_and_cookies(hall) -> None:
    api = hall["api"]
    # a read-only token reads the status, and nothing else: 403 naming why
    for method, path, body in (("POST", "/v1/cases", json.dumps(good_case("W01")).encode()),
                               ("GET", "/v1/terminals", None), ("GET", "/v1/ratings", None),
                               ("DELETE", "/v1/sessions/1", None)):  # fmt: skip
        code, _, res = req(api, method, path, {**bearer(STATUS_TOKEN), "Content-Type": "application/json"}, body)
        assert code == 403, (path, code, res)
        assert "read-only" in json.loads(res)["error"]
    for h in ({}, bearer("wrong-token-000000000000"), bearer(STATUS_TOKEN + "x"), {"Authorization": "Basic x"}):
        code, _, res = req(api, "GET", "/v1/status", h)
        assert code == 401 and json.loads(res)["error"], (h, code, res)
    # the page without a login: 401, a small Chinese + English page with a form
    code, hdr, res = req(api, "GET", "/status")
    page = res.decode()
    assert code == 401 and hdr.get_content_type() == "text/html"
    assert "令牌" in page and "token" in page and 'action="status/login"' in page
    # a wrong token: 401, never echoed
    code, hdr, res = req(api, "GET", "/status?token=wrong-" + STATUS_TOKEN)
    assert code == 401 and "令牌无效" in res.decode() and STATUS_TOKEN not in res.decode()
    assert "set-cookie" not in {k.lower() for k in hdr}
    # the right one: 303 to /status (no token in the URL), an HttpOnly SameSite=Strict cookie
    code, hdr, _ = req(api, "GET", "/status?token=" + urllib.parse.quote(STATUS_TOKEN))
    assert code == 303 and hdr["Location"] == "/status"
    cookie = hdr["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and STATUS_TOKEN not in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    code, hdr, res = req(api, "GET", "/status", jar)
    assert code == 200 and "Content-Security-Policy" in hdr and "<script>" in res.decode()
    assert "http://" not in res.decode() and "https://" not in res.decode()  # nothing from outside
    code, _, res = req(api, "GET", "/v1/status", jar)
    assert code == 200 and json.loads(res)["summary"]["terminals"] == 6
    # a cookie never writes, whatever token it came from
    code, hdr, _ = req(api, "POST", "/status/login", {"Content-Type": "application/x-www-form-urlencoded"},
                        urllib.parse.urlencode({"token": TOKEN}).encode())  # fmt: skip
    assert code == 303
    full = {"Cookie": hdr["Set-Cookie"].split(";", 1)[0], "Content-Type": "application/json"}
    code, _, _ = req(api, "POST", "/v1/cases", full, json.dumps(good_case("W01")).encode())
    assert code == 401
    # a forged or changed cookie is nobody's
    name, value = jar["Cookie"].split("=", 1)
    for bad in (value[:-1] + ("0" if value[-1] != "0" else "1"), "v1.d2FsbA.99999999999.00", "x"):
        code, _, _ = req(api, "GET", "/v1/status", {"Cookie": f"{name}={bad}"})
        assert code == 401, bad
    # the API's own tokens still work everywhere they did
    assert req(api, "GET", "/v1/terminals", bearer(TOKEN))[0] == 200
    assert "/v1/status" in json.loads(req(api, "GET", "/openapi.json")[2])["paths"]


def test_cookie_codec() -> None:
    toks = {STATUS_TOKEN: "wall"}
    c = status_page.make_cookie(STATUS_TOKEN, "wall", 1_000_000)
    assert status_page.check_cookie(c, toks, 1_000_001)[:2] == ("wall", STATUS_TOKEN)
    assert status_page.check_cookie(c, toks, 1_000_000 + status_page.COOKIE_MAX_AGE_S) is None
    assert status_page.check_cookie(c, {"another-token-0000000": "wall"}, 1_000_001) is None
    parts = c.split(".")
    other = [parts[0], base64.urlsafe_b64encode(b"tech").decode().rstrip("="), *parts[2:]]
    toks2 = {**toks, "tech-token-000000000001": "tech"}
    assert status_page.check_cookie(".".join(other), toks2, 1_000_001) is None  # another name
    parts[2] = str(int(parts[2]) + 1)  # a later expiry than was signed
    assert status_page.check_cookie(".".join(parts), toks, 1_000_001) is None


def _cfg(tmp_path: Path, mode: int, both: bool = False) -> Path:
    (tmp_path / "api-tokens").write_text(f"win {TOKEN}\n")
    (tmp_path / "api-tokens").chmod(0o600)
    (tmp_path / "status-tokens").write_text(f"wall {TOKEN if both else STATUS_TOKEN}\n")
    (tmp_path / "status-tokens").chmod(mode)
    p = tmp_path / "hcp.toml"
    p.write_text('[store]\npath = "hall.db"\n[api]\ntokens_file = "api-tokens"\n'
                 'status_tokens_file = "status-tokens"\n')  # fmt: skip
    return p


def test_status_tokens_file_is_a_secret_file(tmp_path: Path) -> None:
    cfg = config_mod.load(_cfg(tmp_path, 0o640))
    assert cfg.status_tokens == {STATUS_TOKEN: "wall"} and cfg.api_tokens == {TOKEN: "win"}
    assert STATUS_TOKEN not in repr(cfg)
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.load(_cfg(tmp_path, 0o644))
    assert e.value.key == "api.status_tokens_file" and "readable by others" in e.value.reason
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.load(_cfg(tmp_path, 0o600, both=True))
    assert e.value.key == "api.status_tokens_file" and TOKEN not in str(e.value)


# ------------------------------------------------------------------ the page in a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium", "pip install -e '.[test]', or ./dev setup")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for b, pkg in ((chromium, "chromium"), (driver_bin, "chromium-driver")):
        if not os.access(b, os.X_OK):
            missing(pkg, f"apt-get install {pkg}, or ./dev setup as root")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,900", "--lang=zh-CN",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        opts.add_argument(a)
    # both paths given: selenium needs no driver manager (nothing is downloaded)
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    try:
        yield drv
    finally:
        drv.quit()


def _screenshot(drv: Any, name: str) -> Path:
    """The whole page, as wide as the viewport, into build/test-artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    p = ARTIFACTS / name
    p.write_bytes(base64.b64decode(shot["data"]))
    assert p.stat().st_size > 10_000, p  # a rendered page, not an empty one
    return p


def _card(drv: Any, tid: int) -> Any:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.CSS_SELECTOR, f'article[data-id="{tid:08x}"]')


def _chips(card: Any) -> set[str]:
    from selenium.webdriver.common.by import By

    return {c.get_attribute("data-state") for c in card.find_elements(By.CSS_SELECTOR, ".chip")}


def test_the_page_in_a_real_browser(hall, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api, drv = hall["api"], browser
    base = f"http://127.0.0.1:{api}"
    # the login: a bookmark with the token, once; the page's URL has none after it
    drv.get(f"{base}/status?token={urllib.parse.quote(STATUS_TOKEN)}")
    assert drv.current_url == f"{base}/status"
    cookie = drv.get_cookie(status_page.COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    wait = WebDriverWait(drv, 20, poll_frequency=0.1)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article[data-id]")) == 6)

    # every terminal, most urgent first, as the JSON orders them
    order = [e.get_attribute("data-id") for e in drv.find_elements(By.CSS_SELECTOR, "article[data-id]")]
    assert order == [t["id"] for t in status_json(api)["terminals"]]
    assert order[0] == f"{IDS['W06']:08x}" and order[-1] == f"{IDS['W01']:08x}"
    cards = {w: _card(drv, tid) for w, tid in IDS.items()}
    for w, c in cards.items():
        assert f"窗口 {w}" in c.text, c.text
    for w in ("W01", "W02", "W03"):
        assert "在线" in cards[w].find_element(By.CSS_SELECTOR, ".badge").text, w
    for w in ("W04", "W05", "W06"):
        assert "离线" in cards[w].find_element(By.CSS_SELECTOR, ".badge").text, w
    assert "buffer_high" in _chips(cards["W02"]) and "缓存将满" in cards["W02"].text
    assert "95% (95/100)" in cards["W02"].text
    assert "clock_off" in _chips(cards["W03"])
    offset = cards["W03"].find_element(By.CSS_SELECTOR, ".offset").text
    assert offset.startswith("+10 分钟"), offset
    assert "时钟偏差" in cards["W03"].find_element(By.CSS_SELECTOR, ".chip[data-state=clock_off]").text
    assert "未上线" in cards["W04"].text
    assert "2 小时前" in cards["W06"].find_element(By.CSS_SELECTOR, ".seen").text
    assert "秒前" in cards["W01"].find_element(By.CSS_SELECTOR, ".seen").text
    summary = drv.find_element(By.ID, "summary").text
    for s in ("终端 6 台", "在线 3", "离线 3", "需处理 5", "未处理差评 1", "上报"):
        assert s in summary, (s, summary)
    (alert,) = drv.find_elements(By.CSS_SELECTOR, "#alerts li")
    assert "非常不满意" in alert.text and "窗口 W01" in alert.text and "QD2026000777" in alert.text
    desktop = _screenshot(drv, "status-page-desktop.png")

    # it refreshes in place: W05 comes online, the same card says so, no reload
    drv.execute_script("window.hcpNoReload = 'still here';")
    w05 = cards["W05"]
    hello = Hello(hall["peers"]["W05"])

    def w05_online(d: Any) -> bool:
        if hall["terms"]["W05"].clock_offset_ms is None:
            hello()
        return "在线" in w05.find_element(By.CSS_SELECTOR, ".badge").text

    wait.until(w05_online)
    assert drv.execute_script("return window.hcpNoReload;") == "still here"
    wait.until(lambda d: "在线 4" in d.find_element(By.ID, "summary").text)

    # a phone: 360 px wide, no horizontal scrolling; the scroll stays where it was over a refresh
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": 360, "height": 740, "deviceScaleFactor": 2, "mobile": True})  # fmt: skip
    wait.until(lambda d: d.execute_script("return window.innerWidth") == 360)
    widths = drv.execute_script(
        "var e = document.documentElement; return [e.scrollWidth, e.clientWidth, document.body.scrollWidth];")
    assert widths[0] <= widths[1] and widths[2] <= widths[1], widths
    drv.execute_script("window.scrollTo(0, 400);")
    y = drv.execute_script("return window.scrollY;")
    assert y > 0  # the page is longer than the phone's screen
    now = drv.find_element(By.TAG_NAME, "body").get_attribute("data-now")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-now") != now)
    assert drv.execute_script("return window.scrollY;") == y
    phone = _screenshot(drv, "status-page-phone.png")

    # the page's own cookie cannot write (a read-only token behind it, and a cookie never writes)
    code = drv.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "fetch('/v1/cases', {method: 'POST', credentials: 'same-origin',"
        " headers: {'Content-Type': 'application/json'}, body: arguments[0]})"
        ".then(function (r) { done(r.status); }, function () { done(-1); });",
        json.dumps(good_case("W01")))  # fmt: skip
    assert code == 401, code
    lane_report("status page screenshots (desktop, phone 360 px)", f"{desktop}, {phone}")
