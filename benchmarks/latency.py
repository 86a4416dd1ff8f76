"""Capture-to-publish latency of the live pipeline, as its ``status`` messages report it.

Latency of a window = from the moment its last audio entered the source's ring to the
moment its ``tags`` message was handed to the ZeroMQ socket (frontend lookahead, waiting
in the window queue, batched inference, encoding). Runs real-time synthetic sources
through ``soundwatch.runner.run_live`` with the real mn04 weights, for several window /
hop settings and stream counts, and prints p50 / p99 (medians over repeated runs) with
the ratio against the baseline row (1 stream, the default window and hop).

    python benchmarks/latency.py [--seconds 20] [--repeats 3] [--weights PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the soundwatch command does

import torch
from report import cpu_model

from soundwatch.client import Subscriber
from soundwatch.config import Config, apply_overrides
from soundwatch.runner import Tagger, run_live
from soundwatch.sinks.messages import Status

SHARED = Path(__file__).resolve().parents[2] / "shared"

# (label, streams, window s, hop s); the first row is the baseline.
SETTINGS = [
    ("default: 1 stream", 1, 3.0, 0.5),
    ("1 stream, 1 s window", 1, 1.0, 0.25),
    ("1 stream, 10 s window", 1, 10.0, 1.0),
    ("4 streams", 4, 3.0, 0.5),
    ("8 streams", 8, 3.0, 0.5),
]


def measure(tagger: Tagger, streams: int, window: float, hop: float, seconds: float) -> dict:
    """One run: the last status of every stream (latency percentiles and counters)."""
    endpoint = "tcp://127.0.0.1:5581"
    config = apply_overrides(
        Config(),
        {
            "sources": [{"id": f"s{i}", "spec": f"synthetic?seed={i + 1}"} for i in range(streams)],
            "publish.endpoints": [endpoint],
            "windows.window": window,
            "windows.hop": hop,
        },
    )
    last: dict[str, Status] = {}
    with Subscriber(endpoint, topics=["status."]) as subscriber:

        def stop_later(pipeline, _endpoints, _notes) -> None:
            threading.Timer(seconds, pipeline.stop).start()

        def read() -> None:
            while (message := subscriber.receive(timeout=seconds + 15)) is not None:
                last[message.stream] = message
                complete = len(last) == streams and all(m.latency for m in last.values())
                if complete and message.t_pub > started + seconds:
                    break

        started = time.time()
        reader = threading.Thread(target=read)
        reader.start()
        run_live(config, tagger=tagger, on_ready=stop_later, install_signal_handlers=False)
        reader.join(20)
    p50 = statistics.median(m.latency["p50"] for m in last.values())
    p99 = max(m.latency["p99"] for m in last.values())
    dropped = sum(m.counters["windows_dropped"] for m in last.values())
    return {"p50": p50, "p99": p99, "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=str(SHARED / "models" / "mn04_as_mAP_432.pt"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    config = apply_overrides(
        Config(), {"model.weights": args.weights, "model.threads": args.threads}
    )
    tagger = Tagger.from_config(config)
    rows = []
    for label, streams, window, hop in SETTINGS:
        runs = [measure(tagger, streams, window, hop, args.seconds) for _ in range(args.repeats)]
        rows.append(
            (
                label,
                window,
                hop,
                statistics.median(r["p50"] for r in runs) * 1000,
                statistics.median(r["p99"] for r in runs) * 1000,
                sum(r["dropped"] for r in runs),
            )
        )
    cpu = f"{cpu_model()}, {os.cpu_count()} cores"
    print(
        f"mn04, torch {torch.__version__}, {args.threads} inference threads, {cpu}, "
        f"{args.repeats} runs of {args.seconds:.0f} s each (medians)\n"
    )
    header = ["setting", "window (s)", "hop (s)", "p50 (ms)", "p99 (ms)", "p50 vs baseline"]
    print("| " + " | ".join([*header, "windows dropped"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows[0][3]
    for label, window, hop, p50, p99, dropped in rows:
        print(
            f"| {label} | {window:g} | {hop:g} | {p50:.1f} | {p99:.1f} | "
            f"{p50 / base:.2f}x | {dropped} |"
        )


if __name__ == "__main__":
    main()
