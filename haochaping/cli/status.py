"""``hcp status``: the hall's health on one screen (daemon/health.py).

Per terminal: window, 在线/离线, last seen, firmware, journal fill and the
days of buffer left at the window's usual rate, clock offset, ratings not
yet acknowledged, refusals; then the uplink's backlog and last success, and
the open 差评 alerts.  Chinese words first, English beside; colours where a
terminal shows them; ``--json`` for scripts; ``--watch`` refreshes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

DEFAULT_CONFIG = "/etc/haochaping/haochaping.toml"  # the daemon's config, or $HCP_CONFIG

STYLE = {"ok": "green", "retired": "dim", "offline": "bold red", "never_seen": "yellow",
         "buffer_full": "bold red", "buffer_high": "yellow", "clock_off": "magenta"}  # fmt: skip


def ago(ms: int | None, now_ms: int, en: bool = False) -> str:
    """'3分钟前' (or '3 min ago' with ``en``): the age of ``ms``."""
    if ms is None:
        return "never" if en else "从未"
    s = max(0, (now_ms - ms) // 1000)
    for unit, zh, e in ((86400, "天前", "d ago"), (3600, "小时前", "h ago"), (60, "分钟前", "min ago")):
        if s >= unit:
            return f"{s // unit} {e}" if en else f"{s // unit}{zh}"
    return f"{s} s ago" if en else f"{s}秒前"


def _offset(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:+.0f}秒" if abs(s) < 600 else f"{s / 60:+.0f}分"


def _styled(style: str, text: str) -> str:
    return f"[{style}]{text}[/]" if style else text


def terminal_table(rows: list[dict[str, Any]], now_ms: int, with_link: bool = False) -> Any:
    """One row per terminal, Chinese words in the cells (the header says each
    column in Chinese and English; the legend under the table the states)."""
    from rich.table import Table

    t = Table(title="终端 terminals", caption=_legend(rows), caption_justify="left")
    cols = ["窗口\nwindow", "终端\nterminal", "状态\nstate", "最后通信\nlast seen", "缓存\njournal",
            "可用\ndays left", "时钟\nclock", "未确认\nunacked", "拒收\nrefused", "固件\nfirmware"]  # fmt: skip
    if with_link:
        cols.insert(3, "链路\nlink")
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        state = " ".join(_styled(STYLE.get(s, ""), w) for s, w in zip(r["states"], r["words"], strict=True))
        if not r["retired"] and r["state"] != "never_seen":
            state = ("[green]在线[/] " if r["online"] else "") + state if r["state"] != "offline" else state
        fill = "-" if r["fill_pct"] is None else f"{r['journal_used']}/{r['journal_capacity']}"
        if r["fill_pct"] is not None and r["fill_pct"] >= 50:
            fill += f" {r['fill_pct']:.0f}%"
        days = "-" if r["buffer_days_left"] is None else f"{r['buffer_days_left']:.1f}天"
        cells = [r["window_no"] or "-", r["id"], state, ago(r["last_seen_ms"], now_ms), fill, days,
                 _offset(r["clock_offset_ms"]), str(r["unacknowledged"] or 0), str(r["refusals_24h"]),
                 r["firmware"] or "-"]  # fmt: skip
        if with_link:
            cells.insert(3, r.get("transport") or "-")
        t.add_row(*cells, style="dim" if r["retired"] else None)
    return t


def _legend(rows: list[dict[str, Any]]) -> str:
    from haochaping.daemon.health import WORDS

    seen = []
    for r in rows:
        for s in r["states"]:
            if s not in seen:
                seen.append(s)
    return "  ".join(f"{WORDS[s][0]} = {WORDS[s][1]}" for s in seen)


def render(snap: dict[str, Any]) -> Any:
    """The whole screen (a rich renderable)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    s, up, now = snap["summary"], snap["uplink"], snap["now_ms"]
    head = Text.from_markup(
        f"[bold]大厅状态 hall status[/]  终端 {s['terminals']} 台 · [green]在线 {s['online']}[/] · "
        f"[red]离线 {s['offline']}[/] · 需处理 {s['attention']} · 评价 {s['ratings']} · "
        f"[bold red]待处理差评 {s['open_alerts']}[/]\n"
        f"[dim]{s['terminals']} terminals, {s['online']} online, {s['offline']} offline, "
        f"{s['attention']} need attention, {s['ratings']} ratings, {s['open_alerts']} open 差评 alerts[/]"
    )
    ustyle = {"uplink_ok": "green", "uplink_backlog": "yellow", "uplink_alarm": "bold red"}.get(up["state"], "")
    upl = Text.from_markup(
        f"上报 uplink: {_styled(ustyle, up['word'])} ({up['word_en']}) · 待发 {up['pending_batches']} 批"
        f" {up['pending_ratings']} 条 pending · 未成批 {up['unbatched_ratings']} unbatched · "
        f"最后成功 {ago(up['last_success_ms'], now)} last success"
        + (f" · 告警 alarms {', '.join(up['alarms'])}" if up["alarms"] else "")
        + (f" · 暂扣 held {up['held']}" if up["held"] else "")
    )
    parts: list[Any] = [head, upl, terminal_table(snap["terminals"], now)]
    if snap["alerts"]:
        a = Table(title="待处理差评 open 差评 alerts")
        for c in ("时间\ntime", "窗口\nwindow", "评价\nlevel", "工作人员\nstaff", "办件\ncase", "终端\nterminal"):
            a.add_column(c, overflow="fold")
        for x in snap["alerts"][:20]:
            a.add_row(time.strftime("%m-%d %H:%M", time.localtime(x["created_ms"] / 1000)), x["window_no"] or "-",
                      f"[red]{x['level_word']}[/]", x["staff_name"] or "-", x["case_no"] or "-",
                      x["terminal"])  # fmt: skip
        parts.append(a)
    return Group(*parts)


def _snapshot(config_path: str) -> dict[str, Any]:
    from haochaping.daemon import config as config_mod
    from haochaping.daemon import health
    from haochaping.daemon.clock import now_ms

    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as e:
        raise click.ClickException(f"配置文件有误 (config): {e}") from None
    if not cfg.db_path.exists():
        raise click.ClickException(f"没有数据库 (no store at {cfg.db_path}): has the daemon ever run?")
    conn = health.open_readonly(str(cfg.db_path))
    try:
        return health.snapshot(conn, now_ms())
    finally:
        conn.close()


@click.command("status")
@click.option("--config", "config_path", envvar="HCP_CONFIG", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The daemon's TOML config (or $HCP_CONFIG).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON (for scripts).")
@click.option("--watch", type=float, default=None, is_flag=False, flag_value=2.0,
              help="Refresh every N seconds (default 2) until Ctrl-C.")  # fmt: skip
def status(config_path: str, as_json: bool, watch: float | None) -> None:
    """The hall's health: every terminal (在线/离线, 缓存将满, 时钟偏差 ...), the uplink, open 差评 alerts."""
    if as_json:
        click.echo(json.dumps(_snapshot(config_path), ensure_ascii=False, indent=2))
        return
    from rich.console import Console

    console = Console()
    if watch is None:
        console.print(render(_snapshot(config_path)))
        return
    from rich.live import Live

    with Live(render(_snapshot(config_path)), console=console, screen=False, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(max(0.5, watch))
                live.update(render(_snapshot(config_path)), refresh=True)
        except KeyboardInterrupt:
            pass
