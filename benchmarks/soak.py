"""Soak: hours of audio through the whole pipeline as fast as it goes, watched from outside.

Runs ``soundwatch run`` as its own process (the real CLI, model, events and ZeroMQ
publishing) on looping files paced ``fast`` and synthetic streams, while this process
subscribes to everything like any client would, and samples the run's resident memory,
threads and open descriptors from ``/proc``. At the end it stops the run with SIGTERM and
reports: audio tagged per stream (hours) against wall time, messages received, ``seq`` gaps
(messages missed), drops and losses from the final status counters, and the growth of
memory, threads and descriptors between the end of the warm-up and the end.

    .venv/bin/python benchmarks/soak.py --seconds 3600 \\
        --weights ../shared/models/mn04_as_mAP_432.pt \\
        --file ../shared/audio/clips/speech.wav --file ../shared/audio/clips/music.wav \\
        --synthetic 1

``tests/test_soak.py`` runs the same :func:`soak` for a few seconds in CI.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from soundwatch.client import Subscriber
from soundwatch.sinks.messages import Event, Status, Tags

#: Counters of the final status that mean audio or windows were lost.
LOSS_COUNTERS = (
    "overflows",
    "overruns",
    "dropped_samples",
    "gaps",
    "windows_dropped",
    "event_windows_dropped",
    "windows_failed",
)


@dataclass
class Sample:
    """One look at the run process from /proc."""

    t: float  # seconds since the run started
    rss_mib: float
    threads: int
    fds: int


@dataclass
class SoakResult:
    """What a soak measured; ``returncode`` is the run's exit status after SIGTERM."""

    wall_s: float
    returncode: int | None
    samples: list[Sample]
    warm: Sample | None  # the first sample after the warm-up
    audio_s: dict[str, float]  # per stream, audio seconds tagged (windows_tagged * hop)
    tags: dict[str, int] = field(default_factory=dict)
    events: int = 0
    statuses: int = 0
    missed: int = 0  # seq gaps over every topic
    malformed: int = 0
    losses: dict[str, dict[str, int]] = field(default_factory=dict)  # stream -> nonzero
    errors: dict[str, str] = field(default_factory=dict)  # stream -> status error
    inference: dict[str, float] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def growth(self) -> tuple[float, int, int]:
        """RSS (MiB), threads and descriptors: last sample minus the warm one."""
        if self.warm is None or not self.samples:
            return (0.0, 0, 0)
        last = self.samples[-1]
        return (
            last.rss_mib - self.warm.rss_mib,
            last.threads - self.warm.threads,
            last.fds - self.warm.fds,
        )


def proc_sample(pid: int, t: float) -> Sample | None:
    """Resident memory, thread and descriptor counts of ``pid`` (None once it exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    return Sample(t, rss_kib / 1024, int(fields["Threads"]), fds)


def free_endpoint() -> str:
    import zmq

    socket = zmq.Context.instance().socket(zmq.PUB)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def soak_config(
    files: list[Path], synthetic: int, weights: Path, endpoint: str, hop: float
) -> dict:
    """A run config: each file looping and paced fast, ``synthetic`` synthetic streams,
    events on, status every second, tagging held until this subscriber is there."""
    sources = [
        {"spec": f"file:{path}", "id": f"file{i}", "loop": True} for i, path in enumerate(files)
    ]
    sources += [{"spec": "synthetic", "id": f"synth{i}"} for i in range(synthetic)]
    return {
        "sources": sources,
        "model": {"name": "mn04", "weights": str(weights)},
        "windows": {"window": 3.0, "hop": hop},
        "pipeline": {"pace": "fast"},
        "events": {"enabled": True},
        "publish": {
            "endpoints": [endpoint],
            "status_interval": 1.0,
            "wait_for_subscribers": 1,
            "wait_timeout": 60.0,
        },
    }


def soak(
    seconds: float,
    files: list[Path],
    synthetic: int,
    weights: Path,
    hop: float = 0.5,
    warmup_s: float | None = None,
    sample_every_s: float = 1.0,
) -> SoakResult:
    """Run a soak for ``seconds`` of wall time (after the run starts tagging) and measure."""
    warmup_s = min(60.0, seconds / 5) if warmup_s is None else warmup_s
    endpoint = free_endpoint()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        config = Path(tmp) / "soak.yaml"
        config.write_text(yaml.safe_dump(soak_config(files, synthetic, weights, endpoint, hop)))
        log_path = Path(tmp) / "run.log"
        with Subscriber(endpoint) as subscriber, log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "soundwatch.cli", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                result = _watch(process, subscriber, seconds, warmup_s, sample_every_s, hop)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            result.missed = subscriber.gaps
            result.malformed = subscriber.malformed
        result.stderr_tail = log_path.read_text()[-4000:]
    return result


def _watch(
    process: subprocess.Popen,
    subscriber: Subscriber,
    seconds: float,
    warmup_s: float,
    sample_every_s: float,
    hop: float,
) -> SoakResult:
    result = SoakResult(0.0, None, [], None, {})
    final: dict[str, Status] = {}
    started: float | None = None  # when the first tags arrived
    next_sample = 0.0
    stopping_since: float | None = None
    while True:
        now = time.monotonic()
        if started is not None and stopping_since is None and now - started >= seconds:
            process.send_signal(signal.SIGTERM)
            stopping_since = now
        if stopping_since is not None and process.poll() is not None:
            # Drain what the run published before it exited.
            while (message := subscriber.receive(timeout=1.0)) is not None:
                _count(result, final, message)
            break
        if stopping_since is not None and now - stopping_since > 120:
            raise RuntimeError("the run did not stop within 120 s of SIGTERM")
        if stopping_since is None and process.poll() is not None:
            break  # the run ended by itself: a failure, reported by its exit status
        if started is not None and stopping_since is None and now >= next_sample:
            sample = proc_sample(process.pid, now - started)
            if sample is not None:
                result.samples.append(sample)
                if result.warm is None and sample.t >= warmup_s:
                    result.warm = sample
            next_sample = now + sample_every_s
        message = subscriber.receive(timeout=0.2)
        if message is not None:
            if started is None and isinstance(message, Tags):
                started = time.monotonic()
            _count(result, final, message)
    result.wall_s = time.monotonic() - started if started is not None else 0.0
    result.returncode = process.wait()
    for stream, status in final.items():
        result.audio_s[stream] = status.counters.get("windows_tagged", 0) * hop
        lost = {k: v for k in LOSS_COUNTERS if (v := status.counters.get(k, 0))}
        if lost:
            result.losses[stream] = lost
        if status.error:
            result.errors[stream] = status.error
        result.inference = dict(status.inference)
    return result


def _count(result: SoakResult, final: dict[str, Status], message: object) -> None:
    if isinstance(message, Tags):
        result.tags[message.stream] = result.tags.get(message.stream, 0) + 1
    elif isinstance(message, Event):
        result.events += 1
    elif isinstance(message, Status):
        result.statuses += 1
        final[message.stream] = message


def print_report(result: SoakResult) -> None:
    rss, threads, fds = result.growth
    audio_h = sum(result.audio_s.values()) / 3600
    rows = [
        ("wall time", f"{result.wall_s:.0f} s"),
        (
            "audio tagged",
            f"{audio_h:.2f} h ({audio_h * 3600 / max(result.wall_s, 1e-9):.0f}x"
            " real time, all streams)",
        ),
        *(
            (f"  {s}", f"{a / 3600:.2f} h, {result.tags.get(s, 0)} tags")
            for s, a in sorted(result.audio_s.items())
        ),
        ("events, status messages", f"{result.events}, {result.statuses}"),
        ("seq gaps (missed) / malformed", f"{result.missed} / {result.malformed}"),
        ("losses (final status)", str(result.losses or "none")),
        ("stream errors", str(result.errors or "none")),
        (
            "inference failures / stalls",
            f"{result.inference.get('inference_failures', 0):g} / "
            f"{result.inference.get('inference_stalls', 0):g}",
        ),
        ("RSS warm -> end", _span(result, "rss_mib", "{:.1f} MiB") + f" ({rss:+.1f} MiB)"),
        ("threads warm -> end", _span(result, "threads", "{}") + f" ({threads:+d})"),
        ("descriptors warm -> end", _span(result, "fds", "{}") + f" ({fds:+d})"),
        ("exit status after SIGTERM", str(result.returncode)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _span(result: SoakResult, attr: str, fmt: str) -> str:
    if result.warm is None or not result.samples:
        return "n/a"
    first, last = getattr(result.warm, attr), getattr(result.samples[-1], attr)
    return f"{fmt.format(first)} -> {fmt.format(last)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="wall time to run")
    parser.add_argument("--weights", type=Path, required=True, help="mn04 checkpoint")
    parser.add_argument("--file", type=Path, action="append", default=[], help="looped file")
    parser.add_argument("--synthetic", type=int, default=1, help="synthetic streams")
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()
    result = soak(args.seconds, args.file, args.synthetic, args.weights, args.hop)
    print_report(result)
    if result.returncode != 0:
        print(result.stderr_tail, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
