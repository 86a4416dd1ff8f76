"""Streams per machine: the whole live pipeline, as ``soundwatch run`` builds it, under load.

One run (``--streams N``): N sources paced in real time (looped clips from
``../shared/audio/clips``, or the synthetic demo) go through ``soundwatch.runner.run_live``
(rings, frontend, per-stream window queue, batched inference, events on, ZeroMQ publishing)
for ``--seconds``, while a subscriber in another process receives every ``tags`` message.
Prints one JSON object (``--json``) or a short summary:

- ``latency_p50_ms`` / ``latency_p99_ms``: capture-to-arrival, from the capture time of a
  window's last sample (its ``t_end``) to the subscriber receiving its ``tags`` message;
  ``latency_steady_p99_ms`` leaves out each stream's first window and the windows of audio
  captured after the run's end (the stop's final windows): every stream's first window
  falls due at the same moment, and so do the final ones, two bursts of N windows that a
  short run's p99 can be made of;
- ``dropped_windows``: tag and event windows dropped by backpressure (status counters);
  ``lost_messages``: ``seq`` gaps the subscriber saw (ZeroMQ high-water mark);
- ``cpu_cores_used``: process CPU seconds per wall second during the run, and per thread
  group (``threads``: stream threads, inference thread, native pools, from /proc);
- ``rss_mb`` at the end, ``rss_idle_mb`` before the sources started, their difference per
  stream.

``--quiet F`` plays steady low-level room noise (generated once into the user cache
directory) on that fraction of the streams, the clips on the rest: rooms are quiet most of
the time, which activity gating (``--gate on|off``, ``pipeline.gate``) exploits.
``--rss-every S`` samples RSS every S seconds (``rss_samples``) and reports its growth after
``--warmup`` seconds (``rss_growth_after_warmup_mb``). ``--startup`` measures, with warm
caches, how long ``soundwatch run`` takes from launch to the first ``tags`` message at a
subscriber, minus the first window's own audio (the window length), over ``--runs`` launches,
against the same launch with ``import torch`` first (baseline: what a start cost with torch).

``--find-capacity`` searches the largest N that holds (no window dropped over the run and
p99 latency under ``--max-p99`` s, 1.5 by default), each trial a fresh process, and prints
it beside two figures measured in the same run on one thread (``streams = cores x hop /
cost``): **naive**, a per-call tagger (the torch log-mel of the whole window plus the eager
model at batch 1, per window), and **bound**, the bare ONNX Runtime fp32 forward pass at its
best batch size with no pipeline around it (the tag series only, as the issue defines it;
``bound_all_series`` also counts a separate event window series).

Weights: mn04 runs its real checkpoint from ``../shared`` when there (random weights fire
events on every other window, which is not what rooms do); other models run random
weights (seeded, batch norms calibrated: the model's speed does not depend on them, but
the event detector's work per window is overstated); ``--weights PATH|random`` chooses.

    .venv/bin/python benchmarks/pipeline.py --streams 16 --seconds 30 --json
    .venv/bin/python benchmarks/pipeline.py --find-capacity --model mn10 --window 10 --hop 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the soundwatch command does
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the soundwatch command does

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
CLIPS = SHARED / "audio" / "clips"
MN04 = SHARED / "models" / "mn04_as_mAP_432.pt"
TICK = os.sysconf("SC_CLK_TCK")
ROOM_NOISE = Path.home() / ".cache" / "soundwatch" / "bench" / "room-noise-60s.wav"


def room_noise(seconds: float = 60.0, seed: int = 0) -> np.ndarray:
    """Steady room noise at about -60 dBFS with a slow +-1 dB level drift (a quiet room)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * 32000)
    white = rng.standard_normal(n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(3200) / 3200, mode="same")  # no DC wander
    noise = 0.7 * white / white.std() + 0.3 * brown / brown.std()
    drift = 10 ** (np.sin(np.linspace(0, 2 * np.pi, n)) / 20)
    return (0.001 * noise * drift).astype(np.float32)


def room_noise_file() -> Path:
    """The room noise as a 32 kHz WAV in the user cache (made once; never in the repo)."""
    if not ROOM_NOISE.is_file():
        import soundfile as sf

        ROOM_NOISE.parent.mkdir(parents=True, exist_ok=True)
        sf.write(ROOM_NOISE, room_noise(), 32000)
    return ROOM_NOISE


# --- the subscriber process ---------------------------------------------------------------
def subscribe(endpoint: str, streams: int, idle_s: float) -> None:
    """Receive until every stream's last status (or ``idle_s`` of silence); print JSON."""
    from soundwatch.client import Subscriber

    latencies: list[float] = []
    steady: list[tuple[float, float]] = []  # (latency, t_end) of windows after each first
    carried = 0
    events = 0
    ended: set[str] = set()
    topics = ["tags.", "events.", "status."]
    with Subscriber(endpoint, topics=topics, high_water_mark=100_000) as sub:
        print("ready", flush=True)
        while len(ended) < streams:
            message = sub.receive(timeout=idle_s)
            if message is None:
                break
            now = time.time()
            if message.kind == "tags":
                latencies.append(now - message.t_end)
                if message.seq > 0:
                    steady.append((now - message.t_end, message.t_end))
                carried += bool(getattr(message, "carried", False))
            elif message.kind == "events":
                events += 1
            elif message.kind == "status" and message.ended:
                ended.add(message.stream)
        result = {
            "latencies": latencies,
            "steady": steady,
            "lost_messages": sub.gaps,
            "events": events,
            "carried": carried,
            "ended": len(ended),
        }
    print(json.dumps(result), flush=True)


# --- one run -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process, by native thread id."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_group(name: str) -> str:
    if name.startswith("stream-"):
        return "stream threads"
    if name.startswith("forward"):
        return "forward chunks"  # model.parallel's pool (the first chunk runs on inference)
    if name in ("inference", "delivery", "capture", "MainThread"):
        return name
    return "other python"


def build_tagger(args: argparse.Namespace) -> Any:
    """The runner's Tagger around the named model: random seeded weights or ``--weights``."""
    import torch

    from soundwatch.labels import AUDIOSET_CLASSES, read_class_labels
    from soundwatch.models import InferenceWorker, LoadedModel, build_model, load_model
    from soundwatch.models.parallel import session_threads
    from soundwatch.models.weights import LABELS_FILE, resolve_bundle_file
    from soundwatch.runner import Tagger

    weights = args.weights
    if weights is None and args.model == "mn04" and MN04.is_file():
        weights = str(MN04)  # real weights: realistic event rates (random ones flap)
    if weights and weights != "random":
        loaded = load_model(args.model, weights)
    else:
        sys.path.insert(0, str(HERE))
        from models import calibrated, weights_key

        torch.manual_seed(0)
        model = calibrated(build_model(args.model, num_classes=AUDIOSET_CLASSES))
        labels_dir = SHARED / "models"
        labels = read_class_labels(resolve_bundle_file(LABELS_FILE, labels_dir), AUDIOSET_CLASSES)
        loaded = LoadedModel(
            name=args.model,
            model=model,
            labels=labels.names,
            mids=labels.mids,
            weights_path=labels_dir / f"random-{args.model}.pt",
            sha256=weights_key(model),
        )
    threads = session_threads(args.threads, parallel_setting(args.parallel))  # as run does
    worker = InferenceWorker(loaded, device="cpu", threads=threads, backend=args.backend)
    return Tagger(loaded, worker)


def parallel_setting(value: str) -> int | str:
    """``--parallel``: ``auto`` or a number of chunks (``model.parallel``)."""
    return value if value == "auto" else int(value)


def source_specs(args: argparse.Namespace) -> list[dict]:
    clips = sorted(CLIPS.glob("*.wav")) if args.source == "file" else []
    if args.source == "file" and not clips:
        raise SystemExit(f"no clips in {CLIPS}; use --source synthetic")
    specs = []
    quiet = round(args.streams * args.quiet)
    for i in range(args.streams):
        if i < quiet:  # the quiet rooms
            specs.append({"id": f"s{i}", "spec": f"file:{room_noise_file()}", "loop": True})
        elif args.source == "file":
            specs.append({"id": f"s{i}", "spec": f"file:{clips[i % len(clips)]}", "loop": True})
        else:
            specs.append({"id": f"s{i}", "spec": f"synthetic?seed={i + 1}"})
    return specs


def run_once(args: argparse.Namespace) -> dict:
    from soundwatch.config import Config, apply_overrides
    from soundwatch.runner import run_live

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    started = time.monotonic()
    tagger = build_tagger(args)
    load_s = time.monotonic() - started
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    overrides: dict[str, Any] = {
        "sources": source_specs(args),
        "publish.endpoints": [endpoint],
        "publish.wait_for_subscribers": 3,
        "publish.wait_timeout": 60.0,
        "windows.window": args.window,
        "windows.hop": args.hop,
        "model.name": args.model,
        "model.backend": args.backend,
        "model.parallel": parallel_setting(args.parallel),
    }
    if args.max_pending is not None:
        overrides["pipeline.max_pending_windows"] = args.max_pending
    if args.max_batch is not None:
        overrides["pipeline.max_batch"] = args.max_batch
    if args.gate is not None:
        overrides["pipeline.gate"] = {"enabled": args.gate == "on"}
    if args.stagger is not None:
        overrides["pipeline.stagger"] = args.stagger == "on"
    config = apply_overrides(Config(), overrides)
    subscriber = subprocess.Popen(
        [sys.executable, __file__, "--subscribe", endpoint, "--streams", str(args.streams)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert subscriber.stdout is not None
    subscriber.stdout.readline()  # "ready": connected and subscribed
    marks: dict[str, Any] = {}

    def stop_after(pipeline: Any) -> None:
        # the run starts when every stream has its first audio; it lasts args.seconds
        while not all(s.first_t is not None for s in pipeline.streams):
            if pipeline._stop.wait(0.02):
                return
        marks["t0"] = time.monotonic()
        marks["cpu0"] = resource.getrusage(resource.RUSAGE_SELF)
        marks["threads0"] = thread_cpu()
        samples = marks["rss_samples"] = [(0.0, rss_mb())]
        deadline = marks["t0"] + args.seconds
        if args.rss_every:
            while not pipeline._stop.wait(min(args.rss_every, max(0, deadline - time.monotonic()))):
                now = time.monotonic()
                if now >= deadline:
                    break
                samples.append((round(now - marks["t0"], 1), rss_mb()))
        if not pipeline._stop.wait(max(0.0, deadline - time.monotonic())):
            marks["threads1"] = thread_cpu()
            # names now: threads that end with the run (model.parallel's) are gone after it
            marks["names"] = {t.native_id: t.name for t in threading.enumerate()}
            marks["t1"] = time.monotonic()
            marks["wall1"] = time.time()
            marks["cpu1"] = resource.getrusage(resource.RUSAGE_SELF)
            marks["rss1"] = rss_mb()
            pipeline.stop()

    def on_ready(pipeline: Any, _endpoints: list[str], _notes: list[str]) -> None:
        marks["rss_idle"] = rss_mb()
        threading.Thread(target=stop_after, args=(pipeline,), daemon=True).start()

    pipeline = run_live(config, tagger=tagger, on_ready=on_ready, install_signal_handlers=False)
    out, _ = subscriber.communicate(timeout=120)
    received = json.loads(out.strip().splitlines()[-1])
    wall = marks["t1"] - marks["t0"]
    cpu = sum(
        getattr(marks["cpu1"], f) - getattr(marks["cpu0"], f) for f in ("ru_utime", "ru_stime")
    )
    names = {**marks["names"], **{t.native_id: t.name for t in threading.enumerate()}}
    names.update({s.native_id: s.name for s in getattr(pipeline, "_threads", [])})
    for attr in ("_inference_thread", "_delivery_thread"):
        if (thread := getattr(pipeline, attr, None)) is not None:
            names[thread.native_id] = thread.name
    groups: dict[str, float] = {}
    for tid, seconds in marks["threads1"].items():
        name = names.get(tid)
        group = thread_group(name) if name is not None else "native (model pools, zmq)"
        groups[group] = groups.get(group, 0.0) + seconds - marks["threads0"].get(tid, 0.0)
    counters = [state.report().counters for state in pipeline.streams]
    dropped = sum(c["windows_dropped"] + c["event_windows_dropped"] for c in counters)
    tagged = sum(c["windows_tagged"] for c in counters)
    latencies = np.asarray(received["latencies"]) * 1000
    steady = np.asarray([lat for lat, t_end in received["steady"] if t_end <= marks["wall1"]])
    samples = marks["rss_samples"] + [(round(wall, 1), marks["rss1"])]
    after_warmup = [mb for t, mb in samples if t >= args.warmup]
    growth = after_warmup[-1] - after_warmup[0] if len(after_warmup) > 1 else None
    return {
        "streams": args.streams,
        "model": args.model,
        "backend": tagger.worker.backend,
        "parallel": args.parallel,
        "window": args.window,
        "hop": args.hop,
        "source": args.source,
        "audio_seconds": round(wall * args.streams, 1),
        "wall_seconds": round(wall, 2),
        "windows_per_second": round(tagged / wall, 2),
        "windows_tagged": tagged,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "latency_max_ms": round(float(latencies.max()), 1) if len(latencies) else None,
        "latency_steady_p99_ms": (
            round(float(np.percentile(steady, 99) * 1000), 1) if len(steady) else None
        ),
        "tags_received": len(latencies),
        "dropped_windows": dropped,
        "dropped_per_stream_min_max": [
            min(c["windows_dropped"] + c["event_windows_dropped"] for c in counters),
            max(c["windows_dropped"] + c["event_windows_dropped"] for c in counters),
        ],
        "lost_messages": received["lost_messages"],
        "events_received": received["events"],
        "carried_windows": received["carried"],
        "forward_passes": pipeline.batches.forward_passes,
        "mean_batch": round(pipeline.batches.windows / max(1, pipeline.batches.forward_passes), 2),
        "cpu_cores_used": round(cpu / wall, 3),
        "threads": {k: round(v / wall, 3) for k, v in sorted(groups.items())},
        "rss_mb": round(marks["rss1"], 1),
        "rss_idle_mb": round(marks["rss_idle"], 1),
        "rss_per_stream_mb": round((marks["rss1"] - marks["rss_idle"]) / args.streams, 2),
        "rss_growth_after_warmup_mb": round(growth, 1) if growth is not None else None,
        "rss_samples": [(t, round(mb, 1)) for t, mb in samples] if args.rss_every else [],
        "quiet_streams": round(args.streams * args.quiet),
        "gate": config.pipeline.gate.enabled,
        "carried_counted": sum(c.get("windows_carried", 0) for c in counters),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "model_load_s": round(load_s, 2),
    }


# --- start-up ------------------------------------------------------------------------------
def startup(args: argparse.Namespace) -> dict:
    """Launch ``soundwatch run`` on a clip (warm caches: a launch first, not counted) and
    time launch -> first ``tags`` message received, minus the first window's audio.

    Each run also launches the baseline, the same command with ``import torch`` first (what
    every start paid before a run served by a cached ONNX export stopped importing it),
    alternating with the real launches so both see the same machine load."""
    from soundwatch.client import Subscriber

    clip = sorted(CLIPS.glob("*.wav"))[0]
    soundwatch = Path(sys.executable).parent / "soundwatch"
    torch_first = [sys.executable, "-c", "import torch, sys; from soundwatch.cli import main; "
                   "sys.argv[0] = 'soundwatch'; main()"]  # fmt: skip
    variants = {"soundwatch": [str(soundwatch)], "torch_first": torch_first}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(args.runs + 1):
        for name, launcher in variants.items():
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            command = [*launcher, "run", "--source", f"file:{clip}", "--publish", endpoint]
            command += ["--window", str(args.window), "--hop", str(args.hop), "--loop"]
            command += ["--model", args.model, "--backend", args.backend]
            if args.model == "mn04" and MN04.is_file():
                command += ["--weights", str(MN04)]
            with Subscriber(endpoint, topics=["tags."]) as sub:
                started = time.monotonic()
                process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
                try:
                    message = sub.receive(timeout=120)
                    elapsed = time.monotonic() - started
                finally:
                    process.terminate()
                    process.wait(30)
            if message is None:
                raise SystemExit(f"{name}: no tags message within 120 s of launch")
            if run:  # the first launch warms the caches (numba, ONNX, the OS's file cache)
                times[name].append(elapsed - args.window)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": args.model,
        "backend": args.backend,
        "window": args.window,
        "startup_s_median": round(median["soundwatch"], 2),
        "startup_s_runs": [round(t, 2) for t in times["soundwatch"]],
        "baseline_torch_first_s_median": round(median["torch_first"], 2),
        "baseline_torch_first_s_runs": [round(t, 2) for t in times["torch_first"]],
        "speedup_vs_torch_first": round(median["torch_first"] / median["soundwatch"], 2),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


# --- naive and bound -----------------------------------------------------------------------
def median_time(fn: Any, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def reference_costs(args: argparse.Namespace) -> dict:
    """Seconds per window on one thread: naive (torch log-mel + eager, batch 1) and the bare
    ONNX Runtime pass at its best batch size, for the tag window and the event window."""
    import torch

    sys.path.insert(0, str(HERE))
    from frontend import TorchReference

    from soundwatch.models.onnx_backend import OnnxTagger, cached_onnx_tagger
    from soundwatch.models.weights import default_cache_dir

    torch.set_num_threads(1)
    tagger = build_tagger(argparse.Namespace(**{**vars(args), "backend": "torch", "threads": 1}))
    model = tagger.loaded.model
    reference = TorchReference()
    rng = np.random.default_rng(0)
    frames = round(args.window * 100)
    wave = torch.from_numpy(0.1 * rng.standard_normal(frames * 320).astype(np.float32))

    def naive() -> None:
        with torch.inference_mode():
            mel = reference(wave)[..., :frames].reshape(1, 1, 128, frames)
            model(mel)

    naive_s = median_time(naive, args.runs)
    onnx = cached_onnx_tagger(
        model, tagger.loaded.name, tagger.loaded.sha256, default_cache_dir(), threads=1
    )
    session = OnnxTagger(onnx.path, threads=1)

    def best(window_frames: int) -> tuple[float, int]:
        costs = {}
        for batch in (1, 4, 8, 16, 32):
            x = (0.5 * rng.standard_normal((batch, 1, 128, window_frames))).astype(np.float32)
            costs[batch] = median_time(lambda x=x: session.run(x), args.runs) / batch
        size = min(costs, key=costs.__getitem__)
        return costs[size], size

    bound_s, bound_batch = best(frames)
    event_frames = 300
    separate_events = (args.window, args.hop) != (3.0, 0.5)
    event_s = best(event_frames)[0] if separate_events else 0.0
    cores = os.cpu_count() or 1
    per_stream_s = bound_s / args.hop + (event_s / 0.5 if separate_events else 0.0)
    return {
        "naive_ms_per_window": round(naive_s * 1000, 2),
        "bound_ms_per_window": round(bound_s * 1000, 2),
        "bound_batch": bound_batch,
        "cores": cores,
        "naive_streams": round(cores * args.hop / naive_s, 1),
        "bound_streams": round(cores * args.hop / bound_s, 1),
        "bound_all_series_streams": round(cores / per_stream_s, 1),
    }


# --- capacity search -----------------------------------------------------------------------
def trial(args: argparse.Namespace, streams: int) -> dict:
    command = [sys.executable, __file__, "--streams", str(streams), "--json"]
    keys = ("seconds", "model", "window", "hop", "backend", "source", "threads", "weights")
    keys += ("parallel",)
    for key in (*keys, "quiet", "gate", "stagger"):
        value = getattr(args, key)
        if value is not None:
            command += [f"--{key}", str(value)]
    for key in ("max_pending", "max_batch"):
        if getattr(args, key) is not None:
            command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 300)
    if done.returncode != 0:  # e.g. far past capacity the backlog outlasts the shutdown
        error = [line for line in done.stderr.splitlines() if "Error" in line][-1:]
        print(f"  {streams} streams: fails ({error})", file=sys.stderr, flush=True)
        return {"streams": streams, "holds": False, "error": error}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["holds"] = holds(result, args.max_p99)
    brief = {k: result[k] for k in ("latency_p50_ms", "latency_p99_ms", "dropped_windows")}
    print(
        f"  {streams} streams: {'holds' if result['holds'] else 'fails'} {brief} "
        f"cpu {result['cpu_cores_used']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def holds(result: dict, max_p99: float) -> bool:
    p99 = result["latency_p99_ms"]
    return result["dropped_windows"] == 0 and p99 is not None and p99 < max_p99 * 1000


def find_capacity(args: argparse.Namespace) -> dict:
    trials: dict[int, dict] = {}
    n, good, bad = args.start, 0, None
    while bad is None and n <= args.max_streams:
        trials[n] = trial(args, n)
        if trials[n]["holds"]:
            good, n = n, n * 2
        else:
            bad = n
    if bad is None:
        bad = args.max_streams + 1
    while bad - good > max(1, round(good * args.resolution)):
        n = (good + bad) // 2
        trials[n] = trial(args, n)
        good, bad = (n, bad) if trials[n]["holds"] else (good, n)
    refs = reference_costs(args)
    return {
        "capacity": good,
        "model": args.model,
        "window": args.window,
        "hop": args.hop,
        "backend": trials[args.start]["backend"],
        "parallel": args.parallel,
        **refs,
        "of_bound": round(good / refs["bound_streams"], 3),
        "of_bound_all_series": round(good / refs["bound_all_series_streams"], 3),
        "vs_naive": round(good / refs["naive_streams"], 2),
        "trials": [trials[k] for k in sorted(trials)],
    }


def plot(results: list[dict], path: Path) -> None:
    """Latency (p50, p99) and CPU cores against streams, one line per capacity search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        trials = sorted(
            (t for t in result["trials"] if "error" not in t), key=lambda t: t["streams"]
        )
        n = [t["streams"] for t in trials]
        name = f"{result['model']} {result['window']:g} s / {result['hop']:g} s"
        line = lat.plot(n, [t["latency_p99_ms"] / 1000 for t in trials], "o-", label=f"{name} p99")
        lat.plot(
            n,
            [t["latency_p50_ms"] / 1000 for t in trials],
            "x--",
            color=line[0].get_color(),
            label=f"{name} p50",
        )
        cpu.plot(n, [t["cpu_cores_used"] for t in trials], "o-", label=name)
    lat.axhline(1.5, color="grey", linestyle=":", label="1.5 s limit")
    lat.set(xlabel="streams", ylabel="capture-to-arrival latency (s)", yscale="log")
    cpu.set(xlabel="streams", ylabel="CPU cores used", ylim=(0, os.cpu_count() or 2))
    lat.legend(fontsize=7)
    cpu.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", default="mn04")
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--hop", type=float, default=0.5)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--parallel", default="auto", help="model.parallel: auto or N chunks")
    parser.add_argument("--weights")
    parser.add_argument("--source", choices=("file", "synthetic"), default="file")
    parser.add_argument("--max-pending", type=int)
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval, s")
    parser.add_argument("--quiet", type=float, default=0.0, help="share of room-noise streams")
    parser.add_argument("--gate", choices=("on", "off"), help="pipeline.gate (default: config)")
    parser.add_argument(
        "--stagger", choices=("on", "off"), help="pipeline.stagger (default: config)"
    )
    parser.add_argument("--rss-every", type=float, help="sample RSS every S seconds")
    parser.add_argument("--warmup", type=float, default=60.0, help="s before RSS growth counts")
    parser.add_argument("--startup", action="store_true", help="launch-to-first-tags only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--find-capacity", action="store_true")
    parser.add_argument("--references", action="store_true", help="only naive and bound")
    parser.add_argument("--start", type=int, default=8, help="first stream count tried")
    parser.add_argument("--max-streams", type=int, default=1024)
    parser.add_argument("--resolution", type=float, default=0.05, help="search stops here")
    parser.add_argument("--max-p99", type=float, default=1.5, help="seconds")
    parser.add_argument("--runs", type=int, default=7, help="repetitions of naive/bound")
    parser.add_argument(
        "--plot",
        help="with --find-capacity: also plot to this PNG, adding "
        "to the searches already in its .json beside it",
    )
    parser.add_argument("--subscribe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribe:
        subscribe(args.subscribe, args.streams, idle_s=60.0)
        return 0
    if args.references:
        result = reference_costs(args)
    elif args.startup:
        result = startup(args)
    else:
        result = find_capacity(args) if args.find_capacity else run_once(args)
    if args.find_capacity and args.plot:
        store = Path(args.plot).with_suffix(".json")
        previous = json.loads(store.read_text()) if store.is_file() else []
        key = (result["model"], result["window"], result["hop"])
        searches = [r for r in previous if (r["model"], r["window"], r["hop"]) != key]
        searches.append(result)
        store.write_text(json.dumps(searches, indent=1) + "\n")
        plot(searches, Path(args.plot))
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
