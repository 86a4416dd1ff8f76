"""``soundwatch edge`` (capture and send frames) and ``soundwatch serve`` (tag them centrally)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click


@click.command("edge")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--source",
    "sources",
    multiple=True,
    metavar="[ID=]SPEC",
    help="mic | mic:DEVICE | file:PATH | pcm:- | synthetic (repeatable)",
)
@click.option("--to", "to", metavar="tcp://HOST:PORT", help="the soundwatch serve to send to")
@click.option("--id", "node_id", metavar="NODE", help="this node's id (default: the host name)")
@click.option("--encoding", type=click.Choice(["float16", "float32"]), help="frame encoding")
@click.option(
    "--buffer", "buffer_seconds", type=float, metavar="SECONDS", help="unacked, per stream"
)
@click.option("--pace", type=click.Choice(["realtime", "fast"]), help="pace of file sources")
@click.option("--loop/--no-loop", default=None, help="loop file sources")
@click.option(
    "--curve-secret",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="EDGE.key_secret",
    help="CURVE: this edge's secret key (with --curve-server)",
)
@click.option(
    "--curve-server",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="SERVER.key",
    help="CURVE: the server's public key",
)
@click.option("-v", "--verbose", is_flag=True)
def edge(**params: Any) -> None:
    """Capture here, compute log-mel frames and send them to a soundwatch serve."""
    from soundwatch.cli import user_errors

    user_errors(_edge)(**params)


def _edge(
    config_path: Path | None,
    sources: tuple[str, ...],
    to: str | None,
    node_id: str | None,
    encoding: str | None,
    buffer_seconds: float | None,
    pace: str | None,
    loop: bool | None,
    curve_secret: Path | None,
    curve_server: Path | None,
    verbose: bool,
) -> None:
    from soundwatch.cli import _setup_logging
    from soundwatch.config import apply_overrides, load_config
    from soundwatch.edge.node import EdgeNode
    from soundwatch.errors import SoundwatchError
    from soundwatch.sources import open_sources, sources_from_args

    _setup_logging(verbose)
    config = load_config(config_path)
    config = apply_overrides(
        config,
        {
            "sources": sources_from_args(sources, loop) if sources else None,
            "pipeline.pace": pace,
            "edge.to": to,
            "edge.id": node_id,
            "edge.encoding": encoding,
            "edge.buffer_seconds": buffer_seconds,
            "edge.curve_secret": curve_secret,
            "edge.curve_server": curve_server,
        },
    )
    if config.edge.to is None:  # before any device is opened
        raise SoundwatchError("an edge needs the server's address: --to tcp://HOST:PORT")
    opened = open_sources(config, demo_fallback=False)
    node = EdgeNode(opened, config.edge)
    names = ", ".join(f"{node.node}-{s.id}" for s in opened)
    click.echo(f"soundwatch edge: sending {names} to {config.edge.to}", err=True)
    previous = {s: signal.signal(s, lambda *_: node.stop()) for s in _SIGNALS}
    try:
        node.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for stream in node.streams:
        counters = {**vars(stream.source.stats()), **vars(stream.counters)}
        click.echo(f"soundwatch edge: stream {stream.id} finished: {counters}", err=True)
    sys.stderr.flush()


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(listen: str | None, silent_after: float | None, options: dict[str, Any]) -> None:
    """``soundwatch serve``: ``run``'s options (``options``) plus the edge listener."""
    from soundwatch.cli import announce_run, finish_run, run_config
    from soundwatch.config import apply_overrides
    from soundwatch.edge.server import EdgeServer
    from soundwatch.errors import SoundwatchError
    from soundwatch.runner import curve_server, run_live

    config = run_config(options)
    config = apply_overrides(config, {"serve.listen": listen, "serve.silent_after": silent_after})
    if config.serve.listen is None:
        raise SoundwatchError(
            "serve needs an address for the edges: --listen tcp://HOST:PORT (or serve.listen)"
        )
    curve = curve_server(config)

    def listener(pipeline: Any) -> EdgeServer:
        server = EdgeServer(config.serve.listen, pipeline, curve, config.serve.silent_after)
        click.echo(f"soundwatch serve: listening for edges on {server.endpoint}", err=True)
        return server

    pipeline = run_live(
        config,
        on_ready=announce_run,
        config_path=options["config_path"],
        feeder=listener,
        local_sources=bool(options["sources"]),
    )
    finish_run(pipeline)
