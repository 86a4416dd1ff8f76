"""The ``soundwatch`` command: one subcommand per job (run, tag, tail, devices, config).

Each subcommand is a thin layer: it parses flags, calls into the package and turns a
:class:`~soundwatch.errors.SoundwatchError` into a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from soundwatch import __version__
from soundwatch.errors import SoundwatchError
from soundwatch.security.command import curve_client_options

F = TypeVar("F", bound=Callable[..., Any])

# OpenMP threads that spin while waiting starve the capture and frontend threads on small
# machines (one mn04 window: 240 ms with 2 spinning threads vs 33 ms passive, measured on
# 2 busy cores; see docs/performance.md). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS threads (the resampler's small matrix products) compete for the cores
# with the model: one thread cut a 48-stream run's CPU by 30% (docs/performance.md).
# Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def user_errors(func: F) -> F:
    """Print SoundwatchError messages without a traceback and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SoundwatchError as error:
            click.echo(f"soundwatch: error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:  # Ctrl-C before the pipeline took over the signal
            click.echo("soundwatch: interrupted", err=True)
            sys.exit(130)

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


def _setup_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("soundwatch").setLevel(logging.DEBUG if verbose else logging.INFO)


#: The options of ``soundwatch run``, which ``soundwatch serve`` shares (:func:`run_options`):
#: one list, so an option added here reaches both commands.
RUN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path)),
    click.option(
        "--source",
        "sources",
        multiple=True,
        metavar="[ID=]SPEC",
        help="mic | mic:DEVICE | file:PATH | pcm:- | synthetic (repeatable)",
    ),
    click.option(
        "--publish", "endpoints", multiple=True, metavar="ENDPOINT", help="tcp:// or ipc://"
    ),
    click.option("--jsonl", metavar="PATH", help="also write JSON lines ('-' for stdout)"),
    click.option(
        "--wait-for-subscribers",
        "wait_for",
        type=int,
        metavar="N",
        help="wait for N subscriptions before tagging",
    ),
    click.option(
        "--dashboard",
        "dashboard_at",
        metavar="[HOST:]PORT",
        help="serve the live dashboard from this process (127.0.0.1 unless HOST is given)",
    ),
    click.option(
        "--mqtt", "mqtt_broker", metavar="URL", help="bridge to MQTT: mqtt://[USER:PASS@]HOST"
    ),
    click.option(
        "--record",
        "record_dir",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="keep event clips and the history (events.sqlite) in DIR",
    ),
    click.option(
        "--head",
        "head_files",
        multiple=True,
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="custom-sound head (soundwatch learn) or folder of heads (repeatable)",
    ),
    click.option(
        "--dashboard-token",
        envvar="SOUNDWATCH_DASHBOARD_TOKEN",
        metavar="TOKEN",
        help="token the dashboard page asks for (required when --dashboard is not loopback)",
    ),
    click.option(
        "--metrics",
        "metrics_at",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at /metrics (127.0.0.1 unless HOST is given)",
    ),
    click.option(
        "--curve-secret",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="SERVER.key_secret",
        help="CURVE: encrypt the endpoints with this secret key (with --curve-allow)",
    ),
    click.option(
        "--curve-allow",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="CURVE: serve only clients whose public .key file is in DIR",
    ),
    click.option(
        "--control",
        "control_at",
        is_flag=False,
        flag_value="tcp://127.0.0.1:5558",
        default=None,
        metavar="ENDPOINT",
        help="listen for soundwatch ctl (default endpoint tcp://127.0.0.1:5558)",
    ),
    click.option(
        "--persist", is_flag=True, default=None, help="keep runtime changes in an overlay file"
    ),
    click.option("--pace", type=click.Choice(["realtime", "fast"]), help="pace of file sources"),
    click.option("--loop/--no-loop", default=None, help="loop file sources"),
    click.option("--model", "model_name", metavar="NAME", help="mn04, mn10, dymn10, ..."),
    click.option("--weights", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
    click.option("--backend", type=click.Choice(["auto", "torch", "onnx"])),
    click.option("--threads", type=int),
    click.option(
        "--parallel",
        metavar="auto|N",
        help="chunks each forward pass runs as at once (model.parallel; auto: the CPU cores)",
    ),
    click.option("--window", type=float, metavar="SECONDS"),
    click.option("--hop", type=float, metavar="SECONDS"),
    click.option(
        "--stagger/--no-stagger",
        default=None,
        help="streams' windows fall due at different moments of the hop (pipeline.stagger)",
    ),
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        help="where forward passes run: this process, or a Ray Serve deployment (docs/scale.md)",
    ),
    click.option(
        "--ray-address", metavar="ADDR", help="with --engine ray: local | auto | HOST:PORT"
    ),
    click.option(
        "--replicas", type=click.IntRange(1, 1000), help="with --engine ray: replicas of the tagger"
    ),
    click.option("-v", "--verbose", is_flag=True),
]


def run_options(func: F) -> F:
    """Decorate a command with every option of ``soundwatch run`` (:data:`RUN_OPTIONS`)."""
    for option in reversed(RUN_OPTIONS):
        func = option(func)
    return func


def run_config(options: dict[str, Any]) -> Any:
    """The :class:`~soundwatch.config.Config` of a ``run`` (or ``serve``) command line: the
    config file with the flags given applied (and logging set up as ``-v`` asks)."""
    config_path = options["config_path"]
    sources = options["sources"]
    endpoints = options["endpoints"]
    jsonl = options["jsonl"]
    wait_for = options["wait_for"]
    dashboard_at = options["dashboard_at"]
    mqtt_broker = options["mqtt_broker"]
    record_dir = options["record_dir"]
    control_at = options["control_at"]
    persist = options["persist"]
    head_files = options["head_files"]
    dashboard_token = options["dashboard_token"]
    metrics_at = options["metrics_at"]
    curve_secret = options["curve_secret"]
    curve_allow = options["curve_allow"]
    pace = options["pace"]
    loop = options["loop"]
    model_name = options["model_name"]
    weights = options["weights"]
    device = options["device"]
    backend = options["backend"]
    threads = options["threads"]
    window = options["window"]
    hop = options["hop"]
    engine = options["engine"]
    ray_address = options["ray_address"]
    replicas = options["replicas"]
    verbose = options["verbose"]
    from soundwatch.config import apply_overrides, load_config, model_and_window_overrides
    from soundwatch.dashboard.config import parse_listen_address
    from soundwatch.sources import sources_from_args

    _setup_logging(verbose)
    dashboard_host, dashboard_port = (
        parse_listen_address(dashboard_at) if dashboard_at else (None, None)
    )
    metrics_host, metrics_port = (
        parse_listen_address(metrics_at, what="metrics") if metrics_at else (None, None)
    )
    config = load_config(config_path)
    source_configs = sources_from_args(sources, loop) if sources else None
    if source_configs is None and loop is not None:  # --loop applies to the config's sources
        source_configs = [{**s.model_dump(), "loop": loop} for s in config.sources]
    config = apply_overrides(
        config,
        {
            "sources": source_configs,
            "publish.endpoints": list(endpoints) or None,
            "publish.jsonl": jsonl,
            "publish.wait_for_subscribers": wait_for,
            "pipeline.pace": pace,
            "pipeline.stagger": options["stagger"],
            "dashboard.enabled": True if dashboard_at else None,
            "dashboard.host": dashboard_host,
            "dashboard.port": dashboard_port,
            "mqtt.broker": mqtt_broker,
            "dashboard.token": dashboard_token,
            "metrics.enabled": True if metrics_at else None,
            "metrics.host": metrics_host,
            "metrics.port": metrics_port,
            "security.curve_secret": curve_secret,
            "security.curve_allow": curve_allow,
            "recorder.enabled": True if record_dir else None,
            "recorder.dir": record_dir,
            "control.endpoint": control_at,
            "control.persist": persist,
            "heads.paths": [*config.heads.paths, *head_files] if head_files else None,
            "inference.engine": engine,
            "inference.ray_address": ray_address,
            "inference.replicas": replicas,
            "model.parallel": options["parallel"],
            **model_and_window_overrides(
                model_name, weights, device, backend, threads, window, hop
            ),
        },
    )
    return config


def announce_run(pipeline: Any, endpoints_bound: list[str], notes: list[str]) -> None:
    """What a run says once everything listens (run_live's ``on_ready``)."""
    names = ", ".join(f"{s.id} ({s.source.describe().get('kind')})" for s in pipeline.streams)
    where = ", ".join(endpoints_bound) or "no ZeroMQ endpoint"
    click.echo(f"soundwatch: tagging {names or 'no local source'}; publishing on {where}", err=True)
    for note in notes:
        click.echo(f"  {note}", err=True)
    if endpoints_bound:
        click.echo(f"  watch it with: soundwatch tail --endpoint {endpoints_bound[0]}", err=True)


def finish_run(pipeline: Any) -> None:
    """Print what every stream counted, then exit at once (see :func:`_exit_now`)."""
    for state in pipeline.streams:
        counters = {**vars(state.source.stats()), **vars(state.counters)}
        click.echo(f"soundwatch: stream {state.id} finished: {counters}", err=True)
    batches = pipeline.batches
    click.echo(
        f"soundwatch: {batches.windows} windows in {batches.forward_passes} forward passes; "
        f"multi-stream passes: {batches.multi_stream_passes}",
        err=True,
    )
    import threading

    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    click.echo(f"soundwatch: stopped; threads left: {', '.join(left) or 'none'}", err=True)
    _exit_now(0)


@main.command("run")
@run_options
@user_errors
def run(**options: Any) -> None:
    """Listen, tag and publish until Ctrl-C (or until every file source has ended)."""
    from soundwatch.runner import run_live

    config = run_config(options)
    finish_run(run_live(config, on_ready=announce_run, config_path=options["config_path"]))


@main.command("serve")
@click.option("--listen", metavar="tcp://HOST:PORT", help="where edges connect (edge --to)")
@click.option(
    "--silent-after",
    type=float,
    metavar="SECONDS",
    help="report an edge stream silent after this long without frames",
)
@run_options
@user_errors
def serve(listen: str | None, silent_after: float | None, **options: Any) -> None:
    """Tag the streams of edge nodes (and any --source here) like run does, until Ctrl-C:
    the same model, window, events and publishing options, topics and messages."""
    from soundwatch.edge.command import serve as serve_edges

    serve_edges(listen, silent_after, options)


def _exit_now(status: int) -> None:
    """Exit without the interpreter's slow teardown (seconds for torch's libraries).

    Everything is already closed; terminating the ZeroMQ context first waits (up to the
    sockets' linger) until the last messages have left.
    """
    import zmq

    zmq.Context.instance().term()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@main.command("tag")
@click.argument("paths", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", metavar="NAME", help="mn04 (default), mn10, dymn10, ...")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--window", type=float, help="seconds (default: the config's, 3)")
@click.option("--hop", type=float, help="seconds (default: the config's, 0.5)")
@click.option("--top", "top_k", type=click.IntRange(1, 527), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per window (or event)")
@click.option("--probs", is_flag=True, help="with --json: all probabilities in label order")
@click.option("--events", "show_events", is_flag=True, help="print sound events, not windows")
@click.option(
    "--head",
    "head_files",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="also tag a head's own labels (soundwatch learn; repeatable)",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx"]))
@click.option("--threads", type=int)
@user_errors
def tag(
    paths: tuple[str, ...],
    config_path: Path | None,
    model_name: str | None,
    weights: Path | None,
    window: float | None,
    hop: float | None,
    top_k: int,
    as_json: bool,
    probs: bool,
    show_events: bool,
    head_files: tuple[Path, ...],
    device: str | None,
    backend: str | None,
    threads: int | None,
) -> None:
    """Tag audio files (WAV, FLAC, OGG; any rate and channels) with sliding windows.

    With --events, print the sound events the live pipeline would publish for each file
    (times in seconds from the file's start).
    """
    from soundwatch.config import apply_overrides, load_config, model_and_window_overrides
    from soundwatch.runner import Tagger, forward_chunks, tag_file

    config = apply_overrides(
        load_config(config_path),
        {
            **model_and_window_overrides(
                model_name, weights, device, backend, threads, window, hop
            ),
            "heads.paths": [*config_heads(config_path), *head_files] if head_files else None,
        },
    )
    tagger = Tagger.from_config(config)
    if show_events and not config.events.enabled:
        raise SoundwatchError("events are disabled in the config (events.enabled: false)")
    groups = tagger.events_handler(config.events, print) if config.events.enabled else None
    heads = tagger.head_bank(config, groups)
    failed = 0
    for path in paths:
        try:
            tagged = tag_file(
                path,
                tagger,
                config.windows.window,
                config.windows.hop,
                events=config.events if show_events else None,
                heads=heads,
                chunks=forward_chunks(config, tagger),
            )
        except SoundwatchError as error:
            click.echo(f"soundwatch: error: {error}", err=True)
            failed += 1
            continue
        if show_events:
            _print_events(path, tagged, as_json)
        else:
            _print_windows(path, tagged, tagger.labels, top_k, as_json, probs, heads)
    if failed:
        sys.exit(1)


def config_heads(config_path: Path | None) -> list[Path]:
    """The head files of the config (``--head`` adds to them)."""
    from soundwatch.config import load_config

    return list(load_config(config_path).heads.paths)


def _print_windows(
    path: str,
    tagged: Any,
    labels: list[str],
    top_k: int,
    as_json: bool,
    probs: bool,
    heads: Any = None,
) -> None:
    import json

    from soundwatch.sinks.live import top_labels

    for result in tagged.windows:
        top = [[label, round(p, 4)] for label, p in top_labels(result.probs, labels, top_k)]
        t_start = round(result.offset_s, 3)
        t_end = round(result.offset_s + (result.t_end - result.t_start), 3)
        head = {}
        if heads is not None and heads.labels:
            head_probs = heads.predict(result.embedding, result.probs).tolist()
            head = {label: round(p, 4) for label, p in zip(heads.labels, head_probs, strict=True)}
        if as_json:
            record: dict = {"file": path, "t_start": t_start, "t_end": t_end, "top": top}
            if probs:
                record["probs"] = [round(float(p), 6) for p in result.probs]
            if heads is not None:
                record["head"] = head
            click.echo(json.dumps(record))
        else:
            shown = ", ".join(f"{label} {p:.2f}" for label, p in top)
            if head:
                shown += " | " + ", ".join(f"{label} {p:.2f}" for label, p in head.items())
            click.echo(f"{path} {t_start:7.2f}-{t_end:7.2f}s  {shown}")


def _print_events(path: str, tagged: Any, as_json: bool) -> None:
    import json

    for event in tagged.finished_events():
        onset = round(event.onset - tagged.origin, 2)
        offset = round(event.offset - tagged.origin, 2)
        if as_json:
            record = {
                "file": path,
                "label": event.label,
                "onset": onset,
                "offset": offset,
                "peak": round(event.peak, 4),
            }
            click.echo(json.dumps(record))
        else:
            click.echo(f"{path} {onset:7.2f}-{offset:7.2f}s  {event.label} (peak {event.peak:.2f})")


@main.command("tail")
@click.option("--endpoint", default="tcp://127.0.0.1:5557", show_default=True)
@click.option("--topic", "topics", multiple=True, help="topic prefix, e.g. tags.mic (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print each message as JSON")
@click.option("--top", "top_k", type=click.IntRange(1, 527), default=3, show_default=True)
@click.option("--count", type=int, default=None, help="exit after this many messages")
@click.option("--timeout", type=float, default=None, help="exit after this many quiet seconds")
@curve_client_options
@user_errors
def tail(
    endpoint: str,
    topics: tuple[str, ...],
    as_json: bool,
    top_k: int,
    count: int | None,
    timeout: float | None,
    curve_secret: Path | None,
    curve_server: Path | None,
) -> None:
    """Show live tags, events and status from a running soundwatch."""
    import json
    import time

    from soundwatch.client import CurveClient, Subscriber
    from soundwatch.sinks.messages import Event, Status, Tags
    from soundwatch.sinks.publisher import to_json

    seen = 0
    curve = CurveClient.from_options(curve_secret, curve_server)
    with Subscriber(endpoint, topics=list(topics) or None, curve=curve) as subscriber:
        click.echo(f"listening on {endpoint} (Ctrl-C to stop)", err=True)
        try:
            while count is None or seen < count:
                message = subscriber.receive(timeout=timeout)
                if message is None:
                    click.echo(f"no message for {timeout} s; is soundwatch running?", err=True)
                    sys.exit(1)
                seen += 1
                if as_json:
                    body = to_json(message)
                    if isinstance(message, Tags):
                        body.pop("probs")
                    click.echo(json.dumps(body))
                    continue
                clock = time.strftime("%H:%M:%S", time.localtime(message.t_end))
                if isinstance(message, Tags):
                    shown = ", ".join(f"{label} {p:.2f}" for label, p in message.top[:top_k])
                    click.echo(f"{clock} {message.stream:<12} {shown}")
                elif isinstance(message, Event):
                    arrow = "▶ start" if message.state == "start" else "■ end  "
                    length = (
                        f" ({message.offset - message.onset:.1f} s)"
                        if message.offset is not None
                        else ""
                    )
                    click.echo(
                        f"{clock} {message.stream:<12} {arrow} {message.label} "
                        f"peak {message.peak:.2f}{length}"
                    )
                elif isinstance(message, Status):
                    lat = message.latency
                    latency = (
                        f"latency p50 {lat['p50'] * 1000:.0f} ms"
                        if "p50" in lat
                        else "no latency yet"
                    )
                    lost = {k: v for k, v in message.counters.items() if v and k != "samples_in"}
                    click.echo(
                        f"{clock} {message.stream:<12} status: {message.model}, {latency}, "
                        f"counters {lost or 'all zero'}, missed {subscriber.gaps}"
                    )
        except KeyboardInterrupt:
            pass


from soundwatch.dashboard.command import dashboard  # noqa: E402 (subcommands last)

main.add_command(dashboard)

from soundwatch.mqtt.command import mqtt  # noqa: E402 (registered after main)

main.add_command(mqtt)

from soundwatch.health import health  # noqa: E402 (registered after main)
from soundwatch.security.command import keys  # noqa: E402

main.add_command(health)
main.add_command(keys)

from soundwatch.recorder.command import events  # noqa: E402 (registered after main)

main.add_command(events)

from soundwatch.control.command import ctl  # noqa: E402 (registered after main)

main.add_command(ctl)

from soundwatch.heads.command import embed, learn  # noqa: E402 (registered after main)

main.add_command(learn)
main.add_command(embed)

from soundwatch.training.command import finetune  # noqa: E402 (registered after main)

main.add_command(finetune)

from soundwatch.recorder.record_command import record  # noqa: E402 (registered after main)

main.add_command(record)

from soundwatch.edge.command import edge  # noqa: E402 (registered after main)

main.add_command(edge)


if __name__ == "__main__":
    main()
