"""Per-window cost of the delivery handlers: the Python the pipeline's delivery thread runs
for every window after the forward pass.

The handlers are built as ``soundwatch.runner.run_live`` builds them, without a model: the
event detectors (``events`` of the default config: the shipped ``esc50`` preset plus the
home groups, mn04's 527 AudioSet classes) and the live publisher (``tags`` with smoothing,
top labels and the groups' scores; ``status`` every 5 s of audio per stream) sending to a
real ZeroMQ XPUB socket that a subscriber in another process reads. ``--streams`` streams
deliver one 3 s / 0.5 s window each per hop, in stream order, for ``--seconds`` of audio;
probabilities are random (a Beta(0.3, 60) background, so groups cross their thresholds now
and then, as on real rooms).

Prints, per handler and for both together, the median (and p90) microseconds per window
over the hops after the first ``--warmup`` seconds. ``--profile N`` also prints the top N
rows of a cProfile of the loop (its overhead inflates that run's times: time without it).
Compare two commits by running the same command on each (note the machine's load beside
the numbers)::

    .venv/bin/python benchmarks/delivery.py --streams 100 --seconds 60
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from soundwatch.config import Config
from soundwatch.events import EventsHandler, build_settings
from soundwatch.labels import read_class_labels, read_ontology
from soundwatch.results import EVENTS, TAGS, StreamReport, WindowResult
from soundwatch.sinks.live import GroupTable, LivePublisher, LiveSettings
from soundwatch.sinks.publisher import Publisher, ZmqOutput

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
FPS = 100  # frames per second
STATUS_EVERY_S = 5.0  # the default publish.status_interval, in audio seconds


def subscribe(endpoint: str, stop: mp.Event, counts: mp.Array) -> None:
    """The subscriber process: receive everything until ``stop``; count messages."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    while not stop.is_set():
        if sock.poll(100):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                counts[0] += 1
    sock.close(linger=0)


def build(config: Config, publisher: Publisher, streams: list[str]) -> tuple:
    """The event handler and live publisher as ``run_live`` wires them."""
    labels = read_class_labels(SHARED / "class_labels_indices.csv")
    ontology_path = SHARED / "ontology.json"
    read_ontology(ontology_path)  # fail early with the reader's message
    settings = build_settings(
        config.events, labels.names, labels.mids, find_ontology=lambda: ontology_path
    )
    events = EventsHandler(settings, publisher.publish)
    groups = GroupTable(
        names=settings.labels,
        table=settings.score_table,
        thresholds=[float(t) for t in settings.thresholds.on],
    )
    reports = [
        StreamReport(s, {"kind": "file"}, {"windows_tagged": 0}, time.time(), None, False, None)
        for s in streams
    ]
    live = LivePublisher(
        publisher,
        LiveSettings(
            model_name="mn04_as",
            labels=labels.names,
            window_s=config.windows.window,
            hop_s=config.windows.hop,
            events_window=(config.events.window, config.events.hop),
            top_k=config.publish.top_k,
            status_interval=1e9,  # the loop publishes status every STATUS_EVERY_S of audio
            smoothing=config.publish.smoothing.method,
            smoothing_width=config.publish.smoothing.width,
            mel="off",
            embeddings="off",
            groups=groups,
            backend="onnx/cpu",
        ),
        lambda: reports,
        extra_counters=events.counters,
    )
    return events, live


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    config = Config()
    hop_frames = round(config.windows.hop * FPS)
    window_frames = round(config.windows.window * FPS)
    streams = [f"s{i:03d}" for i in range(args.streams)]
    output = ZmqOutput(["tcp://127.0.0.1:*"], high_water_mark=config.publish.high_water_mark)
    publisher = Publisher([output])
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    counts = spawn.Array("q", 1)
    reader = spawn.Process(target=subscribe, args=(output.endpoints[0], stop, counts), daemon=True)
    reader.start()
    if not output.wait_for_subscribers(1, timeout=30):
        sys.exit("the subscriber process did not subscribe within 30 s")
    events, live = build(config, publisher, streams)
    rng = np.random.default_rng(0)
    hops = int(args.seconds / config.windows.hop)
    warm = int(args.warmup / config.windows.hop)
    status_every = round(STATUS_EVERY_S / config.windows.hop)
    embedding = np.zeros(960, dtype=np.float32)
    times: dict[str, list[float]] = {"events": [], "live": [], "status": [], "total": []}
    profiler = cProfile.Profile() if args.profile else None
    t0 = time.time()
    for h in range(hops):
        probs = rng.beta(0.3, 60, size=(len(streams), 527)).astype(np.float32)
        start = h * hop_frames
        t_ev = t_live = 0.0
        if profiler is not None and h == warm:
            profiler.enable()
        for i, stream in enumerate(streams):
            result = WindowResult(
                stream=stream,
                start_frame=start,
                stop_frame=start + window_frames,
                t_start=t0 + start / FPS,
                t_end=t0 + (start + window_frames) / FPS,
                offset_s=start / FPS,
                probs=probs[i],
                embedding=embedding,
                t_ingest=time.monotonic(),
                final=False,
                purposes=frozenset({TAGS, EVENTS}),
            )
            a = time.perf_counter()
            events.on_result(result)
            b = time.perf_counter()
            live.on_result(result)
            c = time.perf_counter()
            t_ev += b - a
            t_live += c - b
        a = time.perf_counter()
        if h % status_every == 0:
            live.publish_status()
        t_status = time.perf_counter() - a
        if h >= warm:
            n = len(streams)
            times["events"].append(t_ev / n)
            times["live"].append(t_live / n)
            times["status"].append(t_status / n)
            times["total"].append((t_ev + t_live + t_status) / n)
    if profiler is not None:
        profiler.disable()
    stop.set()
    reader.join(timeout=10)
    output.close()
    n_events = sum(d.counters.events for d in events.detectors.values())
    print(
        f"{args.streams} streams x {hops} windows; {n_events} events; "
        f"{counts[0]} messages received; load {os.getloadavg()[0]:.2f}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--warmup", type=float, default=5.0, help="audio seconds not timed")
    parser.add_argument("--profile", type=int, default=0, help="print this many cProfile rows")
    args = parser.parse_args()
    times = run(args)
    # The status cost falls on one hop in ten: its mean per window is what it costs.
    print("| handler | median us/window | p90 us/window | mean us/window |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        us = np.asarray(values) * 1e6
        print(
            f"| {name} | {statistics.median(us):.1f} | {np.percentile(us, 90):.1f} "
            f"| {us.mean():.1f} |"
        )


if __name__ == "__main__":
    main()
