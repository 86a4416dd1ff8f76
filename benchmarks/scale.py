"""Windows per second against Ray Serve replicas, and the per-stream cost of the edge and
of the centre (docs/scale.md).

Rows, all measured in one run on this machine:

a) **central throughput**: passes of ``--batch`` real 3 s mn04 windows (log-mel of the shared
   60 s scenes) as the pipeline hands them to its engine, one pass at a time: the local
   engine (``InferenceWorker`` in this process, the baseline) and ``--engine ray`` with 1, 2,
   3 replicas on a local Ray started here (all deployed at once, one inference
   thread each). Windows/s is the median of ``--runs`` repetitions of ``--passes`` passes,
   the engines taking turns within each repetition; CPU per window counts this process and
   the replicas' processes (``/proc``), and its inverse (windows per core-second) is what a
   core can do whatever else loads the machine;
b) **edge**: the frontend's CPU per audio second (``StreamingLogMel.push`` in 10 ms hops on
   the real scene audio, one core), and a real ``soundwatch edge`` process's CPU per audio
   second sending one file stream to a ZeroMQ socket here that acknowledges every batch as
   ``serve`` does;
c) a stream at a 0.5 s hop costs 2 windows/s centrally: streams per replica = windows/s / 2.

    .venv/bin/python benchmarks/scale.py [--runs 5] [--passes 20] [--batch 32] [--replicas 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from report import cpu_model

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "models/mn04_as_mAP_432.pt"
SCENES = sorted((SHARED / "audio/scenes-dev").glob("scene_*.wav"))[:4]
HOP_S = 0.5
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def scene_audio() -> list[np.ndarray]:
    from soundwatch.stream.decode import read_audio_file

    out = []
    for path in SCENES:
        samples, rate = read_audio_file(path)
        assert rate == 32000, f"{path} is {rate} Hz"
        out.append(np.ascontiguousarray(samples.reshape(len(samples), -1).mean(axis=1)))
    return out


def real_windows(audio: list[np.ndarray], count: int) -> np.ndarray:
    """``count`` 3 s windows (300 frames) at 0.5 s hops from the scenes' log-mel."""
    from soundwatch.dsp import StreamingLogMel

    windows = []
    for samples in audio:
        mel = StreamingLogMel().push(samples)
        for start in range(0, mel.shape[1] - 300 + 1, 50):
            windows.append(mel[:, start : start + 300])
    return np.stack([windows[i % len(windows)] for i in range(count)])


def measure_once(
    infer: Callable[[np.ndarray], object], batch: np.ndarray, passes: int, pids: list[int]
) -> tuple[float, float]:
    """Windows/s of ``passes`` passes, and CPU ms per window (this process + ``pids``)."""
    cpu0 = time.process_time() + sum(proc_cpu(p) for p in pids)
    t0 = time.perf_counter()
    for _ in range(passes):
        infer(batch)
    elapsed = time.perf_counter() - t0
    used = time.process_time() + sum(proc_cpu(p) for p in pids) - cpu0
    return passes * len(batch) / elapsed, 1000.0 * used / (passes * len(batch))


def replica_pids(engine, replicas: int) -> list[int]:
    """The replicas' process ids (describe() until each answered; bounded)."""
    pids: set[int] = set()
    for _ in range(50 * replicas):
        pids.add(engine._handle.describe.remote().result(timeout_s=30)["pid"])
        if len(pids) == replicas:
            break
    return sorted(pids)


def frontend_cpu_per_audio_second(audio: list[np.ndarray]) -> float:
    """CPU ms per audio second of ``StreamingLogMel.push`` in 10 ms hops (one stream)."""
    from soundwatch.dsp import StreamingLogMel, warmup

    warmup()
    samples = audio[0]
    runs = []
    for _ in range(3):
        frontend = StreamingLogMel()
        t0 = time.process_time()
        for start in range(0, len(samples), 320):
            frontend.push(samples[start : start + 320])
        runs.append(1000.0 * (time.process_time() - t0) / (len(samples) / 32000))
    return statistics.median(runs)


def edge_process_cpu(seconds: float) -> float:
    """CPU ms per audio second of a real ``soundwatch edge`` process streaming a scene in
    real time to a socket here that acknowledges every batch as ``serve`` does."""
    import subprocess

    import zmq

    from soundwatch.edge.wire import Ack, FrameBatch, decode, encode_ack

    sink = zmq.Context.instance().socket(zmq.ROUTER)
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    command = [
        *(sys.executable, "-m", "soundwatch.cli", "edge", "--source", f"file:{SCENES[0]}"),
        *("--to", f"tcp://127.0.0.1:{port}", "--id", "bench", "--pace", "realtime", "--loop"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def serve_once() -> bool:
        if not sink.poll(100):
            return False
        peer, data = sink.recv_multipart()[:2]
        message = decode(data)
        if isinstance(message, FrameBatch):
            ack = Ack(stream=message.stream, epoch=message.epoch, next=message.seq + 1)
            sink.send_multipart([peer, encode_ack(ack)])
        return True

    try:
        deadline = time.monotonic() + 120
        while not serve_once():  # its first frames: start-up is over
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the soundwatch edge process sent no frames within 120 s")
        start_cpu, t0 = proc_cpu(process.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            serve_once()
        used = proc_cpu(process.pid) - start_cpu
        return 1000.0 * used / (time.monotonic() - t0)
    finally:
        process.terminate()
        process.wait(30)
        sink.close(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--edge-seconds", type=float, default=20.0)
    args = parser.parse_args()

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import ray

    from soundwatch.models import InferenceWorker, load_model
    from soundwatch.scale.config import InferenceConfig
    from soundwatch.scale.engine import RayEngine

    audio = scene_audio()
    batch = real_windows(audio, args.batch)
    loaded = load_model("mn04", WEIGHTS)
    cores = os.cpu_count() or 1

    # Every engine is set up first, then measured in turn within each repetition, so that
    # the load of other jobs on the machine drifts over all of them alike.
    local = InferenceWorker(loaded, device="cpu", backend="auto")
    single = InferenceWorker(loaded, device="cpu", threads=1, backend="auto")
    engines: list[tuple[str, Callable[[np.ndarray], object], list[int]]] = [
        (f"local ({local.backend}, in-process, default threads): baseline", local.infer, []),
        (f"local ({single.backend}, in-process, 1 thread)", single.infer, []),
    ]
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started: list[RayEngine] = []
    try:
        counts = [int(r) for r in args.replicas.split(",")]
        for replicas in counts:
            # CPUs are a placement hint only: all deployments stay up, each replica idles
            # while the others are measured
            share = cores / (sum(counts) + 1)
            config = InferenceConfig(engine="ray", replicas=replicas, num_cpus=share)
            engine = RayEngine(loaded, config, device="cpu", threads=1, backend="auto")
            started.append(engine)
            name = f"ray, {replicas} replica(s) ({engine.backend}, 1 thread each)"
            engines.append((name, engine.infer, replica_pids(engine, replicas)))
        for _, infer, _ in engines:
            infer(batch)  # warm-up
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in engines}
        for _ in range(args.runs):
            for name, infer, pids in engines:
                samples[name].append(measure_once(infer, batch, args.passes, pids))
    finally:
        for engine in started:
            engine.close()
        ray.shutdown()
    rows = [
        (name, statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in samples.items()
    ]
    baseline = rows[0][1]

    frontend = frontend_cpu_per_audio_second(audio)
    edge = edge_process_cpu(args.edge_seconds)

    print(f"\nmn04, {args.batch} windows of 3 s per pass, {cores} cores ({cpu_model()})")
    print(f"medians of {args.runs} runs of {args.passes} passes\n")
    print(
        "| engine | windows/s | vs local | CPU ms/window | windows per core-second "
        "| streams at 0.5 s hop |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, cpu in rows:
        print(
            f"| {name} | {rate:.0f} | {rate / baseline:.2f}x | {cpu:.1f} | {1000 / cpu:.0f} "
            f"| {rate * HOP_S:.0f} |"
        )
    print("\n| edge cost per stream | CPU ms per audio second |")
    print("|---|---:|")
    print(f"| frontend (StreamingLogMel.push, 10 ms hops) | {frontend:.2f} |")
    print(f"| soundwatch edge process (capture + frontend + send) | {edge:.1f} |")


if __name__ == "__main__":
    main()
