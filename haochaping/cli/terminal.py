"""``hcp terminal``: a technician's commands for the hall's terminals (终端).

    provision   a new terminal for a window (or a whole hall from a CSV file)
    list        every terminal, its state in a word (在线/离线, 缓存将满, ...)
    show ID     one terminal in full: windows served, journals, events
    replace OLD a new board takes OLD's window (OLD stays until retired)
    retire ID   revoke the terminal's key at once; its window closes
    rekey ID    a new key, with no rating lost

Every command writes the daemon's store (the one source of truth: it works
whether or not the daemon runs) and bumps the terminals' version there; a
running daemon takes the change up within a tick (no restart, no SIGHUP) and
records the version it applied, which the command waits for and reports.
Nothing here prints or logs a key: a board's key only goes into its config
file (mode 0600) or straight onto the board over USB (mpremote).  docs/technician.md
walks through the commands.
"""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from haochaping.cli.status import DEFAULT_CONFIG

WAIT_S = 5.0  # for the running daemon to take a change up (it looks every 0.5 s)
HELLO_WAIT_S = 60.0  # for a new board's first HELLO before the self-test
TRANSPORTS = ("serial", "usb", "mqtt")
CSV_COLUMNS = ("window", "transport", "board", "port", "wifi_ssid", "wifi_pass_file", "broker", "id")


# ---------------------------------------------------------------- helpers


def _say(zh: str, en: str, err: bool = False) -> None:
    """A line for the technician: Chinese first, English beside."""
    click.echo(f"{zh}  ({en})", err=err)


@dataclass
class Ctx:
    config_path: str
    cfg: Any = None
    store: Any = None

    def open(self) -> Any:
        if self.store is None:
            from haochaping.daemon import config as config_mod
            from haochaping.daemon.store import Store, StoreError

            try:
                self.cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as e:
                raise click.ClickException(f"配置文件有误 (config): {e}") from None
            try:
                self.cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
                self.store = Store(self.cfg.db_path)
            except (StoreError, OSError) as e:
                raise click.ClickException(f"无法打开数据库 (cannot open the store {self.cfg.db_path}): {e}") from None
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _ctx(ctx: click.Context) -> Ctx:
    obj = ctx.find_object(Ctx)
    assert obj is not None
    return obj


def _parse_id(text: str) -> int:
    try:
        v = int(text, 16)
    except ValueError:
        v = -1
    if len(text) != 8 or not 0 < v <= 0xFFFFFFFF:
        raise click.BadParameter("终端编号为 8 位十六进制 (a terminal id is 8 hex digits, not 00000000)")
    return v


def _new_id(store: Any) -> int:
    while True:
        tid = secrets.randbits(32)
        if tid and not store.terminal_exists(tid):
            return tid


def _fingerprint(key: bytes) -> str:
    """Names a key without revealing it (the first 8 hex digits of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:8]


def _wait_applied(store: Any, wait_s: float) -> bool:
    """True once a running daemon has taken up the last change (it records the
    version it applied); False after ``wait_s`` (no daemon, or a busy one)."""
    version, applied = store.terminals_version()
    end = time.monotonic() + wait_s
    while applied < version:
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
        version, applied = store.terminals_version()
    return True


def _report_applied(store: Any, wait_s: float) -> None:
    if _wait_applied(store, wait_s):
        _say("运行中的守护进程已生效", "the running daemon has taken the change up")
    else:
        _say(f"{wait_s:g} 秒内没有运行中的守护进程确认；它下次启动时生效",
             f"no running daemon confirmed within {wait_s:g} s; it applies at the daemon's next start")  # fmt: skip


def _broker_url(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    u = urlsplit(url if "://" in url else "mqtt://" + url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise click.BadParameter("mqtt://HOST:PORT", param_hint="--broker")
    return {"host": u.hostname, "port": u.port or (8883 if u.scheme == "mqtts" else 1883)}


def _mqtt_prefix(cfg: Any) -> str:
    for t in cfg.transports:
        if t.url.startswith("mqtt"):
            return str(t.options.get("prefix") or "hcp")
    return "hcp"


def _broker(c: Ctx, tid: int, password: str | None, *, remove: bool = False) -> None:
    """The terminal's broker login (``[broker]`` of the config; daemon/broker.py):
    set (provision, rekey: ``password``) or removed (retire), then the broker
    reloaded, which disconnects a login that is gone or changed."""
    if password is None and not remove:
        return
    b = c.cfg.broker
    if b is None:
        if not remove:
            _say("配置中没有 [broker]：终端的消息服务器账号需手动建立",
                 "no [broker] in the config: give the terminal its broker login by hand (docs/operations.md)")  # fmt: skip
        return
    from haochaping.daemon import broker

    try:
        files = broker.from_config(b)
        if remove:
            files.remove_terminal(tid)
        else:
            assert password is not None
            files.set_terminal(tid, password)
        how = files.reload()
    except (broker.BrokerFileError, broker.BrokerReloadError) as e:
        raise click.ClickException(
            f"消息服务器账号未更新 (the broker login of {tid:08x} was not updated): {e}."
            " The daemon's store has the change; fix this, then run the command again"
            + (" (hcp terminal rekey gives a new login)" if not remove else "")) from None  # fmt: skip
    if remove:
        _say(f"已从消息服务器删除其账号（{how}）", f"its broker login is removed ({how})")
    else:
        _say(f"消息服务器账号 {tid:08x} 已更新（{how}）", f"broker login {tid:08x} set ({how})")


@dataclass
class Plan:
    """One terminal to provision (a command line, or a row of the CSV file)."""

    window: str
    transport: str = "serial"
    board: str = "esp32s3"
    port: str | None = None
    wifi_ssid: str | None = None
    wifi_pass_file: str | None = None
    broker: str | None = None
    tid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    window: str
    terminal: str | None
    status: str  # created | exists | failed
    detail: str = ""
    config_file: str | None = None
    label: str | None = None
    selftest: str | None = None
    selftest_ok: bool | None = None


def _link(transport: str, board: str) -> str:
    if transport == "serial" and board == "esp32c3":
        return "usb"  # the C3 has no UART pins free: its serial link is USB
    return transport


def _board_cfg(p: Plan, tid: int, key: bytes, cfg: Any, mqtt_password: str | None) -> dict[str, Any]:
    from haochaping.firmware_bundle import BundleError, board_config

    wifi = None
    if p.wifi_ssid:
        if not p.wifi_pass_file:
            raise click.ClickException("--wifi-ssid 需要 --wifi-pass-file (the Wi-Fi password comes from a file)")
        try:
            wifi = (p.wifi_ssid, Path(p.wifi_pass_file).read_text("utf-8").strip())
        except OSError as e:
            raise click.ClickException(f"cannot read the Wi-Fi password file: {e}") from None
    mqtt = None
    if p.transport == "mqtt":
        mqtt = _broker_url(p.broker or (cfg.broker.terminal_url if cfg.broker is not None else None))
        if mqtt is None:
            raise click.ClickException("MQTT 终端需要 --broker mqtt://HOST:PORT，或配置 broker.terminal_url"
                                       " (the address terminals reach the broker at)")  # fmt: skip
        mqtt.update(prefix=_mqtt_prefix(cfg), user=f"{tid:08x}", password=mqtt_password)
    try:
        return board_config(tid, key, link=_link(p.transport, p.board), board=p.board, wifi=wifi, mqtt=mqtt)
    except BundleError as e:
        raise click.ClickException(str(e)) from None


def _deliver_config(board_cfg: dict[str, Any], p: Plan, out: Path | None, bundle: Path, deploy: bool) -> tuple[str, str]:
    """Put the config where the board gets it: over USB (mpremote, with the
    bundle when the board has none or an older one) or into a file (0600).
    Returns (where, what was done)."""
    from haochaping import firmware_bundle as fb

    text = json.dumps(board_cfg, indent=2, sort_keys=True) + "\n"
    if p.port is None:
        assert out is not None
        fb.write_private(out, text)
        return str(out), "配置已写入文件 (config written; it holds the key: copy it to the board as /config.json, then delete it)"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hcp-board-") as tmp:
        f = Path(tmp) / "config.json"
        fb.write_private(f, text)
        try:
            why = None
            if deploy:
                ours = json.loads((bundle / "manifest.json").read_text("utf-8")) if (bundle / "manifest.json").exists() else None
                if ours is None:
                    fb.build(bundle)
                    ours = json.loads((bundle / "manifest.json").read_text("utf-8"))
                why = fb.needs_deploy(fb.board_manifest(p.port), ours)
            if why:
                fb.deploy(bundle, p.port, f)
                done = f"固件与配置已写入终端 (bundle and config copied to the board: {why})"
            else:
                fb.send_config(p.port, f)
                done = "配置已写入终端 (config copied to the board; its firmware is current)"
        except fb.BundleError as e:
            raise click.ClickException(f"写入终端失败 (could not write the board at {p.port}): {e}") from None
    return p.port, done


def _safe(window: str) -> str:
    """The window as a file name part (a window number may hold any text)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in window) or "_"


def _label(tid: int, window: str, labels: Path | None, show: bool) -> str | None:
    """A label: terminal id and window, and a QR code of both (PNG, and in the terminal)."""
    import segno

    text = f"HCP-TERMINAL:{tid:08x};WINDOW:{window}"
    qr = segno.make(text, error="m")
    path = None
    if labels is not None:
        labels.mkdir(parents=True, exist_ok=True)
        path = labels / f"{_safe(window)}-{tid:08x}.png"
        qr.save(str(path), scale=8, border=4)
    if show:
        click.echo(f"┌ 终端 {tid:08x}   窗口 {window}")
        qr.terminal(compact=True)
    return str(path) if path else None


def _wait_hello(store: Any, tid: int, since_ms: int, wait_s: float) -> bool:
    """True once the daemon has heard the terminal (a HELLO after ``since_ms``)."""
    end = time.monotonic() + wait_s
    while True:
        row = store.conn.execute("SELECT last_seen_ms, journal_id FROM terminals WHERE id = ?", (tid,)).fetchone()
        if row is not None and row[0] is not None and row[0] >= since_ms and row[1] is not None:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.2)


def _selftest(c: Ctx, tid: int, buttons: bool, wait_s: float, since_ms: int) -> tuple[bool, str]:
    """The self-test over the link: the terminal's HELLO, then (through the
    running daemon's API) each LED and the buzzer, and an echo of each button.
    Returns (passed, what it found)."""
    from haochaping.cli import selftest

    store = c.open()
    _say(f"等待终端 {tid:08x} 上线", f"waiting for terminal {tid:08x}'s HELLO, up to {wait_s:g} s")
    if not _wait_hello(store, tid, since_ms, wait_s):
        return False, (f"终端 {wait_s:g} 秒内没有上线 (no HELLO within {wait_s:g} s: check its cable or"
                       " Wi-Fi, its config, and that the daemon runs)")  # fmt: skip
    _say("终端已上线 (HELLO ✓)，开始自检", "the terminal said HELLO; self-test")
    try:
        res = selftest.run(c.cfg, tid, buttons=buttons)
    except selftest.SelfTestError as e:
        return False, "HELLO ✓ · " + e.message
    return res.ok, "HELLO ✓ · " + res.summary()


def provision_one(c: Ctx, p: Plan, *, out_dir: Path, labels: Path | None, show_label: bool,
                  bundle: Path, deploy: bool, selftest: bool, buttons: bool, hello_wait: float,
                  wait: float) -> Outcome:  # fmt: skip
    """Provision one terminal for ``p.window``; idempotent (an active terminal
    of that window is reported as 'exists' and left as it is)."""
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.store import StoreError

    store = c.open()
    if p.transport not in TRANSPORTS:
        return Outcome(p.window, None, "failed", f"transport is one of {', '.join(TRANSPORTS)}")
    have = store.terminal_for_window(p.window)
    if have is not None:
        return Outcome(p.window, f"{have:08x}", "exists", "窗口已有终端 (the window has a terminal: skipped)")
    tid = p.tid if p.tid is not None else _new_id(store)
    key = secrets.token_bytes(32)
    mqtt_password = secrets.token_urlsafe(24) if p.transport == "mqtt" else None
    board_cfg = _board_cfg(p, tid, key, c.cfg, mqtt_password)
    t0 = now_ms()
    # The board's config and its broker login first, the registration last:
    # whatever fails before it leaves the window unprovisioned, so running
    # the same command again does the whole of it (never "exists" with a
    # board that has no config).
    out = out_dir / f"terminal-{_safe(p.window)}-{tid:08x}.json"
    where, done = _deliver_config(board_cfg, p, out if p.port is None else None, bundle, deploy)
    try:
        _broker(c, tid, mqtt_password)
        store.add_terminal(tid, key, p.window, t0, transport=p.transport)
    except (StoreError, click.ClickException) as e:
        if p.port is None:
            out.unlink(missing_ok=True)  # a key for nothing
        if mqtt_password is not None and isinstance(e, StoreError):
            _broker(c, tid, None, remove=True)
        return Outcome(p.window, f"{tid:08x}", "failed", e.message if isinstance(e, click.ClickException) else str(e))
    applied = _wait_applied(store, wait)
    res = Outcome(p.window, f"{tid:08x}", "created", done, where)
    if not applied:
        res.detail += "; 守护进程尚未确认 (no running daemon confirmed yet)"
    res.label = _label(tid, p.window, labels, show_label)
    if selftest:
        res.selftest_ok, res.selftest = _selftest(c, tid, buttons, hello_wait, t0)
    return res


# ---------------------------------------------------------------- commands


@click.group("terminal")
@click.option("--config", "config_path", envvar="HCP_CONFIG", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="The daemon's TOML config (or $HCP_CONFIG).")  # fmt: skip
@click.pass_context
def terminal(ctx: click.Context, config_path: str) -> None:
    """Provision, list, replace, retire and rekey the hall's terminals (终端); docs/technician.md."""
    c = Ctx(config_path)
    ctx.obj = c
    ctx.call_on_close(c.close)


_provision_opts = [
    click.option("--transport", type=click.Choice(TRANSPORTS), default="serial", show_default=True,
                 help="How the terminal reaches the daemon: a serial cable (RS-485/RS-232/USB-serial), USB, or MQTT over Wi-Fi."),
    click.option("--board", type=click.Choice(("esp32s3", "esp32c3", "rp2")), default="esp32s3", show_default=True,
                 help="The board family (boards.md)."),
    click.option("--port", default=None, help="The board's USB port (e.g. /dev/ttyACM0): write the config (and the firmware, when it has none or an older one) straight onto it."),
    click.option("--wifi-ssid", default=None, help="Wi-Fi network of an MQTT terminal."),
    click.option("--wifi-pass-file", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="File with the Wi-Fi password (never on the command line)."),
    click.option("--broker", default=None, help="mqtt://HOST:PORT the terminal reaches the hall's broker at."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
                 show_default=True, help="Without --port: where the board's config file is written (mode 0600)."),
    click.option("--labels", type=click.Path(file_okay=False, path_type=Path), default=Path("labels"),
                 show_default=True, help="Where the label PNGs (QR of terminal id and window) go."),
    click.option("--bundle", type=click.Path(file_okay=False, path_type=Path), default=Path("build/bundle"),
                 show_default=True, help="Firmware bundle to deploy with --port (built when missing)."),
    click.option("--no-deploy", is_flag=True, help="With --port: write the config only, never the firmware."),
    click.option("--selftest/--no-selftest", default=None,
                 help="Run the self-test over the link (default: with --port)."),
    click.option("--skip-buttons", is_flag=True, help="Self-test without the button echo (nobody at the terminal)."),
    click.option("--hello-wait", default=HELLO_WAIT_S, show_default=True, help="Seconds to wait for the new terminal's HELLO."),
    click.option("--wait", default=WAIT_S, show_default=True, help="Seconds to wait for the running daemon to take the change up."),
]  # fmt: skip


def provision_options(f: Any) -> Any:
    for opt in reversed(_provision_opts):
        f = opt(f)
    return f


def _outcome_line(o: Outcome) -> None:
    word = {"created": "已登记 created", "exists": "已存在 exists", "failed": "失败 failed"}[o.status]
    click.echo(f"窗口 {o.window}  终端 {o.terminal or '-'}  {word}  {o.detail}")
    if o.config_file:
        click.echo(f"  配置 config: {o.config_file}")
    if o.label:
        click.echo(f"  标签 label: {o.label}")
    if o.selftest:
        click.echo(f"  自检 self-test: {o.selftest}")


def _read_csv(path: str) -> list[Plan]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e}") from None
    plans = []
    for i, r in enumerate(rows, start=2):
        unknown = set(r) - set(CSV_COLUMNS) - {None}
        if unknown:
            raise click.ClickException(f"{path}: unknown column(s) {', '.join(sorted(unknown))}"
                                       f" (columns: {', '.join(CSV_COLUMNS)})")  # fmt: skip
        w = (r.get("window") or "").strip()
        if not w:
            raise click.ClickException(f"{path}:{i}: the window column is empty")
        tr = (r.get("transport") or "serial").strip()
        if tr not in TRANSPORTS:
            raise click.ClickException(f"{path}:{i}: transport is one of {', '.join(TRANSPORTS)}")
        tid = (r.get("id") or "").strip()
        plans.append(Plan(w, tr, (r.get("board") or "esp32s3").strip(), (r.get("port") or "").strip() or None,
                          (r.get("wifi_ssid") or "").strip() or None, (r.get("wifi_pass_file") or "").strip() or None,
                          (r.get("broker") or "").strip() or None, _parse_id(tid) if tid else None))  # fmt: skip
    windows = [p.window for p in plans]
    dup = {w for w in windows if windows.count(w) > 1}
    if dup:
        raise click.ClickException(f"{path}: window(s) listed twice: {', '.join(sorted(dup))}")
    return plans


@terminal.command("provision")
@click.option("--window", default=None, help="The window (窗口号, winNo) the terminal serves.")
@click.option("--from", "from_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help=f"A CSV file, one row per window (columns: {', '.join(CSV_COLUMNS)}): a whole hall; rerunning skips what is done.")  # fmt: skip
@click.option("--id", "tid", default=None, help="Use this terminal id (8 hex digits) instead of a random one.")
@provision_options
@click.option("--no-label", is_flag=True, help="Do not print the QR label in the terminal.")
@click.pass_context
def provision(ctx: click.Context, window: str | None, from_csv: str | None, tid: str | None, transport: str,
              board: str, port: str | None, wifi_ssid: str | None, wifi_pass_file: str | None, broker: str | None,
              out_dir: Path, labels: Path, bundle: Path, no_deploy: bool, selftest: bool | None,
              skip_buttons: bool, hello_wait: float, wait: float, no_label: bool) -> None:  # fmt: skip
    """A new terminal for a window: its id and key, registered with the running
    daemon, its config onto the board (or into a file), the firmware when the
    board needs it, a self-test over the link, and a label with a QR code."""
    c = _ctx(ctx)
    if (window is None) == (from_csv is None):
        raise click.UsageError("give --window W12, or --from windows.csv")
    if from_csv is None:
        assert window is not None
        plan = Plan(window, transport, board, port, wifi_ssid, wifi_pass_file, broker,
                    _parse_id(tid) if tid else None)  # fmt: skip
        o = provision_one(c, plan, out_dir=out_dir, labels=labels, show_label=not no_label, bundle=bundle,
                          deploy=not no_deploy, selftest=selftest if selftest is not None else port is not None,
                          buttons=not skip_buttons, hello_wait=hello_wait, wait=wait)  # fmt: skip
        _outcome_line(o)
        if o.selftest_ok is False:
            _say(f"自检未通过：终端已登记，排除问题后运行 hcp terminal test {o.terminal}",
                 f"the self-test failed; the terminal is registered: fix it, then hcp terminal test {o.terminal}",
                 err=True)  # fmt: skip
        sys.exit(1 if o.status == "failed" or o.selftest_ok is False else 0)
    plans = _read_csv(from_csv)
    _provision_batch(c, plans, out_dir=out_dir, labels=labels, bundle=bundle, deploy=not no_deploy,
                     selftest=selftest, buttons=not skip_buttons, hello_wait=hello_wait, wait=wait)  # fmt: skip


def _provision_batch(c: Ctx, plans: list[Plan], **kw: Any) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console(stderr=True)
    outcomes: list[Outcome] = []
    with Progress(TextColumn("[bold]登记终端 provisioning[/] {task.fields[window]}"), BarColumn(),
                  MofNCompleteColumn(), console=console, transient=True) as bar:  # fmt: skip
        task = bar.add_task("", total=len(plans), window="")
        for p in plans:
            bar.update(task, window=p.window)
            sel = kw["selftest"] if kw["selftest"] is not None else p.port is not None
            try:
                o = provision_one(c, p, out_dir=kw["out_dir"], labels=kw["labels"], show_label=False,
                                  bundle=kw["bundle"], deploy=kw["deploy"], selftest=sel, buttons=kw["buttons"],
                                  hello_wait=kw["hello_wait"], wait=kw["wait"])  # fmt: skip
            except click.ClickException as e:
                o = Outcome(p.window, None, "failed", e.message)
            outcomes.append(o)
            bar.advance(task)
    t = Table(title="登记结果 provisioning summary")
    for col in ("窗口 window", "终端 terminal", "结果 result", "配置 config", "自检 self-test", "说明 detail"):
        t.add_column(col)
    style = {"created": "green", "exists": "cyan", "failed": "red"}
    word = {"created": "已登记 created", "exists": "已存在 exists", "failed": "失败 failed"}
    for o in outcomes:
        t.add_row(o.window, o.terminal or "-", f"[{style[o.status]}]{word[o.status]}[/]", o.config_file or "-",
                  o.selftest or "-", o.detail)  # fmt: skip
    Console().print(t)
    n = {s: sum(1 for o in outcomes if o.status == s) for s in ("created", "exists", "failed")}
    bad = [o.terminal for o in outcomes if o.selftest_ok is False]
    _say(f"新登记 {n['created']}，已存在 {n['exists']}，失败 {n['failed']}，自检未通过 {len(bad)}",
         f"{n['created']} created, {n['exists']} already there, {n['failed']} failed,"
         f" {len(bad)} failed the self-test")  # fmt: skip
    for tid in bad:
        _say(f"  排除问题后：hcp terminal test {tid}", f"once fixed: hcp terminal test {tid}")
    sys.exit(1 if n["failed"] or bad else 0)


def _snapshot(c: Ctx) -> dict[str, Any]:
    from haochaping.daemon import health
    from haochaping.daemon.clock import now_ms

    store = c.open()
    return health.snapshot(store.conn, now_ms())


@terminal.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Also the retired terminals.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """Every terminal: window, id, state (在线/离线, 缓存将满, 时钟偏差 ...), link, firmware."""
    c = _ctx(ctx)
    snap = _snapshot(c)
    rows = [t for t in snap["terminals"] if show_all or not t["retired"]]
    link = dict(c.store.conn.execute("SELECT id, transport FROM terminals"))
    for t in rows:
        t["transport"] = link.get(int(t["id"], 16))
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    from rich.console import Console

    from haochaping.cli.status import terminal_table

    Console().print(terminal_table(rows, snap["now_ms"], with_link=True))


@terminal.command("show")
@click.argument("terminal_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, terminal_id: str, as_json: bool) -> None:
    """One terminal in full: state, windows served and when, journals, events, key fingerprint."""
    c = _ctx(ctx)
    tid = _parse_id(terminal_id)
    snap = _snapshot(c)
    row = next((t for t in snap["terminals"] if t["id"] == f"{tid:08x}"), None)
    if row is None:
        raise click.ClickException(f"没有终端 {tid:08x} (no such terminal)")
    st = c.store
    r = st.conn.execute("SELECT key, prev_key, transport, created_ms, rekeyed_ms FROM terminals WHERE id = ?",
                        (tid,)).fetchone()  # fmt: skip
    detail = dict(row)
    detail.update(
        transport=r[2], created_ms=r[3], rekeyed_ms=r[4], key_fingerprint=_fingerprint(bytes(r[0])),
        rekey_pending=r[1] is not None,
        windows=st.window_history(tid),
        journals=[{"journal_id": f"{j:08x}", "high_seq": h, "first_seen_ms": f, "last_seen_ms": ls}
                  for j, h, f, ls in st.conn.execute(
                      "SELECT journal_id, high_seq, first_seen_ms, last_seen_ms FROM journals"
                      " WHERE terminal_id = ? ORDER BY first_seen_ms", (tid,))],
        events=st.terminal_events(tid)[-20:],
        last_rating_ms=st.conn.execute("SELECT max(received_ms) FROM ratings WHERE terminal_id = ?",
                                       (tid,)).fetchone()[0],
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(detail, ensure_ascii=False, indent=2, default=str))
        return
    from haochaping.cli.status import ago

    now = snap["now_ms"]
    click.echo(f"终端 terminal {detail['id']}   窗口 window {detail['window_no'] or '-'}   "
               f"状态 {' '.join(detail['words'])} ({', '.join(detail['words_en'])})")  # fmt: skip
    click.echo(f"  链路 link {detail['transport'] or '-'}  固件 firmware {detail['firmware'] or '-'}  板 board {detail['board'] or '-'}")
    click.echo(f"  最后通信 last seen {ago(detail['last_seen_ms'], now)}   缓存 journal {detail['journal_used'] or 0}/{detail['journal_capacity'] or '-'}"
               f"   未确认 unacknowledged {detail['unacknowledged'] or 0}   拒收 refusals (24 h) {detail['refusals_24h']}")  # fmt: skip
    click.echo(f"  评价 ratings {detail['ratings_total']}   最后一条 last {ago(detail['last_rating_ms'], now)}")
    click.echo(f"  密钥指纹 key fingerprint {detail['key_fingerprint']}"
               + ("   换钥待生效 (rekey pending: the terminal still uses its old key)" if detail["rekey_pending"] else ""))  # fmt: skip
    for w in detail["windows"]:
        click.echo(f"  窗口 {w['window_no']}: {_ms(w['from_ms'])} – {_ms(w['to_ms']) if w['to_ms'] else '至今 (now)'}")
    for j in detail["journals"]:
        click.echo(f"  日志 journal {j['journal_id']}: up to seq {j['high_seq']}, first {_ms(j['first_seen_ms'])}")
    for e in detail["events"]:
        click.echo(f"  事件 event {_ms(e['at_ms'])} {e['kind']}: {e['detail']}")


def _ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


@terminal.command("replace")
@click.argument("old_id")
@click.option("--id", "new_tid", default=None, help="The new terminal's id (8 hex digits; default random).")
@provision_options
@click.option("--retire-old", is_flag=True, help="Also retire the old terminal at once (its board is dead or gone).")
@click.pass_context
def replace(ctx: click.Context, old_id: str, new_tid: str | None, transport: str, board: str, port: str | None,
            wifi_ssid: str | None, wifi_pass_file: str | None, broker: str | None, out_dir: Path, labels: Path,
            bundle: Path, no_deploy: bool, selftest: bool | None, skip_buttons: bool, hello_wait: float,
            wait: float, retire_old: bool) -> None:  # fmt: skip
    """A new board takes OLD's window: a new id and key, the window's history
    kept (OLD's ratings stay OLD's).  OLD keeps its key, so what its journal
    still holds can arrive, until `hcp terminal retire OLD`."""
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.store import StoreError

    c = _ctx(ctx)
    store = c.open()
    old = _parse_id(old_id)
    new = _parse_id(new_tid) if new_tid else _new_id(store)
    key = secrets.token_bytes(32)
    mqtt_password = secrets.token_urlsafe(24) if transport == "mqtt" else None
    row = store.conn.execute("SELECT window_no, transport FROM terminals WHERE id = ?", (old,)).fetchone()
    if row is None:
        raise click.ClickException(f"没有终端 {old:08x} (no such terminal)")
    if row[0] is None:
        raise click.ClickException(f"终端 {old:08x} 没有窗口 (terminal {old:08x} serves no window: nothing to replace)")
    window = row[0]
    if ctx.get_parameter_source("transport") == click.core.ParameterSource.DEFAULT and row[1]:
        transport = row[1]  # the new board links as the old one did, unless told otherwise
        mqtt_password = secrets.token_urlsafe(24) if transport == "mqtt" else None
    p = Plan(window, transport, board, port, wifi_ssid, wifi_pass_file, broker, new)
    board_cfg = _board_cfg(p, new, key, c.cfg, mqtt_password)
    t0 = now_ms()
    # config and broker login first, the store last (as provision does)
    out = out_dir / f"terminal-{_safe(window)}-{new:08x}.json"
    where, done = _deliver_config(board_cfg, p, out if port is None else None, bundle, not no_deploy)
    _broker(c, new, mqtt_password)
    try:
        store.replace_terminal(old, new, key, t0, transport)
        if retire_old:
            store.retire_terminal(old, t0)
    except StoreError as e:
        if port is None:
            out.unlink(missing_ok=True)
        if mqtt_password is not None:
            _broker(c, new, None, remove=True)
        raise click.ClickException(str(e)) from None
    if retire_old:
        _broker(c, old, None, remove=True)
    _say(f"窗口 {window}：终端 {old:08x} → {new:08x}", f"window {window} moves from terminal {old:08x} to {new:08x}")
    click.echo(f"  {done}: {where}")
    if retire_old:
        _say(f"终端 {old:08x} 已退役，其密钥已吊销", f"terminal {old:08x} retired, its key revoked")
    else:
        _say(f"旧终端 {old:08x} 仍可上传其缓存；确认后执行 hcp terminal retire {old:08x}",
             f"the old terminal may still deliver its journal; then: hcp terminal retire {old:08x}")  # fmt: skip
    _report_applied(store, wait)
    lab = _label(new, window, labels, True)
    if lab:
        click.echo(f"  标签 label: {lab}")
    if selftest if selftest is not None else port is not None:
        ok, text = _selftest(c, new, not skip_buttons, hello_wait, t0)
        click.echo(f"  自检 self-test: {text}")
        if not ok:
            sys.exit(1)


@terminal.command("test")
@click.argument("terminal_id")
@click.option("--skip-buttons", is_flag=True, help="Without the button echo (nobody at the terminal).")
@click.option("--hello-wait", default=10.0, show_default=True, help="Seconds to wait for the terminal to be online.")
@click.pass_context
def test_cmd(ctx: click.Context, terminal_id: str, skip_buttons: bool, hello_wait: float) -> None:
    """Self-test a terminal over its link (自检): each LED, the buzzer, and a
    press on each button echoed back; a press in the test is never a rating."""
    c = _ctx(ctx)
    store = c.open()
    tid = _parse_id(terminal_id)
    if not store.terminal_exists(tid):
        raise click.ClickException(f"没有终端 {tid:08x} (no such terminal)")
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.health import OFFLINE_AFTER_MS

    ok, text = _selftest(c, tid, not skip_buttons, hello_wait, now_ms() - OFFLINE_AFTER_MS)
    click.echo(f"自检 self-test {tid:08x}: {text}")
    sys.exit(0 if ok else 1)


@terminal.command("retire")
@click.argument("terminal_id")
@click.option("--force", is_flag=True, help="Retire even though the terminal still holds unacknowledged ratings.")
@click.option("--wait", default=WAIT_S, show_default=True, help="Seconds to wait for the running daemon.")
@click.pass_context
def retire(ctx: click.Context, terminal_id: str, force: bool, wait: float) -> None:
    """Revoke the terminal's key at once: its frames are refused ('retired',
    counted in /metrics); its window closes; its ratings stay in the record."""
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.store import StoreError

    c = _ctx(ctx)
    store = c.open()
    tid = _parse_id(terminal_id)
    row = store.conn.execute("SELECT journal_used, transport FROM terminals WHERE id = ?", (tid,)).fetchone()
    if row is None:
        raise click.ClickException(f"没有终端 {tid:08x} (no such terminal)")
    transport = row[1]
    if row[0] and not force:
        raise click.ClickException(
            f"终端 {tid:08x} 仍有 {row[0]} 条未确认的评价；退役后将被拒收。等它上传完，或加 --force"
            f" (the terminal still holds {row[0]} unacknowledged ratings, which would be refused after"
            " retirement: let it deliver them, or give --force)")  # fmt: skip
    try:
        window = store.retire_terminal(tid, now_ms())
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if transport == "mqtt":
        _broker(c, tid, None, remove=True)
    _say(f"终端 {tid:08x} 已退役，密钥已吊销；窗口 {window or '-'} 已关闭",
         f"terminal {tid:08x} retired, key revoked; window {window or '-'} closed")  # fmt: skip
    _report_applied(store, wait)


@terminal.command("rekey")
@click.argument("terminal_id")
@click.option("--port", default=None, help="The board's USB port: write its new config straight onto it.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Without --port: where the new config file goes (mode 0600).")  # fmt: skip
@click.option("--board", type=click.Choice(("esp32s3", "esp32c3", "rp2")), default=None,
              help="The board (default: what its HELLO said).")  # fmt: skip
@click.option("--broker", default=None, help="MQTT terminals: mqtt://HOST:PORT of the hall's broker.")
@click.option("--wifi-ssid", default=None, help="MQTT terminals: the Wi-Fi network (as at provisioning).")
@click.option("--wifi-pass-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="MQTT terminals: file with the Wi-Fi password.")
@click.option("--wait", default=WAIT_S, show_default=True, help="Seconds to wait for the running daemon.")
@click.pass_context
def rekey(ctx: click.Context, terminal_id: str, port: str | None, out_dir: Path, board: str | None,
          broker: str | None, wifi_ssid: str | None, wifi_pass_file: str | None, wait: float) -> None:  # fmt: skip
    """A new key for a terminal, with no rating lost: the daemon accepts the
    old key too until the terminal speaks under the new one, so what it
    journaled or sent before the switch still arrives, once."""
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.store import StoreError

    c = _ctx(ctx)
    store = c.open()
    tid = _parse_id(terminal_id)
    row = store.conn.execute("SELECT window_no, transport, board FROM terminals WHERE id = ?", (tid,)).fetchone()
    if row is None:
        raise click.ClickException(f"没有终端 {tid:08x} (no such terminal)")
    transport = row[1] or "serial"
    b = board or (row[2] if row[2] in ("esp32s3", "esp32c3", "rp2") else "esp32s3")
    key = secrets.token_bytes(32)
    mqtt_password = secrets.token_urlsafe(24) if transport == "mqtt" else None
    p = Plan(row[0] or "-", transport, b, port, wifi_ssid, wifi_pass_file, broker, tid)
    board_cfg = _board_cfg(p, tid, key, c.cfg, mqtt_password)
    try:
        store.rekey_terminal(tid, key, now_ms())
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    # the board's new config first, then its new broker login: the reload
    # disconnects the old login (an MQTT board whose config is a file is
    # offline until the file is on it; its journal keeps every rating)
    where, done = _deliver_config(board_cfg, p, out_dir / f"terminal-{_safe(p.window)}-{tid:08x}.json" if port is None else None,
                                  Path("build/bundle"), False)  # fmt: skip
    _broker(c, tid, mqtt_password)
    _say(f"终端 {tid:08x} 已换新密钥（指纹 {_fingerprint(key)}）；旧密钥在终端改用新密钥前仍被接受",
         f"terminal {tid:08x} has a new key (fingerprint {_fingerprint(key)}); the old one is accepted"
         " until the terminal uses the new one")  # fmt: skip
    click.echo(f"  {done}: {where}")
    _report_applied(store, wait)
