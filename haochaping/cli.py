"""``hcp``: the command line of haochaping.

A thin layer (sqlite-utils style): each command parses options, calls one
library function, and turns our exceptions into a clear message and an exit
code.  Long-running parts live in their own packages.
"""

from __future__ import annotations

import json
import sys
from importlib import resources

import click

from haochaping import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hcp")
def main() -> None:
    """haochaping: 政务服务“好差评” counter evaluation terminals and hall daemon."""


def _vectors() -> dict:
    text = resources.files("haochaping.protocol").joinpath("vectors.json").read_text("utf-8")
    return json.loads(text)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def selfcheck(as_json: bool) -> None:
    """Check this installation's protocol against the published test vectors."""
    from haochaping.protocol import vectors

    passed, failures = vectors.run(_vectors())
    if as_json:
        click.echo(json.dumps({"passed": passed, "failed": len(failures)}))
    else:
        click.echo(f"protocol v1 self-check: {passed} vectors passed, {len(failures)} failed")
        for name, reason in failures:
            click.echo(f"  FAIL {name}: {reason}", err=True)
    sys.exit(1 if failures else 0)


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the whole hall on this machine (for now: the protocol self-check)."""
    click.echo("haochaping demo: the simulated hall is not built yet; running the protocol self-check.")
    ctx.invoke(selfcheck)


@main.group()
def bench() -> None:
    """Measure where time goes (results in docs/benchmarks.md)."""


@bench.command("protocol")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--seconds", default=1.0, show_default=True, help="Time per measurement.")
def bench_protocol(as_json: bool, seconds: float) -> None:
    """Encode/decode rate of RATING frames and wire bytes per rating."""
    from haochaping.protocol import benchmark

    result = benchmark.run(seconds)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for k, v in result.items():
            click.echo(f"{k:>24}: {v}")


from haochaping.cmd_daemon import daemon as _dm, ingest as _ingest; main.add_command(_dm); bench.add_command(_ingest)  # noqa: E402,I001

from haochaping.cmd_uplink import register as _uplink_register; _uplink_register(main)  # noqa: E402,I001
from haochaping.cmd_sim import sim as _sim; main.add_command(_sim)  # noqa: E402,I001

if __name__ == "__main__":
    main()
