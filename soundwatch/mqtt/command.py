"""``soundwatch mqtt``: bridge a running soundwatch to an MQTT broker (Home Assistant)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from soundwatch.errors import SoundwatchError
from soundwatch.security.command import curve_client_options


@click.command("mqtt")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    default=("tcp://127.0.0.1:5557",),
    show_default=True,
    help="soundwatch publisher to read (repeatable)",
)
@click.option(
    "--broker", required=True, metavar="URL", help="mqtt://[USER:PASS@]HOST[:PORT] or mqtts://..."
)
@click.option("--prefix", default="soundwatch", show_default=True, help="state topics prefix")
@click.option("--discovery-prefix", default="homeassistant", show_default=True)
@click.option("--node", help="this machine's name in topics and ids (default: the host name)")
@click.option("--ca-certs", type=click.Path(dir_okay=False, path_type=Path), help="mqtts: CA file")
@click.option(
    "--certfile", type=click.Path(dir_okay=False, path_type=Path), help="mqtts: client cert"
)
@click.option("--keyfile", type=click.Path(dir_okay=False, path_type=Path), help="mqtts: its key")
@click.option("--insecure", is_flag=True, help="mqtts: skip the broker host name check")
@click.option("--queue-size", type=int, help="events kept while the broker is away (1000)")
@click.option(
    "--control",
    metavar="ENDPOINT",
    help="a soundwatch control endpoint (run --control): offer its groups' enabled flag and "
    "threshold as command topics (Home Assistant switch and number)",
)
@click.option(
    "--clip-url",
    metavar="URL",
    help="the dashboard's address serving clips (dashboard --record): events carry clip_url",
)
@curve_client_options
@click.option("-v", "--verbose", is_flag=True)
def mqtt(
    endpoints: tuple[str, ...],
    broker: str,
    prefix: str,
    discovery_prefix: str,
    node: str | None,
    ca_certs: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    insecure: bool,
    queue_size: int | None,
    control: str | None,
    clip_url: str | None,
    curve_secret: Path | None,
    curve_server: Path | None,
    verbose: bool,
) -> None:
    """Publish sound events to MQTT with Home Assistant discovery, until Ctrl-C.

    Per stream and event group: a binary sensor (ON while the sound goes on) with the
    event as attributes, a score sensor, and every event on <prefix>/<node>/<stream>/events.
    With --control, per group a switch (enabled) and a number (threshold) that change the
    running soundwatch through its control endpoint.
    """
    try:
        _bridge(
            list(endpoints),
            (curve_secret, curve_server),
            {
                "broker": broker,
                "prefix": prefix,
                "discovery_prefix": discovery_prefix,
                "node": node,
                "queue_size": queue_size,
                "clip_url": clip_url,
                "tls": {
                    "ca_certs": ca_certs,
                    "certfile": certfile,
                    "keyfile": keyfile,
                    "insecure": insecure or None,
                },
            },
            verbose,
            control,
        )
    except SoundwatchError as error:
        click.echo(f"soundwatch: error: {error}", err=True)
        sys.exit(1)


def _bridge(
    endpoints: list[str],
    curve_files: tuple[Path | None, Path | None],
    options: dict,
    verbose: bool,
    control: str | None = None,
) -> None:
    import logging
    import signal
    import threading

    from soundwatch.client import CurveClient
    from soundwatch.mqtt.bridge import MqttBridge
    from soundwatch.mqtt.config import MqttConfig
    from soundwatch.validation import parse_section

    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("soundwatch").setLevel(logging.DEBUG if verbose else logging.INFO)
    options["tls"] = {k: v for k, v in options["tls"].items() if v is not None}
    given = {k: v for k, v in options.items() if v is not None and v != {}}
    config = parse_section(MqttConfig, given, "the command line options", ("mqtt",))
    bridge = MqttBridge(
        endpoints, config, curve=CurveClient.from_options(*curve_files), control=control
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    bridge.start()
    address = bridge.address
    click.echo(
        f"soundwatch: bridging {', '.join(endpoints)} to {address.host}:{address.port} as node "
        f"{bridge.topics.node} (topics {bridge.topics.base}/...); Ctrl-C to stop",
        err=True,
    )
    while not stop.wait(0.5) and bridge.running:
        pass
    bridge.close()
    counters = ", ".join(f"{k} {v}" for k, v in vars(bridge.counters).items())
    click.echo(f"soundwatch: mqtt bridge stopped: {counters}", err=True)
    if bridge.failed is not None:
        raise SoundwatchError(f"the mqtt bridge failed: {bridge.failed}")
