"""``hcp sim``: deterministic fault-injection runs and simulated halls.

Thin commands: parse options, call one library function in
``haochaping.simulator``, turn its exceptions into a clear message.
"""

from __future__ import annotations

import json
import sys

import click


@click.group("sim", invoke_without_command=True)
@click.pass_context
def sim(ctx: click.Context) -> None:
    """Simulated terminals and halls; `hcp sim check` runs the whole-system simulation."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@sim.command("check")
@click.option("--seeds", "n", default=None, type=int,
              help="How many seeds to run (default 100, or 1 with --seed).")  # fmt: skip
@click.option("--seed", "first", default=None, type=int,
              help="Run this seed (with --seeds N: N seeds from this one). Replays a failure.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="With one seed: leave its SQLite files in this directory.")  # fmt: skip
@click.option("--bug", type=click.Choice(["ack_before_commit", "free_before_ack"]), default=None,
              hidden=True, help="Test-only: break one rule on purpose.")  # fmt: skip
def check_cmd(
    n: int | None, first: int | None, as_json: bool, keep: str | None, bug: str | None
) -> None:
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
    if as_json:
        report = vopr.check(seeds, bug)
    else:
        report = _with_progress(vopr, seeds, bug)
    if report.failures:
        _fail_exit(report.failures, as_json, report, bug)
        return
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        t = report.totals
        click.echo(
            f"{report.passed} seeds passed in {report.seconds:.1f} s: "
            f"{t.get('pressed', 0)} presses, {t.get('thanks', 0)} THANKS, "
            f"{t.get('at_receiver', 0)} at the receiver exactly once, "
            f"{t.get('daemon_starts', 0) - report.passed} daemon restarts, "
            f"{t.get('power_cut', 0)} power cuts, {t.get('write_cut', 0)} torn writes"
        )


def _with_progress(vopr, seeds, bug):  # type: ignore[no-untyped-def]
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

        return vopr.check(seeds, bug, progress=tick)


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
