"""Forward passes on all cores: one pass on one thread against the ways of using every core.

For mn04 on 3 s windows (300 frames) and mn10 on 10 s windows (1000 frames), random weights
(speed does not depend on them; ONNX exports cached like benchmarks/models.py's), batches of
``--batches`` windows, each variant timed round-robin ``--runs`` times after a warm-up call:

- ``1 pass, 1 thread``: ONNX Runtime, one ``run`` with one intra-op thread (the baseline);
- ``1 pass, N threads``: the same with N intra-op threads (ONNX Runtime's own parallelism);
- ``N chunks, 1 session``: the batch cut into N chunks run at once from N Python threads on
  one session of one intra-op thread (``soundwatch.models.parallel.ParallelInfer``);
- ``N chunks, N sessions``: the same with one session per thread;
- with ``--torch``: eager torch (channels_last, as the worker runs it) one pass on one
  thread, and N chunks on one thread each.

N = the usable cores (``--parallel`` to choose). The table gives the median milliseconds per
pass, windows per second, CPU cores used (process CPU time / wall time of the pass) and the
speed-up against the baseline measured in the same run; CPU milliseconds per window (process
CPU time / windows) says whether splitting costs extra work, which a loaded machine cannot
hide the way it hides the wall-time gain (the scheduler gives a busy process's threads a
share, not a core each).

    .venv/bin/python benchmarks/parallel_inference.py [--runs 7] [--batches 8,16,32,64]
        [--models mn04,mn10] [--torch] [--json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the soundwatch command does
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import calibrated, onnx_for  # noqa: E402

from soundwatch.labels import AUDIOSET_CLASSES  # noqa: E402
from soundwatch.models import build_model  # noqa: E402
from soundwatch.models.onnx_backend import OnnxTagger  # noqa: E402
from soundwatch.models.parallel import ParallelInfer, usable_cores  # noqa: E402

FRAMES = {"mn04": 300, "mn10": 1000}
BASELINE = "1 pass, 1 thread"
Infer = Callable[[np.ndarray], object]


def torch_infer(model: torch.nn.Module) -> Infer:
    """What the worker's CPU torch backend does with a numpy batch (channels_last)."""

    def infer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits, embedding = model(t)
            return torch.sigmoid(logits).numpy(), embedding.numpy()

    return infer


def variants(name: str, n: int, with_torch: bool) -> tuple[dict[str, Infer], list]:
    """The callables to time for one model, and what must be closed afterwards."""
    torch.manual_seed(0)
    model = calibrated(build_model(name, num_classes=AUDIOSET_CLASSES))
    path, _ = onnx_for(name, model)
    one = OnnxTagger(path, threads=1)
    many = OnnxTagger(path, threads=n)
    sessions = [one, *(OnnxTagger(path, threads=1) for _ in range(n - 1))]
    shared = ParallelInfer(one.run, n, min_chunk=1)
    calls = iter(range(1 << 62))

    def per_session(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return sessions[next(calls) % n].run(x)  # round-robin: one chunk per session

    separate = ParallelInfer(per_session, n, min_chunk=1)
    out: dict[str, Infer] = {
        BASELINE: one.run,
        f"1 pass, {n} threads": many.run,
        f"{n} chunks, 1 session": shared,
        f"{n} chunks, {n} sessions": separate,
    }
    closers = [shared, separate]
    if with_torch:
        nhwc = model.to(memory_format=torch.channels_last)
        eager = torch_infer(nhwc)
        out["torch, 1 pass, 1 thread"] = eager
        chunked = ParallelInfer(eager, n, min_chunk=1)
        out[f"torch, {n} chunks"] = chunked
        closers.append(chunked)
    return out, closers


def idle_share(interval: float = 1.0) -> float:
    """The machine's idle CPU share over ``interval`` s (from /proc/stat; 1.0 elsewhere)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_idle(share: float, max_wait: float = 600.0) -> float:
    """Wait until at least ``share`` of the CPU was idle over the last second (others'
    load: this process waits meanwhile), at most ``max_wait`` s; the share seen."""
    deadline = time.monotonic() + max_wait
    while True:
        seen = idle_share()
        if seen >= share or time.monotonic() > deadline:
            return seen


def time_pass(fn: Infer, x: np.ndarray) -> tuple[float, float]:
    """Wall seconds and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    name: str, batches: list[int], runs: int, n: int, with_torch: bool, when_idle: float
) -> list[dict]:
    fns, closers = variants(name, n, with_torch)
    rng = np.random.default_rng(0)
    rows = []
    try:
        for batch in batches:
            x = (0.5 * rng.standard_normal((batch, 1, 128, FRAMES[name]))).astype(np.float32)
            for fn in fns.values():
                fn(x)  # warm-up (memory arena, first-call allocations)
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
            idle = []
            for _ in range(runs):  # round-robin: other load hits every variant alike
                if when_idle:
                    idle.append(wait_idle(when_idle))
                for key, fn in fns.items():
                    samples[key].append(time_pass(fn, x))
            base = statistics.median(w for w, _ in samples[BASELINE])
            for key, timed in samples.items():
                wall = statistics.median(w for w, _ in timed)
                cores = statistics.median(c / w for w, c in timed)
                cpu = statistics.median(c for _, c in timed)
                rows.append(
                    {
                        "model": name,
                        "frames": FRAMES[name],
                        "batch": batch,
                        "variant": key,
                        "ms_per_pass": round(wall * 1000, 2),
                        "windows_per_s": round(batch / wall, 1),
                        "cores_used": round(cores, 2),
                        "cpu_ms_per_window": round(cpu * 1000 / batch, 2),
                        "speedup": round(base / wall, 2),
                        "idle_before": round(min(idle), 2) if idle else None,
                    }
                )
            print(f"  {name} batch {batch} done", file=sys.stderr, flush=True)
    finally:
        for closer in closers:
            closer.close()
    return rows


def table(rows: list[dict]) -> str:
    head = "| model (frames) | batch | variant | ms per pass | windows/s | cores used | "
    head += "CPU ms per window | x base |"
    lines = [head, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['frames']}) | {r['batch']} | {r['variant']} | "
            f"{r['ms_per_pass']} | {r['windows_per_s']} | {r['cores_used']} | "
            f"{r['cpu_ms_per_window']} | {r['speedup']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mn04,mn10")
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--parallel", type=int, default=usable_cores(), help="chunks / threads")
    parser.add_argument("--torch", action="store_true", help="also eager torch (a) and (c)")
    parser.add_argument(
        "--when-idle",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="start each round only when this share of the CPU was idle over 1 s (a shared "
        "machine: a busy scheduler gives this process one share however many threads it runs)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        rows += measure(name, batches, args.runs, args.parallel, args.torch, args.when_idle)
    print(json.dumps(rows) if args.json else table(rows))
    print(f"load average {os.getloadavg()[0]:.2f}, usable cores {usable_cores()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
