"""``hcp sim``: deterministic fault-injection runs and simulated halls.

Thin commands: parse options, call one library function in
``haochaping.simulator``, turn its exceptions into a clear message.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

# The simulator's test-only bug switches (vopr.plan.BUGS; a test keeps the two
# equal, so that `hcp` starts without importing the simulator).
SIM_BUGS = ("ack_before_commit", "free_before_ack", "no_journal_identity", "no_isolation")


@click.group("sim", invoke_without_command=True)
@click.option(
    "--terminals", default=4, show_default=True, help="Virtual terminals (one window each)."
)
@click.option(
    "--transport",
    type=click.Choice(["serial", "mqtt", "both"]),
    default="serial",
    show_default=True,
    help="Pseudo-terminal serial links, a real Mosquitto broker, or both.",
)
@click.option("--cases", default=5, show_default=True, help="Finished cases (办件) per window.")
@click.option(
    "--runtime",
    type=click.Choice(["cpython", "micropython"]),
    default="cpython",
    show_default=True,
    help="micropython: the first terminal runs on real MicroPython (wasm, Node.js).",
)
@click.option("--seed", default=1, show_default=True, help="Seed of the citizens' choices.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory to use and keep (default: a temporary one).",
)
@click.option("--chaos", is_flag=True,
              help="kill -9 the daemon, uplink or receiver, or cut a terminal's power, every few seconds.")  # fmt: skip
@click.option("--ui", "interactive", is_flag=True,
              help="Interactive: press the terminals' buttons yourself (a terminal UI).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def sim(
    ctx: click.Context,
    terminals: int,
    transport: str,
    cases: int,
    runtime: str,
    seed: int,
    keep: str | None,
    chaos: bool,
    interactive: bool,
    as_json: bool,
) -> None:
    """A simulated hall with real processes (daemon, uplink, provincial receiver,
    Mosquitto) and virtual terminals running firmware/; `hcp sim check` runs the
    deterministic whole-system simulation instead."""
    if ctx.invoked_subcommand is not None:
        return
    n_serial, n_mqtt = terminals, 0
    if transport == "mqtt":
        n_serial, n_mqtt = 0, terminals
    elif transport == "both":
        n_serial, n_mqtt = terminals - terminals // 2, terminals // 2
    if interactive:
        run_ui(n_serial, n_mqtt, seed, keep, runtime)
        return
    run_hall(n_serial, n_mqtt, cases, seed, keep, as_json, runtime, chaos)


def run_ui(n_serial: int, n_mqtt: int, seed: int, keep: str | None, runtime: str) -> None:
    from haochaping.simulator import hall, tui

    if not sys.stdin.isatty():
        raise click.ClickException("--ui needs an interactive terminal")
    opts = hall.HallOptions(terminals=n_serial, mqtt_terminals=n_mqtt, cases=0, seed=seed,
                            state_dir=keep, keep=keep is not None, runtime=runtime)  # fmt: skip
    try:
        with tui.stdin_keys() as keys:
            summary, details, ok = tui.run(opts, keys)
    except hall.HallError as e:
        raise click.ClickException(str(e)) from None
    _print_summary(summary, details, ok)
    sys.exit(0 if ok else 1)


def run_hall(
    n_serial: int,
    n_mqtt: int,
    cases: int,
    seed: int,
    keep: str | None,
    as_json: bool,
    runtime: str = "cpython",
    chaos: bool = False,
) -> None:
    """Run a hall, show it live, print the summary, exit 0 only if nothing was lost."""
    from haochaping.simulator import hall

    if n_serial + n_mqtt < 1:
        raise click.ClickException("at least one terminal")
    if cases < 1:
        raise click.ClickException("--cases must be at least 1")
    opts = hall.HallOptions(
        terminals=n_serial,
        mqtt_terminals=n_mqtt,
        cases=cases,
        seed=seed,
        state_dir=keep,
        keep=keep is not None,
        runtime=runtime,
        chaos=chaos,
    )
    try:
        if as_json:
            summary, details, ok = hall.run(opts)
        else:
            summary, details, ok = _live(hall, opts)
    except hall.HallError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary, details, ok)
    sys.exit(0 if ok else 1)


def _live(hall, opts):  # type: ignore[no-untyped-def]
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    def render(s):  # type: ignore[no-untyped-def]
        head = Table.grid(padding=(0, 3))
        head.add_row(
            "[bold]hall[/bold] " + s.phase,
            f"pressed [bold]{s.pressed}[/bold]",
            f"stored [bold]{s.stored}[/bold]",
            f"at the province [bold]{s.acknowledged}[/bold]",
        )
        t = Table(show_edge=False, box=None)
        t.add_column("window")
        t.add_column("cases", justify="right")
        t.add_column("ratings", justify="right")
        for w, (c, r) in sorted(s.windows.items()):
            t.add_row(w, str(c), str(r))
        return Group(head, t)

    with Live(
        render(hall.Snapshot(phase="starting")), refresh_per_second=8, transient=True
    ) as live:
        return hall.run(opts, lambda s: live.update(render(s)))


def _print_summary(s, details, ok) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="hall summary", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", justify="right")
    labels = [
        ("pressed", "ratings pressed (THANKS shown)"),
        ("journaled", "journaled on the terminals"),
        ("stored", "stored by the daemon (SQLite)"),
        ("forwarded", "forwarded in signed batches"),
        ("acknowledged", "acknowledged by the province"),
        ("lost", "lost"),
        ("duplicates", "duplicates"),
        ("signatures_verified", "signatures verified"),
        ("bad_ratings", "差评 (level <= 2)"),
        ("alerts", "差评 alerts raised"),
        ("seconds", "seconds"),
    ]
    for k, label in labels:
        t.add_row(label, str(s[k]))
    con.print(t)
    w = Table(title="satisfaction per window")
    for col in ("window", "link", "ratings", "差评", "mean level", "满意率 %"):
        w.add_column(col, justify="left" if col in ("window", "link") else "right")
    for win, v in details["windows"].items():
        w.add_row(
            win,
            v["transport"],
            str(v["ratings"]),
            str(v["bad"]),
            "{:.2f}".format(v["mean"]),
            "{:.1f}".format(v["satisfaction_pct"]),
        )
    con.print(w)
    kills = [c for c in details.get("chaos", []) if c.startswith("kill")]
    if kills:
        con.print(
            f"chaos: {len(kills)} kill -9 ({', '.join(sorted(set(k[8:] for k in kills)))}) during the run"
        )
    for v in details.get("micropython", []):
        con.print(f"one terminal ran on real MicroPython ({v}, WebAssembly port under Node.js)")
    for e in details.get("errors", []):
        con.print(f"[red]error[/red] {e}")
    if details.get("state_dir"):
        con.print("state kept in {}".format(details["state_dir"]))
    if ok:
        con.print(
            "[green]OK[/green]: every pressed rating reached the provincial receiver exactly once"
        )
    else:
        con.print("[red]FAILED[/red]: ratings were lost, duplicated or mis-bound (see above)")


@sim.command("check")
@click.option("--seeds", "n", default=None, type=int,
              help="How many seeds to run (default 100, or 1 with --seed).")  # fmt: skip
@click.option("--seed", "first", default=None, type=int,
              help="Run this seed (with --seeds N: N seeds from this one). Replays a failure.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="With one seed: leave its SQLite files in this directory.")  # fmt: skip
@click.option("--jobs", "-j", default=1, show_default=True, help="Processes to run seeds in.")
@click.option("--per-seed", is_flag=True,
              help="Print one outcome line per seed (JSON with --json), in seed order, to compare runs.")  # fmt: skip
@click.option("--bug", type=click.Choice(list(SIM_BUGS)), default=None,
              hidden=True, help="Test-only: break one rule on purpose.")  # fmt: skip
def check_cmd(
    n: int | None, first: int | None, as_json: bool, keep: str | None, jobs: int,
    per_seed: bool, bug: str | None,
) -> None:  # fmt: skip
    """Deterministic whole-system simulation: firmware, daemon, uplink and the
    provincial receiver in one process on a virtual clock, with seeded faults.

    Every rating whose THANKS was shown must reach the receiver exactly once,
    bound to its case.  A failing seed is printed and replays with --seed.
    """
    from haochaping.simulator import vopr

    if n is None:
        n = 1 if first is not None else 100
    if n < 1:
        raise click.ClickException("--seeds must be at least 1")
    start = first if first is not None else 0
    seeds = list(range(start, start + n))
    if keep is not None:
        if len(seeds) != 1:
            raise click.ClickException("--keep needs exactly one seed (--seed S)")
        try:
            res = vopr.run(seeds[0], bug, keep=keep)
        except vopr.SimFailure as e:
            _fail_exit([e], as_json, None, bug)
            return
        click.echo(json.dumps(res.as_dict()) if as_json else f"seed {seeds[0]} passed")
        return
    if per_seed:
        _per_seed(vopr, seeds, bug, jobs, as_json)
        return
    if as_json:
        report = vopr.check(seeds, bug, jobs=jobs)
    else:
        report = _with_progress(vopr, seeds, bug, jobs)
    if report.failures:
        _fail_exit(report.failures, as_json, report, bug)
        return
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        t = report.totals
        click.echo(
            f"{report.passed} seeds passed in {report.seconds:.1f} s: "
            f"{t.get('presses', 0)} presses, {t.get('thanks', 0)} THANKS, "
            f"{t.get('at_receiver', 0)} at the receiver exactly once, "
            f"{t.get('daemon_starts', 0) - report.passed} daemon restarts, "
            f"{t.get('power_cut', 0)} power cuts, {t.get('write_cut', 0)} torn writes"
        )


def _with_progress(vopr, seeds, bug, jobs):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    failed = 0
    with Progress(
        TextColumn("[bold]sim check"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("seeds", total=len(seeds), status="")

        def tick(seed: int, res: object) -> None:
            nonlocal failed
            if isinstance(res, vopr.SimFailure):
                failed += 1
                progress.console.print(f"[red]FAIL[/red] {res}")
            progress.update(task, advance=1, status=f"seed {seed}, {failed} failed")

        return vopr.check(seeds, bug, progress=tick, jobs=jobs)


def _per_seed(vopr, seeds, bug, jobs, as_json) -> None:  # type: ignore[no-untyped-def]
    """One line per seed, in seed order: the same lines for the same code."""
    outcomes: dict[int, Any] = {}
    report = vopr.check(seeds, bug, progress=lambda s, res: outcomes.__setitem__(s, res), jobs=jobs)
    for s in sorted(outcomes):
        res = outcomes[s]
        if isinstance(res, vopr.SimFailure):
            line = json.dumps({"seed": s, "failure": str(res)}) if as_json else f"FAIL {res}"
        elif as_json:
            line = json.dumps(res.as_dict(), sort_keys=True)
        else:
            st = res.stats
            line = (f"seed {s}: pass, {st.get('presses', 0)} presses, {st.get('thanks', 0)} THANKS, "
                    f"{st.get('at_receiver', 0)} at the receiver, {res.virtual_ms} virtual ms, "
                    f"faults {','.join(res.plan.faults) or '-'}")  # fmt: skip
        click.echo(line)
    if report.failures:
        sys.exit(1)


def _fail_exit(failures, as_json, report, bug) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        d = report.as_dict() if report is not None else {"failures": [str(f) for f in failures]}
        click.echo(json.dumps(d))
    else:
        for f in failures[:20]:
            click.echo(f"FAIL {f}", err=True)
            extra = f" --bug {bug}" if bug else ""
            click.echo(f"  replay: hcp sim check --seed {f.seed}{extra}", err=True)
        if len(failures) > 20:
            click.echo(f"... and {len(failures) - 20} more", err=True)
    sys.exit(1)


@sim.command("day")
@click.option("--terminals", default=20, show_default=True, help="Windows, one terminal each.")
@click.option("--hours", default=8.0, show_default=True, help="Opening hours to simulate.")
@click.option("--seed", default=1, show_default=True, help="Seed of the citizens' choices.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def day_cmd(terminals: int, hours: float, seed: int, as_json: bool) -> None:
    """A fault-free working day of a hall on the virtual clock (the real firmware,
    daemon core and store, uplink and receiver checks), as fast as it runs."""
    import time

    from haochaping.simulator import vopr

    if terminals < 1 or hours <= 0:
        raise click.ClickException("--terminals and --hours must be positive")
    t0 = time.perf_counter()
    try:
        res = vopr.run(seed, plan=vopr.Plan.day(terminals, hours))
    except vopr.SimFailure as e:
        raise click.ClickException(str(e)) from None
    wall = time.perf_counter() - t0
    out = {
        "terminals": terminals,
        "virtual_hours": round(res.virtual_ms / 3_600_000, 2),
        "wall_seconds": round(wall, 2),
        "ratings": res.stats["thanks"],
        "at_receiver": res.stats["at_receiver"],
        "batches": res.stats["batches_accepted"],
        "speedup": round(res.virtual_ms / 1000 / wall),
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"{terminals} terminals, {out['virtual_hours']} simulated hours in {out['wall_seconds']} s "
            f"(x{out['speedup']}): {out['ratings']} ratings, every one at the receiver exactly once"
        )
