"""``soundwatch keys``, and the ``--curve-secret``/``--curve-server`` options of subscribers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def curve_client_options(func: F) -> F:
    """Add ``--curve-secret`` and ``--curve-server`` (CURVE as a client) to a command."""
    func = click.option(
        "--curve-server",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="SERVER.key",
        help="CURVE: the server's public key file (with --curve-secret)",
    )(func)
    return click.option(
        "--curve-secret",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="CLIENT.key_secret",
        help="CURVE: this client's secret key file (mode 0600)",
    )(func)


@click.group("keys")
def keys() -> None:
    """Make CURVE key pairs for encrypted, authenticated publishing (docs/reliability.md)."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="server", show_default=True, help="file name of the pair")
def generate(directory: Path, name: str) -> None:
    """Write DIRECTORY/NAME.key (public) and DIRECTORY/NAME.key_secret (secret, mode 0600).

    A server runs with --curve-secret NAME.key_secret and --curve-allow CLIENTS_DIR (where
    each allowed client's NAME.key is copied); a client with --curve-secret of its own pair
    and --curve-server SERVER.key.
    """
    from soundwatch.cli import user_errors
    from soundwatch.security.keys import generate_keys

    @user_errors
    def make() -> None:
        public, secret = generate_keys(directory, name)
        click.echo(f"public key: {public} (give it to the other side)")
        click.echo(f"secret key: {secret} (mode 0600: keep it private)")

    make()
