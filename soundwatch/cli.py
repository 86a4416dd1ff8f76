"""The ``soundwatch`` command: one subcommand per job (run, tag, tail, devices, config).

Each subcommand is a thin layer: it parses flags, calls into the package and turns a
:class:`~soundwatch.errors.SoundwatchError` into a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from soundwatch import __version__
from soundwatch.errors import SoundwatchError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print SoundwatchError messages without a traceback and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SoundwatchError as error:
            click.echo(f"soundwatch: error: {error}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="soundwatch")
def main() -> None:
    """soundwatch: listen, tag sounds with AudioSet CNNs, publish over ZeroMQ."""


@main.group("config")
def config_group() -> None:
    """Inspect and validate configuration files."""


@config_group.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def config_check(path: Path | None) -> None:
    """Validate a config file (default: ./config.yaml); exit 0 if valid, 1 if not."""
    from soundwatch.config import load_config

    path = path or Path("config.yaml")
    config = load_config(path)
    sources = ", ".join(source.spec for source in config.sources)
    click.echo(
        f"{path}: ok (model {config.model.name}, window {config.windows.window} s, "
        f"hop {config.windows.hop} s, sources: {sources})"
    )


@main.command("devices")
@user_errors
def devices() -> None:
    """List audio input devices (index, name, channels, default sample rate)."""
    from soundwatch.stream.devices import list_input_devices

    found = list_input_devices()
    if not found:
        click.echo("no audio input devices found (use --source synthetic or file:PATH)")
        return
    click.echo(f"{'index':>5}  {'channels':>8}  {'rate':>7}  name")
    for device in found:
        marker = " (default)" if device.is_default else ""
        click.echo(
            f"{device.index:>5}  {device.channels:>8}  {device.default_rate:>7.0f}  "
            f"{device.name}{marker}"
        )


if __name__ == "__main__":
    main()
