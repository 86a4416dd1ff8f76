"""``soundwatch health``: is a running soundwatch alive and well? For systemd and containers.

Reads the ``status`` heartbeats every stream publishes (every ``publish.status_interval``
seconds, 5 by default) and judges each stream:

* it has a heartbeat within the timeout (a required ``--stream`` too);
* it has not ended (an error is quoted; a stream whose file finished has ended as well);
* its windows are recent: the last tagged window ended at most ``max_age`` seconds before
  the heartbeat was sent;
* over two consecutive heartbeats (``rounds=2``, the default) it tagged new windows, and it
  lost at most ``max_drop`` (5 %) of its windows (inference falling behind) and of its
  audio samples (ring overruns): a drop rate that keeps growing means the machine cannot
  keep up;
* its device is not lost for longer than ``max_lost`` seconds (``device_lost`` in status:
  a microphone gone and being reopened; a shorter loss is a note, and excuses the missing
  windows);
* the model works: no forward pass stalled past the watchdog's timeout (status's
  ``inference_stalled``), and at most ``max_failures`` forward passes failed between two
  heartbeats (one transient failure is survived, its windows counted in
  ``windows_failed``; more means the model or its device is failing).

Exit status 0 when every stream is healthy, 1 with the reasons otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from soundwatch.client import CurveClient, Subscriber
from soundwatch.security.command import curve_client_options
from soundwatch.sinks.messages import Status

DEFAULT_TIMEOUT = 15.0  # seconds: two heartbeats at the default 5 s interval, and margin
DEFAULT_MAX_AGE = 30.0  # seconds since the last tagged window's audio ended
DEFAULT_MAX_DROP = 0.05  # fraction of windows or samples lost between two heartbeats
DEFAULT_MAX_LOST = 30.0  # seconds a stream's device may be lost (being reopened): as max_age
DEFAULT_MAX_FAILURES = 1  # failed forward passes allowed between two heartbeats


@dataclass
class StreamHealth:
    """The verdict on one stream."""

    stream: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


@dataclass
class HealthReport:
    """The verdict on the whole run: healthy when every stream is and nothing is missing."""

    streams: list[StreamHealth]
    problems: list[str] = field(default_factory=list)  # not tied to one stream

    @property
    def healthy(self) -> bool:
        return not self.problems and all(s.healthy for s in self.streams)

    def lines(self) -> list[str]:
        out = [f"unhealthy: {problem}" for problem in self.problems]
        for stream in self.streams:
            verdict = "ok" if stream.healthy else "unhealthy: " + "; ".join(stream.problems)
            detail = f" ({', '.join(stream.notes)})" if stream.notes else ""
            out.append(f"stream {stream.stream}: {verdict}{detail}")
        return out


def check_health(
    endpoints: str | list[str],
    timeout: float = DEFAULT_TIMEOUT,
    curve: CurveClient | None = None,
    streams: tuple[str, ...] = (),
    rounds: int = 2,
    max_age: float = DEFAULT_MAX_AGE,
    max_drop: float = DEFAULT_MAX_DROP,
    max_lost: float = DEFAULT_MAX_LOST,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> HealthReport:
    """Listen to status heartbeats for at most ``timeout`` seconds and judge the streams."""
    heard: dict[str, list[Status]] = {}
    deadline = time.monotonic() + timeout
    with Subscriber(endpoints, topics=["status."], curve=curve) as subscriber:
        while not _enough(heard, streams, rounds):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = subscriber.receive(timeout=remaining)
            if isinstance(message, Status):
                heard.setdefault(message.stream, []).append(message)
        refused = subscriber.refused
    report = HealthReport([judge(h, max_age, max_drop, max_lost) for h in heard.values()])
    report.problems.extend(judge_inference(heard, max_failures))
    if not heard:
        where = endpoints if isinstance(endpoints, str) else ", ".join(endpoints)
        why = f"no status heartbeat from {where} within {timeout:g} s"
        if refused:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(refused.items()))
            why += f"; the CURVE handshake failed ({kinds}): see the log above"
        else:
            why += " (is soundwatch running and publishing there?)"
        report.problems.append(why)
    for missing in sorted(set(streams) - set(heard)):
        report.problems.append(f"no status from stream {missing} within {timeout:g} s")
    return report


def wait_until_healthy(
    endpoints: str | list[str], timeout: float, **options: object
) -> HealthReport:
    """Check again and again until healthy or ``timeout`` passed (a start-up check: the
    first heartbeats come before the model has tagged anything); the last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        report = check_health(endpoints, max(remaining, 0.1), **options)  # type: ignore[arg-type]
        if report.healthy or deadline - time.monotonic() <= 0:
            return report


def _enough(heard: dict[str, list[Status]], required: tuple[str, ...], rounds: int) -> bool:
    """Every stream heard (and every required one) has ``rounds`` heartbeats or has ended,
    or one has already failed for good."""
    if not heard or any(name not in heard for name in required):
        return False
    if any(s[-1].ended and s[-1].error for s in heard.values()):
        return True
    return all(len(s) >= rounds or s[-1].ended for s in heard.values())


def judge_inference(heard: dict[str, list[Status]], max_failures: int) -> list[str]:
    """Problems of the model, run-wide: every stream's status carries the run's
    ``inference`` counters; the latest heartbeat and the one before it of the same stream
    are compared."""
    latest = max((s for s in heard.values()), key=lambda s: s[-1].t_pub, default=None)
    if not latest:
        return []
    problems = []
    last = latest[-1].inference
    if last.get("inference_stalled", 0):
        problems.append(
            "inference is stalled: a forward pass has run past the watchdog's timeout "
            f"({int(last.get('inference_stalls', 0))} stall(s) so far; see the log): the model "
            "or its device hangs"
        )
    if len(latest) >= 2:
        failed = last.get("inference_failures", 0) - latest[-2].inference.get(
            "inference_failures", 0
        )
        seconds = latest[-1].t_pub - latest[-2].t_pub
        if failed > max_failures:
            problems.append(
                f"inference failed {failed:.0f} times in {seconds:.1f} s between heartbeats "
                f"(limit {max_failures}): the model or its device is failing (tracebacks in "
                "the log)"
            )
    return problems


def judge(
    statuses: list[Status],
    max_age: float,
    max_drop: float,
    max_lost: float = DEFAULT_MAX_LOST,
) -> StreamHealth:
    """The verdict on one stream from its heartbeats, oldest first."""
    last = statuses[-1]
    health = StreamHealth(last.stream)
    counters = last.counters
    health.notes.append(f"{counters.get('windows_tagged', 0)} windows tagged")
    if last.ended:
        health.problems.append(
            f"ended with an error: {last.error}" if last.error else "ended (its source finished)"
        )
        return health
    age = last.t_pub - last.t_end
    if counters.get("device_lost", 0):
        lost_for = counters.get("device_lost_seconds", 0)
        if lost_for > max_lost:
            health.problems.append(
                f"its device has been lost for {lost_for} s (limit {max_lost:g} s; "
                f"{counters.get('device_losses', 0)} loss(es) so far): reopening has not "
                "worked yet; see the log, and check the device is plugged in and its sound "
                "server runs"
            )
        else:  # the missing windows are explained, and the loss is still short
            health.notes.append(f"device lost {lost_for} s ago, reopening")
        return health
    if age > max_age:
        health.problems.append(
            f"no window tagged for {age:.0f} s (limit {max_age:g} s): its audio stopped"
        )
    if len(statuses) < 2:
        health.notes.append("one heartbeat: drop rate not judged")
        return health
    first = statuses[-2]
    delta = {k: v - first.counters.get(k, 0) for k, v in counters.items()}
    if any(v < 0 for v in delta.values()):  # the pipeline restarted between heartbeats
        health.notes.append("counters restarted between heartbeats")
        return health
    seconds = last.t_pub - first.t_pub
    tagged, dropped = delta.get("windows_tagged", 0), delta.get("windows_dropped", 0)
    if tagged == 0:
        health.problems.append(f"no new window tagged in {seconds:.1f} s between heartbeats")
    if dropped and dropped / (tagged + dropped) > max_drop:
        health.problems.append(
            f"dropped {dropped} of {tagged + dropped} windows in {seconds:.1f} s "
            f"(over {max_drop:.0%}): inference cannot keep up"
        )
    samples, lost = delta.get("samples_in", 0), delta.get("dropped_samples", 0)
    if lost and samples and lost / samples > max_drop:
        health.problems.append(
            f"lost {lost / samples:.0%} of the audio samples in {seconds:.1f} s (overruns)"
        )
    if delta.get("overflows", 0):
        health.notes.append(f"{delta['overflows']} device overflows")
    health.notes.append(f"+{tagged} windows, {dropped} dropped in {seconds:.1f} s")
    return health


@click.command("health")
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    default=("tcp://127.0.0.1:5557",),
    show_default=True,
    help="where soundwatch publishes (repeatable)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="seconds to wait for the heartbeats",
)
@click.option("--stream", "streams", multiple=True, help="a stream that must report (repeatable)")
@click.option(
    "--rounds",
    type=click.IntRange(1, 10),
    default=2,
    show_default=True,
    help="heartbeats per stream to judge (2: also judges the drop rate between them)",
)
@click.option(
    "--wait", is_flag=True, help="check until healthy or --timeout passes (start-up checks)"
)
@click.option("--max-age", type=float, default=DEFAULT_MAX_AGE, show_default=True)
@click.option(
    "--max-drop", type=click.FloatRange(0, 1), default=DEFAULT_MAX_DROP, show_default=True
)
@click.option(
    "--max-lost",
    type=click.FloatRange(0),
    default=DEFAULT_MAX_LOST,
    show_default=True,
    help="seconds a stream's device may be lost (being reopened) and still be healthy",
)
@click.option(
    "--max-failures",
    type=click.IntRange(0),
    default=DEFAULT_MAX_FAILURES,
    show_default=True,
    help="failed forward passes allowed between two heartbeats",
)
@curve_client_options
def health(
    endpoints: tuple[str, ...],
    timeout: float,
    streams: tuple[str, ...],
    rounds: int,
    wait: bool,
    max_age: float,
    max_drop: float,
    max_lost: float,
    max_failures: int,
    curve_secret: Path | None,
    curve_server: Path | None,
) -> None:
    """Exit 0 if a running soundwatch is healthy, 1 with the reasons if not.

    For systemd (ExecStartPost, timers) and container health checks; see the module
    docstring of soundwatch.health or docs/reliability.md for what healthy means.
    """
    import logging
    import sys

    from soundwatch.cli import user_errors

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    @user_errors
    def check() -> None:
        curve = CurveClient.from_options(curve_secret, curve_server)
        options = {
            "curve": curve,
            "streams": streams,
            "rounds": rounds,
            "max_age": max_age,
            "max_drop": max_drop,
            "max_lost": max_lost,
            "max_failures": max_failures,
        }
        verdict_of = wait_until_healthy if wait else check_health
        report = verdict_of(list(endpoints), timeout, **options)
        for line in report.lines():
            click.echo(line, err=not report.healthy)
        if report.healthy:
            click.echo("healthy")
        sys.exit(0 if report.healthy else 1)

    check()
