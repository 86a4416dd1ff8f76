"""``soundwatch ctl``: change a running soundwatch (docs/control.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from soundwatch.control.config import DEFAULT_ENDPOINT
from soundwatch.errors import SoundwatchError
from soundwatch.security.command import curve_client_options


def _ask(ctx: click.Context, cmd: str, **args: Any) -> None:
    """Send the command; print the result as JSON (exit 0) or the reason (exit 1)."""
    from soundwatch.control.client import request

    try:
        result = request(
            ctx.obj["endpoint"], cmd, timeout=ctx.obj["timeout"], curve=ctx.obj["curve"], **args
        )
    except SoundwatchError as error:
        click.echo(f"soundwatch: error: {error}", err=True)
        sys.exit(1)
    click.echo(json.dumps(result, indent=2, sort_keys=True))


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as YAML scalars (``0.2``, ``true``)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[key.strip()] = text
    return values


@click.group("ctl")
@click.option(
    "--endpoint",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="the control endpoint of soundwatch run --control",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="seconds to wait")
@curve_client_options
@click.pass_context
def ctl(
    ctx: click.Context,
    endpoint: str,
    timeout: float,
    curve_secret: Path | None,
    curve_server: Path | None,
) -> None:
    """Change a running soundwatch: thresholds, groups on/off, pause streams, reload."""
    from soundwatch.security.curve import CurveClient

    try:
        curve = CurveClient.from_options(curve_secret, curve_server)
    except SoundwatchError as error:
        click.echo(f"soundwatch: error: {error}", err=True)
        sys.exit(1)
    ctx.obj = {"endpoint": endpoint, "timeout": timeout, "curve": curve}


@ctl.command("streams")
@click.pass_context
def streams(ctx: click.Context) -> None:
    """List the streams and whether each is paused."""
    _ask(ctx, "streams")


@ctl.command("groups")
@click.pass_context
def groups(ctx: click.Context) -> None:
    """Every event group's settings."""
    _ask(ctx, "groups")


@ctl.command("get")
@click.argument("group")
@click.pass_context
def get(ctx: click.Context, group: str) -> None:
    """One group's settings."""
    _ask(ctx, "get", group=group)


@ctl.command("set")
@click.argument("group")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_context
def set_(ctx: click.Context, group: str, assignments: tuple[str, ...]) -> None:
    """Set threshold_on, threshold_off, min_duration, max_gap or enabled of GROUP."""
    _ask(ctx, "set", group=group, values=parse_assignments(assignments))


@ctl.command("pause")
@click.argument("stream")
@click.pass_context
def pause(ctx: click.Context, stream: str) -> None:
    """Stop tagging STREAM (its open events end) until resumed."""
    _ask(ctx, "pause", stream=stream)


@ctl.command("resume")
@click.argument("stream")
@click.pass_context
def resume(ctx: click.Context, stream: str) -> None:
    """Tag STREAM again."""
    _ask(ctx, "resume", stream=stream)


@ctl.command("reload")
@click.pass_context
def reload(ctx: click.Context) -> None:
    """Re-read the config file and apply its event group settings."""
    _ask(ctx, "reload")
