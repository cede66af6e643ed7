"""The hall's health as a local web page, served by the daemon's API.

``GET /v1/status`` answers ``health.snapshot`` of the hall's store with
``online`` from the running core (``Core.online``: after a restart a
terminal is offline until it is heard from again) and the daemon's own
state (``daemon``: store open, store full, started, version).
``GET /status`` is one self-contained page (inline CSS and a small vanilla
script, nothing loaded from anywhere: the hall LAN may have no internet)
that fetches ``/v1/status`` every REFRESH_S seconds and updates itself in
place: a summary line, one card per terminal (most urgent first), the open
差评 alerts.  Chinese first wherever a technician reads, English beside it,
smaller.  Readable from a 360 px wide phone screen up.

Who may read it (``guard``, called by the API's auth middleware):

- ``Authorization: Bearer TOKEN`` with an API token (``api.tokens_file``)
  or a read-only status token (``api.status_tokens_file``).  A status token
  opens these two routes only: anywhere else under /v1 it gets 403 naming
  why (``refused``).
- A browser cannot send a bearer header when it navigates, so it logs in
  once: ``GET /status?token=TOKEN`` (a bookmark, a QR code on the wall
  display) or the form of the 401 page (``POST /status/login``, the token
  never in a URL) answers 303 to ``/status`` with a cookie ``hcp_status``
  (HttpOnly, SameSite=Strict, COOKIE_MAX_AGE_S, renewed while the page is
  open).  The cookie holds the token's name, an expiry and an HMAC keyed
  with the token itself: no token in it, nothing kept in the daemon, and a
  token removed from its file (then ``systemctl reload``) ends its cookies.
  Whatever token it came from, a cookie reads these two routes and nothing
  else (a cookie never authorises a write: no cross-site request forgery).

What it must never do: write to the store; put a token in a log, a
redirect or an error; load anything from outside; run the snapshot's
queries on the daemon's loop (they scan the ratings: they run on a thread
of their own, on a read-only connection of their own, so ingest never waits
for a page).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from haochaping.daemon import health
from haochaping.daemon.clock import now_ms

from haochaping import __version__

log = logging.getLogger("hcp.api")

PAGE = "/status"
LOGIN = "/status/login"
JSON = "/v1/status"
PATHS = frozenset((PAGE, LOGIN, JSON))

REFRESH_S = 5  # the page fetches /v1/status this often
SNAPSHOT_REUSE_MS = 1000  # many pages open: one snapshot a second at most
COOKIE = "hcp_status"
COOKIE_MAX_AGE_S = 7 * 86400  # a login lasts this long ...
COOKIE_RENEW_S = 86400  # ... and is renewed when it is older than this (while the page is open)
COOKIE_MAX_LEN = 400  # a longer cookie is not ours
_MAC_CONTEXT = b"hcp-status-cookie/1\0"

READ_ONLY_403 = "a read-only status token can read only /status and /v1/status"


# ------------------------------------------------------------------ tokens


def _match(given: bytes, tokens: dict[str, str]) -> tuple[str, str] | None:
    """(name, token) of the token ``given`` is, compared in constant time."""
    found = None
    for t, name in tokens.items():
        # compared as bytes: a token with characters beyond ASCII is simply wrong
        if given and hmac.compare_digest(given, t.encode("utf-8", "surrogateescape")):
            found = (name, t)
    return found


def _mac(token: str, name: str, expires_s: int) -> str:
    msg = _MAC_CONTEXT + name.encode("utf-8", "surrogateescape") + b"\0" + str(expires_s).encode()
    return hmac.new(token.encode("utf-8", "surrogateescape"), msg, hashlib.sha256).hexdigest()


def make_cookie(token: str, name: str, now_s: int) -> str:
    exp = now_s + COOKIE_MAX_AGE_S
    b64 = base64.urlsafe_b64encode(name.encode("utf-8", "surrogateescape")).decode().rstrip("=")
    return f"v1.{b64}.{exp}.{_mac(token, name, exp)}"


def check_cookie(value: str, tokens: dict[str, str], now_s: int) -> tuple[str, str, int] | None:
    """(name, token, expires_s) if ``value`` is a live cookie of one of ``tokens``."""
    if len(value) > COOKIE_MAX_LEN or not value.isascii():
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit() or len(parts[2]) > 12:
        return None
    exp = int(parts[2])
    if exp <= now_s or exp > now_s + COOKIE_MAX_AGE_S:
        return None
    try:
        name = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode(
            "utf-8", "surrogateescape"
        )
    except ValueError:
        return None
    found = None
    for t, n in tokens.items():
        if n == name and hmac.compare_digest(parts[3], _mac(t, name, exp)):
            found = (name, t, exp)
    return found


# ------------------------------------------------------------------ the page

CSS = """
:root{--ok:#1b7f3b;--bad:#c62828;--warn:#a85d00;--mute:#6b7280;--line:#e3e5e8;--bg:#f5f6f8}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;padding:12px;background:var(--bg);color:#111;line-height:1.4;
font-family:"PingFang SC","Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei",system-ui,sans-serif;
overflow-wrap:anywhere}
h1{font-size:1.25rem;margin:0}h2{font-size:1.05rem;margin:18px 0 8px}
small,.en{font-size:.78em;color:var(--mute);font-weight:normal}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 12px;margin-bottom:10px}
#updated{color:var(--mute);font-size:.9rem}
body.stale main{opacity:.55}
.banner{border-radius:8px;padding:10px 12px;margin:8px 0;font-weight:600;background:#fdecea;color:var(--bad);border:1px solid #f5c2c0}
.banner.info{background:#fff7e6;color:var(--warn);border-color:#f4d9a8}
.summary{display:flex;flex-wrap:wrap;gap:6px}
.stat{background:#fff;border:1px solid var(--line);border-radius:8px;padding:6px 10px}
.stat b{font-size:1.1rem}
.stat.bad{border-color:var(--bad);color:var(--bad)}.stat.warn{border-color:var(--warn);color:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,310px),1fr));gap:10px}
.term{background:#fff;border:1px solid var(--line);border-left:6px solid var(--ok);border-radius:8px;padding:10px 12px;min-width:0}
.term.bad{border-left-color:var(--bad)}.term.warn{border-left-color:var(--warn)}
.term.never_seen,.term.retired{border-left-color:var(--mute)}.term.retired{opacity:.6}
.head{display:flex;flex-wrap:wrap;align-items:center;gap:4px 8px}
.win{font-size:1.2rem;font-weight:700}
.tid{font-family:ui-monospace,monospace;color:var(--mute);font-size:.85rem}
.badge{margin-left:auto;border-radius:999px;padding:2px 10px;font-weight:700;color:#fff;background:var(--ok);white-space:nowrap}
.badge.off{background:var(--bad)}.badge small{color:#eef7f0}.badge.off small{color:#fdecea}
.days{display:block}
.chips{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.chip{border-radius:6px;padding:1px 8px;font-weight:600;background:#e8f5ec;color:var(--ok)}
.chip.bad{background:#fdecea;color:var(--bad)}.chip.warn{background:#fff3e0;color:var(--warn)}
.chip.mute{background:#eef0f3;color:var(--mute)}
dl{display:grid;grid-template-columns:auto 1fr;gap:3px 10px;margin:6px 0 0}
dt{color:#333}dd{margin:0;min-width:0}
.bar{display:inline-block;vertical-align:middle;width:6em;max-width:40%;height:.7em;background:#e6e8eb;border-radius:4px;overflow:hidden;margin-right:6px}
.bar i{display:block;height:100%;background:var(--ok)}
.bar.warn i{background:var(--warn)}.bar.bad i{background:var(--bad)}
ol.alerts{list-style:none;margin:0;padding:0;display:grid;gap:6px}
ol.alerts li{background:#fff;border:1px solid var(--line);border-left:6px solid var(--bad);border-radius:8px;padding:8px 10px}
.lvl{font-weight:700;color:var(--bad)}
.none{color:var(--mute)}
footer{margin-top:18px;color:var(--mute);font-size:.8rem}
"""

JS = r"""
"use strict";
(function () {
  var REFRESH_MS = @REFRESH_MS@;
  var BAD = {retired: "mute", buffer_full: "bad", offline: "bad", buffer_high: "warn",
             clock_off: "warn", never_seen: "mute", ok: ""};
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  // Chinese first, English beside it, smaller
  function bi(zh, en, cls, tag) {
    var s = el(tag || "span", cls);
    s.appendChild(document.createTextNode(zh));
    if (en) { s.appendChild(document.createTextNode(" ")); s.appendChild(el("small", "en", en)); }
    return s;
  }
  function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); }
  function ago(ms, now) {
    if (ms === null || ms === undefined) return ["从未", "never"];
    var s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 60) return [s + " 秒前", s + " s ago"];
    var m = Math.floor(s / 60);
    if (m < 60) return [m + " 分钟前", m + " min ago"];
    var h = Math.floor(m / 60);
    if (h < 48) return [h + " 小时前", h + " h ago"];
    var d = Math.floor(h / 24);
    return [d + " 天前", d + " days ago"];
  }
  function offset(ms) {
    if (ms === null || ms === undefined) return ["—", "not known yet"];
    if (Math.abs(ms) < 50) return ["0 秒", "0 s"];
    var sign = ms < 0 ? "−" : "+", a = Math.abs(ms) / 1000;
    if (a < 60) return [sign + a.toFixed(1) + " 秒", sign + a.toFixed(1) + " s"];
    if (a < 3600) return [sign + Math.round(a / 60) + " 分钟", sign + Math.round(a / 60) + " min"];
    return [sign + (a / 3600).toFixed(1) + " 小时", sign + (a / 3600).toFixed(1) + " h"];
  }
  function hhmmss(ms) {
    var d = new Date(ms), p = function (n) { return (n < 10 ? "0" : "") + n; };
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function row(dl, zh, en, value) {
    dl.appendChild(bi(zh, en, null, "dt"));
    var dd = el("dd");
    if (typeof value === "string") dd.textContent = value; else dd.appendChild(value);
    dl.appendChild(dd);
  }
  function stat(parent, cls, num, zh, en, pre) {
    var s = el("span", "stat" + (cls ? " " + cls : ""));
    if (pre) s.appendChild(document.createTextNode(pre + " "));
    s.appendChild(el("b", null, num));
    s.appendChild(document.createTextNode(zh ? " " + zh : ""));
    if (en) { s.appendChild(document.createTextNode(" ")); s.appendChild(el("small", "en", en)); }
    parent.appendChild(s);
  }

  function summary(snap) {
    var box = $("summary"); clear(box);
    var s = snap.summary, u = snap.uplink;
    if (!s) return;
    stat(box, "", s.terminals, "台", "terminals", "终端");
    stat(box, "", s.online, "", "online", "在线");
    if (s.offline) stat(box, "bad", s.offline, "", "offline", "离线");
    stat(box, s.attention ? "warn" : "", s.attention, "", "need attention", "需处理");
    var up = el("span", "stat" + (u.state === "uplink_alarm" ? " bad" : u.state === "uplink_backlog" ? " warn" : ""));
    up.appendChild(bi("上报", "uplink"));
    up.appendChild(document.createTextNode(" "));
    up.appendChild(bi(u.word, u.word_en, "upword"));
    var last = ago(u.last_success_ms, snap.now_ms);
    up.appendChild(document.createTextNode(" · "));
    up.appendChild(bi("最后成功 " + (u.last_success_ms === null ? "—" : last[0]),
                      "last success " + (u.last_success_ms === null ? "none yet" : last[1])));
    box.appendChild(up);
    stat(box, s.open_alerts ? "bad" : "", s.open_alerts, "", "open 差评 alerts", "未处理差评");
  }

  function card(node, t, now) {
    clear(node);
    node.className = "term " + (BAD[t.state] || "") + (t.state === "never_seen" || t.retired ? " " + t.state : "");
    node.setAttribute("data-state", t.state);
    node.setAttribute("data-states", t.states.join(" "));
    var head = el("div", "head");
    head.appendChild(bi("窗口 " + (t.window_no === null ? "—" : t.window_no), null, "win"));
    head.appendChild(el("span", "tid", t.id));
    head.appendChild(bi(t.online ? "在线" : "离线", t.online ? "online" : "offline",
                        "badge" + (t.online ? "" : " off")));
    node.appendChild(head);
    var chips = el("div", "chips");
    for (var i = 0; i < t.states.length; i++) {
      if (t.states[i] === "offline") continue;  // the badge says it
      var c = bi(t.words[i], t.words_en[i], "chip " + (BAD[t.states[i]] || ""));
      c.setAttribute("data-state", t.states[i]);
      chips.appendChild(c);
    }
    node.appendChild(chips);
    var dl = el("dl");
    var seen = ago(t.last_seen_ms, now);
    row(dl, "最后通信", "last seen", bi(seen[0], seen[1], "seen"));
    row(dl, "固件", "firmware", (t.firmware || "—") + (t.board ? " · " + t.board : ""));
    var j = el("span", "journal");
    if (t.fill_pct !== null) {
      var bar = el("span", "bar " + (t.states.indexOf("buffer_full") >= 0 ? "bad" :
                                     t.states.indexOf("buffer_high") >= 0 ? "warn" : ""));
      var fill = el("i"); fill.style.width = Math.min(100, t.fill_pct) + "%";
      bar.appendChild(fill); j.appendChild(bar);
      j.appendChild(document.createTextNode(t.fill_pct + "% (" + t.journal_used + "/" + t.journal_capacity + ") "));
    } else {
      j.appendChild(document.createTextNode("— "));
    }
    j.appendChild(bi(t.buffer_days_left === null ? "可用天数未知" : "可用约 " + t.buffer_days_left + " 天",
                     t.buffer_days_left === null ? "days left unknown" : "about " + t.buffer_days_left + " days left",
                     "days"));
    row(dl, "缓存", "journal", j);
    var off = offset(t.clock_offset_ms);
    row(dl, "时钟偏差", "clock offset", bi(off[0], off[1], "offset"));
    row(dl, "未确认", "unacknowledged", t.unacknowledged === null ? "—" : String(t.unacknowledged));
    row(dl, "拒收", "refused, 24 h", String(t.refusals_24h));
    node.appendChild(dl);
  }

  var nodes = {};
  function terminals(snap) {
    var box = $("terminals"), seen = {};
    for (var i = 0; i < snap.terminals.length; i++) {
      var t = snap.terminals[i], n = nodes[t.id];
      if (!n) { n = nodes[t.id] = el("article"); n.setAttribute("data-id", t.id); }
      card(n, t, snap.now_ms);
      if (box.children[i] !== n) box.insertBefore(n, box.children[i] || null);
      seen[t.id] = true;
    }
    for (var id in nodes) {
      if (!seen[id]) { box.removeChild(nodes[id]); delete nodes[id]; }
    }
    $("no-terminals").hidden = snap.terminals.length > 0;
  }

  function alerts(snap) {
    var box = $("alerts"); clear(box);
    var s = snap.summary;
    $("alert-count").textContent = s ? String(s.open_alerts) : "";
    var win = {};
    for (var i = 0; i < snap.terminals.length; i++) win[snap.terminals[i].id] = snap.terminals[i].window_no;
    for (i = 0; i < snap.alerts.length; i++) {
      var a = snap.alerts[i], li = el("li");
      li.setAttribute("data-rating", String(a.rating_id));
      li.appendChild(bi(a.level_word, a.level_word_en, "lvl"));
      var w = a.window_no || win[a.terminal];
      li.appendChild(document.createTextNode(" · 窗口 " + (w || "—")));
      if (a.case_no) li.appendChild(document.createTextNode(" · 办件 " + a.case_no));
      if (a.staff_name) li.appendChild(document.createTextNode(" · " + a.staff_name));
      if (a.reason) li.appendChild(document.createTextNode(" · 原因 " + a.reason));
      var when = ago(a.created_ms, snap.now_ms);
      li.appendChild(document.createTextNode(" · "));
      li.appendChild(bi(when[0], when[1]));
      box.appendChild(li);
    }
    $("no-alerts").hidden = !s || s.open_alerts > 0;
    if (s && s.open_alerts > snap.alerts.length) {
      box.appendChild(bi("另有 " + (s.open_alerts - snap.alerts.length) + " 条",
                         (s.open_alerts - snap.alerts.length) + " more", "none", "li"));
    }
  }

  function banner(zh, en, cls) {
    var b = $("banner"); clear(b);
    if (!zh) { b.hidden = true; return; }
    b.className = "banner" + (cls ? " " + cls : "");
    b.appendChild(bi(zh, en)); b.hidden = false;
  }

  function render(snap) {
    var d = snap.daemon;
    if (!d.store_open) banner("存储不可用：评价暂不确认，终端保留评价", "store not open: ratings are not acknowledged, the terminals keep them" + (d.store_error ? " (" + d.store_error + ")" : ""));
    else if (d.store_full) banner("存储已满：评价暂不确认，终端保留评价", "store full: ratings are not acknowledged, the terminals keep them");
    else banner(null);
    summary(snap); terminals(snap); alerts(snap);
    $("daemon").textContent = "hcp " + d.version + " · 启动 started " + hhmmss(d.started_ms);
    $("updated").textContent = "更新于 " + hhmmss(snap.now_ms) + " · updated every " + (REFRESH_MS / 1000) + " s";
    document.body.classList.remove("stale");
    document.body.setAttribute("data-now", String(snap.now_ms));
  }

  var timer = null;
  function later() { clearTimeout(timer); timer = setTimeout(refresh, REFRESH_MS); }
  function refresh() {
    if (document.hidden) { later(); return; }
    fetch("v1/status", {credentials: "same-origin", cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) {
          document.body.classList.add("stale");
          banner("登录已过期，请重新打开本页", "login expired: open this page again", "info");
          var a = el("a", null, " /status"); a.href = "status"; $("banner").appendChild(a);
          return null;
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (snap) { if (snap) render(snap); })
      .catch(function () {
        document.body.classList.add("stale");
        banner("与守护进程的连接中断，正在重试", "lost the daemon, retrying", "info");
      })
      .then(later);
  }
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  refresh();
})();
""".replace("@REFRESH_MS@", str(REFRESH_S * 1000))


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


LOGIN_CSS = """
body{margin:0;padding:16px;font-family:"PingFang SC","Noto Sans CJK SC","WenQuanYi Micro Hei","Microsoft YaHei",system-ui,sans-serif;background:#f5f6f8;color:#111}
main{max-width:420px;margin:8vh auto;background:#fff;border:1px solid #e3e5e8;border-radius:10px;padding:16px 18px}
h1{font-size:1.2rem;margin:0 0 8px}small{color:#6b7280;font-size:.8em}
p.err{color:#c62828;font-weight:600}
input{width:100%;font-size:1rem;padding:8px;margin:8px 0;border:1px solid #c9ccd1;border-radius:6px}
button{font-size:1rem;padding:8px 16px;border:0;border-radius:6px;background:#1b7f3b;color:#fff}
button small{color:#e8f5ec}
"""

PAGE_HTML = (
    '<!doctype html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<link rel="icon" href="data:,">\n'
    "<title>大厅状态 hall status · haochaping</title>\n"
    f"<style>{CSS}</style>\n</head>\n<body>\n"
    '<header><h1>大厅状态 <small>hall status</small></h1>'
    '<span id="updated">正在加载… <small>loading</small></span></header>\n'
    '<div id="banner" class="banner" hidden></div>\n<main>\n'
    '<section id="summary" class="summary" aria-label="summary"></section>\n'
    '<h2>终端 <small>terminals, most urgent first</small></h2>\n'
    '<p id="no-terminals" class="none" hidden>尚无终端 <small>no terminal provisioned</small></p>\n'
    '<div id="terminals" class="cards"></div>\n'
    '<h2>未处理差评 <small>open 差评 alerts</small> <span id="alert-count"></span></h2>\n'
    '<p id="no-alerts" class="none" hidden>没有未处理的差评 <small>no open 差评</small></p>\n'
    '<ol id="alerts" class="alerts"></ol>\n</main>\n'
    '<noscript><p>本页需要 JavaScript <small>this page needs JavaScript; '
    "the same data: /v1/status</small></p></noscript>\n"
    '<footer><span id="daemon"></span></footer>\n'
    f"<script>{JS}</script>\n</body>\n</html>\n"
)


def login_html(error: bool) -> str:
    msg = ('<p class="err">令牌无效 <small>that token is not valid</small></p>' if error else
           "<p>请输入状态页令牌 <small>enter the status page's token</small></p>")  # fmt: skip
    return (
        '<!doctype html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>需要令牌 token required · haochaping</title>\n<style>{LOGIN_CSS}</style>\n"
        "</head>\n<body>\n<main>\n<h1>大厅状态 <small>hall status</small></h1>\n"
        f'{msg}\n<form method="post" action="status/login">\n'
        '<label for="token">令牌 <small>token</small></label>\n'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>\n'
        '<button type="submit">登录 <small>log in</small></button>\n'
        "</form>\n</main>\n</body>\n</html>\n"
    )


def _headers(styles: list[str], script: str | None) -> dict[str, str]:
    csp = (
        "default-src 'none'; img-src data:; connect-src 'self'; form-action 'self';"
        " base-uri 'none'; frame-ancestors 'none'; style-src " + " ".join(styles)
        + ("; script-src " + script if script else "")
    )  # fmt: skip
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


PAGE_HEADERS = _headers([_sha(CSS)], _sha(JS))
LOGIN_HEADERS = _headers([_sha(LOGIN_CSS)], None)

OPENAPI_PATHS: dict[str, Any] = {
    JSON: {"get": {
        "summary": "The hall's health: terminals with states (Chinese and English words), the"
                   " uplink, open 差评 alerts, the daemon's store state; an API token, a read-only"
                   " status token (api.status_tokens_file) or the status page's cookie",
        "security": [{"bearer": []}],
        "responses": {"200": {"description": "snapshot"}, "401": {"description": "no valid token"},
                      "503": {"description": "the store cannot be read just now"}},
    }},
    PAGE: {"get": {
        "summary": "The same as a page (refreshes itself); ?token=TOKEN logs a browser in"
                   " (303 to /status with an HttpOnly, SameSite=Strict cookie)",
        "responses": {"200": {"description": "text/html"}, "303": {"description": "logged in"},
                      "401": {"description": "a page with a login form"}},
    }},
    LOGIN: {"post": {
        "summary": "Log a browser in: form field token; 303 to /status with the cookie",
        "responses": {"303": {"description": "logged in"}, "401": {"description": "wrong token"}},
    }},
}  # fmt: skip


# ------------------------------------------------------------------ handlers


class StatusPage:
    """The routes of the status page on ``app``, for the daemon ``daemon``."""

    def __init__(self, daemon: Any, app: web.Application) -> None:
        self.d = daemon
        self.started_ms = now_ms()  # the API (so the daemon) started
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="status")
        self.conn: sqlite3.Connection | None = None  # used on self.executor's thread only
        self.lock = asyncio.Lock()
        self.last: tuple[int, dict[str, Any]] | None = None
        app.router.add_get(PAGE, self.page)
        app.router.add_post(LOGIN, self.login)
        app.router.add_get(JSON, self.status)
        app.on_cleanup.append(self._close)

    # -------------------------------------------------------------- auth

    def owns(self, path: str) -> bool:
        return path in PATHS

    def _tokens(self) -> dict[str, str]:
        cfg = self.d.cfg  # read each time: a reload may have changed the tokens
        return {**cfg.status_tokens, **cfg.api_tokens}

    def refused(self, given: bytes) -> web.Response | None:
        """403 for a read-only token outside /status and /v1/status."""
        if _match(given, self.d.cfg.status_tokens) is None:
            return None
        return web.json_response({"error": READ_ONLY_403}, status=403)

    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The auth of PATHS (the API's middleware hands them here)."""
        if request.path == LOGIN or (request.path == PAGE and "token" in request.query):
            return await handler(request)  # a login: the handler checks the token it is given
        cookie = None
        h = request.headers.get("Authorization")
        if h is not None:
            m = _match(h[7:].encode("utf-8", "surrogateescape") if h.startswith("Bearer ") else b"",
                       self._tokens())  # fmt: skip
            who = None if m is None else m[0]
        else:
            cookie = check_cookie(request.cookies.get(COOKIE, ""), self._tokens(), now_ms() // 1000)
            who = None if cookie is None else cookie[0]
        if who is None:
            if request.path == JSON:
                return web.json_response(
                    {"error": "a valid bearer token (or the status page's cookie: open /status)"
                              " is required"}, status=401)  # fmt: skip
            return self._login_page(error=False)
        request["client"] = who
        resp = await handler(request)
        if cookie is not None and resp.status == 200:
            now_s = now_ms() // 1000
            if cookie[2] - now_s < COOKIE_MAX_AGE_S - COOKIE_RENEW_S:
                self._set_cookie(resp, request, cookie[1], cookie[0], now_s)
        return resp

    def _set_cookie(self, resp: web.StreamResponse, request: web.Request, token: str,
                    name: str, now_s: int) -> None:  # fmt: skip
        resp.set_cookie(COOKIE, make_cookie(token, name, now_s), max_age=COOKIE_MAX_AGE_S, path="/",
                        httponly=True, samesite="Strict", secure=request.secure)  # fmt: skip

    def _login_page(self, error: bool) -> web.Response:
        return web.Response(text=login_html(error), status=401, content_type="text/html",
                            charset="utf-8", headers=LOGIN_HEADERS)  # fmt: skip

    def _logged_in(self, request: web.Request, token: str | None) -> web.StreamResponse:
        m = None if token is None else _match(token.encode("utf-8", "surrogateescape"), self._tokens())
        if m is None:
            return self._login_page(error=True)
        log.info("status page: a browser logged in with the token of %s", m[0])
        resp = web.Response(status=303, headers={"Location": PAGE, "Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})  # fmt: skip
        self._set_cookie(resp, request, m[1], m[0], now_ms() // 1000)
        return resp

    # -------------------------------------------------------------- routes

    async def page(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query:
            return self._logged_in(request, request.query.get("token"))
        return web.Response(text=PAGE_HTML, content_type="text/html", charset="utf-8",
                            headers=PAGE_HEADERS)  # fmt: skip

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            form = await request.post()
        except Exception:  # noqa: BLE001 - a body we cannot read is a wrong login, not a 500
            form = None
        tok = form.get("token") if form is not None else None
        return self._logged_in(request, tok if isinstance(tok, str) else None)

    async def status(self, request: web.Request) -> web.Response:
        try:
            body = await self.snapshot()
        except sqlite3.Error as e:
            log.warning("status: the store cannot be read just now: %s", type(e).__name__)
            return web.json_response(
                {"error": f"the store cannot be read just now ({type(e).__name__})"}, status=503)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # -------------------------------------------------------------- the snapshot

    def _daemon(self) -> dict[str, Any]:
        d = self.d
        return {"store_open": d.core is not None, "store_full": bool(d.store_full),
                "store_error": d.store_down, "started_ms": self.started_ms,
                "version": __version__}  # fmt: skip

    async def snapshot(self) -> dict[str, Any]:
        """``health.snapshot`` with the core's ``online``, plus ``daemon``."""
        async with self.lock:
            core = self.d.core
            t = now_ms()
            if core is None:
                return {"now_ms": t, "daemon": self._daemon(), "terminals": [], "summary": None,
                        "uplink": None, "alerts": []}  # fmt: skip
            if self.last is not None and 0 <= t - self.last[0] < SNAPSHOT_REUSE_MS:
                snap = self.last[1]
            else:
                # the core's view, taken here on the loop; the queries run on our thread
                online = {tid: core.online(tid, t) for tid in core.peers}
                path = str(self.d.cfg.db_path if self.d.store is None else self.d.store.path)
                loop = asyncio.get_running_loop()
                snap = await loop.run_in_executor(self.executor, self._take, path, t, online)
                self.last = (t, snap)
            return {**snap, "daemon": self._daemon()}

    def _take(self, path: str, t: int, online: dict[int, bool]) -> dict[str, Any]:
        if self.conn is None:
            self.conn = health.open_readonly(path)
        try:
            self.conn.execute("BEGIN")  # one consistent read of every table
            try:
                return health.snapshot(self.conn, t, online)
            finally:
                self.conn.execute("COMMIT")
        except sqlite3.Error:
            self.conn.close()
            self.conn = None  # opened again next time
            raise

    async def _close(self, app: web.Application) -> None:
        def close() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        await asyncio.get_running_loop().run_in_executor(self.executor, close)
        self.executor.shutdown(wait=True)
