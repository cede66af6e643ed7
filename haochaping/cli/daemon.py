"""``hcp daemon`` (run the hall daemon), ``hcp bench ingest`` and ``hcp bench core``."""

from __future__ import annotations

import json
from typing import Any

import click


@click.group("daemon", invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.pass_context
def daemon(ctx: click.Context, config_path: str | None) -> None:
    """Run the hall daemon in the foreground (systemd: Type=notify)."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path
    if ctx.invoked_subcommand is not None:
        return
    if not config_path:
        raise click.UsageError("--config PATH is required")
    from haochaping.daemon import service
    from haochaping.daemon.config import ConfigError
    from haochaping.daemon.store import StoreError

    try:
        code = service.main(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    except StoreError as e:
        raise click.ClickException(f"store: {e}") from None
    ctx.exit(code)


@daemon.command("add-terminal")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML config file (or give it to `hcp daemon`).",
)
@click.option("--id", "tid", required=True, help="Terminal id, 8 hex digits.")
@click.option("--window", default=None, help="Window number (winNo) the terminal serves.")
@click.option("--key-file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="File with the terminal's 32-byte key (raw, or 64 hex digits).")  # fmt: skip
@click.pass_context
def add_terminal(
    ctx: click.Context, config_path: str | None, tid: str, window: str | None, key_file: str
) -> None:
    """Register a terminal with a key you made (its key goes into the store,
    never to the log); `hcp terminal provision` makes the id, key, config and
    label for you."""
    from haochaping.daemon import config as config_mod
    from haochaping.daemon.clock import now_ms
    from haochaping.daemon.store import Store, StoreError

    path = config_path or ctx.obj.get("config")
    if not path:
        raise click.UsageError("--config PATH is required")
    try:
        cfg = config_mod.load(path)
        terminal_id = int(tid, 16)
        if not 0 <= terminal_id <= 0xFFFFFFFF or len(tid) != 8:
            raise ValueError
    except config_mod.ConfigError as e:
        raise click.ClickException(str(e)) from None
    except ValueError:
        raise click.BadParameter("8 hex digits", param_hint="--id") from None
    raw = open(key_file, "rb").read()
    key = raw if len(raw) == 32 else bytes.fromhex(raw.decode("ascii", "replace").strip() or "00")
    if len(key) != 32:
        raise click.BadParameter(
            "the key file must hold 32 bytes or 64 hex digits", param_hint="--key-file"
        )
    try:
        cfg.db_path.parent.mkdir(parents=True, exist_ok=True)
        s = Store(cfg.db_path)
        s.add_terminal(terminal_id, key, window, now_ms())
        s.close()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        "terminal {:08x} provisioned{}; a running daemon takes it up within a second".format(
            terminal_id, f" for window {window}" if window else ""
        )
    )


@click.command("ingest")
@click.option(
    "--transport", type=click.Choice(["mqtt", "serial"]), default="mqtt", show_default=True
)
@click.option("--terminals", default=50, show_default=True)
@click.option("--ratings", default=20000, show_default=True)
@click.option(
    "--per-frame",
    default=1,
    show_default=True,
    help="Ratings per frame (1 = RATING, >1 = RATINGS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ingest(transport: str, terminals: int, ratings: int, per_frame: int, as_json: bool) -> None:
    """Drain of a pre-queued backlog: committed-and-acknowledged ratings/s beside a bare baseline."""
    from haochaping.daemon.bench import ingest as bench

    _bench(bench.run, (transport, terminals, ratings, per_frame), as_json, 16)


@click.command("core")
@click.option("--terminals", default=50, show_default=True)
@click.option("--ratings", default=20000, show_default=True)
@click.option("--per-frame", default=1, show_default=True, help="Ratings per frame.")
@click.option("--group", default=2000, show_default=True, help="Frames per group commit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def core(terminals: int, ratings: int, per_frame: int, group: int, as_json: bool) -> None:
    """µs per rating in the daemon's core and store alone (no transport)."""
    from haochaping.daemon.bench import ingest as bench

    _bench(bench.core_costs, (terminals, ratings, per_frame, group), as_json, 12)


def _bench(fn: Any, args: tuple[Any, ...], as_json: bool, width: int) -> None:
    """Run a daemon benchmark; print its result as JSON or one key a line."""
    from haochaping.daemon.bench import ingest as bench

    try:
        result = fn(*args)
    except bench.BenchError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        for k, v in result.items():
            click.echo(f"{k:>{width}}: {v}")
