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
        from haochaping.protocol.frame import VERSION

        click.echo(f"protocol v{VERSION} self-check: {passed} vectors passed, {len(failures)} failed")
        for name, reason in failures:
            click.echo(f"  FAIL {name}: {reason}", err=True)
    sys.exit(1 if failures else 0)


@main.command()
@click.option(
    "--terminals",
    default=4,
    show_default=True,
    help="Virtual terminals on pseudo-terminal serial links.",
)
@click.option("--mqtt/--no-mqtt", "mqtt", default=None,
              help="Also run terminals over MQTT (default: if a mosquitto binary is on PATH).")  # fmt: skip
@click.option("--cases", default=6, show_default=True, help="Finished cases (办件) per window.")
@click.option("--seed", default=1, show_default=True, help="Seed of the citizens' choices.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    default=None,
    help="Use and keep this state directory.",
)
@click.option("--chaos", is_flag=True, help="kill -9 the daemon, uplink or receiver, or cut a terminal's power, now and then.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(
    terminals: int, mqtt: bool | None, cases: int, seed: int, keep: str | None, chaos: bool, as_json: bool
) -> None:
    """Run the whole hall on this machine: daemon, uplink, provincial receiver and
    virtual terminals; exit 0 only if every pressed rating reached the receiver once."""
    import shutil

    from haochaping.cli.sim import run_hall

    if mqtt is None:
        mqtt = shutil.which("mosquitto") is not None
    run_hall(terminals, 2 if mqtt else 0, cases, seed, keep, as_json, chaos=chaos)


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


# Each part's commands live beside it (haochaping/cli/*.py); registered here so that
# `hcp --help` lists them all.
from haochaping.cli.daemon import core as _bench_core  # noqa: E402
from haochaping.cli.daemon import daemon as _daemon  # noqa: E402
from haochaping.cli.daemon import ingest as _bench_ingest  # noqa: E402
from haochaping.cli.firmware import firmware as _firmware  # noqa: E402
from haochaping.cli.sim import sim as _sim  # noqa: E402
from haochaping.cli.status import status as _status  # noqa: E402
from haochaping.cli.terminal import terminal as _terminal  # noqa: E402
from haochaping.cli.uplink import register as _register_uplink  # noqa: E402

main.add_command(_daemon)
bench.add_command(_bench_ingest)
bench.add_command(_bench_core)
main.add_command(_firmware)
main.add_command(_sim)
main.add_command(_terminal)
main.add_command(_status)
_register_uplink(main)

if __name__ == "__main__":
    main()
