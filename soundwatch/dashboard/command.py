"""``soundwatch dashboard``: serve the live web page for a running pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from soundwatch.dashboard import DEFAULT_HOST, DEFAULT_PORT
from soundwatch.security.command import curve_client_options


@click.command("dashboard")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="ENDPOINT",
    help="where the pipeline publishes (repeatable)  [default: tcp://127.0.0.1:5557]",
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="address to serve on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="port to serve on (0: any free port)",
)
@click.option(
    "--token",
    envvar="SOUNDWATCH_DASHBOARD_TOKEN",
    help="access token the page asks for (required unless --host is loopback)",
)
@click.option(
    "--record",
    type=click.Path(file_okay=False, path_type=Path),
    help="a record directory (run --record): serve its history and clips",
)
@click.option(
    "--control",
    metavar="ENDPOINT",
    help="a control endpoint (run --control): fields to change each group's settings",
)
@curve_client_options
def dashboard(
    endpoints: tuple[str, ...],
    host: str,
    port: int,
    token: str | None,
    record: Path | None,
    control: str | None,
    curve_secret: Path | None,
    curve_server: Path | None,
) -> None:
    """Serve a live web page of what a running pipeline hears (until Ctrl-C).

    Per stream: the top labels, a timeline of the labels and event groups of the last
    minutes, the event log, health and a live spectrogram. Everything is served locally.
    """
    from soundwatch.cli import user_errors
    from soundwatch.client import CurveClient
    from soundwatch.dashboard.server import DashboardServer

    @user_errors
    def serve() -> None:
        curve = CurveClient.from_options(curve_secret, curve_server)
        server = DashboardServer(
            list(endpoints) or ["tcp://127.0.0.1:5557"],
            host,
            port,
            token=token,
            curve=curve,
            record=record,
            control=control,
        )
        server.start()
        click.echo(
            f"soundwatch: dashboard on {server.url} (subscribed to "
            f"{', '.join(server.endpoints)}); Ctrl-C to stop",
            err=True,
        )
        try:
            while not server.join(timeout=1.0):
                pass
        except KeyboardInterrupt:  # Ctrl-C is how it stops
            pass
        finally:
            server.close()

    serve()
